"""The Message Batches path end to end: the batchrun command, the official SDK, real HTTP,
the emulator's Message Batches endpoints. Batches last `batch_seconds` (a fraction of a second here) and the
poll interval is 0.02 s, so each test takes about a second. Commands run in-process, except those that must
be killed or signalled, which run in a child process (see tests/conftest.py)."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from batchrun.emulator.replies import expected_text
from tests.conftest import (
    TEST_KEY,
    batchrun,
    cli_env,
    db_dump,
    db_rows,
    prompts,
    read_jsonl,
    start_batchrun,
    wait_until,
    write_jsonl,
)
from tests.test_scale import assert_tallies_exact

MODEL = "claude-haiku-4-5"
FAST = ["--poll-interval", "0.02"]


def distinct_prompts(n: int, prefix: str) -> list[dict]:
    """Items whose requests differ from those of `prompts` (identical requests would be answered from the store)."""
    return [{"custom_id": f"{prefix}-{i}", "prompt": f"{prefix} question {i}: what is {i} cubed?"} for i in range(n)]


def submit_batch(items: Path, *extra: str) -> list[str]:
    return ["submit", str(items), "--mode", "batch", "--model", MODEL, "--max-tokens", "64", *FAST, *extra]


def stored_params(db: Path) -> dict[str, dict]:
    return {cid: orjson.loads(p) for cid, p in db_rows(db, "SELECT custom_id, params FROM requests")}


def assert_replies_match_requests(results: list[dict], db: Path) -> None:
    """The emulator's reply text is a function of the request: each result is the reply to its own item."""
    params = stored_params(db)
    for row in results:
        if row["result"]["type"] == "succeeded":
            assert row["result"]["message"]["content"][0]["text"] == expected_text(params[row["custom_id"]])


