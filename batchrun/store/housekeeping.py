"""The queries of `batchrun runs`, `prune` and `delete` (batchrun/housekeeping.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from batchrun.store.connection import BUSY_TIMEOUT_S, retry_busy
from batchrun.store.database import Store
from batchrun.store.record import SUCCEEDED
from batchrun.store.schema import BY_LINE

ITEM_OVERHEAD_BYTES = 280  # per item beyond its own request and result (bench/scale.py): hash, ids, indexes, free space


def run_summaries(store: Store) -> list[dict[str, Any]]:
    """Every run, oldest first, with its counts by state and the bytes its items hold (from the tallies)."""
    rows = list(
        store.db.query(
            "SELECT r.id, r.created_at, r.updated_at, r.input_path, r.mode, r.endpoint, r.status, r.stop, r.total, "
            "r.job, r.pruned_at, coalesce(t.bytes, 0) AS bytes, "
            "(SELECT count(*) FROM batches b WHERE b.run_id = r.id AND b.collected_at IS NULL) AS open_batches "
            "FROM runs r LEFT JOIN (SELECT run_id, sum(bytes) AS bytes FROM run_tallies GROUP BY run_id) t "
            "ON t.run_id = r.id ORDER BY r.created_at"
        )
    )
    for row in rows:
        row["job"] = orjson.loads(row["job"])
        row["counts"] = store.counts(row["id"])
        row["bytes"] += row["total"] * ITEM_OVERHEAD_BYTES
    return rows


def open_batch_count(store: Store, run_id: str) -> int:
    """Batches of the run whose results are not stored yet (planned ones too: a crash may have created them)."""
    return store._one("SELECT count(*) FROM batches WHERE run_id = ? AND collected_at IS NULL", [run_id])[0]


def delete_run(store: Store, run_id: str) -> None:
    """Remove a run and everything of it, and the shared request parts no item uses any more."""
    with store._write():
        for table in run_tables(store):
            store.db.execute(f'DELETE FROM "{table}" WHERE run_id = ?', [run_id])
        store.db.execute("DELETE FROM runs WHERE id = ?", [run_id])
        _drop_unused_parts(store)


def strip_run(store: Store, run_id: str) -> int:
    """Keep a run's results but drop what only sending needed: the requests of its succeeded items (their
    request hash stays, so the response cache still finds their answers) and its attempts. Pending and failed
    items keep their requests, so the run can still be resumed or retried."""
    with store._write():
        stripped = store.db.execute(
            f"UPDATE items SET own = x'', parts = NULL WHERE run_id = ? AND {BY_LINE} AND state = ? "
            "AND parts IS NOT NULL",
            [run_id, SUCCEEDED],
        ).rowcount
        store.db.execute("DELETE FROM attempts WHERE run_id = ?", [run_id])
        store.db.execute("UPDATE runs SET pruned_at = ? WHERE id = ?", [time.time(), run_id])
        _drop_unused_parts(store)
    return stripped


def run_tables(store: Store) -> list[str]:
    """Every table with a run_id column, read from the schema: a table a later migration adds is never left out."""
    sql = (
        "SELECT m.name FROM sqlite_master m, pragma_table_info(m.name) p "
        "WHERE m.type = 'table' AND p.name = 'run_id' ORDER BY m.name"
    )
    return [name for (name,) in store.db.execute(sql)]


def _drop_unused_parts(store: Store) -> None:
    store.db.execute(
        "DELETE FROM request_parts WHERE id NOT IN (SELECT DISTINCT parts FROM items WHERE parts IS NOT NULL)"
    )


CHECKPOINT_WAIT_S = 2.0  # how long the checkpoint after a delete or prune waits for a reader to finish


def reclaim_space(store: Store) -> str:
    """Give the freed pages back to the file system; returns how: "incremental vacuum" on a database made with
    auto_vacuum=INCREMENTAL (every database made since m009), else "VACUUM", which rewrites the file once and
    switches it to incremental, so later prunes are cheap.

    The incremental vacuum is an ordinary write transaction (readers in WAL mode go on reading their snapshot;
    another writer waits for it, or it for them, within the busy timeout). It runs through executescript: the
    pragma frees one page per step, and a cursor's execute takes one step only."""
    if vacuums_incrementally(store):
        retry_busy(lambda: _incremental_vacuum(store))
        how = "incremental vacuum"
    else:
        store.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        retry_busy(lambda: store.db.execute("VACUUM"))
        how = "VACUUM"
    _checkpoint(store)
    return how


def _checkpoint(store: Store) -> None:
    """Copy the write-ahead log into the database file, which shrinks it to its pages, and empty the log. A
    reader still on an older snapshot (a long export) is waited for CHECKPOINT_WAIT_S only: then the part it does
    not need is copied, and the last connection to close finishes the job."""
    store.db.execute(f"PRAGMA busy_timeout={int(CHECKPOINT_WAIT_S * 1000)}")
    try:
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        store.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")


def _incremental_vacuum(store: Store) -> None:
    try:
        store.db.conn.executescript("BEGIN IMMEDIATE; PRAGMA incremental_vacuum; COMMIT;")
    except BaseException:
        if store.db.conn.in_transaction:
            store.db.execute("ROLLBACK")
        raise


def free_pages(store: Store) -> int:
    """Pages the database file holds that no table uses (given back by `reclaim_space`)."""
    return store._one("PRAGMA freelist_count")[0]


def vacuums_incrementally(store: Store) -> bool:
    return store._one("PRAGMA auto_vacuum")[0] == 2


def database_bytes(store: Store) -> int:
    """The database's size on disk: the file and its write-ahead log."""
    return sum(
        Path(f"{store.path}{suffix}").stat().st_size
        for suffix in ("", "-wal")
        if Path(f"{store.path}{suffix}").exists()
    )
