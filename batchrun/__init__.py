"""batchrun as a library: the same operations as the command line, which is a thin layer over them.

    import batchrun
    run = batchrun.submit([{"prompt": "Hi"}], model="claude-haiku-4-5", db="runs.db")
    run.exit_code            # 0, 1 (some items failed for good) or 3 (not finished: resumable), like the CLI
    for row in batchrun.results(run.run_id, db="runs.db"): ...

Runs that end with failed or unfinished items return normally (look at `.exit_code`, or call `.check()` to raise
RunFailed / RunNotFinished); bad input, a missing run or a locked run raise a BatchrunError whose `exit_code` is
the CLI's. Each blocking function has an async twin (`asubmit`, `aresume`, `astatus`) that runs it in a thread.

Imports are done inside the functions: `python -m batchrun` imports this module first and must start fast.
"""

from __future__ import annotations

from typing import Any

from batchrun.errors import BatchrunError, RunFailed, RunLocked, RunNotFinished, UsageError

__all__ = [
    "BatchrunError",
    "Results",
    "RunFailed",
    "RunLocked",
    "RunNotFinished",
    "RunResult",
    "UsageError",
    "acompare",
    "aresume",
    "astatus",
    "asubmit",
    "compare",
    "compare_plan",
    "results",
    "resume",
    "status",
    "submit",
]
LAZY = frozenset(__all__) | {"process", "watched", "open_store", "db_location", "client_factory", "load_job_arg"}


def __getattr__(name: str) -> Any:
    """The functions live in batchrun.library, imported on first use: `python -m batchrun` imports this module."""
    if name in LAZY:
        from batchrun import library

        return getattr(library, name)
    raise AttributeError(f"module 'batchrun' has no attribute {name!r}")