def status(workdir: Path, env: dict, run_id: str) -> dict:
    proc = batchrun(["status", run_id, "--json"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def batch_ids_in_store(db: Path) -> list[str]:
    try:
        return [i for (i,) in db_rows(db, "SELECT id FROM batches WHERE id IS NOT NULL ORDER BY seq")]
    except sqlite3.OperationalError:  # the store is still being created
        return []


def emulator_batch(emulator, batch_id: str) -> dict:
    """The emulator's own view of a batch (straight HTTP, not through batchrun)."""
    request = urllib.request.Request(f"{emulator.base_url}/v1/messages/batches/{batch_id}")
    request.add_header("x-api-key", "any-key-for-the-emulator")
    request.add_header("anthropic-version", "2023-06-01")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_2500_items_in_three_batches_all_succeed_in_input_order(workdir: Path, emulator) -> None:
    emulator.configure(batch_seconds=0.05)
    items = write_jsonl(workdir / "items.jsonl", prompts(2500))
    env = cli_env(emulator.base_url)
    proc = batchrun(
        submit_batch(items, "--batch-size", "1000", "--run-id", "r", "-o", "out.jsonl"), cwd=workdir, env=env
    )
    assert proc.returncode == 0, proc.stderr
    stats = emulator.stats()
    assert stats["batches_created"] == 3 and stats["batch_requests"] == 2500
    assert stats["requests"] == 0  # nothing went through the online Messages endpoint
    data = status(workdir, env, "r")
    assert data["counts"] == {"pending": 0, "in_flight": 0, "succeeded": 2500, "failed": 0}
    batches = data["batches"]
    assert [b["requests"] for b in batches] == [1000, 1000, 500]
    assert [(b["first_custom_id"], b["last_custom_id"]) for b in batches] == [
        ("item-0", "item-999"),
        ("item-1000", "item-1999"),
        ("item-2000", "item-2499"),
    ]
    for b in batches:
        assert b["id"].startswith("msgbatch_") and b["processing_status"] == "ended"
        assert b["request_counts"]["succeeded"] == b["requests"] and b["results_stored_at"] is not None
        assert b["created_at"] and b["ended_at"] and b["expires_at"] and not b["adopted"]
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(2500)]
    assert all(r["result"]["type"] == "succeeded" for r in results)
    assert all(r["result"]["message"]["usage"]["service_tier"] == "batch" for r in results)
    assert_replies_match_requests(results, workdir / "batchrun.db")
    # billed at the batch price: half of the standard price
    usage = stats["usage"]["batches"][MODEL]
    assert data["tokens"]["input"] == usage["input_tokens"] and data["tokens"]["output"] == usage["output_tokens"]
    expected = (usage["input_tokens"] * 1.0 + usage["output_tokens"] * 5.0) / 1e6 / 2
    assert data["cost_usd"] == pytest.approx(expected, abs=1e-6)
    text = batchrun(["status", "r"], cwd=workdir, env=env).stdout
    assert "run r (batch, succeeded, on " in text and batches[0]["id"] in text


@pytest.mark.parametrize("chunk", [None, 37])
def test_only_retryable_errored_and_expired_items_go_into_one_follow_up(
    workdir: Path, emulator, monkeypatch, chunk
) -> None:
    # every request fails at most once, so one follow-up batch must finish the run
    if chunk is not None:  # results stored in many transactions, judged and written at the same time
        monkeypatch.setattr("batchrun.batches.engine.INGEST_CHUNK", chunk)
    emulator.configure(batch_seconds=0.05, batch_p_errored=0.05, batch_p_expired=0.03, max_faults_per_request=1)
    items = write_jsonl(workdir / "items.jsonl", prompts(1000))
    env = cli_env(emulator.base_url)
    switching = sys.getswitchinterval()
    proc = batchrun(submit_batch(items, "--run-id", "r", "-o", "out.jsonl"), cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert sys.getswitchinterval() == switching  # shortened only while results were stored
    db = workdir / "batchrun.db"
    first, follow_up = status(workdir, env, "r")["batches"]
    counts = first["request_counts"]
    again = counts["errored"] + counts["expired"]
    assert counts["errored"] > 20 and counts["expired"] > 10 and counts["succeeded"] == 1000 - again
    assert follow_up["requests"] == again and follow_up["request_counts"]["succeeded"] == again
    assert emulator.stats()["batches_created"] == 2 and emulator.stats()["batch_requests"] == 1000 + again
    # the follow-up holds exactly the items whose first result was a retryable error or an expiry
    bounced = {
        cid
        for (cid,) in db_rows(
            db,
            "SELECT i.custom_id FROM all_attempts a JOIN items i USING (run_id, line_no) "
            "WHERE a.outcome IN ('api_error', 'overloaded_error', 'rate_limit_error', 'timeout_error', 'expired')",
        )
    }
    in_follow_up = {cid for (cid,) in db_rows(db, "SELECT custom_id FROM items WHERE batch_seq = 2")}
    assert bounced == in_follow_up and len(bounced) == again
    outcomes = dict(db_rows(db, "SELECT outcome, count(*) FROM all_attempts GROUP BY outcome"))
    assert outcomes["succeeded"] == 1000 and outcomes["expired"] == counts["expired"]
    assert db_rows(db, "SELECT max(attempts), min(attempts) FROM items") == [(2, 1)]
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(1000)]
    assert all(r["result"]["type"] == "succeeded" for r in results)
    assert_replies_match_requests(results, db)
    assert_tallies_exact(db)


def test_invalid_params_fail_with_the_api_message_and_are_not_resent(workdir: Path, emulator) -> None:
    emulator.configure(batch_seconds=0.05)
    rows = prompts(30)
    for i in (4, 9, 27):
        rows[i] = {"custom_id": f"item-{i}", "params": {"messages": [{"role": "user", "content": "x"}], "bogus": 1}}
    items = write_jsonl(workdir / "items.jsonl", rows)
    env = cli_env(emulator.base_url)
    proc = batchrun(submit_batch(items, "--run-id", "r", "-o", "out.jsonl"), cwd=workdir, env=env)
    assert proc.returncode == 1, proc.stderr
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(30)]
    failed = {r["custom_id"]: r["result"] for r in results if r["result"]["type"] != "succeeded"}
    assert sorted(failed) == ["item-27", "item-4", "item-9"]
    for result in failed.values():
        assert result["type"] == "errored" and result["error"]["type"] == "error"
        assert result["error"]["error"] == {
            "type": "invalid_request_error",
            "message": "bogus: Extra inputs are not permitted",
        }
        assert result["error"]["request_id"]
    assert_replies_match_requests(results, workdir / "batchrun.db")
    assert emulator.stats()["batches_created"] == 1  # a bad request is not sent again
    data = status(workdir, env, "r")
    assert data["counts"] == {"pending": 0, "in_flight": 0, "succeeded": 27, "failed": 3}
    assert data["failures"][0]["error_type"] == "invalid_request_error" and "bogus" in data["failures"][0]["example"]
    assert batchrun(["doctor"], cwd=workdir, env=env).returncode == 0


