"""Trustworthy runs: answers never cross endpoints, what answered each item is recorded, an unfinished run leaves
no partial results file, and settings that do not change requests can change on resume."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchrun.emulator.process import EmulatorProcess
from tests.conftest import batchrun, cli_env, db_dump, db_rows, prompts, read_jsonl, write_jsonl
from tests.fakeapi import FakeAPI, json_response, message

MODEL = "claude-haiku-4-5"


@pytest.fixture(scope="module")
def second_emulator_proc():
    with EmulatorProcess() as process:
        yield process


@pytest.fixture
def second_emulator(second_emulator_proc: EmulatorProcess) -> EmulatorProcess:
    """Another emulator: stands in for "the real API" (a different endpoint) in these tests."""
    second_emulator_proc.reset()
    return second_emulator_proc


def status_json(workdir: Path, env: dict, run_id: str | None = None) -> dict:
    proc = batchrun(["status", *([run_id] if run_id else []), "--json"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def test_answers_from_one_endpoint_are_never_served_on_another(workdir: Path, emulator, second_emulator) -> None:
    """The quick start's answers (one endpoint) are not reused when the same command talks to another endpoint:
    a new run is made and every request is sent there."""
    items = write_jsonl(workdir / "items.jsonl", prompts(30))
    args = ["submit", str(items), "--model", MODEL, "-o", "results.jsonl"]
    first = batchrun(args, cwd=workdir, env=cli_env(emulator.base_url))
    assert first.returncode == 0, first.stderr
    second = batchrun(args, cwd=workdir, env=cli_env(second_emulator.base_url))
    assert second.returncode == 0, second.stderr
    assert "created run" in second.stderr and "0 item(s) from the response cache" in second.stderr
    assert second_emulator.stats()["requests"] == 30
    runs = status_json(workdir, cli_env(emulator.base_url))["runs"]
    assert len(runs) == 2
    assert {r["endpoint"] for r in runs} == {emulator.base_url, second_emulator.base_url}
    assert [r["answered_by"] for r in runs] == [{"api": 30, "batch": 0, "cache": 0}] * 2
    # a third file with the same requests on the first endpoint is answered from that endpoint's results
    copy = write_jsonl(workdir / "copy.jsonl", prompts(30))
    copy.write_bytes(copy.read_bytes() + b"\n")
    third = batchrun(["submit", str(copy), "--model", MODEL], cwd=workdir, env=cli_env(emulator.base_url))
    assert third.returncode == 0 and "30 item(s) from the response cache" in third.stderr
    copied = db_rows(workdir / "batchrun.db", "SELECT DISTINCT answered_from FROM items WHERE via = 'cache'")
    assert copied == [(runs[0]["run_id"],)]


def test_the_emulate_flag_is_an_endpoint_of_its_own(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(5))
    fast = cli_env(emulator.base_url, BATCHRUN_EMULATOR_ARGS="--latency-ms 0")  # the endpoint is the point, not time
    quick = batchrun(["submit", str(items), "--model", MODEL, "--emulate"], cwd=workdir, env=fast)
    assert quick.returncode == 0, quick.stderr
    real = batchrun(["submit", str(items), "--model", MODEL], cwd=workdir, env=cli_env(emulator.base_url))
    assert real.returncode == 0 and "created run" in real.stderr
    assert emulator.stats()["requests"] == 5
    assert {r["endpoint"] for r in status_json(workdir, cli_env(emulator.base_url))["runs"]} == {
        "emulator",
        emulator.base_url,
    }


def test_an_unfinished_run_is_not_continued_on_another_endpoint(workdir: Path, emulator, second_emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(20))
    emulator.configure(api_key="the-right-key-1234")  # a wrong key: the run stops with every item pending
    args = ["submit", str(items), "--model", MODEL, "--run-id", "r", "-o", "out.jsonl"]
    assert batchrun(args, cwd=workdir, env=cli_env(emulator.base_url)).returncode == 3
    emulator.configure(api_key=None)
    assert not (workdir / "out.jsonl").exists()  # an unfinished run leaves no partial results file

    other = cli_env(second_emulator.base_url)
    for command in (["resume", "r"], args, ["submit", str(items), "--model", MODEL]):
        proc = batchrun(command, cwd=workdir, env=other)
        assert proc.returncode == 2, proc.stderr
        assert emulator.base_url in proc.stderr and "Traceback" not in proc.stderr
    assert second_emulator.stats()["requests"] == 0

    done = batchrun(["resume", "r", "-o", "out.jsonl"], cwd=workdir, env=cli_env(emulator.base_url))
    assert done.returncode == 0
    assert len(read_jsonl(workdir / "out.jsonl")) == 20
    new = batchrun(["submit", str(items), "--model", MODEL, "--new-run"], cwd=workdir, env=other)
    assert new.returncode == 0 and second_emulator.stats()["requests"] == 20


def test_an_unfinished_run_keeps_an_existing_results_file(workdir: Path, emulator) -> None:
    (workdir / "out.jsonl").write_text("yesterday's results\n")
    items = write_jsonl(workdir / "items.jsonl", prompts(5))
    emulator.configure(api_key="the-right-key-1234")
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "-o", "out.jsonl"], cwd=workdir, env=cli_env(emulator.base_url)
    )
    emulator.configure(api_key=None)
    assert proc.returncode == 3
    assert "out.jsonl not written: the run is not finished" in proc.stderr
    assert (workdir / "out.jsonl").read_text() == "yesterday's results\n"


# a budget, a limit, settings that change on resume


def run_cost(workdir: Path, env: dict, run_id: str) -> float:
    return status_json(workdir, env, run_id)["cost_usd"]


def test_a_budget_stops_the_run_under_it_and_a_larger_one_finishes(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(60))
    env = cli_env(emulator.base_url)
    args = ["submit", str(items), "--model", MODEL, "--max-tokens", "200", "--run-id", "r", "--concurrency", "8"]
    capped = batchrun([*args, "--max-cost", "0.005"], cwd=workdir, env=env)
    assert capped.returncode == 3, capped.stderr
    assert "budget reached" in capped.stderr and "--max-cost" in capped.stderr
    spent = run_cost(workdir, env, "r")
    assert 0 < spent <= 0.005
    done = dict(db_rows(workdir / "batchrun.db", "SELECT state, count(*) FROM items GROUP BY state"))
    assert 0 < done["succeeded"] < 60 and done.get("failed", 0) == 0

    finished = batchrun(["resume", "r", "--max-cost", "1", "-o", "out.jsonl"], cwd=workdir, env=env)
    assert finished.returncode == 0, finished.stderr
    results = read_jsonl(workdir / "out.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(f"item-{i}" for i in range(60))
    assert emulator.stats()["requests"] == 60  # every item exactly once, across the two commands
    assert run_cost(workdir, env, "r") <= 1
    print(f"budget test: ${spent:.4f} spent of a $0.005 budget; ${run_cost(workdir, env, 'r'):.4f} for the whole run")


def test_a_budget_needs_a_price_for_every_model(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    env = cli_env(emulator.base_url)
    proc = batchrun(["submit", str(items), "--model", "claude-unpriced-test", "--max-cost", "1"], cwd=workdir, env=env)
    assert proc.returncode == 2 and "no price is known for claude-unpriced-test" in proc.stderr
    assert emulator.stats()["requests"] == 0


def test_limit_processes_that_many_items_then_exits_3(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(30))
    env = cli_env(emulator.base_url)
    canary = batchrun(["submit", str(items), "--model", MODEL, "--run-id", "r", "--limit", "5"], cwd=workdir, env=env)
    assert canary.returncode == 3 and "--limit 5 reached: 25 item(s) left" in canary.stderr
    assert emulator.stats()["requests"] == 5
    assert batchrun(["resume", "r"], cwd=workdir, env=env).returncode == 0
    assert emulator.stats()["requests"] == 30


def test_resume_with_a_lower_concurrency_never_has_more_in_flight(workdir: Path, emulator) -> None:
    emulator.configure(api_key="the-right-key-1234")
    items = write_jsonl(workdir / "items.jsonl", prompts(40))
    env = cli_env(emulator.base_url)
    args = ["submit", str(items), "--model", MODEL, "--run-id", "r", "--concurrency", "32"]
    assert batchrun(args, cwd=workdir, env=env).returncode == 3
    emulator.configure(api_key=None, latency_ms=10)  # long enough for requests sent together to overlap
    emulator.reset()
    resumed = batchrun(["resume", "r", "--concurrency", "4"], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "from now on concurrency = 4" in resumed.stderr
    stats = emulator.stats()
    assert stats["requests"] == 40 and stats["max_in_flight"] <= 4
    assert status_json(workdir, env, "r")["total"] == 40


def test_mode_changes_on_resume_and_request_settings_do_not(workdir: Path, emulator) -> None:
    emulator.configure(api_key="the-right-key-1234")
    items = write_jsonl(workdir / "items.jsonl", prompts(20))
    env = cli_env(emulator.base_url)
    args = ["submit", str(items), "--model", MODEL, "--run-id", "r"]
    assert batchrun(args, cwd=workdir, env=env).returncode == 3
    emulator.configure(api_key=None)
    changed = batchrun([*args, "--max-tokens", "99"], cwd=workdir, env=env)
    assert changed.returncode == 2 and "change the requests" in changed.stderr
    again = batchrun([*args, "--mode", "batch", "--poll-interval", "0.1"], cwd=workdir, env=env)
    assert again.returncode == 0, again.stderr
    assert "continuing run r" in again.stderr
    assert status_json(workdir, env, "r")["answered_by"] == {"api": 0, "batch": 20, "cache": 0}


@pytest.mark.parametrize("flag", ["--rpm", "--itpm", "--otpm", "--max-cost", "--concurrency", "--limit"])
def test_zero_or_negative_settings_are_refused(workdir: Path, flag: str) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    for value in ("0", "-1"):
        proc = batchrun(["submit", str(items), "--model", MODEL, flag, value], cwd=workdir, env=cli_env("http://x"))
        assert proc.returncode == 2 and flag in proc.stderr
    assert not (workdir / "batchrun.db").exists()


# failing fast


def test_an_unknown_model_stops_after_one_request_and_its_items_stay_pending(workdir: Path) -> None:
    async def handler(request, n, params):
        if params["model"] == "claude-made-up":
            error = {"type": "error", "error": {"type": "not_found_error", "message": "model: claude-made-up"}}
            return json_response(error, 404)
        return json_response(message(params))

    items = write_jsonl(workdir / "items.jsonl", prompts(500))
    with FakeAPI(handler) as api:
        proc = batchrun(
            ["submit", str(items), "--model", "claude-made-up", "--run-id", "r"], cwd=workdir, env=cli_env(api.base_url)
        )
        sent = api.requests
    assert proc.returncode == 2, proc.stderr  # bad usage: cron must not resume it forever
    assert "model claude-made-up does not exist (check the model name)" in proc.stderr
    assert sent <= 5
    assert db_rows(workdir / "batchrun.db", "SELECT state, count(*) FROM items GROUP BY state") == [("pending", 500)]
    print(f"unknown model: {sent} request(s) for 500 items")


def test_the_same_invalid_request_error_from_the_start_stops_the_run(workdir: Path) -> None:
    async def handler(request, n, params):
        error = {"type": "error", "error": {"type": "invalid_request_error", "message": "temperature: bad value"}}
        return json_response(error, 400)

    items = write_jsonl(workdir / "items.jsonl", prompts(300))
    with FakeAPI(handler) as api:
        proc = batchrun(
            ["submit", str(items), "--model", MODEL, "--run-id", "r", "--concurrency", "2"],
            cwd=workdir,
            env=cli_env(api.base_url),
        )
        sent = api.requests
    assert proc.returncode == 3, proc.stderr
    assert "all failed with 400 invalid_request_error: temperature: bad value" in proc.stderr
    assert sent < 10
    counts = dict(db_rows(workdir / "batchrun.db", "SELECT state, count(*) FROM items GROUP BY state"))
    assert counts["pending"] >= 290


def test_retry_on_a_locked_run_changes_nothing(workdir: Path) -> None:
    from batchrun.lock import RunLock

    broken = True

    async def handler(request, n, params):
        if broken:
            error = {"type": "error", "error": {"type": "invalid_request_error", "message": f"bad {n}"}}
            return json_response(error, 400)
        return json_response(message(params))

    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    with FakeAPI(handler) as api:
        env = cli_env(api.base_url)
        assert batchrun(["submit", str(items), "--model", MODEL, "--run-id", "r"], cwd=workdir, env=env).returncode == 1
        before = db_dump(workdir / "batchrun.db")
        broken = False
        with RunLock(workdir / "batchrun.db", "r"):
            proc = batchrun(["retry", "r"], cwd=workdir, env=env)
        assert proc.returncode == 75, proc.stderr
        assert db_dump(workdir / "batchrun.db") == before
        assert batchrun(["retry", "r"], cwd=workdir, env=env).returncode == 0


def test_a_lines_own_settings_win_over_the_jobs_in_the_short_forms(workdir: Path) -> None:
    from batchrun.job import Job
    from batchrun.runs import prepare_run
    from batchrun.store import Store

    rows = [
        {"custom_id": 17, "prompt": "hi", "model": "claude-sonnet-4-6", "max_tokens": 99, "system": "Be brief."},
        {"custom_id": "b", "text": "x", "metadata": {"user_id": "u-1"}},
        {"custom_id": "c", "messages": [{"role": "user", "content": "yo"}], "max_tokens": 5},
    ]
    items = write_jsonl(workdir / "items.jsonl", rows)
    job = Job(model="claude-haiku-4-5", max_tokens=10, system="Job system.", template="Say {text}")
    store = Store(workdir / "b.db")
    prepare_run(store, str(items), job, "https://api.anthropic.com", "r")
    params = {cid: orjson.loads(p) for cid, p in db_rows(workdir / "b.db", "SELECT custom_id, params FROM requests")}
    store.close()
    assert set(params) == {"17", "b", "c"}  # a numeric custom_id is read as its decimal string
    assert (params["17"]["model"], params["17"]["max_tokens"], params["17"]["system"]) == (
        "claude-sonnet-4-6",
        99,
        "Be brief.",
    )
    assert params["b"]["metadata"] == {"user_id": "u-1"} and params["b"]["model"] == "claude-haiku-4-5"
    assert params["b"]["system"] == "Job system." and params["b"]["max_tokens"] == 10
    assert params["c"]["max_tokens"] == 5 and params["c"]["system"] == "Job system."


def test_the_dry_run_says_in_one_line_that_a_model_is_unknown_or_the_api_unreachable(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    unknown = batchrun(
        ["submit", str(items), "--model", "claude-made-up", "--dry-run"], cwd=workdir, env=cli_env(emulator.base_url)
    )
    assert unknown.returncode == 2, unknown.stderr
    assert unknown.stderr.count("\n") == 1 and "model claude-made-up does not exist" in unknown.stderr
    dead = batchrun(
        ["submit", str(items), "--model", MODEL, "--dry-run"], cwd=workdir, env=cli_env("http://127.0.0.1:9")
    )
    assert dead.returncode == 3, dead.stderr
    assert dead.stderr.count("\n") == 1 and "could not count tokens" in dead.stderr
    assert not (workdir / "batchrun.db").exists()


def test_batch_mode_keeps_to_the_budget_and_the_limit(workdir: Path, emulator) -> None:
    emulator.configure(batch_seconds=0.05)
    items = write_jsonl(workdir / "items.jsonl", prompts(40))
    env = cli_env(emulator.base_url)
    batch = ["--mode", "batch", "--poll-interval", "0.02"]
    args = ["submit", str(items), "--model", MODEL, "--max-tokens", "100", "--run-id", "r", *batch]
    limited = batchrun([*args, "--limit", "10"], cwd=workdir, env=env)
    assert limited.returncode == 3 and "--limit 10 reached: 30 item(s) left" in limited.stderr
    # each item's worst case at batch price is about $0.0003 and its real cost about $0.0001: every new batch
    # takes what the budget left after the last one was billed, until not one more item's worst case fits
    capped = batchrun(["resume", "r", *batch, "--max-cost", "0.002"], cwd=workdir, env=env)
    assert capped.returncode == 3 and "budget reached" in capped.stderr, capped.stderr
    mid = status_json(workdir, env, "r")
    assert 10 < mid["answered_by"]["batch"] < 40 and mid["cost_usd"] <= 0.002
    done = batchrun(["resume", "r", *batch, "--max-cost", "1", "-o", "out.jsonl"], cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(r["custom_id"] for r in read_jsonl(workdir / "out.jsonl")) == sorted(f"item-{i}" for i in range(40))


def test_a_batch_of_an_unknown_model_leaves_its_items_pending(workdir: Path, emulator) -> None:
    emulator.configure(batch_seconds=0.05)
    items = write_jsonl(workdir / "items.jsonl", prompts(20))
    proc = batchrun(
        ["submit", str(items), "--model", "claude-made-up", "--mode", "batch", "--poll-interval", "0.05"],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 2, proc.stderr
    assert "model claude-made-up does not exist (check the model name)" in proc.stderr
    assert db_rows(workdir / "batchrun.db", "SELECT state, count(*) FROM items GROUP BY state") == [("pending", 20)]
    assert emulator.stats()["batches_created"] == 1
