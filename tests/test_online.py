"""The online path end to end: the batchrun command, the official SDK, real HTTP, the emulator."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from batchrun.emulator.replies import expected_text, request_key
from tests.conftest import (
    batchrun,
    cli_env,
    db_rows,
    items_in_state,
    prompts,
    read_jsonl,
    start_batchrun,
    wait_until,
    write_jsonl,
)

MODEL = "claude-haiku-4-5"


def stored_params(db: Path) -> dict[str, dict]:
    return {cid: orjson.loads(p) for cid, p in db_rows(db, "SELECT custom_id, params FROM requests")}


def assert_results_match_inputs(results: list[dict], db: Path) -> None:
    """Each result is the reply to its own request: the emulator's text is a function of the request."""
    params = stored_params(db)
    for row in results:
        if row["result"]["type"] == "succeeded":
            text = row["result"]["message"]["content"][0]["text"]
            assert text == expected_text(params[row["custom_id"]]), row["custom_id"]


@pytest.mark.slow
def test_chaos_1000_items_all_succeed_and_retry_after_is_honoured(workdir: Path, emulator) -> None:
    emulator.configure(p429=0.10, p529=0.05, p500=0.05, p_drop=0.02, retry_after_s=0.02, latency_ms=5)
    n = 400  # enough for every fault to occur dozens of times (the emulator draws them from the request)
    items = write_jsonl(workdir / "items.jsonl", prompts(n))
    proc = batchrun(
        [
            "submit",
            str(items),
            "--model",
            MODEL,
            "--max-tokens",
            "64",
            "-o",
            "out.jsonl",
            "--concurrency",
            "32",
        ],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 0, proc.stderr
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(n)]
    assert all(r["result"]["type"] == "succeeded" for r in results)
    assert_results_match_inputs(results, workdir / "batchrun.db")
    stats = emulator.stats()
    assert stats["by_status"].get("429", 0) > 30 and stats["by_status"].get("529", 0) > 12
    assert stats["by_status"].get("500", 0) > 12 and stats["dropped"] > 3
    assert stats["early_retries"] == 0, stats.get("early_retry_samples")
    assert stats["by_status"]["200"] == n


def test_permanently_bad_items_fail_alone_with_the_api_message(workdir: Path, emulator) -> None:
    rows = prompts(20)
    for i in (3, 11, 17):
        rows[i] = {
            "custom_id": f"item-{i}",
            "params": {"messages": [{"role": "user", "content": "x"}], "bogus_field": 1},
        }
    items = write_jsonl(workdir / "items.jsonl", rows)
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "-o", "out.jsonl"],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 1, proc.stderr
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(20)]
    failed = {r["custom_id"]: r["result"] for r in results if r["result"]["type"] == "errored"}
    assert sorted(failed) == ["item-11", "item-17", "item-3"]
    for result in failed.values():
        assert result["error"]["type"] == "error"
        assert result["error"]["error"]["type"] == "invalid_request_error"
        assert "bogus_field" in result["error"]["error"]["message"]
    assert_results_match_inputs(results, workdir / "batchrun.db")
    # a 400 is not retried: one request per bad item
    assert emulator.stats()["by_status"]["400"] == 3
    status = batchrun(["status", "--json", results_run_id(workdir)], cwd=workdir, env=cli_env(emulator.base_url))
    data = orjson.loads(status.stdout)
    assert data["counts"] == {"pending": 0, "in_flight": 0, "succeeded": 17, "failed": 3}
    assert data["failures"][0]["items"] == 3 and "bogus_field" in data["failures"][0]["example"]


def results_run_id(workdir: Path) -> str:
    return db_rows(workdir / "batchrun.db", "SELECT id FROM runs")[0][0]


def test_submit_twice_continues_the_same_run(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(10))
    env = cli_env(emulator.base_url)
    first = batchrun(["submit", str(items), "--model", MODEL], cwd=workdir, env=env)
    second = batchrun(["submit", str(items), "--model", MODEL, "-o", "out.jsonl"], cwd=workdir, env=env)
    assert first.returncode == second.returncode == 0, second.stderr
    assert "continuing run" in second.stderr
    assert db_rows(workdir / "batchrun.db", "SELECT count(*) FROM runs") == [(1,)]
    assert emulator.stats()["by_status"]["200"] == 10
    assert len(read_jsonl(workdir / "out.jsonl")) == 10