def test_no_wait_records_the_batch_ids_and_resume_collects(workdir: Path, emulator) -> None:
    emulator.configure(batch_seconds=30)
    items = write_jsonl(workdir / "items.jsonl", prompts(120))
    env = cli_env(emulator.base_url)
    first = batchrun(submit_batch(items, "--run-id", "r", "--batch-size", "50", "--no-wait"), cwd=workdir, env=env)
    assert first.returncode == 3, first.stderr
    data = status(workdir, env, "r")
    ids = [b["id"] for b in data["batches"]]
    assert len(ids) == 3 and all(i.startswith("msgbatch_") for i in ids)
    assert all(b["processing_status"] == "in_progress" for b in data["batches"])
    assert data["status"] == "batches processing" and data["counts"]["in_flight"] == 120
    assert "--no-wait" in first.stderr and "batchrun resume r" in first.stderr and ids[0] in first.stderr
    emulator.advance_clock(30)
    second = batchrun(["resume", "r", *FAST, "-o", "out.jsonl"], cwd=workdir, env=env)
    assert second.returncode == 0, second.stderr
    assert emulator.stats()["batches_created"] == 3
    assert [b["id"] for b in status(workdir, env, "r")["batches"]] == ids
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(120)]
    assert_replies_match_requests(results, workdir / "batchrun.db")


