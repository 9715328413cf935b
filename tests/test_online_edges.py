"""Edges of the online path: an unknown model, the outage guard, a gateway that does not stream, the key's
redaction, and what the progress lines count."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchrun.api import redact
from tests.conftest import TEST_KEY, batchrun, cli_env, db_rows, prompts, read_jsonl, write_jsonl

MODEL = "claude-haiku-4-5"


# a streaming gateway that answers with a plain JSON body


def test_a_streamed_request_answered_with_plain_json_is_the_apis_fault_and_sent_again(workdir: Path, emulator) -> None:
    emulator.configure(p_stream_as_json=1.0, max_faults_per_request=1)
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "--max-tokens", "64000", "-o", "out.jsonl"],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 0, proc.stderr
    assert "unexpected" not in proc.stderr
    stats = emulator.stats()
    assert stats["injected"]["stream_as_json"] == 3 and stats["streamed"] == 3
    assert [r["result"]["type"] for r in read_jsonl(workdir / "out.jsonl")] == ["succeeded"] * 3
    attempts = db_rows(workdir / "batchrun.db", "SELECT outcome, error_class FROM attempts ORDER BY rowid")
    assert attempts.count(("api_error", "MalformedReply")) == 3


def test_a_gateway_that_never_streams_stops_the_run_with_a_message_not_a_traceback(workdir: Path, emulator) -> None:
    emulator.configure(p_stream_as_json=1.0, max_faults_per_request=100)
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "--max-tokens", "64000", "--max-attempts", "2"],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 3, proc.stderr
    assert "answered with application/json, not an event stream" in proc.stderr
    assert "unexpected" not in proc.stderr and "AssertionError" not in proc.stderr
    assert db_rows(workdir / "batchrun.db", "SELECT state, count(*) FROM items GROUP BY state") == [("pending", 2)]


# the key's redaction


@pytest.mark.parametrize(
    "shown",
    [
        TEST_KEY,
        TEST_KEY.upper(),
        TEST_KEY.lower(),
        TEST_KEY[5:17],  # a 12-character piece
        TEST_KEY[-20:].swapcase(),
        "x-api-key: " + TEST_KEY[:-3] + "...",
    ],
)
def test_the_key_is_redacted_in_any_case_and_by_any_piece_of_12_characters(shown: str) -> None:
    text = f"gateway said: invalid key {shown} (check it)"
    out = redact(text, TEST_KEY)
    assert "[redacted]" in out
    low = out.lower()
    key = TEST_KEY.lower()
    assert not any(key[i : i + 12] in low for i in range(len(key) - 11))
    assert out.startswith("gateway said: invalid key ") and out.endswith("(check it)")


def test_a_short_piece_of_the_key_and_other_text_are_left_alone() -> None:
    text = "model claude-haiku-4-5 said ok; " + TEST_KEY[:11]
    assert redact(text, TEST_KEY) == text


def test_the_key_redacted_from_an_error_the_api_echoes_in_another_case(workdir: Path) -> None:
    from tests.fakeapi import FakeAPI, json_response

    async def handler(request, n, params):
        text = f"invalid x-api-key {TEST_KEY.upper()[:30]}"
        return json_response({"type": "error", "error": {"type": "invalid_request_error", "message": text}}, 400)

    items = write_jsonl(workdir / "items.jsonl", prompts(1))
    with FakeAPI(handler) as api:
        proc = batchrun(
            ["submit", str(items), "--model", MODEL, "-o", "out.jsonl"], cwd=workdir, env=cli_env(api.base_url)
        )
    assert proc.returncode == 1, proc.stderr
    stored = orjson.dumps(db_rows(workdir / "batchrun.db", "SELECT error_message, result FROM items")).decode()
    for text in (stored, (workdir / "out.jsonl").read_text(), proc.stderr):
        assert TEST_KEY.upper()[:30] not in text.upper() and TEST_KEY[8:20].upper() not in text.upper()
    assert "[redacted]" in stored


# an unknown model


def test_an_unknown_model_is_bad_usage_online_and_in_the_dry_run(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(30))
    env = cli_env(emulator.base_url)
    args = ["submit", str(items), "--model", "claude-made-up", "--run-id", "r"]
    dry = batchrun([*args, "--dry-run"], cwd=workdir, env=env)
    assert dry.returncode == 2, dry.stderr
    assert "model claude-made-up does not exist (check the model name)" in dry.stderr
    assert not (workdir / "batchrun.db").exists()
    for _ in range(2):  # what cron does: the same command again, and it says the same, exit 2, nothing burnt
        proc = batchrun([*args, "-o", "out.jsonl"], cwd=workdir, env=env)
        assert proc.returncode == 2, proc.stderr
        assert "model claude-made-up does not exist (check the model name)" in proc.stderr
        assert "unexpected" not in proc.stderr
        assert db_rows(workdir / "batchrun.db", "SELECT state, count(*) FROM items GROUP BY state") == [("pending", 30)]
        assert not (workdir / "out.jsonl").exists()
    assert emulator.stats()["by_status"].get("200", 0) == 0


def test_an_unknown_model_raises_a_usage_error_from_the_python_api(workdir: Path, emulator, monkeypatch) -> None:
    import batchrun as api
    from batchrun.errors import UsageError

    for key, value in cli_env(emulator.base_url).items():
        monkeypatch.setenv(key, value)
    result = api.submit(prompts(3), model="claude-made-up", db=str(workdir / "b.db"))
    assert result.exit_code == 2 and result.pending == 3
    with pytest.raises(UsageError, match="model claude-made-up does not exist"):
        result.check()


# the outage guard, on an injected clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_engine(tmp_path: Path, n: int, handler, clock: FakeClock, max_attempts: int = 2):
    """An online run of `n` items, one worker, against a fake API whose handler moves `clock`: how it stopped and
    the items' states by custom_id."""
    import asyncio

    from batchrun.api import make_client
    from batchrun.inputs import read_items
    from batchrun.job import load_job
    from batchrun.online import Engine
    from batchrun.store import Store
    from tests.fakeapi import FakeAPI

    job = load_job(None).with_overrides(model=MODEL, max_tokens=16, concurrency=1, max_attempts=max_attempts)
    path = write_jsonl(tmp_path / "items.jsonl", prompts(n))
    store = Store(tmp_path / "s.db")
    run = {"id": "r", "input_path": str(path), "input_sha256": "r", "fingerprint": job.fingerprint()}
    store.create_run({**run, "mode": "online", "job": job.to_dict(), "endpoint": "e"}, read_items(path, job))

    async def go(base_url: str):
        client = make_client(base_url=base_url, api_key=TEST_KEY)
        try:
            return await Engine(store, "r", job, client, clock=clock).run()
        finally:
            await client.close()

    with FakeAPI(handler) as api:
        stop = asyncio.run(go(api.base_url))
    states = dict(db_rows(store.path, "SELECT custom_id, state FROM items"))
    return stop, states


