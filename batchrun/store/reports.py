"""The queries of `batchrun report` (batchrun/htmlreport.py) and the rows of the table exports
(`batchrun results --format csv|parquet`): module functions over a Store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from batchrun.store.database import Store
from batchrun.store.record import FAILED, SUCCEEDED
from batchrun.store.schema import ANSWER_COLUMNS, BY_LINE, DATA, NOT_DONE


def report_attempts(store: Store, run_id: str) -> list[tuple[float, float, int | None, str]]:
    """Every request the run sent: (started_at, seconds, HTTP status or None, outcome), in start order."""
    return store.db.execute(
        "SELECT started_at, seconds, status, outcome FROM all_attempts WHERE run_id = ? ORDER BY started_at", [run_id]
    ).fetchall()


def report_finished_times(store: Store, run_id: str) -> list[float]:
    """When each item got its outcome (succeeded or failed), in time order."""
    rows = store.db.execute(
        f"SELECT updated_at FROM items WHERE run_id = ? AND {BY_LINE} AND state IN (?, ?) AND updated_at IS NOT NULL "
        "ORDER BY updated_at",
        [run_id, SUCCEEDED, FAILED],
    ).fetchall()
    return [row[0] for row in rows]


def report_attempts_per_item(store: Store, run_id: str) -> list[tuple[int, int]]:
    """(attempts, items) for the items that have their outcome: how many needed a retry."""
    return store.db.execute(
        f"SELECT attempts, count(*) FROM items WHERE run_id = ? AND {BY_LINE} AND state IN (?, ?) GROUP BY attempts "
        "ORDER BY 1",
        [run_id, SUCCEEDED, FAILED],
    ).fetchall()


def report_failure_messages(store: Store, run_id: str, examples: int = 3) -> list[dict[str, Any]]:
    """Failed items grouped by error type, status and message, with a few example custom_ids each."""
    rows = store.db.query(
        "SELECT error_type, error_status, error_message AS message, count(*) AS items, "
        f"group_concat(custom_id, char(31)) AS ids FROM items WHERE run_id = ? AND state = ? AND {NOT_DONE} "
        "GROUP BY error_type, error_status, error_message ORDER BY items DESC, error_type",
        [run_id, FAILED],
    )
    return [{**row, "ids": (row["ids"] or "").split("\x1f")[:examples]} for row in rows]


# answers
# The rows of the table exports (`batchrun results --format csv|parquet`): the documented `answers` view.


def answer_rows(
    store: Store, run_id: str, columns: list[str] | None = None, only: str | None = None
) -> Iterator[tuple[Any, ...]]:
    """The run's rows of the `answers` view (these columns, all by default) in input order; all items, or only
    those in state `only`."""
    known = set(ANSWER_COLUMNS)
    if columns is not None and not set(columns) <= known:
        raise ValueError(f"not columns of the answers view: {sorted(set(columns) - known)}")
    names = ", ".join(columns or ANSWER_COLUMNS)
    sql = f"SELECT {names} FROM answers WHERE run_id = ?" + (" AND state = ?" if only else "") + " ORDER BY line_no"
    cur = store.db.execute(sql, [run_id, only] if only else [run_id])
    while rows := cur.fetchmany(2000):
        yield from rows


def report_previous_run(store: Store, run_id: str) -> str | None:
    """The run of the same job (same settings) made just before this one in this database: last night's."""
    row = store.db.execute(
        "SELECT p.id FROM runs p JOIN runs r ON r.id = ? WHERE p.fingerprint = r.fingerprint AND p.id != r.id "
        "AND p.created_at < r.created_at ORDER BY p.created_at DESC LIMIT 1",
        [run_id],
    ).fetchone()
    return row[0] if row else None


def report_field_counts(store: Store, run_id: str, name: str) -> list[tuple[Any, int]]:
    """(value, items) of one top-level field of a schema job's validated answers, most frequent first."""
    path = "$." + orjson.dumps(name).decode()
    return store.db.execute(
        f"SELECT CASE json_type({DATA.format(p='')}, ?1) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
        f"ELSE json_extract({DATA.format(p='')}, ?1) END AS value, count(*) FROM items WHERE run_id = ?2 "
        f"AND {BY_LINE} AND state = ?3 "
        "AND data IS NOT NULL GROUP BY value ORDER BY 2 DESC, 1",
        [path, run_id, SUCCEEDED],
    ).fetchall()
