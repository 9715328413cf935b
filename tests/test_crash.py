"""Crash safety and cron: kills, signals, locks, retry, secrets, a changed input file."""

from __future__ import annotations

import random
import signal
import socket
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from batchrun.emulator.replies import expected_text
from tests.conftest import (
    TEST_KEY,
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


def succeeded(db: Path) -> int:
    return items_in_state(db, "succeeded")


def assert_store_sound(workdir: Path, env: dict) -> None:
    doctor = batchrun(["doctor"], cwd=workdir, env=env)
    assert doctor.returncode == 0, doctor.stdout


@pytest.mark.slow
def test_chaos_ten_sigkills_then_resume_lose_nothing_and_pay_little(workdir: Path, emulator) -> None:
    emulator.configure(latency_ms=30, latency_jitter_ms=25)
    # each kill lands after 5-30 more successes and up to 30 ms more (at most 16 more requests in flight): the ten
    # kills land after about 300 of the 400 items at most, the resume does the rest
    n = 400
    items = write_jsonl(workdir / "items.jsonl", prompts(n))
    env = cli_env(emulator.base_url)
    db = workdir / "batchrun.db"
    rng = random.Random(2026)
    in_flight_at_kills = 0
    args = ["submit", str(items), "--model", MODEL, "--run-id", "chaos", "--concurrency", "16", "-q"]
    for _ in range(10):
        before = succeeded(db)
        proc = start_batchrun(args, cwd=workdir, env=env)
        target = before + rng.randint(5, 30)
        wait_until(lambda t=target, p=proc: succeeded(db) >= t or p.poll() is not None)
        time.sleep(rng.random() * 0.03)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        in_flight_at_kills += db_rows(db, "SELECT count(*) FROM items WHERE state = 'in_flight'")[0][0]
    assert succeeded(db) < n, "the kills should all land before the run ends"
    emulator.configure(latency_ms=0, latency_jitter_ms=0)  # nothing is killed from here on
    final = batchrun(["resume", "chaos", "-o", "out.jsonl"], cwd=workdir, env=env)
    assert final.returncode == 0, final.stderr
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(n)]
    params = {cid: orjson.loads(p) for cid, p in db_rows(db, "SELECT custom_id, params FROM requests")}
    for r in results:
        assert r["result"]["message"]["content"][0]["text"] == expected_text(params[r["custom_id"]])
    answered = emulator.stats()["by_status"]["200"]
    assert n <= answered <= n + in_flight_at_kills
    assert_store_sound(workdir, env)


