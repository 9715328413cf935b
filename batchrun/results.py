"""Results export: one line per finished item, in input order, in the Message Batches result format."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO

import orjson

from batchrun.store import Store

TEMPORARY = re.compile(r"\..+\.tmp-([0-9]+)")


def write_results(store: Store, run_id: str, out: IO[bytes], only: str | None = None) -> int:
    """Write `{"custom_id": ..., "result": {...}}` lines, serialised by orjson (the stored result is embedded as
    the JSON it already is)."""
    count = 0
    for custom_id, _state, result in store.iter_results(run_id, only):
        out.write(orjson.dumps({"custom_id": custom_id, "result": orjson.Fragment(result)}) + b"\n")
        count += 1
    return count


def export_results(store: Store, run_id: str, path: str | Path, only: str | None = None) -> int:
    """Write the results file atomically (a reader never sees half a file), readable by its owner only.

    The file is written as `.NAME.tmp-PID` and renamed; temporaries that a killed export left in the directory
    (their process is gone) are removed first.
    """
    path = Path(path)
    remove_stale_temporaries(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            count = write_results(store, run_id, out, only)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove `.NAME.tmp-PID` regular files of this user whose process no longer runs; return what was removed."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = TEMPORARY.fullmatch(entry.name)
        if not match or _alive(int(match.group(1))):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if entry.is_file(follow_symlinks=False) and st.st_uid == os.geteuid():
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
