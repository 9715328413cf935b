"""What a newcomer met following the README in order, with the failure cases a user can cause on its commands.

`--emulate` gets the session's emulator, reset and configured as --emulate configures its own (as in
tests/test_readme.py), so each command sees a fresh emulator, as a user does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess as sp
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import batchrun as run_cli
from tests.conftest import wait_until, write_jsonl
from tests.emulator_fixture import stand_in_for_emulate

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def emulated(emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in_for_emulate(emulator, monkeypatch)


def user_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}


def tickets(workdir: Path, n: int = 12) -> Path:
    """The first n of the README's tickets, as JSONL."""
    lines = (ROOT / "jobs/examples/tickets.jsonl").read_bytes().splitlines()[:n]
    return write_jsonl(workdir / "tickets.jsonl", [orjson.loads(line) for line in lines])


def compare(workdir: Path, items: Path, db: str, *models: str) -> dict:
    args = ["compare", str(items), "--job", str(ROOT / "jobs/classify_tickets.toml"), "--models", ",".join(models)]
    done = run_cli([*args, "--reference", OPUS, "--emulate", "--json", "--db", db], cwd=workdir, env=user_env())
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def test_compare_on_the_emulator_is_not_fed_the_answers_of_the_guides_earlier_runs(workdir: Path, emulated) -> None:
    """The README's guide runs the tickets on claude-sonnet-4-6 (step 1) before it compares models: the comparison
    must report what a fresh database reports, not the plain emulated answers the response cache holds."""
    items = tickets(workdir)
    fresh = compare(workdir, items, "fresh.db", SONNET)
    job = str(ROOT / "jobs/classify_tickets.toml")
    done = run_cli(["submit", str(items), "--job", job, "--emulate", "--db", "guide.db"], cwd=workdir, env=user_env())
    assert done.returncode == 0, done.stderr
    after_the_guide = compare(workdir, items, "guide.db", SONNET)
    assert after_the_guide["models"][0]["agreement"] == fresh["models"][0]["agreement"]
    assert after_the_guide["models"][0]["agreement_all"] == fresh["models"][0]["agreement_all"] >= 0.9
    assert after_the_guide["recommended"] == fresh["recommended"] == SONNET


def test_compare_with_a_model_the_api_does_not_know_exits_2_naming_it(workdir: Path, emulated) -> None:
    items = tickets(workdir, 4)
    args = ["compare", str(items), "--job", str(ROOT / "jobs/classify_tickets.toml"), "--models", "claude-nosuch-1"]
    done = run_cli([*args, "--reference", OPUS, "--emulate", "--db", "c.db"], cwd=workdir, env=user_env())
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("batchrun: error:") and "claude-nosuch-1 does not exist" in last, done.stderr
    assert "recommended" not in done.stdout


def emulators_of(pid: int) -> list[int]:
    """The emulator processes `pid` started (once they run the emulator's program, not while they are forks)."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return [c for c in children if b"batchrun.emulator" in Path(f"/proc/{c}/cmdline").read_bytes()]
    except OSError:
        return []


def catches_sigint(pid: int) -> bool:
    """Python has set up its Ctrl-C handler (before, a SIGINT ends the process without a word)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) & (1 << (signal.SIGINT - 1)))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the emulator's process in /proc")