def test_sigkill_after_create_before_the_id_is_stored_is_reconciled(workdir: Path, emulator) -> None:
    emulator.configure(batch_seconds=0.05)
    items = write_jsonl(workdir / "items.jsonl", prompts(200))
    env = cli_env(emulator.base_url)
    crash = {**env, "BATCHRUN_TEST_CRASH_AFTER_CREATE": "1"}
    crashed = batchrun(submit_batch(items, "--run-id", "r"), cwd=workdir, env=crash, subprocess=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    db = workdir / "batchrun.db"
    # the API has the batch; the store has the plan but not the id
    assert emulator.stats()["batches_created"] == 1
    assert db_rows(db, "SELECT id, processing_status, n_items FROM batches") == [(None, "planned", 200)]
    assert db_rows(db, "SELECT state, count(*) FROM items GROUP BY state") == [("in_flight", 200)]
    resumed = batchrun(["resume", "r", *FAST, "-o", "out.jsonl"], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "adopted" in resumed.stderr
    stats = emulator.stats()
    assert stats["batches_created"] == 1 and stats["batch_requests"] == 200  # nothing created or paid twice
    (batch,) = status(workdir, env, "r")["batches"]
    assert batch["adopted"] and batch["id"].startswith("msgbatch_")
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(200)]
    assert all(r["result"]["type"] == "succeeded" for r in results)
    assert_replies_match_requests(results, db)


def test_reconcile_adopts_only_an_unowned_batch_of_the_same_size(workdir: Path, emulator) -> None:
    """Decoys inside the clock-skew window, both older than the orphan (reconcile prefers the oldest match):
    a batch of the same size owned by another run of this store, and an unowned batch of another size."""
    emulator.configure(batch_seconds=0.05)
    env = cli_env(emulator.base_url)
    owned = write_jsonl(workdir / "owned.jsonl", distinct_prompts(60, "owned"))
    assert batchrun(submit_batch(owned, "--run-id", "o"), cwd=workdir, env=env).returncode == 0
    stranger = write_jsonl(workdir / "stranger.jsonl", distinct_prompts(59, "s"))
    assert batchrun(submit_batch(stranger, "--run-id", "s", "--db", "x.db"), cwd=workdir, env=env).returncode == 0
    items = write_jsonl(workdir / "items.jsonl", prompts(60))
    crash = {**env, "BATCHRUN_TEST_CRASH_AFTER_CREATE": "1"}
    crashed = batchrun(submit_batch(items, "--run-id", "r"), cwd=workdir, env=crash, subprocess=True)
    assert crashed.returncode == -signal.SIGKILL
    assert emulator.stats()["batches_created"] == 3
    resumed = batchrun(["resume", "r", *FAST, "-o", "out.jsonl"], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert emulator.stats()["batches_created"] == 3  # it adopted its own orphan, the only match
    (batch,) = status(workdir, env, "r")["batches"]
    assert batch["adopted"] and batch["request_counts"]["succeeded"] == 60
    assert batch["id"] not in {b["id"] for b in status(workdir, env, "o")["batches"]}
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(60)]


def test_cancel_mid_run_keeps_partial_results_and_resume_finishes(workdir: Path, emulator) -> None:
    # a batch long enough that the cancel always lands while it runs, however loaded the machine
    emulator.configure(batch_seconds=20.0)
    items = write_jsonl(workdir / "items.jsonl", prompts(300))
    env = cli_env(emulator.base_url)
    db = workdir / "batchrun.db"
    running = start_batchrun(submit_batch(items, "--run-id", "r"), cwd=workdir, env=env)
    try:
        wait_until(lambda: len(batch_ids_in_store(db)) == 1)
        emulator.advance_clock(0.5)  # the emulator processes 300 items in 20 s: a few are done by the cancel
        canceled = batchrun(["cancel", "r"], cwd=workdir, env=env)
        _, poller_err = running.communicate(timeout=30)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert canceled.returncode == 3, canceled.stderr
    assert running.returncode == 3, poller_err  # the process polling the run stopped, resumable
    assert "cancel" in poller_err
    data = status(workdir, env, "r")
    (batch,) = data["batches"]
    done = data["counts"]["succeeded"]
    assert 0 < done < 300 and data["counts"]["pending"] == 300 - done and data["counts"]["in_flight"] == 0
    assert batch["request_counts"]["canceled"] == 300 - done and batch["cancel_initiated_at"]
    assert data["status"] == "canceled"
    kept = {cid for (cid,) in db_rows(db, "SELECT custom_id FROM items WHERE state = 'succeeded'")}
    assert kept == {f"item-{i}" for i in range(done)}  # the emulator processes a batch in order
    emulator.configure(batch_seconds=0.05)
    resumed = batchrun(["resume", "r", *FAST, "-o", "out.jsonl"], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    stats = emulator.stats()
    assert stats["batches_created"] == 2 and stats["batch_requests"] == 300 + (300 - done)  # no finished item resent
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(300)]
    assert all(r["result"]["type"] == "succeeded" for r in results)
    assert_replies_match_requests(results, db)


def test_cancel_with_no_process_polling_then_resume(workdir: Path, emulator) -> None:
    # 100 items in 20 s: 0.5 s on, at least one is done, and the cancel lands long before the batch ends
    emulator.configure(batch_seconds=20.0)
    items = write_jsonl(workdir / "items.jsonl", prompts(100))
    env = cli_env(emulator.base_url)
    assert batchrun(submit_batch(items, "--run-id", "r", "--no-wait"), cwd=workdir, env=env).returncode == 3
    emulator.advance_clock(0.5)
    canceled = batchrun(["cancel", "r", "-o", "partial.jsonl"], cwd=workdir, env=env)
    assert canceled.returncode == 3, canceled.stderr
    partial = read_jsonl(workdir / "partial.jsonl")
    counts = status(workdir, env, "r")["counts"]
    assert 0 < len(partial) == counts["succeeded"] < 100 and counts["pending"] == 100 - len(partial)
    assert [r["custom_id"] for r in partial] == [f"item-{i}" for i in range(len(partial))]
    emulator.configure(batch_seconds=0.05)
    assert batchrun(["resume", "r", *FAST], cwd=workdir, env=env).returncode == 0
    assert status(workdir, env, "r")["counts"]["succeeded"] == 100


def test_cancel_refuses_an_online_run(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    env = cli_env(emulator.base_url)
    assert batchrun(["submit", str(items), "--model", MODEL, "--run-id", "r"], cwd=workdir, env=env).returncode == 0
    proc = batchrun(["cancel", "r"], cwd=workdir, env=env)
    assert proc.returncode == 2 and "online run" in proc.stderr


def test_sigterm_stops_polling_and_never_cancels_a_batch(workdir: Path, emulator) -> None:
    emulator.configure(batch_seconds=30.0)
    items = write_jsonl(workdir / "items.jsonl", prompts(80))
    env = cli_env(emulator.base_url)
    db = workdir / "batchrun.db"
    running = start_batchrun(submit_batch(items, "--run-id", "r"), cwd=workdir, env=env)
    try:
        wait_until(lambda: len(batch_ids_in_store(db)) == 1)
        running.send_signal(signal.SIGTERM)
        _, err = running.communicate(timeout=10)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == 3, err
    assert "not canceled" in err and "batchrun resume r" in err
    (batch_id,) = batch_ids_in_store(db)
    seen = emulator_batch(emulator, batch_id)
    assert seen["cancel_initiated_at"] is None and seen["processing_status"] == "in_progress"
    emulator.advance_clock(30)
    resumed = batchrun(["resume", "r", *FAST, "-o", "out.jsonl"], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert emulator.stats()["batches_created"] == 1
    assert len(read_jsonl(workdir / "out.jsonl")) == 80


def test_timeout_stops_waiting_with_exit_3(workdir: Path, emulator) -> None:
    emulator.configure(batch_seconds=30.0)
    items = write_jsonl(workdir / "items.jsonl", prompts(10))
    env = cli_env(emulator.base_url)
    started = time.monotonic()
    proc = batchrun(submit_batch(items, "--run-id", "r", "--timeout", "0.5"), cwd=workdir, env=env)
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - started < 15
    assert "--timeout 0.5s reached" in proc.stderr
    (batch,) = status(workdir, env, "r")["batches"]
    assert batch["processing_status"] == "in_progress" and batch["results_stored_at"] is None


def test_batches_are_cut_by_bytes_in_input_order(workdir: Path, emulator) -> None:
    emulator.configure(batch_seconds=0.05)
    (workdir / "job.toml").write_text(f'mode = "batch"\nmodel = "{MODEL}"\nbatch_max_bytes = 3000\n')
    items = write_jsonl(workdir / "items.jsonl", prompts(60))
    env = cli_env(emulator.base_url)
    proc = batchrun(["submit", str(items), "--job", "job.toml", "--run-id", "r", *FAST], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    batches = status(workdir, env, "r")["batches"]
    assert len(batches) > 2 and emulator.stats()["batches_created"] == len(batches)
    assert all(b["bytes"] <= 3000 for b in batches) and sum(b["requests"] for b in batches) == 60
    # each batch's body is as many bytes as the plan said: built from the stored params, nothing re-encoded
    params = stored_params(workdir / "batchrun.db")
    tokens = dict(db_rows(workdir / "batchrun.db", "SELECT seq, token FROM batches"))
    n = 0
    for b in batches:
        assert b["first_custom_id"] == f"item-{n}"
        sent = [  # the custom_id sent is the plan's token and the item's line number
            {"custom_id": f"{tokens[b['seq']]}-{i + 1}", "params": params[f"item-{i}"]}
            for i in range(n, n + b["requests"])
        ]
        body = orjson.dumps({"requests": sent})
        assert len(body) == b["bytes"]
        n += b["requests"]
        assert b["last_custom_id"] == f"item-{n - 1}"
        if n < 60:  # the next item (a comma and its request) would not have fitted
            following = orjson.dumps({"custom_id": f"{tokens[b['seq']]}-{n + 1}", "params": params[f"item-{n}"]})
            assert b["bytes"] + 1 + len(following) > 3000


def test_a_refused_create_leaves_every_item_pending_and_resume_sends_them(workdir: Path, emulator) -> None:
    emulator.configure(batch_seconds=0.05, api_key="the-right-key-1234")
    items = write_jsonl(workdir / "items.jsonl", prompts(40))
    env = cli_env(emulator.base_url)
    proc = batchrun(submit_batch(items, "--run-id", "r"), cwd=workdir, env=env)
    assert proc.returncode == 3, proc.stderr
    assert "401 authentication_error" in proc.stderr and "batchrun resume r" in proc.stderr
    db = workdir / "batchrun.db"
    assert db_rows(db, "SELECT state, count(*) FROM items GROUP BY state") == [("pending", 40)]
    assert db_rows(db, "SELECT id, processing_status FROM batches") == [(None, "not_created")]
    assert emulator.stats()["batches_created"] == 0
    emulator.configure(api_key=None)
    resumed = batchrun(["resume", "r", *FAST], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert emulator.stats()["batches_created"] == 1
    assert not [line for line in db_dump(db) if TEST_KEY in line]  # the key is never stored


def normalised_lines(path: Path) -> list[bytes]:
    """Result lines with the values that differ by nature (message id, service tier, request id) blanked."""
    lines = []
    for line in path.read_bytes().splitlines():
        line = re.sub(rb'"id":"msg_[A-Za-z0-9_]+"', b'"id":"MSG"', line)
        line = re.sub(rb'"service_tier":"[a-z_]+"', b'"service_tier":"TIER"', line)
        line = re.sub(rb'"request_id":"[A-Za-z0-9_]+"', b'"request_id":"REQ"', line)
        lines.append(line)
    return lines


def test_batch_results_are_byte_for_byte_the_shape_of_online_results(workdir: Path, emulator) -> None:
    emulator.configure(batch_seconds=0.05)
    rows = prompts(25)
    rows[7] = {"custom_id": "item-7", "params": {"messages": [{"role": "user", "content": "x"}], "nope": True}}
    items = write_jsonl(workdir / "items.jsonl", rows)
    env = cli_env(emulator.base_url)
    online = batchrun(
        ["submit", str(items), "--model", MODEL, "--max-tokens", "64", "--run-id", "on", "-o", "online.jsonl"],
        cwd=workdir,
        env=env,
    )
    # its own store: the same requests in one store would be answered from the online run's results
    batch = batchrun(submit_batch(items, "--run-id", "ba", "-o", "batch.jsonl", "--db", "b.db"), cwd=workdir, env=env)
    assert online.returncode == batch.returncode == 1, (online.stderr, batch.stderr)
    on, ba = read_jsonl(workdir / "online.jsonl"), read_jsonl(workdir / "batch.jsonl")
    assert [r["custom_id"] for r in on] == [r["custom_id"] for r in ba] == [f"item-{i}" for i in range(25)]
    assert {r["result"]["message"]["usage"]["service_tier"] for r in on if r["custom_id"] != "item-7"} == {"standard"}
    assert {r["result"]["message"]["usage"]["service_tier"] for r in ba if r["custom_id"] != "item-7"} == {"batch"}
    # the same bytes once the values that differ by nature are blanked: same keys, same order, same formatting
    assert normalised_lines(workdir / "online.jsonl") == normalised_lines(workdir / "batch.jsonl")
    # and `batchrun results` exports the same way
    exported = batchrun(["results", "ba", "--db", "b.db"], cwd=workdir, env=env)
    assert exported.stdout.encode() == (workdir / "batch.jsonl").read_bytes()
