"""Deadline mode (`--mode auto --deadline`) end to end on the emulator, its batch times compressed 1000x: an API
minute lasts 60 ms, an API hour 3.6 s. The plan's fixed margin is set to 1 s (--deadline-margin) so deadlines of
a few seconds are meaningful; the rest of the plan (20% of the online time, the limits) is as in production."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from batchrun.deadline import (
    Capacity,
    DeadlineError,
    Work,
    make_plan,
    online_seconds,
    parse_deadline,
)
from batchrun.emulator.replies import expected_text, request_key
from tests.conftest import batchrun, cli_env, db_rows, read_jsonl, write_jsonl

MODEL = "claude-haiku-4-5"
SCALE = 1000.0  # API seconds per wall second in the emulator's batches


def items(n: int, prefix: str) -> list[dict]:
    return [{"custom_id": f"{prefix}-{i}", "prompt": f"{prefix} ticket {i}: classify it"} for i in range(n)]


def auto_submit(path: Path, deadline: str, *extra: str) -> list[str]:
    return [
        "submit",
        str(path),
        "--mode",
        "auto",
        "--deadline",
        deadline,
        "--deadline-margin",
        "1",
        "--model",
        MODEL,
        "--max-tokens",
        "64",
        "--poll-interval",
        "0.02",
        "--job",
        "job.toml",
        "--run-id",
        "r",
        *extra,
    ]


@pytest.fixture
def job_file(workdir: Path) -> Path:
    path = workdir / "job.toml"
    path.write_text("poll_max_interval = 0.1\n")
    return path


def status(workdir: Path, env: dict) -> dict:
    proc = batchrun(["status", "r", "--json"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def stored_params(db: Path) -> dict[int, dict]:
    return {line: orjson.loads(p) for line, p in db_rows(db, "SELECT line_no, params FROM requests")}


def batch_succeeded_keys(emulator, db: Path) -> list[str]:
    """The request keys of every item a batch of the run answered, read from the emulator's results files."""
    params = stored_params(db)
    keys = []
    for (batch_id,) in db_rows(db, "SELECT id FROM batches WHERE id IS NOT NULL"):
        request = urllib.request.Request(f"{emulator.base_url}/v1/messages/batches/{batch_id}/results")
        request.add_header("x-api-key", "any-key-for-the-emulator")
        request.add_header("anthropic-version", "2023-06-01")
        with urllib.request.urlopen(request, timeout=10) as response:
            for line in response.read().splitlines():
                row = json.loads(line)
                if row["result"]["type"] == "succeeded":
                    keys.append(request_key(params[int(row["custom_id"].rsplit("-", 1)[1])]))
    return keys


def assert_each_item_answered_once(workdir: Path, emulator, n: int) -> dict:
    db = workdir / "batchrun.db"
    results = read_jsonl(workdir / "out.jsonl")
    assert len(results) == n and len({r["custom_id"] for r in results}) == n
    by_id = {cid: orjson.loads(p) for cid, p in db_rows(db, "SELECT custom_id, params FROM requests")}
    for r in results:
        assert r["result"]["type"] == "succeeded"
        assert r["result"]["message"]["content"][0]["text"] == expected_text(by_id[r["custom_id"]])
    stats = emulator.stats()
    online = stats.get("ok_by_key", {})
    batch = batch_succeeded_keys(emulator, db)
    assert len(batch) == len(set(batch))  # no item answered by two batches
    assert not set(batch) & set(online)  # nor by a batch and online
    assert all(count == 1 for count in online.values())  # nor twice online
    assert len(batch) + sum(online.values()) == n  # every item paid for exactly once
    return {"batch": len(batch), "online": sum(online.values())}


