"""Progress lines off a terminal: timestamped, the rate over the last minute, ETA, 429s/529s, what the run waits
on; on a fake clock, so no test waits."""

from __future__ import annotations

import io
import re

import orjson

from batchrun.events import Event
from batchrun.progress import Progress

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return START + self.now


def make(log_format: str = "text") -> tuple[Progress, io.StringIO, FakeClock]:
    clock = FakeClock()
    out = io.StringIO()
    progress = Progress(stream=out, interval=10, log_format=log_format, clock=clock, wall=clock.wall, tty=False)
    progress.event(Event("run_started", "r1", {"total": 1000, "done": 0, "mode": "online"}))
    return progress, out, clock


def done(progress: Progress, n: int, failed: int = 0) -> None:
    progress.event(Event("items_done", "r1", {"succeeded": n, "failed": failed, "usd": 0.01 * n, "tokens": 100 * n}))


def test_a_line_every_interval_with_timestamp_counts_rate_eta_throttles_tokens_and_cost() -> None:
    progress, out, clock = make()
    for second in range(1, 21):  # 5 items/s for 20 s
        clock.now = second
        done(progress, 5)
        if second == 3:
            progress.event(Event("api_error", "r1", {"status": 429, "error_type": "rate_limit_error"}))
            progress.event(Event("api_error", "r1", {"status": 529, "error_type": "overloaded_error"}))
            progress.event(Event("api_error", "r1", {"status": 500, "error_type": "api_error"}))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at 10 s and 20 s
    assert lines[1] == (
        "2026-01-01T00:00:20Z batchrun: r1: 100/1,000 done, 100 ok, 0 failed, 0 retrying; "
        "5.0 items/s (last min), ETA 3m00s; 429s 1, 529s 1; 10,000 tokens, cost $1.0000"
    )


def test_the_rate_is_over_the_last_minute_not_since_the_start() -> None:
    progress, out, clock = make()
    for second in range(1, 61):  # 10 items/s for a minute, then 1 item/s for two minutes
        clock.now = second
        done(progress, 10)
    for second in range(61, 181):
        clock.now = second
        done(progress, 1)
    assert progress.rate() == 1.0  # since the start it would be 720 / 180 = 4.0
    assert "1.0 items/s (last min), ETA 4m40s" in out.getvalue().splitlines()[-1]


def test_a_line_comes_while_nothing_moves_saying_what_the_run_waits_on() -> None:
    progress, out, clock = make()
    clock.now = 1
    done(progress, 10)
    for second in range(2, 32):
        clock.now = second
        wait = {"in_flight": 0, "retrying": 4, "wait": 3.0, "paused": 37.2 - (second - 2)}
        progress.event(Event("tick", "r1", wait))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("2026-01-01T00:00:10Z batchrun: r1: 10/1,000 done")
    assert "4 retrying" in lines[0] and lines[0].endswith("; waiting 29 s on retry-after")
    assert lines[2].endswith("; waiting 9 s on retry-after")


def test_a_batch_run_says_which_batch_it_waits_on() -> None:
    progress, out, clock = make()
    rows = [("msgbatch_01", "in_progress", {"processing": 3800, "succeeded": 1150, "errored": 50})]
    for second in range(1, 12):
        clock.now = second
        progress.event(Event("batches_waiting", "r1", {"batches": rows, "next_check": 5.0}))
        progress.event(Event("tick", "r1", {}))
    line = out.getvalue().splitlines()[-1]
    assert line.endswith("ETA --; 429s 0, 529s 0; 0 tokens, cost $0.0000; batch msgbatch_01 in_progress 1,200/5,000")


def test_json_log_has_the_same_fields_one_object_per_line() -> None:
    progress, out, clock = make("json")
    for second in range(1, 11):
        clock.now = second
        done(progress, 2, failed=1)
    progress.event(Event("stray_released", "r1", {"items": 2}))
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert records[0] == {
        "ts": "2026-01-01T00:00:10Z",
        "run_id": "r1",
        "event": "progress",
        "done": 30,
        "total": 1000,
        "ok": 20,
        "failed": 10,
        "retrying": 0,
        "rate_per_s": 3.0,
        "eta_s": 323.3,
        "http_429": 0,
        "http_529": 0,
        "tokens": 2000,
        "cost_usd": 0.2,
        "waiting": None,
    }
    assert records[1]["event"] == "stray_released" and "2 item(s) in flight" in records[1]["message"]


def test_timestamps_are_iso_8601_utc() -> None:
    progress, out, clock = make()
    clock.now = 3725.0
    progress.close()
    assert re.match(r"^2026-01-01T01:02:05Z batchrun: r1: 0/1,000 done", out.getvalue())


def test_the_lines_before_progress_starts_are_timestamped_too(workdir, emulator) -> None:
    from tests.conftest import batchrun, cli_env, prompts, write_jsonl

    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    proc = batchrun(["submit", str(items), "--model", "claude-haiku-4-5"], cwd=workdir, env=cli_env(emulator.base_url))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line]
    assert any("batchrun: created run" in line for line in lines)
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ batchrun: ", line) for line in lines), lines