def test_ctrl_c_while_the_emulator_starts_prints_one_line_and_leaves_no_emulator(workdir: Path) -> None:
    """A terminal sends Ctrl-C's SIGINT to the whole foreground process group: the command, and the emulator it
    is starting (which is still importing). One line, exit 3, no traceback, no emulator left behind."""
    items = tickets(workdir, 4)
    args = ["submit", str(items), "--job", str(ROOT / "jobs/classify_tickets.toml"), "--emulate", "--db", "c.db"]
    proc = sp.Popen(
        [sys.executable, "-m", "batchrun", *args],
        cwd=workdir,
        env=user_env(),
        stdin=sp.DEVNULL,
        stdout=sp.PIPE,
        stderr=sp.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell's foreground job
    )
    try:
        wait_until(lambda: emulators_of(proc.pid), timeout=30, step=0.002)
        emulator_pid = emulators_of(proc.pid)[0]
        wait_until(lambda: catches_sigint(emulator_pid), timeout=30, step=0.002)  # it is importing its modules
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].startswith("batchrun: interrupted"), err
    assert "`batchrun resume RUN` continues one" in err  # what to do
    wait_until(lambda: not alive(emulator_pid), timeout=15)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_emulator_stops_quietly_however_many_signals_it_gets(sig: signal.Signals) -> None:
    """`--emulate` stops its emulator with two SIGTERMs (the lifeline's end and terminate()), and a user presses
    Ctrl-C more than once: a signal that lands while the emulator closes must not print a traceback."""
    proc = sp.Popen(
        [sys.executable, "-m", "batchrun.emulator", "--port", "0"], stdout=sp.PIPE, stderr=sp.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("batchrun-emulator listening on")
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:  # signals all along its way out
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            time.sleep(0.0005)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def one_line_error(done: sp.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchrun: error: "), done.stderr
    return lines[0]


@pytest.fixture
def a_run(workdir: Path, emulated) -> Path:
    """A finished run `t` of 3 tickets in ./r.db."""
    args = ["submit", str(tickets(workdir, 3)), "--job", str(ROOT / "jobs/classify_tickets.toml"), "--run-id", "t"]
    done = run_cli([*args, "--emulate", "--db", "r.db"], cwd=workdir, env=user_env())
    assert done.returncode == 0, done.stderr
    return workdir / "r.db"


def test_report_never_writes_over_the_database_or_the_input_nor_into_a_missing_directory(
    workdir: Path, a_run: Path
) -> None:
    before = {p: p.read_bytes() for p in (a_run, workdir / "tickets.jsonl")}
    for output, says in [
        ("r.db", "-o r.db is the database"),
        ("tickets.jsonl", "-o tickets.jsonl is the input file"),
        ("missing/r.html", "-o missing/r.html: directory missing does not exist"),
    ]:
        done = run_cli(["report", "t", "--db", "r.db", "-o", output], cwd=workdir, env=user_env())
        assert done.returncode == 2, done.stderr
        assert says in one_line_error(done)
    assert {p: p.read_bytes() for p in before} == before
    assert run_cli(["status", "t", "--db", "r.db"], cwd=workdir, env=user_env()).returncode == 0


def test_results_are_not_written_into_a_spreadsheet_file(workdir: Path, a_run: Path) -> None:
    """`-o out.xlsx` used to get JSONL lines under a name a spreadsheet then fails to open."""
    done = run_cli(["results", "t", "--db", "r.db", "-o", "out.xlsx"], cwd=workdir, env=user_env())
    assert done.returncode == 2
    assert "does not write .xlsx files (give a .csv file" in one_line_error(done)
    assert not (workdir / "out.xlsx").exists()
    args = ["submit", "tickets.jsonl", "--job", str(ROOT / "jobs/classify_tickets.toml"), "--new-run", "--emulate"]
    done = run_cli([*args, "--db", "r.db", "-o", "out.ods"], cwd=workdir, env=user_env())
    assert done.returncode == 2 and "does not write .ods files" in done.stderr, done.stderr
    assert "\n1 run(s);" in run_cli(["runs", "--db", "r.db"], cwd=workdir, env=user_env()).stdout  # no new run


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["submit", "items.jsonl", "--mode", "fast"], "'fast' is not one of 'online', 'batch', 'auto'"),
        (["submit", "items.jsonl", "--concurrency", "-1"], "--concurrency"),
        (["results", "r", "--only", "bogus"], "'bogus' is not one of 'succeeded', 'failed'"),
        (["prune"], "Missing option '--older-than'"),
        (["sumbit", "items.jsonl"], "No such command 'sumbit'"),
    ],
)
def test_a_wrong_flag_value_is_one_line_with_exit_2(workdir: Path, args: list[str], says: str) -> None:
    """click's own usage errors were four lines (Usage:, Try ..., a blank line, Error: ...): now one, as every
    other error, naming the option and where the options are listed."""
    done = run_cli(args, cwd=workdir, env=user_env())
    assert done.returncode == 2
    line = one_line_error(done)
    assert says in line and "--help` lists the options" in line