def test_a_batch_that_ends_in_time_is_all_batch_priced(workdir: Path, emulator, job_file: Path) -> None:
    # API times: exponential with a mean of a minute, no tail: all done within a second of wall time
    emulator.configure(batch_fast_s=60, batch_p_tail=0.0, batch_time_scale=SCALE)
    path = write_jsonl(workdir / "items.jsonl", items(30, "fast"))
    env = cli_env(emulator.base_url)
    proc = batchrun(auto_submit(path, "30s", "-o", "out.jsonl"), cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "batches until" in proc.stderr  # the plan is said
    paid = assert_each_item_answered_once(workdir, emulator, 30)
    assert paid == {"batch": 30, "online": 0}
    s = status(workdir, env)
    assert s["answered_by"] == {"api": 0, "batch": 30, "cache": 0}
    assert s["mode"] == "auto" and s["deadline"]["deadline"]
    assert all(r["via"] == "batch" for r in s["by_model"])
    text = batchrun(["status", "r"], cwd=workdir, env=env).stdout
    assert "30 at batch price, 0 online" in text


def test_a_batch_tail_that_would_miss_the_deadline_switches_online_in_time(
    workdir: Path, emulator, job_file: Path
) -> None:
    # a quarter of the requests take 1 to 10 API hours (3.6 to 36 s of wall time): they would miss a deadline
    # 4 s away, while the rest end within a fraction of a second
    emulator.configure(batch_fast_s=60, batch_p_tail=0.25, batch_tail_s=36000, batch_time_scale=SCALE)
    path = write_jsonl(workdir / "items.jsonl", items(40, "tail"))
    env = cli_env(emulator.base_url)
    started = time.time()
    proc = batchrun(auto_submit(path, "4s", "--rpm", "1200", "-o", "out.jsonl"), cwd=workdir, env=env)
    finished = time.time()
    assert proc.returncode == 0, proc.stderr
    assert "switch time reached" in proc.stderr and "online" in proc.stderr
    created = db_rows(workdir / "batchrun.db", "SELECT created_at FROM runs")[0][0]
    assert created >= started - 1 and finished < created + 4  # before the deadline
    paid = assert_each_item_answered_once(workdir, emulator, 40)
    assert paid["batch"] >= 20 and paid["online"] >= 1  # the fast ones at batch price, the tail online
    s = status(workdir, env)
    assert s["answered_by"]["batch"] == paid["batch"] and s["answered_by"]["api"] == paid["online"]
    (batch,) = s["batches"]
    assert batch["cancel_initiated_at"] and batch["request_counts"]["canceled"] == paid["online"]
    assert f"done; {paid['batch']} at batch price, {paid['online']} online (" in proc.stderr
    assert "before the deadline)" in proc.stderr


def test_a_resume_past_the_switch_cancels_the_open_batches_and_goes_online(
    workdir: Path, emulator, job_file: Path
) -> None:
    # half the requests take hours: the batch is still open when the resume comes after the switch time
    emulator.configure(batch_fast_s=60, batch_p_tail=0.5, batch_tail_s=36000, batch_time_scale=SCALE)
    path = write_jsonl(workdir / "items.jsonl", items(12, "late"))
    env = cli_env(emulator.base_url)
    args = auto_submit(path, "4s", "--rpm", "1200", "--deadline-margin", "0.5")
    proc = batchrun([*args, "--no-wait"], cwd=workdir, env=env)
    assert proc.returncode == 3, proc.stderr
    s = status(workdir, env)
    assert s["status"] == "batches processing" and s["deadline"]["phase"] == "batches"
    assert 0 < s["deadline"]["seconds_to_switch"] < s["deadline"]["seconds_to_deadline"] <= 4
    text = batchrun(["status", "r"], cwd=workdir, env=env).stdout
    assert "batches until" in text and "now: batches; so far 0 at batch price, 0 online" in text
    time.sleep(max(0.0, s["deadline"]["seconds_to_switch"]) + 0.1)
    assert status(workdir, env)["deadline"]["phase"] == "switching"
    resumed = batchrun(["resume", "r", "-o", "out.jsonl"], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "switch time reached" in resumed.stderr
    paid = assert_each_item_answered_once(workdir, emulator, 12)
    assert paid["online"] >= 1 and emulator.stats()["batches_created"] == 1


def test_a_deadline_that_cannot_be_met_is_refused_at_submit(workdir: Path, emulator, job_file: Path) -> None:
    path = write_jsonl(workdir / "items.jsonl", items(200, "slow"))
    env = cli_env(emulator.base_url)
    proc = batchrun(auto_submit(path, "60s", "--rpm", "10"), cwd=workdir, env=env)
    assert proc.returncode == 2
    assert "cannot be met: 200 item(s) need about 20.0 min online at RPM 10" in proc.stderr
    assert "--force" in proc.stderr and "Traceback" not in proc.stderr
    stats = emulator.stats()
    assert stats["requests"] == 0 and stats["batches_created"] == 0  # nothing sent
    assert not (workdir / "batchrun.db").exists()  # nothing stored: the refused run is not left pending


def test_forced_past_an_impossible_deadline_goes_online_at_once(workdir: Path, emulator, job_file: Path) -> None:
    path = write_jsonl(workdir / "items.jsonl", items(5, "forced"))
    env = cli_env(emulator.base_url)
    refused = batchrun(auto_submit(path, "1s"), cwd=workdir, env=env)
    assert refused.returncode == 2 and "cannot be met" in refused.stderr
    proc = batchrun(auto_submit(path, "1s", "--force", "-o", "out.jsonl"), cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert emulator.stats()["batches_created"] == 0
    assert assert_each_item_answered_once(workdir, emulator, 5) == {"batch": 0, "online": 5}


def test_mode_auto_without_a_deadline_is_a_usage_error(workdir: Path, emulator) -> None:
    path = write_jsonl(workdir / "items.jsonl", items(2, "x"))
    env = cli_env(emulator.base_url)
    proc = batchrun(["submit", str(path), "--mode", "auto", "--model", MODEL], cwd=workdir, env=env)
    assert proc.returncode == 2 and "has no deadline (pass --deadline" in proc.stderr
    bad = batchrun(["submit", str(path), "--mode", "auto", "--deadline", "tomorrow"], cwd=workdir, env=env)
    assert bad.returncode == 2 and "deadline = 'tomorrow': must be an ISO time" in bad.stderr


def test_the_dry_run_shows_the_plan(workdir: Path, emulator) -> None:
    path = write_jsonl(workdir / "items.jsonl", items(100, "dry"))
    env = cli_env(emulator.base_url)
    args = ["submit", str(path), "--dry-run", "--mode", "auto", "--model", MODEL, "--max-tokens", "50"]
    proc = batchrun([*args, "--deadline", "6h", "--rpm", "100"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "deadline in 6.0 h: batches until" in proc.stdout and "online: 100 item(s) in about 60.0s" in proc.stdout
    assert "expected at batch price: 100%" in proc.stdout and "worst case" in proc.stdout
    tight = batchrun([*args, "--deadline", "90s", "--rpm", "100"], cwd=workdir, env=env)
    assert "cannot be met" in tight.stdout


def test_parse_deadline_takes_durations_iso_times_and_times_of_day() -> None:
    start = 1_700_000_000.0
    assert parse_deadline("90s", start) == start + 90
    assert parse_deadline("1h30m", start) == start + 5400
    assert parse_deadline("2d", start) == start + 172800
    assert parse_deadline("2023-11-14T23:00:00+00:00", start) == 1_700_002_800.0
    six = parse_deadline("06:00", start)
    assert start < six <= start + 86400
    with pytest.raises(DeadlineError):
        parse_deadline("soon", start)


def test_the_switch_leaves_the_online_time_and_the_margin() -> None:
    capacity = Capacity(rpm=600, itpm=1_000_000, otpm=100_000, concurrency=64)
    work = Work(items=1200, input_tokens=120_000, output_tokens=1200 * 100)
    assert online_seconds(work, capacity) == pytest.approx(120.0)  # 1200 requests at 600 a minute
    plan = make_plan(10_000.0, 0.0, work, capacity, margin_s=60)
    assert plan.switch_at == pytest.approx(10_000 - 120 - (0.2 * 120 + 60))
    assert plan.feasible and not make_plan(200.0, 0.0, work, capacity, margin_s=60).feasible
    # the output tokens bind when max_tokens is large
    big = Work(items=100, input_tokens=1000, output_tokens=100 * 4000)
    assert online_seconds(big, capacity) == pytest.approx(60.0 * 400_000 / 100_000)


def test_progress_counts_when_the_api_shows_them_shrink_the_work_left(workdir: Path, emulator, job_file: Path) -> None:
    emulator.configure(
        batch_fast_s=60, batch_p_tail=0.5, batch_tail_s=36000, batch_time_scale=SCALE, batch_progress_counts=True
    )
    path = write_jsonl(workdir / "items.jsonl", items(12, "progress"))
    env = cli_env(emulator.base_url)
    assert batchrun([*auto_submit(path, "1h"), "--no-wait"], cwd=workdir, env=env).returncode == 3
    emulator.advance_clock(0.5)  # the fast half is done (mean 60 ms), the tail is not (36 s and more)
    assert batchrun(["resume", "r", "--no-wait"], cwd=workdir, env=env).returncode == 3
    s = status(workdir, env)
    (batch,) = s["batches"]
    answered = batch["request_counts"]["succeeded"]
    assert 0 < answered < 12 and s["counts"]["in_flight"] == 12
    assert s["deadline"]["items_left"] == 12 - answered
