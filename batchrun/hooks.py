"""`--on-finish CMD` (job key `on_finish`): a command run when a run stops, for any reason, told how it ended.

The command gets the process's environment plus the BATCHRUN_* variables below; batchrun never adds the API key
to them. Its failure is reported in one line and never changes the run's exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HOOK_TIMEOUT_S = 300.0


def finish_env(
    *,
    run_id: str,
    exit_code: int,
    counts: Mapping[str, int],
    cost_usd: float,
    results_path: str | None,
    db_path: str | Path,
) -> dict[str, str]:
    """The variables an on-finish command reads (documented in the README)."""
    return {
        "BATCHRUN_RUN_ID": run_id,
        "BATCHRUN_EXIT_CODE": str(exit_code),
        "BATCHRUN_SUCCEEDED": str(counts.get("succeeded", 0)),
        "BATCHRUN_FAILED": str(counts.get("failed", 0)),
        "BATCHRUN_PENDING": str(counts.get("pending", 0) + counts.get("in_flight", 0)),
        "BATCHRUN_COST_USD": f"{cost_usd:.6f}",
        "BATCHRUN_RESULTS": str(Path(results_path).resolve()) if results_path else "",
        "BATCHRUN_DB": str(Path(db_path).resolve()),
    }


def run_on_finish(
    command: str, variables: Mapping[str, str], say: Callable[[str], Any], timeout: float = HOOK_TIMEOUT_S
) -> int | None:
    """Run `command` with a shell; returns its exit code (None if it could not run or timed out).

    Its standard output goes to our standard error, so a results stream on stdout stays clean.
    """
    env = {**os.environ, **variables}
    try:
        out: int | None = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        out = None
    try:
        done = subprocess.run(command, shell=True, env=env, stdout=out, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        say(f"--on-finish command did not finish within {timeout:g}s and was stopped: {command}")
        return None
    except OSError as e:
        say(f"--on-finish command could not run ({e}): {command}")
        return None
    if done.returncode != 0:
        say(f"--on-finish command exited {done.returncode} (the run's exit code is unchanged): {command}")
    return done.returncode