def item_number(params: dict) -> int:
    text = params["messages"][0]["content"]
    text = text if isinstance(text, str) else text[0]["text"]
    return int(text.split("Question number ")[1].split(":")[0])


def error(status: int, kind: str):
    from tests.fakeapi import json_response

    return json_response({"type": "error", "error": {"type": kind, "message": kind}}, status)


@pytest.mark.parametrize("step", [0.5, 20.0])  # a fast run, and a slow one (a success every 20 s)
def test_one_item_using_up_its_attempts_in_a_healthy_run_does_not_stop_it(tmp_path: Path, step: float) -> None:
    """Item 2 fails its two attempts with 529 while nothing else is sent (one worker): no success since its attempts
    were sent, but the pool succeeded moments before (in the slow run: within a few of its usual gaps), so the API
    is not down. The item waits for a resume; the run goes on."""
    from batchrun.events import StopReason
    from tests.fakeapi import json_response, message

    clock = FakeClock()

    async def handler(request, n, params):
        clock.now += step
        return error(529, "overloaded_error") if item_number(params) == 2 else json_response(message(params))

    stop, states = run_engine(tmp_path, 8, handler, clock)
    assert stop is not None and stop.reason == StopReason.OVERLOADED, stop
    assert states == {f"item-{i}": "pending" if i == 2 else "succeeded" for i in range(8)}


def test_a_500_storm_after_a_success_keeps_its_item_pending_until_the_pool_has_been_quiet_a_while(
    tmp_path: Path,
) -> None:
    """From the 4th request on, every answer is a 500 and each takes 3 s of the clock: the first item to use up its
    attempts is not burnt (failed) but waits; once nothing has succeeded for 10 s, the run stops as an outage."""
    from batchrun.events import StopReason
    from tests.fakeapi import json_response, message

    clock = FakeClock()

    async def handler(request, n, params):
        if n <= 3:
            clock.now += 0.1
            return json_response(message(params))
        clock.now += 3.0
        return error(500, "api_error")

    stop, states = run_engine(tmp_path, 8, handler, clock)
    assert stop is not None and stop.reason == StopReason.OUTAGE, stop
    assert [states[f"item-{i}"] for i in range(8)] == ["succeeded"] * 3 + ["pending"] * 5
    assert clock.now - 1000.3 >= 10  # it stopped no earlier than 10 s after the last success