def test_different_settings_make_a_different_run(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    env = cli_env(emulator.base_url)
    assert batchrun(["submit", str(items), "--model", MODEL], cwd=workdir, env=env).returncode == 0
    assert (
        batchrun(["submit", str(items), "--model", MODEL, "--max-tokens", "70"], cwd=workdir, env=env).returncode == 0
    )
    assert db_rows(workdir / "batchrun.db", "SELECT count(*) FROM runs") == [(2,)]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_never_resends_a_finished_item(workdir: Path, emulator) -> None:
    emulator.configure(latency_ms=40, latency_jitter_ms=20)
    n = 120
    items = write_jsonl(workdir / "items.jsonl", prompts(n))
    env = cli_env(emulator.base_url)
    proc = start_batchrun(
        ["submit", str(items), "--model", MODEL, "--run-id", "r1", "--concurrency", "16"],
        cwd=workdir,
        env=env,
    )
    db = workdir / "batchrun.db"
    wait_until(lambda: items_in_state(db, "succeeded") >= 30 or proc.poll() is not None, timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {cid for (cid,) in db_rows(db, "SELECT custom_id FROM items WHERE state = 'succeeded'")}
    assert 30 <= len(done_before) < n
    in_flight = db_rows(db, "SELECT count(*) FROM items WHERE state = 'in_flight'")[0][0]
    assert in_flight > 0  # the kill really happened mid-run
    params = stored_params(db)
    status = orjson.loads(batchrun(["status", "r1", "--json"], cwd=workdir, env=env).stdout)
    assert status["status"].startswith("interrupted (its process died")
    emulator.reset()
    emulator.configure(latency_ms=1)
    resumed = batchrun(["resume", "r1", "-o", "out.jsonl"], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    received = emulator.stats()["received_by_key"]
    assert not [cid for cid in done_before if request_key(params[cid]) in received]
    assert sum(received.values()) == n - len(done_before)
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(n)]
    assert_results_match_inputs(results, db)


def test_bad_key_stops_the_run_at_once_and_leaves_items_pending(workdir: Path, emulator) -> None:
    emulator.configure(api_key="the-right-key-1234")
    items = write_jsonl(workdir / "items.jsonl", prompts(40))
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "--run-id", "r1"],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 3
    assert "401 authentication_error" in proc.stderr and "resume r1" in proc.stderr
    assert emulator.stats()["requests"] <= 1  # the first request goes alone, and its 401 stops the run
    assert db_rows(workdir / "batchrun.db", "SELECT state, count(*) FROM items GROUP BY state") == [("pending", 40)]
    emulator.configure(api_key=None)
    assert batchrun(["resume", "r1"], cwd=workdir, env=cli_env(emulator.base_url)).returncode == 0


def test_large_max_tokens_are_streamed_transparently(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "--max-tokens", "64000", "-o", "out.jsonl"],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 0, proc.stderr
    results = read_jsonl(workdir / "out.jsonl")
    assert_results_match_inputs(results, workdir / "batchrun.db")
    assert emulator.stats()["streamed"] == 3


def test_results_command_exports_in_input_order_and_filters(workdir: Path, emulator) -> None:
    rows = prompts(6)
    rows[2] = {"custom_id": "item-2", "params": {"messages": [{"role": "user", "content": "x"}], "nope": 1}}
    items = write_jsonl(workdir / "items.jsonl", rows)
    env = cli_env(emulator.base_url)
    assert batchrun(["submit", str(items), "--model", MODEL, "--run-id", "r"], cwd=workdir, env=env).returncode == 1
    out = batchrun(["results", "r"], cwd=workdir, env=env)
    assert [orjson.loads(x)["custom_id"] for x in out.stdout.splitlines()] == [f"item-{i}" for i in range(6)]
    failed = batchrun(["results", "r", "--only", "failed", "-o", "f.jsonl"], cwd=workdir, env=env)
    assert failed.returncode == 0
    assert [r["custom_id"] for r in read_jsonl(workdir / "f.jsonl")] == ["item-2"]
    assert (workdir / "f.jsonl").stat().st_mode & 0o777 == 0o600
    assert (workdir / "batchrun.db").stat().st_mode & 0o777 == 0o600


def test_status_reports_counts_tokens_and_cost(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(5))
    env = cli_env(emulator.base_url)
    assert batchrun(["submit", str(items), "--model", MODEL, "--run-id", "r"], cwd=workdir, env=env).returncode == 0
    data = orjson.loads(batchrun(["status", "r", "--json"], cwd=workdir, env=env).stdout)
    usage = emulator.stats()["usage"]["messages"][MODEL]
    assert data["counts"]["succeeded"] == 5
    assert data["tokens"]["input"] == usage["input_tokens"] and data["tokens"]["output"] == usage["output_tokens"]
    expected = (usage["input_tokens"] * 1.0 + usage["output_tokens"] * 5.0) / 1e6
    assert data["cost_usd"] == pytest.approx(expected, abs=1e-6)
    text = batchrun(["status"], cwd=workdir, env=env).stdout
    assert "run r (online, succeeded, on " in text and "5 succeeded, 0 failed" in text


def test_missing_api_key_is_a_usage_error_not_a_fallback(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    env = cli_env(emulator.base_url)
    del env["ANTHROPIC_API_KEY"]
    proc = batchrun(["submit", str(items), "--model", MODEL], cwd=workdir, env=env)
    assert proc.returncode == 2 and "ANTHROPIC_API_KEY is not set" in proc.stderr and "--emulate" in proc.stderr
    assert emulator.stats()["requests"] == 0
