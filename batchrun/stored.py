"""A stored run read back: its row and the job it was made with, for every command that reads a run.

Kept apart from batchrun.runs (a run's life: engines, asyncio, the API) so that reading commands start fast.
"""

from __future__ import annotations

from typing import Any

from batchrun.errors import UsageError
from batchrun.job import Job
from batchrun.store import Store


def load_run(store: Store, run_id: str) -> tuple[dict[str, Any], Job]:
    run = store.get_run(run_id)
    if run is None:
        known = store.run_ids()
        hint = f"known runs: {', '.join(known[-5:])}" if known else "this database has no runs yet"
        raise UsageError(f"no run {run_id!r} in {store.path} ({hint}; `batchrun status` lists them)")
    return run, Job.from_dict(run["job"])
