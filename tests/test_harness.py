"""The test harness itself: an in-process command leaves nothing behind, a forked child is a real process,
and `--emulate` (which starts an emulator process of its own) stops what it started."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import (
    _check_no_leaks,
    _process_state,
    batchrun,
    cli_env,
    prompts,
    read_jsonl,
    start_batchrun,
    write_jsonl,
)

MODEL = "claude-haiku-4-5"


def test_in_process_call_sees_exactly_its_env_and_cwd_and_leaves_ours_alone(tmp_path: Path, emulator) -> None:
    """`.env` is loaded into os.environ by the command: none of it may reach the next call or the test."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / ".env").write_text("BATCHRUN_DB=from-dotenv.db\nANTHROPIC_API_KEY=from-dotenv\n")
    items = write_jsonl(first / "items.jsonl", prompts(2))
    outer = dict(os.environ)
    cwd = os.getcwd()
    env = cli_env(emulator.base_url)
    del env["ANTHROPIC_API_KEY"]  # so the key comes from first/.env (the emulator accepts any key)
    made = batchrun(["submit", str(items), "--model", MODEL, "-q"], cwd=first, env=env)
    assert made.returncode == 0, made.stderr
    assert (first / "from-dotenv.db").exists() and not (first / "batchrun.db").exists()
    assert dict(os.environ) == outer and os.getcwd() == cwd
    # in another directory, without a .env: neither the key nor the database of the first call is seen
    again = batchrun(["submit", str(items), "--model", MODEL, "-q"], cwd=second, env=env)
    assert again.returncode == 2 and "ANTHROPIC_API_KEY is not set" in again.stderr
    assert not (second / "from-dotenv.db").exists()


def test_outer_batchrun_variables_do_not_reach_the_command(tmp_path: Path, emulator, monkeypatch) -> None:
    monkeypatch.setenv("BATCHRUN_DB", str(tmp_path / "outer.db"))
    items = write_jsonl(tmp_path / "items.jsonl", prompts(1))
    proc = batchrun(["submit", str(items), "--model", MODEL, "-q"], cwd=tmp_path, env=cli_env(emulator.base_url))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "batchrun.db").exists() and not (tmp_path / "outer.db").exists()


def test_a_leaked_descriptor_or_signal_handler_is_reported() -> None:
    before = _process_state()
    leaked = os.open(os.devnull, os.O_RDONLY)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        with pytest.raises(AssertionError, match=r"handler of SIGTERM.*fd \d+ -> /dev/null"):
            _check_no_leaks(before, ["status"])
        assert signal.getsignal(signal.SIGTERM) == previous  # put back by the check
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.close(leaked)


def test_the_crash_hook_is_refused_in_process(tmp_path: Path) -> None:
    env = {**cli_env("http://127.0.0.1:9"), "BATCHRUN_TEST_CRASH_AFTER_CREATE": "1"}
    with pytest.raises(AssertionError, match="subprocess=True"):
        batchrun(["status"], cwd=tmp_path, env=env)


def test_a_forked_child_is_a_process_of_its_own(tmp_path: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    status = batchrun(["status"], cwd=tmp_path, env=env, subprocess=True)
    assert status.returncode == 2 and status.stderr.startswith("batchrun: error: no batchrun database at")
    # and `python -m batchrun` itself, the program exactly as cron starts it
    program = start_batchrun(["status"], cwd=tmp_path, env=env, fork=False)
    _, err = program.communicate(timeout=30)
    assert program.returncode == 2 and err == status.stderr
    emulator.configure(latency_ms=30_000)
    items = write_jsonl(tmp_path / "items.jsonl", prompts(3))
    child = start_batchrun(["submit", str(items), "--model", MODEL, "-q"], cwd=tmp_path, env=env)
    assert child.pid != os.getpid()
    child.kill()
    assert child.wait(timeout=10) == -signal.SIGKILL


def test_emulate_runs_against_its_own_emulator_and_stops_it(workdir: Path) -> None:
    """--emulate needs no key and no URL: it starts the built-in emulator, and stops it (the harness fails the
    test if its process or pipe were left behind)."""
    items = write_jsonl(workdir / "items.jsonl", prompts(5))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    env["BATCHRUN_EMULATOR_ARGS"] = "--latency-ms 1"
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "--emulate", "-q", "-o", "out.jsonl"], cwd=workdir, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "--emulate: requests go to the built-in API emulator" in proc.stderr
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(5)]
    assert all(r["result"]["type"] == "succeeded" for r in results)
    dry = batchrun(["submit", str(items), "--model", MODEL, "--emulate", "--dry-run"], cwd=workdir, env=env)
    assert dry.returncode == 0, dry.stderr