def test_sigterm_exits_3_within_grace_and_resume_completes(workdir: Path, emulator) -> None:
    emulator.configure(latency_ms=50)
    items = write_jsonl(workdir / "items.jsonl", prompts(80))
    env = cli_env(emulator.base_url)
    db = workdir / "batchrun.db"
    proc = start_batchrun(
        ["submit", str(items), "--model", MODEL, "--run-id", "r", "--concurrency", "8", "--grace", "0.2"],
        cwd=workdir,
        env=env,
    )
    wait_until(lambda: succeeded(db) >= 20)
    emulator.configure(latency_ms=30_000)  # requests now in flight will not finish within the grace period
    time.sleep(0.15)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert time.monotonic() - sent <= 0.2 + 1
    assert "SIGTERM" in err and "resume r" in err
    assert db_rows(db, "SELECT count(*) FROM items WHERE state = 'in_flight'") == [(0,)]
    # the 8 requests cut off at the end of the grace period were sent, maybe paid: they stay on record
    assert db_rows(db, "SELECT count(*) FROM attempts WHERE outcome = 'aborted'") == [(8,)]
    done = succeeded(db)
    emulator.configure(latency_ms=0)
    resumed = batchrun(["resume", "r", "-o", "out.jsonl"], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert len(read_jsonl(workdir / "out.jsonl")) == 80
    assert emulator.stats()["by_status"]["200"] >= 80 - done


def test_second_ctrl_c_stops_at_once_keeping_committed_results(workdir: Path, emulator) -> None:
    emulator.configure(latency_ms=50)
    items = write_jsonl(workdir / "items.jsonl", prompts(300))
    env = cli_env(emulator.base_url)
    db = workdir / "batchrun.db"
    proc = start_batchrun(
        ["submit", str(items), "--model", MODEL, "--run-id", "r", "--grace", "60"], cwd=workdir, env=env
    )
    wait_until(lambda: succeeded(db) >= 20)
    emulator.configure(latency_ms=30_000)
    time.sleep(0.15)
    done = succeeded(db)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert time.monotonic() - sent < 2.5
    assert succeeded(db) >= done
    assert db_rows(db, "SELECT count(*) FROM items WHERE state = 'in_flight'") == [(0,)]


def test_two_processes_on_one_run_the_second_exits_75(workdir: Path, emulator) -> None:
    emulator.configure(latency_ms=100)
    items = write_jsonl(workdir / "items.jsonl", prompts(40))  # 1 s of work at 4 in flight: it is still running
    env = cli_env(emulator.base_url)
    db = workdir / "batchrun.db"
    first = start_batchrun(
        ["submit", str(items), "--model", MODEL, "--run-id", "r", "--concurrency", "4"],
        cwd=workdir,
        env=env,
    )
    wait_until(lambda: succeeded(db) >= 5, timeout=60)
    second = batchrun(["resume", "r"], cwd=workdir, env=env)
    assert second.returncode == 75
    status = orjson.loads(batchrun(["status", "r", "--json"], cwd=workdir, env=env).stdout)
    assert status["status"] == f"running (pid {first.pid} on {socket.gethostname()})"
    assert f"pid {first.pid}" in second.stderr and "try again" in second.stderr
    # a different run in the same database proceeds at once
    other = write_jsonl(workdir / "other.jsonl", prompts(5, prefix="other"))
    assert batchrun(["submit", str(other), "--model", MODEL], cwd=workdir, env=env).returncode == 0
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=30)
    emulator.configure(latency_ms=0)
    assert batchrun(["resume", "r"], cwd=workdir, env=env).returncode == 0
    assert emulator.stats()["by_status"]["200"] <= 45 + 4  # at most the 4 in flight at the SIGTERM twice
    assert_store_sound(workdir, env)


