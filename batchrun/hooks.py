"""`--on-finish CMD` (job key `on_finish`): a command run when a run stops, for any reason, told how it ended.

The command gets the environment batchrun was started with plus the BATCHRUN_* variables below: a variable
batchrun read from `.env` (the API key kept there, for one) is not passed on, unless the user exported it too.
It runs at every end of a run, an unexpected error included; its failure is reported in one line and never
changes the run's exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HOOK_TIMEOUT_S = 300.0
_from_dotenv: dict[str, str] = {}  # what load_env put into os.environ from .env, by this command


def load_env(path: Path) -> None:
    """Read `.env` into os.environ where the environment does not set a variable already (python-dotenv's
    load_dotenv without override), and remember which variables came from it."""
    _from_dotenv.clear()
    if not path.is_file():
        return
    from dotenv import dotenv_values

    for key, value in dotenv_values(path).items():
        if value is not None and key not in os.environ:
            os.environ[key] = value
            _from_dotenv[key] = value


def hook_environment(variables: Mapping[str, str]) -> dict[str, str]:
    """The environment the command runs with: the process's, less what batchrun loaded from .env, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if _from_dotenv.get(k) != v}
    return {**env, **variables}


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
    import subprocess

    env = hook_environment(variables)
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
