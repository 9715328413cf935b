"""Housekeeping for a database that gets a run every night: list runs, prune old ones, delete one, reclaim space.

A run is never removed while a process holds its lock, nor while it has open batches (their results would be
paid for and lost); `delete --force` cancels those batches first. Answers the response cache reuses were copied
into the runs that reused them, so removing the run they came from loses nothing that is kept.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from batchrun.errors import RunLocked, UsageError
from batchrun.lock import RunLock, lock_holder
from batchrun.pricing import total_cost
from batchrun.store import (
    Store,
    database_bytes,
    delete_run,
    free_pages,
    open_batch_count,
    reclaim_space,
    run_summaries,
    strip_run,
    vacuums_incrementally,
)

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
AGE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw])")


@dataclass(slots=True)
class Removal:
    """What prune or delete did: the runs removed (or stripped), those left alone and why, the space won back."""

    removed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    reclaim: str | None = None
    bytes_before: int = 0
    bytes_after: int = 0


def parse_age(text: str) -> float:
    """`30d`, `12h`, `2w`, `90m`, `45s` as seconds."""
    match = AGE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"--older-than {text!r}: give a number and a unit, e.g. 30d, 12h, 2w (units: s m h d w)")
    return float(match.group(1)) * UNITS[match.group(2)]


def list_runs(store: Store) -> list[dict[str, Any]]:
    """Every run: id, created, input, mode, endpoint, status, counts, cost and its size in the database."""
    listed = []
    for row in run_summaries(store):
        job = row["job"]
        usd, unpriced = total_cost(store.usage(row["id"]), job.get("prices") or {}, job.get("cache_ttl") or "5m")
        listed.append(
            {
                "run_id": row["id"],
                "created": _utc(row["created_at"]),
                "last_activity": _utc(row["updated_at"]),
                "input_path": row["input_path"],
                "mode": row["mode"],
                "endpoint": row["endpoint"],
                "status": live_status(store, row["id"], row["status"], row.get("stop")),
                "total": row["total"],
                "counts": row["counts"],
                "cost_usd": None if unpriced else round(usd, 6),
                "unpriced_models": unpriced,
                "bytes": row["bytes"],
                "open_batches": row["open_batches"],
                "pruned": _utc(row["pruned_at"]) if row["pruned_at"] else None,
            }
        )
    return listed


def live_status(store: Store, run_id: str, recorded: str, stop: str | None = None) -> str:
    """What the run's lock says: "running" only while a process holds it; one that died left it interrupted. A run
    that stopped says why, and what to do."""
    holder = lock_holder(store.path, run_id)
    if holder:
        return f"running ({holder})"
    from batchrun.stops import run_status_text

    return "interrupted (its process died)" if recorded == "running" else run_status_text(run_id, recorded, stop)


def format_runs(runs: list[dict[str, Any]], db_bytes: int) -> str:
    if not runs:
        return "no runs yet (`batchrun submit ITEMS.jsonl` starts one)"
    lines = []
    for r in runs:
        c = r["counts"]
        cost = "cost unknown" if r["cost_usd"] is None else f"${r['cost_usd']:.4f}"
        lines.append(
            f"{r['run_id']}  {r['created']}  {r['mode']}  {r['status']}  "
            f"{c['succeeded']}/{r['total']} succeeded, {c['failed']} failed, {c['pending'] + c['in_flight']} pending"
            f"  {cost}  {_size(r['bytes'])}  {r['input_path']}  ({r['endpoint'] or 'unrecorded endpoint'})"
            + ("  [pruned: results kept]" if r["pruned"] else "")
        )
    lines.append(f"{len(runs)} run(s); the database takes {_size(db_bytes)} on disk")
    return "\n".join(lines)


def prune(store: Store, older_than: float, keep_results: bool = False, now: float | None = None) -> Removal:
    """Remove the runs whose last activity is older than `older_than` seconds (with `keep_results`: keep their
    results and drop only their requests and attempts), then reclaim the space."""
    cutoff = (time.time() if now is None else now) - older_than
    done = Removal(bytes_before=database_bytes(store))
    for row in run_summaries(store):
        if max(row["created_at"], row["updated_at"]) >= cutoff or (keep_results and row["pruned_at"]):
            continue
        reason = _remove(store, row["id"], keep_results)
        if reason:
            done.skipped[row["id"]] = reason
        else:
            done.removed.append(row["id"])
    return _reclaim(store, done)


def delete(store: Store, run_id: str, force: bool = False, cancel: Any = None) -> Removal:
    """Remove one run. Open batches refuse it, unless `force`: then `cancel(run_id)` cancels them first (what
    they finished is stored, then removed with the run). A run another process holds is never removed."""
    if store.get_run(run_id) is None:
        raise UsageError(f"no run {run_id!r} in {store.path} (`batchrun runs` lists them)")
    done = Removal(bytes_before=database_bytes(store))
    reason = _remove(store, run_id, False, cancel if force else None)
    if reason:
        hint = "" if force or "batch" not in reason else " (`--force` cancels them first, then deletes)"
        raise UsageError(f"run {run_id} was not deleted: {reason}{hint}")
    done.removed.append(run_id)
    return _reclaim(store, done)


def _remove(store: Store, run_id: str, keep_results: bool, cancel: Any = None) -> str | None:
    """Remove (or strip) the run under its lock; returns why it was left alone, or None."""
    try:
        if cancel is not None and open_batch_count(store, run_id):
            cancel(run_id)  # takes the run's lock itself while it collects what the batches finished
        with RunLock(store.path, run_id):
            if open_batch_count(store, run_id):
                if cancel is None:
                    return f"it has {open_batch_count(store, run_id)} open batch(es)"
                return "its batches could not all be canceled (`batchrun cancel` it, then delete it)"
            if keep_results:
                strip_run(store, run_id)
            else:
                delete_run(store, run_id)
    except RunLocked:
        return "another process is running it"
    return None


def _reclaim(store: Store, done: Removal) -> Removal:
    """After removals; once on a database made before incremental vacuum (an upgraded one holds the space its
    requests took before they were stored once), which that first VACUUM switches to incremental; and whenever
    free pages are left (a prune of a version whose incremental vacuum freed nothing)."""
    if done.removed or not vacuums_incrementally(store) or free_pages(store):
        done.reclaim = reclaim_space(store)
    done.bytes_after = database_bytes(store)
    return done


def format_removal(done: Removal, verb: str) -> list[str]:
    lines = [f"{verb} run {run_id}" for run_id in done.removed]
    lines += [f"left run {run_id} alone: {reason}" for run_id, reason in done.skipped.items()]
    if done.reclaim:
        lines.append(
            f"reclaimed space with {done.reclaim}: {_size(done.bytes_before)} -> {_size(done.bytes_after)} on disk"
        )
    elif not done.removed and not done.skipped:
        lines.append("nothing to prune")
    return lines


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"
