"""`--emulate`: run a command against the built-in API emulator, started as a child process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

# What --emulate imitates unless BATCHRUN_EMULATOR_ARGS says otherwise: a Tier 4 account, 0.1-0.5 s replies.
DEFAULT_ARGS = "--rpm 4000 --itpm 2000000 --otpm 400000 --latency-ms 300 --latency-jitter-ms 200"
EMULATOR_KEY = "emulator-key-not-secret"


@contextlib.contextmanager
def emulator(extra_args: str | None = None) -> Iterator[str]:
    """Start the emulator on a free local port and yield its base URL; stop it on the way out."""
    args = (extra_args or os.environ.get("BATCHRUN_EMULATOR_ARGS") or DEFAULT_ARGS).split()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening on " not in line:
            raise RuntimeError(f"the emulator did not start (it printed {line!r}); run `python -m batchrun.emulator`")
        yield line.rsplit("listening on ", 1)[1].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
