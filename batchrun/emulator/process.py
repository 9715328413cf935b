"""The emulator in a child process of its own, driven over HTTP: what tests, benchmarks and `--emulate` use.

A separate process keeps the emulator off the client's event loop (and, on a 2-core machine, off its core),
so a client that blocks cannot stall the server. Control calls use only urllib.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from batchrun.emulator.config import EmulatorConfig, config_to_argv

READY_PREFIX = "batchrun-emulator listening on "
LIFELINE_ENV = "BATCHRUN_EMULATOR_LIFELINE"  # "FD:PID": the pipe whose end-of-file stops it, and its parent
PDEATHSIG_ENV = "BATCHRUN_EMULATOR_PDEATHSIG"
START_TIMEOUT_S = 20.0


class EmulatorProcess:
    """`python -m batchrun.emulator --port 0` running in a subprocess."""

    def __init__(self, config: EmulatorConfig | None = None, **fields: Any) -> None:
        self._lifeline: int | None = None
        config = dataclasses.replace(config or EmulatorConfig())
        config.update(**fields)
        cmd = [sys.executable, "-m", "batchrun.emulator", "--port", "0", *config_to_argv(config)]
        # The lifeline: the emulator holds the read end and stops when it reads end-of-file, which happens when this
        # process closes the write end or dies, however it dies (SIGKILL included).
        lifeline, self._lifeline = os.pipe()
        env = _child_env()
        env[LIFELINE_ENV] = f"{lifeline}:{os.getpid()}"
        if threading.current_thread() is threading.main_thread():
            # PR_SET_PDEATHSIG fires when the *thread* that started the child ends: only the main thread's is safe
            env[PDEATHSIG_ENV] = "1"
        try:
            # its own session: a Ctrl-C at the terminal reaches the command that started it, which decides (finish
            # the requests in flight, then stop the emulator), not the emulator in the middle of its start-up
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, text=True, env=env, pass_fds=(lifeline,), start_new_session=True
            )
        except BaseException:
            os.close(self._lifeline)
            raise
        finally:
            os.close(lifeline)
        try:
            self.base_url = self._read_base_url()
        except BaseException:  # a Ctrl-C while it starts: it does not outlive the command
            self.stop()
            raise

    def _read_base_url(self) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            ready = selector.select(START_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise RuntimeError(f"emulator did not start (exit code {self.proc.returncode}, first line {line!r})")
        return line[len(READY_PREFIX) :].strip()

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path} -> {exc.code}: {exc.read().decode()}") from None

    def configure(self, **fields: Any) -> dict:
        """Patch the running emulator's EmulatorConfig; returns the full config."""
        return self._call("POST", "/_emulator/config", fields)

    def config(self) -> dict:
        return self._call("GET", "/_emulator/config")

    def reset(self, **config: Any) -> None:
        """Clear stats, rate-limit buckets, prompt cache, fault counters and batches; with `config`, first set
        the whole configuration to the defaults with these fields changed."""
        body = {"config": {**EmulatorConfig().to_dict(), **config}} if config else {}
        self._call("POST", "/_emulator/reset", body)

    def advance_clock(self, seconds: float) -> None:
        """Let `seconds` pass for the emulator's batches at once (reset() puts the clock back)."""
        self._call("POST", "/_emulator/clock", {"advance": seconds})

    def stats(self) -> dict:
        return self._call("GET", "/_emulator/stats")

    def requests(self) -> list[dict]:
        """The Messages request bodies (and batch requests' params) received, oldest first: set request_log first."""
        return self._call("GET", "/_emulator/requests")["requests"]

    def stop(self) -> None:
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def watch_parent() -> None:
    """In the emulator started by EmulatorProcess: stop (SIGTERM to itself, the graceful way) when the process that
    started it dies. Linux: PR_SET_PDEATHSIG; everywhere: end-of-file on the lifeline pipe, read by a thread, and
    the parent pid, in case the parent died before the watch began."""
    import signal

    spec = os.environ.pop(LIFELINE_ENV, None)
    pdeathsig = os.environ.pop(PDEATHSIG_ENV, None)
    if not spec:
        return
    fd_text, _, parent_text = spec.partition(":")
    fd, parent = int(fd_text), int(parent_text or 0)
    if pdeathsig and sys.platform.startswith("linux"):
        _set_pdeathsig(signal.SIGTERM)

    def wait_for_eof() -> None:
        try:
            while os.read(fd, 512):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_for_eof, name="emulator-lifeline", daemon=True).start()
    if parent and os.getppid() != parent:  # it died before the watch began
        os.kill(os.getpid(), signal.SIGTERM)


def _set_pdeathsig(sig: int) -> None:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass  # the lifeline still stops it


def _child_env() -> dict[str, str]:
    """Make `batchrun` importable in the child even when the package is not installed."""
    repo_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
    return env