def test_retry_puts_failed_items_back_by_error_type(workdir: Path, emulator) -> None:
    rows = prompts(10)
    rows[4] = {"custom_id": "item-4", "params": {"messages": [{"role": "user", "content": "x"}], "extra": 1}}
    items = write_jsonl(workdir / "items.jsonl", rows)
    env = cli_env(emulator.base_url)
    emulator.configure(p500=1.0, max_faults_per_request=1000)
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "--run-id", "r", "--max-attempts", "2"], cwd=workdir, env=env
    )
    # nothing succeeds while every item burns its attempts: the API looks down, items stay pending
    assert proc.returncode == 3 and "looks down, unreachable or overloaded" in proc.stderr
    states = db_rows(workdir / "batchrun.db", "SELECT state, count(*) FROM items GROUP BY state ORDER BY state")
    assert states == [("failed", 1), ("pending", 9)]  # the 400 is the item's own fault: it fails for good
    emulator.configure(p500=0.0)
    assert batchrun(["resume", "r"], cwd=workdir, env=env).returncode == 1
    status = orjson.loads(batchrun(["status", "r", "--json"], cwd=workdir, env=env).stdout)
    assert status["failures"][0]["error_type"] == "invalid_request_error"
    assert batchrun(["retry", "r", "--error-type", "api_error"], cwd=workdir, env=env).returncode == 1
    none = batchrun(["retry", "r", "--error-type", "api_error"], cwd=workdir, env=env).stderr
    assert "no failed item(s) with error type api_error: nothing to retry" in none
    again = batchrun(["retry", "r"], cwd=workdir, env=env)
    assert again.returncode == 1 and "1 failed item(s) of run r are pending again" in again.stderr
    assert emulator.stats()["by_status"]["400"] == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_api_key_is_never_written_anywhere(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(5))
    bad_params = {"messages": [{"role": "user", "content": "x"}], "bad": 1}
    bad_items = write_jsonl(workdir / "bad.jsonl", [{"custom_id": "b", "params": bad_params}])
    outputs = []
    emulator.configure(api_key="the-real-key-0000")
    outputs.append(
        batchrun(
            ["submit", str(items), "--model", MODEL, "--run-id", "a401"], cwd=workdir, env=cli_env(emulator.base_url)
        )
    )
    emulator.configure(api_key=None)
    outputs.append(
        batchrun(
            ["submit", str(bad_items), "--model", MODEL, "--run-id", "b400", "-o", "r1.jsonl"],
            cwd=workdir,
            env=cli_env(emulator.base_url),
        )
    )
    dead = f"http://127.0.0.1:{free_port()}"
    outputs.append(
        batchrun(
            ["submit", str(items), "--model", MODEL, "--run-id", "conn", "--max-attempts", "2", "-o", "r2.jsonl"],
            cwd=workdir,
            env=cli_env(dead),
        )
    )
    outputs.append(batchrun(["status", "--json"], cwd=workdir, env=cli_env(dead)))
    assert [p.returncode for p in outputs] == [3, 1, 3, 0]
    assert "401 authentication_error" in outputs[0].stderr
    assert "bad: Extra inputs" in (workdir / "r1.jsonl").read_text()
    assert "looks down, unreachable or overloaded" in outputs[2].stderr
    assert not (workdir / "r2.jsonl").exists()  # an unfinished run writes no results file; `results` exports it
    assert batchrun(["results", "conn", "-o", "r2.jsonl"], cwd=workdir, env=cli_env(dead)).returncode == 0
    secret = TEST_KEY.encode()
    for p in outputs:
        assert TEST_KEY not in p.stdout + p.stderr
    for f in workdir.iterdir():
        if f.is_file() and f.name not in ("items.jsonl", "bad.jsonl"):
            assert secret not in f.read_bytes(), f.name
    for name in ("batchrun.db", "r1.jsonl", "r2.jsonl"):
        assert (workdir / name).stat().st_mode & 0o077 == 0, name


def test_changed_input_file_is_refused_while_its_run_is_unfinished(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(50))
    env = cli_env(emulator.base_url)
    emulator.configure(api_key="other-key-xxxxxxxx")
    assert batchrun(["submit", str(items), "--model", MODEL], cwd=workdir, env=env).returncode == 3
    emulator.configure(api_key=None)
    emulator.reset()
    write_jsonl(items, prompts(51))
    changed = batchrun(["submit", str(items), "--model", MODEL], cwd=workdir, env=env)
    assert changed.returncode == 2
    assert "changed since run items-" in changed.stderr and "--new-run" in changed.stderr
    assert emulator.stats()["requests"] == 0
    assert batchrun(["submit", str(items), "--model", MODEL, "--new-run"], cwd=workdir, env=env).returncode == 0
    assert db_rows(workdir / "batchrun.db", "SELECT count(*) FROM runs") == [(2,)]


def test_doctor_finds_inconsistent_rows(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(4))
    env = cli_env(emulator.base_url)
    assert batchrun(["submit", str(items), "--model", MODEL, "--run-id", "r"], cwd=workdir, env=env).returncode == 0
    assert_store_sound(workdir, env)
    conn = sqlite3.connect(workdir / "batchrun.db")
    conn.execute("UPDATE items SET result = NULL WHERE line_no = 2")
    conn.execute("UPDATE items SET state = 'pending' WHERE line_no = 3")
    conn.commit()
    conn.close()
    doctor = batchrun(["doctor"], cwd=workdir, env=env)
    assert doctor.returncode == 1
    assert "1 succeeded items without a result" in doctor.stdout
    assert "1 pending items holding a result" in doctor.stdout
