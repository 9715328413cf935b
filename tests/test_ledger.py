"""What a run was billed: every reply the API billed counts once in `status`, `status --json`, the progress lines and
the report, whatever became of its item (a cut, invalid or malformed reply whose item went back to pending
included), checked against the emulator's own usage counters."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import batchrun, cli_env, prompts, start_batchrun, wait_until, write_jsonl
from tests.test_cost import expected_cost
from tests.test_cost import status as status_of

MODEL = "claude-haiku-4-5"
# Published prices (USD per million tokens), written out independently of batchrun's table; batches at half.
PRICE = {"input": 1.0, "output": 5.0}
KINDS = {"input": "input_tokens", "output": "output_tokens", "cache_creation": "cache_creation_input_tokens"}


def billed(emulator, path: str) -> dict[str, int]:
    """What the emulator billed for `path` ("messages" or "batches"), in status' names."""
    usage = emulator.stats()["usage"][path].get(MODEL) or {}
    out = {name: usage.get(key, 0) for name, key in KINDS.items()}
    out["cache_read"] = usage.get("cache_read_input_tokens", 0)
    return out


def usd(tokens: dict[str, int], batch: bool = False) -> float:
    usage = {
        "input_tokens": tokens["input"],
        "output_tokens": tokens["output"],
        "cache_creation_input_tokens": tokens["cache_creation"],
        "cache_read_input_tokens": tokens["cache_read"],
    }
    return expected_cost(usage, PRICE, batch)


def assert_status_is_the_bill(workdir: Path, env: dict, run_id: str, emulator) -> dict:
    """status --json holds exactly the tokens the emulator billed, online and batch, and their cost."""
    online, batch = billed(emulator, "messages"), billed(emulator, "batches")
    status = status_of(workdir, env, run_id)
    tokens = {k: status["tokens"][k] for k in online}
    assert tokens == {k: online[k] + batch[k] for k in online}, (status["by_model"], online, batch)
    assert status["cost_usd"] == pytest.approx(usd(online) + usd(batch, batch=True), abs=2e-6)
    by_via = {row["via"]: row for row in status["by_model"]}
    for via, bill in (("online", online), ("batch", batch)):
        if any(bill.values()):
            assert {k: by_via[via][k] for k in bill} == bill, (via, status["by_model"])
    doctor = batchrun(["doctor"], cwd=workdir, env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    return status


def assert_progress_agrees(stderr: str, status: dict) -> None:
    """The command's last progress line shows the run's tokens and cost as status does."""
    line = [line for line in stderr.splitlines() if " done, " in line and " ok, " in line][-1]
    t = status["tokens"]
    tokens = t["input"] + t["output"] + t["cache_creation"] + t["cache_read"]
    assert f"; {tokens:,} tokens, cost ${status['cost_usd']:.4f}" in line, (line, status)


def test_cut_replies_retried_online_count_while_their_items_wait_and_after(workdir: Path, emulator) -> None:
    """Every reply is cut: the items fail (billed). `retry --max-tokens` sends them again into an API answering
    500: they go back to pending, and the cut replies must still be in status. A resume ends them: the run's
    status and its last progress line show what the emulator billed, to the cent."""
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(6))
    emulator.configure(p_truncated=1.0)
    cut = batchrun(["submit", str(items), "--model", MODEL, "--max-tokens", "8", "--run-id", "r"], cwd=workdir, env=env)
    assert cut.returncode == 1, cut.stderr
    emulator.configure(p_truncated=0.0, p500=1.0, max_faults_per_request=100)
    down = batchrun(["retry", "r", "--max-tokens", "64", "--max-attempts", "2"], cwd=workdir, env=env)
    assert down.returncode == 3, down.stderr
    waiting = assert_status_is_the_bill(workdir, env, "r", emulator)
    assert waiting["counts"]["pending"] == 6 and waiting["cost_usd"] > 0
    emulator.configure(p500=0.0)
    done = batchrun(["resume", "r"], cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr
    status = assert_status_is_the_bill(workdir, env, "r", emulator)
    assert status["cost_usd"] > waiting["cost_usd"]
    assert_progress_agrees(done.stderr, status)


def test_cut_replies_retried_in_batch_mode_keep_their_online_price(workdir: Path, emulator) -> None:
    """Replies billed online, then the items answered by a batch: each reply is priced on the path that got it."""
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(5))
    emulator.configure(p_truncated=1.0)
    submit = ["submit", str(items), "--model", MODEL, "--max-tokens", "8", "--run-id", "r", "--poll-interval", "0.05"]
    cut = batchrun(submit, cwd=workdir, env=env)
    assert cut.returncode == 1, cut.stderr
    emulator.configure(p_truncated=0.0)
    again = ["retry", "r", "--max-tokens", "64", "--mode", "batch"]
    assert batchrun(again, cwd=workdir, env=env).returncode == 0
    assert_status_is_the_bill(workdir, env, "r", emulator)