def test_a_missing_file_or_run_is_said_in_one_line_before_an_emulator_starts_or_the_key_is_asked(
    workdir: Path, a_run: Path
) -> None:
    job = str(ROOT / "jobs/classify_tickets.toml")
    for args, says in [
        (["submit", "missing.jsonl", "--job", job, "--emulate"], "missing.jsonl: no such file (check the path)"),
        (["submit", "missing.jsonl", "--job", job], "missing.jsonl: no such file (check the path)"),
        (["resume", "nosuch", "--emulate"], "no run 'nosuch'"),
        (["retry", "nosuch"], "no run 'nosuch'"),
        (["cancel", "nosuch"], "no run 'nosuch'"),  # not "ANTHROPIC_API_KEY is not set"
    ]:
        done = run_cli([*args, "--db", "r.db"], cwd=workdir, env=user_env())
        assert done.returncode == 2, done.stderr
        assert says in one_line_error(done)


def test_emulator_flags_it_cannot_take_are_one_line(workdir: Path) -> None:
    """argparse printed its whole usage screen (about 20 lines, as `python -m batchrun.emulator`)."""
    job = str(ROOT / "jobs/classify_tickets.toml")
    env = {**user_env(), "BATCHRUN_EMULATOR_ARGS": "--rpm abc"}
    args = ["submit", str(tickets(workdir, 2)), "--job", job, "--emulate", "--db", "e.db"]
    done = run_cli(args, cwd=workdir, env=env)
    assert done.returncode == 2
    assert one_line_error(done).startswith("batchrun: error: BATCHRUN_EMULATOR_ARGS: argument --rpm: invalid int")
    assert not (workdir / "e.db").exists()
    done = run_cli(["emulator", "--p429", "2"], cwd=workdir, env=user_env())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "batchrun emulator: error: p429: must be between 0 and 1, got 2.0 (`batchrun emulator --help` lists the flags)"
    ]


def test_a_deadline_without_mode_auto_is_refused_not_ignored(workdir: Path, emulated) -> None:
    """`--deadline 6h` alone made a plain online run (full price, no deadline): the deadline was stored and unused."""
    job = str(ROOT / "jobs/classify_tickets.toml")
    args = ["submit", str(tickets(workdir, 2)), "--job", job, "--emulate", "--deadline", "6h", "--db", "d.db"]
    done = run_cli(args, cwd=workdir, env=user_env())
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]  # after the line saying where --emulate sends requests
    assert last.startswith("batchrun: error: a deadline (6h) is for mode auto, and this run is in mode online (add")
    assert not (workdir / "d.db").exists()
    auto = [*args, "--mode", "auto", "-q", "--poll-interval", "0.02"]
    assert run_cli(auto, cwd=workdir, env=user_env()).returncode == 0


def test_a_retry_with_nothing_to_retry_says_so(workdir: Path, a_run: Path) -> None:
    """The README's `retry --error-type max_tokens` on the guide's run said "0 failed item(s) ... are pending again"."""
    args = ["retry", "t", "--error-type", "max_tokens", "--max-tokens", "512", "--emulate", "--db", "r.db"]
    done = run_cli(args, cwd=workdir, env=user_env())
    assert done.returncode == 0, done.stderr
    assert "run t has no failed item(s) with error type max_tokens: nothing to retry" in done.stderr
    assert "0 failed item(s)" not in done.stderr


def test_a_comparison_run_on_the_emulator_is_not_continued_by_a_plain_emulator(workdir: Path, emulated) -> None:
    """compare's emulated runs are their own endpoint (F1): resuming one with a plain --emulate says how to reach it."""
    items = tickets(workdir, 3)
    compare(workdir, items, "c.db", HAIKU)
    runs = orjson.loads(run_cli(["runs", "--json", "--db", "c.db"], cwd=workdir, env=user_env()).stdout)
    leg = next(r for r in runs["runs"] if r["endpoint"].startswith("emulator (model divergence "))
    done = run_cli(["resume", leg["run_id"], "--emulate", "--db", "c.db"], cwd=workdir, env=user_env())
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]  # after the line saying where --emulate sends requests
    assert "made on the built-in emulator with model divergence" in line and "batchrun compare ... --emulate" in line
