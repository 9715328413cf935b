"""A run that stopped before its items were done says, wherever its status is shown (`runs`, `status`,
`status --json`, the report), why it stopped and what to do: "interrupted" would send the user to a resume that
cannot work until the job, the key or the budget changes."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.conftest import TEST_KEY, batchrun, cli_env, db_dump, prompts, write_jsonl

MODEL = "claude-haiku-4-5"


def shown(workdir: Path, env: dict, run_id: str) -> dict[str, str]:
    """The run's status as each command shows it (and the reason's code in status --json)."""
    as_json = batchrun(["status", run_id, "--json"], cwd=workdir, env=env)
    text = batchrun(["status", run_id], cwd=workdir, env=env)
    runs = batchrun(["runs"], cwd=workdir, env=env)
    report = batchrun(["report", run_id, "-o", "report.html"], cwd=workdir, env=env)
    assert as_json.returncode == text.returncode == runs.returncode == report.returncode == 0, report.stderr
    return {
        "json": orjson.loads(as_json.stdout)["status"],
        "code": orjson.loads(as_json.stdout)["stopped_by"],
        "status": text.stdout.splitlines()[0],
        "runs": next(line for line in runs.stdout.splitlines() if line.startswith(run_id)),
        "report": (workdir / "report.html").read_text(),
    }


def assert_shown_everywhere(workdir: Path, env: dict, run_id: str, code: str, *words: str) -> str:
    seen = shown(workdir, env, run_id)
    assert seen["code"] == code
    status = seen["json"]
    assert status.startswith("stopped: "), status
    assert "interrupted" not in status
    for word in words:
        assert word in status, status
    assert status in seen["status"] and status in seen["runs"], seen
    report_words = status.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    assert report_words.replace("'", "&#x27;") in seen["report"] or report_words in seen["report"]
    return status


def test_a_run_stopped_by_an_unknown_model_says_so_and_what_to_do(workdir: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(4))
    proc = batchrun(["submit", str(items), "--model", "claude-nonesuch-9", "--run-id", "r"], cwd=workdir, env=env)
    assert proc.returncode == 2, proc.stderr
    words = ("model claude-nonesuch-9 does not exist", "fix the model id")
    assert_shown_everywhere(workdir, env, "r", "unknown_model", *words)


def test_a_run_stopped_by_a_key_the_api_refuses_says_so_and_keeps_no_key(workdir: Path, emulator) -> None:
    emulator.configure(api_key="sk-ant-the-right-one")
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(4))
    proc = batchrun(["submit", str(items), "--model", MODEL, "--run-id", "r"], cwd=workdir, env=env)
    assert proc.returncode == 3, proc.stderr
    assert_shown_everywhere(workdir, env, "r", "fatal_api", "401", "fix the key or account, then `batchrun resume r`")
    assert TEST_KEY not in "\n".join(db_dump(workdir / "batchrun.db"))
    emulator.configure(api_key=None)
    done = batchrun(["resume", "r"], cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr
    after = shown(workdir, env, "r")  # the stop is forgotten once a command takes the run up
    assert after["json"] == "succeeded" and after["code"] is None


def test_a_run_stopped_by_its_budget_says_so_and_what_to_do(workdir: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(40))
    args = ["submit", str(items), "--model", MODEL, "--run-id", "r", "--max-tokens", "50", "--max-cost", "0.001"]
    proc = batchrun(args, cwd=workdir, env=env)
    assert proc.returncode == 3, proc.stderr
    assert_shown_everywhere(workdir, env, "r", "budget", "budget reached", "--max-cost")


def test_a_run_stopped_by_the_outage_guard_says_to_resume_later(workdir: Path, emulator) -> None:
    emulator.configure(p500=1.0, max_faults_per_request=100)
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    args = ["submit", str(items), "--model", MODEL, "--run-id", "r", "--max-attempts", "2"]
    proc = batchrun(args, cwd=workdir, env=env)
    assert proc.returncode == 3, proc.stderr
    assert_shown_everywhere(workdir, env, "r", "outage", "`batchrun resume r` later")