def test_no_success_at_all_stops_the_run_at_the_first_item_out_of_attempts(tmp_path: Path) -> None:
    from batchrun.events import StopReason

    clock = FakeClock()

    async def handler(request, n, params):
        clock.now += 0.01
        return error(503, "api_error")

    stop, states = run_engine(tmp_path, 5, handler, clock)
    assert stop is not None and stop.reason == StopReason.OUTAGE
    assert set(states.values()) == {"pending"}


# what the progress lines count


def last_progress(stderr: str) -> str:
    return [line for line in stderr.splitlines() if " done, " in line and " ok, " in line][-1]


def status_of(workdir: Path, env: dict, run_id: str) -> dict:
    proc = batchrun(["status", run_id, "--json"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def assert_progress_agrees_with_status(line: str, status: dict) -> None:
    t = status["tokens"]
    tokens = t["input"] + t["output"] + t["cache_creation"] + t["cache_read"]
    assert tokens > 0
    assert f"; {tokens:,} tokens, cost ${status['cost_usd']:.4f}" in line, (line, status)
    c = status["counts"]
    done = c["succeeded"] + c["failed"]
    assert f": {done:,}/{status['total']:,} done, {c['succeeded']:,} ok, {c['failed']:,} failed," in line, line


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_failed_and_cut_replies_are_billed_and_counted_by_the_progress_lines(workdir: Path, emulator, mode) -> None:
    """Every reply is cut at max_tokens (the job does not accept that): every item fails, every reply was paid for.
    The last progress line and `status` agree on the tokens and the cost to the cent."""
    emulator.configure(p_truncated=1.0)
    items = write_jsonl(workdir / "items.jsonl", prompts(12))
    env = cli_env(emulator.base_url)
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "--run-id", "r", "--mode", mode, "--poll-interval", "0.05"],
        cwd=workdir,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    status = status_of(workdir, env, "r")
    assert status["counts"]["failed"] == 12 and status["cost_usd"] > 0
    assert_progress_agrees_with_status(last_progress(proc.stderr), status)


def test_after_a_resume_progress_and_the_summary_count_the_whole_run(workdir: Path, emulator) -> None:
    """A first command does 5 of 12 items (--limit), a resume the rest: its progress lines start where the run
    stands (ok, failed, tokens and cost of the first command included), and agree with `status` at the end."""
    rows = prompts(12)
    rows[1] = {"custom_id": "bad", "params": {"messages": [{"role": "user", "content": "x"}], "extra": 1}}
    items = write_jsonl(workdir / "items.jsonl", rows)
    env = cli_env(emulator.base_url)
    first = batchrun(["submit", str(items), "--model", MODEL, "--run-id", "r", "--limit", "5"], cwd=workdir, env=env)
    assert first.returncode == 3, first.stderr
    before = status_of(workdir, env, "r")
    assert before["counts"]["succeeded"] == 4 and before["counts"]["failed"] == 1
    again = batchrun(["resume", "r"], cwd=workdir, env=env)
    assert again.returncode == 1, again.stderr
    status = status_of(workdir, env, "r")
    assert status["cost_usd"] > before["cost_usd"] > 0
    assert_progress_agrees_with_status(last_progress(again.stderr), status)
    assert "run r: 11 succeeded, 1 failed, 0 pending (whole run); this command: 7 request(s) sent" in again.stderr
    assert f"cost so far ${status['cost_usd']:.4f} (whole run)" in again.stderr


def test_summary_lines_use_thousands_separators_like_progress(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(1200))
    env = cli_env(emulator.base_url)
    proc = batchrun(["submit", str(items), "--model", MODEL, "--run-id", "r", "--limit", "2"], cwd=workdir, env=env)
    assert proc.returncode == 3, proc.stderr
    assert "2/1,200 done" in last_progress(proc.stderr)
    summary = next(line for line in proc.stderr.splitlines() if "(whole run); this command:" in line)
    assert "1,198 pending" in summary and "1198" not in summary
