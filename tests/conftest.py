"""Shared test helpers: the emulator process, and the batchrun command run as users run it.

`batchrun(...)` runs the command in this process with click's CliRunner (a child process costs a second of
`import anthropic` each time); `batchrun(..., subprocess=True)` and `start_batchrun(...)` run it in a real
child process, for what only a process can do: be killed with SIGKILL, receive a signal, hold a lock while
another process runs, or use the BATCHRUN_TEST_CRASH_AFTER_CREATE hook (which SIGKILLs its own process).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sqlite3
import subprocess as sp
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

import anthropic
import orjson
import pytest
from click.testing import CliRunner

import batchrun.api
import batchrun.batches
import batchrun.online
from batchrun.api import tls_context
from batchrun.cli import cli
from tests.emulator_fixture import emulator, emulator_proc  # noqa: F401


def _warm_up() -> None:
    """Load now what a command loads on first use (the modules a run imports lazily, the HTTP stack, the TLS
    context): a forked child (`start_batchrun`) inherits them instead of loading them again, which cost each
    child about 0.3 s before its first request, the certificate authorities alone 75-150 ms."""
    import batchrun.hooks
    import batchrun.progress
    import batchrun.runs
    import batchrun.stored

    for backend in batchrun.api.BACKENDS:  # imports each backend's transport; the clients are never used
        batchrun.api.make_client(backend, base_url="http://127.0.0.1:9", api_key="unused")


_warm_up()
# What is imported by now (the SDK, pydantic's models, batchrun) lives as long as the session: the collector need
# not walk it again at every full collection (they are frequent here: every test makes and drops clients).
gc.freeze()

TEST_KEY = "sk-ant-test-RECOGNISABLE-0123456789"
# Only a child process may run with these set: the hook kills the process that reaches it.
CHILD_ONLY_ENV = ("BATCHRUN_TEST_CRASH_AFTER_CREATE",)
GUARDED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, name)
)
_children: list[Child | sp.Popen] = []


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def prompts(n: int, prefix: str = "item") -> list[dict]:
    return [{"custom_id": f"{prefix}-{i}", "prompt": f"Question number {i}: what is {i} squared?"} for i in range(n)]


def sdk_http_client() -> Any:
    """The SDK's default HTTP client, with the process's one TLS context: a test's own SDK client would otherwise
    load the certificate authorities again (35 ms, twice), for every test."""

    return anthropic.DefaultAsyncHttpxClient(verify=tls_context(None, None))


def cli_env(base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    env.update(ANTHROPIC_API_KEY=TEST_KEY, ANTHROPIC_BASE_URL=base_url, **extra)
    return env


def batchrun(
    args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300, subprocess: bool = False
) -> sp.CompletedProcess:
    """Run `batchrun ARGS` in `cwd` with exactly `env`; returns its exit code, stdout and stderr.

    In this process by default. `subprocess=True` runs it in a child process of its own (a fork of this one,
    which has the SDK imported already), for a command that must die by a signal.
    """
    if not subprocess:
        return run_in_process(args, cwd=cwd, env=env)
    child = start_batchrun(args, cwd=cwd, env=env)
    stdout, stderr = child.communicate(timeout=timeout)
    return sp.CompletedProcess(["batchrun", *args], child.returncode, stdout, stderr)


def start_batchrun(args: list[str], *, cwd: Path, env: dict[str, str], fork: bool = True) -> Child | sp.Popen:
    """`batchrun ARGS` in a child process left running (killed at the end of the test if it still runs).

    The child is a fork of this process, which saves it the second `import anthropic` costs; `fork=False`
    starts `python -m batchrun` instead, the program exactly as a user runs it.
    """
    proc: Child | sp.Popen
    if fork:
        proc = Child(args, cwd=cwd, env=env)
    else:
        proc = sp.Popen(
            [sys.executable, "-m", "batchrun", *args],
            cwd=cwd,
            env=env,
            stdin=sp.DEVNULL,
            stdout=sp.PIPE,
            stderr=sp.PIPE,
            text=True,
        )
    _children.append(proc)
    return proc


class Child:
    """A forked child running the command, with the part of `subprocess.Popen`'s interface the tests use.

    Its output goes to files, not pipes, so a child writing a lot can never block on a full pipe.
    """

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.args = ["batchrun", *map(str, args)]
        self.returncode: int | None = None
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close(), at the end of the test
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns from here
            _child_main(self.args[1:], cwd, env, self._out.fileno(), self._err.fileno())
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise sp.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
            time.sleep(0.005)
        return self.returncode  # type: ignore[return-value]

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self._read(self._out), self._read(self._err)

    @staticmethod
    def _read(f: IO[bytes]) -> str:
        f.seek(0)
        return f.read().decode(errors="replace")

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def close(self) -> None:
        self._out.close()
        self._err.close()


def _child_main(args: list[str], cwd: Path, env: dict[str, str], out: int, err: int) -> NoReturn:
    """In the forked child: the state a fresh `batchrun` process would start with, the command, then exit.

    Never returns: `os._exit`, so nothing of pytest (atexit handlers, the rest of the session) runs here.
    """
    code = 1
    try:
        for sig in (*GUARDED_SIGNALS, signal.SIGALRM):  # pytest-timeout's alarm handler included
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((devnull, 0), (out, 1), (err, 2)):
            os.dup2(fd, target)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        try:
            cli.main(args, prog_name="batchrun")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        _save_coverage()
    finally:
        os._exit(code)


def _save_coverage() -> None:
    """Coverage restarted in the child (patch = fork) saves its data here: os._exit skips its atexit hook."""
    if "coverage" not in sys.modules:
        return
    import coverage

    cov = coverage.Coverage.current()
    if cov is not None:
        with contextlib.suppress(Exception):
            cov.stop()
            cov.save()


def run_in_process(args: list[str], *, cwd: Path, env: dict[str, str]) -> sp.CompletedProcess:
    """The command through CliRunner, with the process state a child would have had, restored afterwards.

    The working directory and the environment (exactly `env`: `.env` loading writes into os.environ) are set
    for the call and put back. A command that leaves a signal handler, a thread or a file descriptor behind
    fails the test: in a real process that would be harmless, here it would leak into every later test.
    """
    forbidden = [name for name in CHILD_ONLY_ENV if name in env]
    if forbidden:
        raise AssertionError(f"{', '.join(forbidden)} kills the process that runs it: pass subprocess=True")
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    before = _process_state()
    os.environ.clear()
    os.environ.update(env)
    try:
        os.chdir(cwd)
        result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="batchrun", catch_exceptions=True)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    stdout, stderr, code = result.stdout, result.stderr, result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # what the interpreter would have printed before exiting 1
        stderr += "".join(traceback.format_exception(result.exception))
    del result  # its traceback holds the command's frames, and with them whatever it left open
    _check_no_leaks(before, args)
    return sp.CompletedProcess(["batchrun", *args], code, stdout, stderr)


def _process_state() -> dict[str, object]:
    return {
        "signal handlers": {sig: signal.getsignal(sig) for sig in GUARDED_SIGNALS},
        "threads": set(threading.enumerate()),
        "file descriptors": _open_fds(),
    }


def _open_fds() -> dict[int, str]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed already
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


def _check_no_leaks(before: dict[str, object], args: list[str]) -> None:
    after = _process_state()
    for generation in (0, 1, 2):  # an object dropped but not yet collected is not a leak (young ones first: cheap)
        if after["file descriptors"] == before["file descriptors"]:
            break
        gc.collect(generation)
        after["file descriptors"] = _open_fds()
    leaks = []
    for sig, handler in before["signal handlers"].items():  # type: ignore[union-attr]
        if signal.getsignal(sig) != handler:
            leaks.append(f"the handler of {signal.Signals(sig).name}")
            signal.signal(sig, handler)
    new_threads = after["threads"] - before["threads"]  # type: ignore[operator]
    leaks += [f"thread {t.name}" for t in new_threads if t.is_alive()]
    old_fds = before["file descriptors"]
    leaks += [f"fd {fd} -> {target}" for fd, target in after["file descriptors"].items() if old_fds.get(fd) != target]  # type: ignore[union-attr]
    if leaks:
        raise AssertionError(f"`batchrun {' '.join(map(str, args))}` run in-process left behind: {'; '.join(leaks)}")


@pytest.fixture(autouse=True)
def _short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries back off from 50 ms instead of 500 ms, and a 429 without Retry-After pauses for 0.1 s instead of 1 s,
    so a test with faults waits a tenth as long; a Retry-After is still honoured in full (the emulator counts a
    retry that comes early)."""
    from batchrun import limiter, retry

    monkeypatch.setattr(retry, "FIRST_WAIT_S", 0.05)
    monkeypatch.setattr(limiter, "PAUSE_WITHOUT_RETRY_AFTER_S", 0.1)


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    """A child process a test started and left running is killed, so a failed test cannot hang the suite."""
    yield
    while _children:
        proc = _children.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        if isinstance(proc, Child):
            proc.close()


def db_rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def items_in_state(db: Path, state: str) -> int:
    """How many items of the store are in `state`; 0 while a starting process has not created the store yet."""
    try:
        return db_rows(db, "SELECT count(*) FROM items WHERE state = ?", (state,))[0][0]
    except sqlite3.OperationalError:  # no file, or no table yet
        return 0


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, step: float = 0.02) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {predicate}")
        time.sleep(step)


def db_dump(db: Path) -> list[str]:
    """Every row of the store, to prove a command left it unchanged."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path
