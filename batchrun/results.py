"""Results export: one line per finished item, in input order, in the Message Batches result format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from batchrun.store import Store


def write_results(store: Store, run_id: str, out: IO[bytes], only: str | None = None) -> int:
    """Write `{"custom_id": ..., "result": {...}}` lines; custom_ids are plain ASCII, so no escaping is needed."""
    count = 0
    for custom_id, _state, result in store.iter_results(run_id, only):
        out.write(b'{"custom_id":"%s","result":%s}\n' % (custom_id.encode(), result.encode()))
        count += 1
    return count


def export_results(store: Store, run_id: str, path: str | Path, only: str | None = None) -> int:
    """Write the results file atomically (a reader never sees half a file), readable by its owner only."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            count = write_results(store, run_id, out, only)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count