def test_batch_results_sent_again_count_while_their_items_wait(workdir: Path, emulator) -> None:
    """A malformed result line (content a string, its usage well formed) is billed and its item sent again in
    a second batch. While that batch processes, status counts the first reply; after, both; never twice."""
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(6))
    emulator.configure(batch_bad_lines="content_string")
    submit = ["submit", str(items), "--model", MODEL, "--run-id", "r", "--mode", "batch", "--no-wait"]
    first = batchrun(submit, cwd=workdir, env=env)
    assert first.returncode == 3, first.stderr
    time.sleep(0.1)  # the first batch ends (TEST_BATCH_SECONDS)
    emulator.configure(batch_bad_lines=None, batch_seconds=3600.0)  # the second batch waits for the clock
    collected = batchrun(["resume", "r", "--no-wait"], cwd=workdir, env=env)
    assert collected.returncode == 3, collected.stderr
    waiting = assert_status_is_the_bill(workdir, env, "r", emulator)
    assert waiting["counts"]["succeeded"] == 5 and waiting["counts"]["in_flight"] == 1
    emulator.advance_clock(3600.0)
    done = batchrun(["resume", "r", "--poll-interval", "0.05"], cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr
    status = assert_status_is_the_bill(workdir, env, "r", emulator)
    assert status["tokens"]["output"] > waiting["tokens"]["output"]
    assert_progress_agrees(done.stderr, status)
    again = batchrun(["resume", "r"], cwd=workdir, env=env)  # nothing left: nothing billed, nothing counted twice
    assert again.returncode == 0, again.stderr
    assert status_of(workdir, env, "r")["tokens"] == status["tokens"]


def test_invalid_replies_of_items_stopped_at_once_are_counted(workdir: Path, emulator) -> None:
    """A schema job whose every reply is invalid: each item is sent again and again (each reply billed). Two
    Ctrl-C stop the run at once, some items between attempts, others with a request in flight: the replies they
    had are on the bill, in status, exactly as the emulator billed them."""
    emulator.configure(p_invalid_json=1.0, max_faults_per_request=100, latency_ms=50)
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    (workdir / "schema.json").write_bytes(orjson.dumps(schema))
    job = workdir / "job.toml"
    job.write_text(f'model = "{MODEL}"\nmax_tokens = 100\nmax_attempts = 20\nschema_file = "schema.json"\n')
    items = write_jsonl(workdir / "items.jsonl", prompts(4))
    env = cli_env(emulator.base_url)
    args = ["submit", str(items), "--job", str(job), "--run-id", "r", "--grace", "60", "--concurrency", "4"]
    proc = start_batchrun(args, cwd=workdir, env=env)
    wait_until(lambda: emulator.stats()["by_status"].get("200", 0) >= 12)
    emulator.configure(latency_ms=30_000)  # the requests sent from now on are in flight when the run stops
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 3
    status = assert_status_is_the_bill(workdir, env, "r", emulator)
    assert status["counts"]["pending"] == 4 and status["tokens"]["output"] > 0


def test_a_database_from_before_the_bill_is_filled_from_its_items(workdir: Path, emulator) -> None:
    """A database as the previous version left it (no `run_billed`; an item whose cut reply was billed but that
    went back to pending has no path): opened again, its bill is made from the items' tokens, each at its path or
    the run's mode, and status shows it all."""
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(4))
    emulator.configure(p_truncated=1.0)
    cut = batchrun(["submit", str(items), "--model", MODEL, "--max-tokens", "8", "--run-id", "r"], cwd=workdir, env=env)
    assert cut.returncode == 1, cut.stderr
    db = workdir / "batchrun.db"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DROP TABLE run_billed")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm015_billed'")
        left = "state = 'pending', via = NULL, result = NULL, error_type = NULL"  # what a pending outcome wrote
        conn.execute(f"UPDATE items SET {left} WHERE line_no = 1")
    conn.close()
    status = assert_status_is_the_bill(workdir, env, "r", emulator)
    assert status["counts"]["pending"] == 1 and status["counts"]["failed"] == 3
