"""The records of an item's life (its state, attempts, outcome) and the statement that writes a group of outcomes."""

from __future__ import annotations

import functools
import itertools
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from batchrun.store.connection import StoreBase


class State(StrEnum):
    """An item's state: pending -> in_flight -> succeeded | failed (or back to pending when not finished)."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


PENDING, IN_FLIGHT, SUCCEEDED, FAILED = State.PENDING, State.IN_FLIGHT, State.SUCCEEDED, State.FAILED
STATES = tuple(s.value for s in State)


@dataclass(slots=True)
class Attempt:
    started_at: float
    seconds: float
    outcome: str
    status: int | None = None
    error_class: str | None = None
    retry_after: float | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class BatchTimes:
    """A batch as the attempt of the items it answered: created at `started_at`, ended `seconds` later."""

    run_id: str
    seq: int
    started_at: float
    seconds: float


def _attempt_values(a: Attempt) -> tuple[Any, ...]:
    return (a.started_at, a.seconds, a.status, a.outcome, a.error_class, a.retry_after, a.request_id)


@dataclass(slots=True)
class Outcome:
    """What one item ended with in this process: succeeded, failed, or released back to pending."""

    run_id: str
    line_no: int
    state: str
    via: str = "online"
    result: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    error_type: str | None = None
    error_status: int | None = None
    error_class: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    model: str | None = None
    stop_reason: str | None = None
    data: str | None = None  # a schema job's validated object, as JSON
    cost_usd: float | None = 0.0  # what this outcome's replies cost (None: the model has no price)


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    line_no: int
    custom_id: str
    params: dict[str, Any]


# A group of outcomes is written by one statement over a JSON array of rows (these columns, in this order):
# SQLite then does the whole group's work without taking the GIL back once per row (`executemany` waited for it
# after every row while another thread, such as the online path's event loop, ran Python). A column whose value
# is the same for the whole group is bound once instead (reading a value out of each row's JSON costs about
# 0.4 us a column): a group of batch answers carries only its lines, results, tokens and costs.
RECORD_COLUMNS = (
    "run_id",
    "line_no",
    "state",
    "via",
    "result",
    "error_type",
    "error_status",
    "error_class",
    "error_message",
    "request_id",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "cache_creation_1h_tokens",
    "stop_reason",
    "data",
    "cost_usd",
    "n_attempts",
)
RECORD_SET = (
    "UPDATE items SET state = o.state, via = o.via, result = o.result, error_type = o.error_type, "
    "error_status = o.error_status, error_class = o.error_class, error_message = o.error_message, "
    "request_id = o.request_id, "
    # every reply is billed: tokens add up over an item's replies (invalid ones, a retry's)
    "input_tokens = items.input_tokens + o.input_tokens, output_tokens = items.output_tokens + o.output_tokens, "
    "cache_creation_tokens = items.cache_creation_tokens + o.cache_creation_tokens, "
    "cache_read_tokens = items.cache_read_tokens + o.cache_read_tokens, "
    # without the reply's per-TTL breakdown, the writes were made with the TTL the request asked for
    "cache_creation_1h_tokens = items.cache_creation_1h_tokens + coalesce(o.cache_creation_1h_tokens, "
    'CASE WHEN instr(own, \'"ttl":"1h"\') OR (SELECT ttl_1h FROM request_parts WHERE id = parts) '
    "THEN o.cache_creation_tokens ELSE 0 END), "
    "stop_reason = o.stop_reason, data = o.data, cost_usd = CASE WHEN o.cost_usd IS NULL THEN items.cost_usd "
    "ELSE coalesce(items.cost_usd, 0) + o.cost_usd END, "
    "attempts = items.attempts + o.n_attempts, updated_at = :now "
    "FROM o WHERE items.run_id = o.run_id AND items.line_no = o.line_no AND items.state != 'succeeded'"
)


RESULT = RECORD_COLUMNS.index("result")
_BIND_ONCE = {str, int, float, type(None)}  # the types a value bound once for a whole group may have


@functools.lru_cache(maxsize=256)
def record_statement(varying: tuple[int, ...]) -> str:
    """The statement that records a group whose columns `varying` (indexes into RECORD_COLUMNS) are read from
    each row's JSON (`:rows`, arrays of those columns' values in that order) and whose other columns are bound
    (`:c0`, `:c1`...).
    A varying result is not in the JSON (escaping and reading it back cost more than the rest of the row): the
    row holds its start and length in `:results`, the group's results as one UTF-8 BLOB (length -1: NULL)."""
    position = {column: k for k, column in enumerate(varying)}
    values = []
    for i, name in enumerate(RECORD_COLUMNS):
        if i not in position:
            values.append(f":c{i} AS {name}")
        elif i == RESULT:
            start, length = f"value ->> {position[i]}", f"value ->> {position[i] + 1}"
            values.append(
                f"CASE WHEN {length} < 0 THEN NULL ELSE CAST(substr(:results, {start}, {length}) AS TEXT) END AS {name}"
            )
        else:
            values.append(f"value ->> {position[i] + (RESULT in position and i > RESULT)} AS {name}")
    # materialized, so SQLite looks each row's item up by its key instead of scanning the run per row
    return f"WITH o AS MATERIALIZED (SELECT {', '.join(values)} FROM json_each(:rows)) {RECORD_SET}"


def record_parameters(rows: list[tuple[Any, ...]]) -> tuple[str, dict[str, Any]]:
    """The statement and parameters that write `rows` (RECORD_COLUMNS' order): the columns that differ within
    the group go in the JSON array (a result as its place in one BLOB), the others are bound once."""
    varying: list[int] = []
    params: dict[str, Any] = {}
    columns = list(zip(*rows, strict=True))
    for i, column in enumerate(columns):
        first, kinds = column[0], set(map(type, column))
        if len(kinds) == 1 and kinds <= _BIND_ONCE and column.count(first) == len(column):
            params[f"c{i}"] = first
        else:
            varying.append(i)
    chosen = tuple(varying)
    parts = [columns[i] for i in chosen]
    if RESULT in chosen:
        encoded = [None if r is None else r.encode() for r in columns[RESULT]]
        lengths = [-1 if r is None else len(r) for r in encoded]
        starts = itertools.accumulate((max(n, 0) for n in lengths), initial=1)
        k = chosen.index(RESULT)
        parts[k : k + 1] = [tuple(starts)[: len(rows)], lengths]
        params["results"] = b"".join(r for r in encoded if r is not None)
    values = list(zip(*parts, strict=True)) if parts else [()] * len(rows)
    params["rows"] = orjson.dumps(values).decode()
    return record_statement(chosen), params


# Add (sign 1) or take away (sign -1) the tallies of a run's items on the lines of a JSON list.
RETALLY = """
INSERT INTO run_tallies (run_id, model, via, state, stop_reason, items, input, output, cache_creation,
    cache_creation_1h, cache_read, bytes)
SELECT run_id, model, coalesce(via, ''), state, coalesce(stop_reason, ''), :sign * count(*), :sign * sum(input_tokens),
    :sign * sum(output_tokens), :sign * sum(cache_creation_tokens), :sign * sum(cache_creation_1h_tokens),
    :sign * sum(cache_read_tokens), :sign * sum(length(own) + coalesce(length(result), 0))
FROM items WHERE run_id = :run_id AND line_no IN (SELECT value FROM json_each(:lines))
GROUP BY model, coalesce(via, ''), state, coalesce(stop_reason, '')
ON CONFLICT DO UPDATE SET items = items + excluded.items, input = input + excluded.input,
    output = output + excluded.output, cache_creation = cache_creation + excluded.cache_creation,
    cache_creation_1h = cache_creation_1h + excluded.cache_creation_1h, cache_read = cache_read + excluded.cache_read,
    bytes = bytes + excluded.bytes
"""


# Add the replies of a group's outcomes to what the run was billed, by the item's model and the reply's path:
# [line_no, via, input, output, cache writes, 1-hour cache writes or null, cache reads] per outcome, counted only
# for the items the record statement writes (one already succeeded keeps its result: a reply read again after a
# crash is not billed twice).
BILL = """
INSERT INTO run_billed (run_id, model, via, input, output, cache_creation, cache_creation_1h, cache_read)
SELECT i.run_id, i.model, b.value ->> 1, sum(b.value ->> 2), sum(b.value ->> 3), sum(b.value ->> 4),
    sum(coalesce(b.value ->> 5, CASE WHEN instr(i.own, '"ttl":"1h"')
        OR (SELECT ttl_1h FROM request_parts WHERE id = i.parts) THEN b.value ->> 4 ELSE 0 END)),
    sum(b.value ->> 6)
FROM json_each(:bills) b CROSS JOIN items i ON i.run_id = :run_id AND i.line_no = b.value ->> 0
WHERE i.state != 'succeeded'
GROUP BY i.model, b.value ->> 1
ON CONFLICT DO UPDATE SET input = input + excluded.input, output = output + excluded.output,
    cache_creation = cache_creation + excluded.cache_creation,
    cache_creation_1h = cache_creation_1h + excluded.cache_creation_1h, cache_read = cache_read + excluded.cache_read
"""


class Recording(StoreBase):
    """Writing outcomes: results, state changes, attempts and tallies, a group in one transaction."""

    def record(self, outcomes: list[Outcome], batch: BatchTimes | None = None) -> None:
        """Write a group of outcomes, each result with the state change that marks it, in one transaction.

        The tallies are adjusted once for the group (the per-row trigger stands aside meanwhile). A batch's
        succeeded results get no attempts row: `batch` (its seq and times) is their attempt."""
        rows = [_outcome_row(o) for o in outcomes]
        lines: dict[str, list[int]] = {}
        for o in outcomes:
            lines.setdefault(o.run_id, []).append(o.line_no)
        bills = _bills(outcomes)
        with self._write():
            for run_id, billed in bills.items():  # before the items change: which are not succeeded yet
                self.db.execute(BILL, {"run_id": run_id, "bills": orjson.dumps(billed).decode()})
            self._retally(lines, -1)
            if rows:
                statement, params = record_parameters(rows)
                self.db.execute("INSERT INTO tally_paused VALUES (1)")
                self.db.execute(statement, {**params, "now": time.time()})
                self.db.execute("DELETE FROM tally_paused")
            self._retally(lines, 1)
            attempts = [
                (o.run_id, o.line_no, *_attempt_values(a))
                for o in outcomes
                if not (o.via == "batch" and o.state == SUCCEEDED)
                for a in o.attempts
            ]
            if attempts:
                self.db.conn.executemany(
                    "INSERT INTO attempts (run_id, line_no, started_at, seconds, status, outcome, error_class, "
                    "retry_after, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    attempts,
                )
            if batch is not None:
                self.db.execute(
                    "UPDATE batches SET started_at = ?, seconds = ? WHERE run_id = ? AND seq = ?",
                    [batch.started_at, batch.seconds, batch.run_id, batch.seq],
                )

    def _retally(self, lines: dict[str, list[int]], sign: int) -> None:
        for run_id, line_nos in lines.items():
            self.db.execute(RETALLY, {"sign": sign, "run_id": run_id, "lines": orjson.dumps(line_nos).decode()})


def _bills(outcomes: list[Outcome]) -> dict[str, list[tuple[Any, ...]]]:
    """The billed usage of each outcome that carries any, by run (BILL's rows)."""
    bills: dict[str, list[tuple[Any, ...]]] = {}
    for o in outcomes:
        u = o.usage
        if not u:
            continue
        row = (
            o.line_no,
            o.via,
            u.get("input_tokens") or 0,
            u.get("output_tokens") or 0,
            u.get("cache_creation_input_tokens") or 0,
            _writes_1h(u),
            u.get("cache_read_input_tokens") or 0,
        )
        if any(row[2:5]) or row[6]:
            bills.setdefault(o.run_id, []).append(row)
    return bills


def _outcome_row(o: Outcome) -> tuple[Any, ...]:
    """An outcome as a row of RECORD (RECORD_COLUMNS' order)."""
    return (
        o.run_id,
        o.line_no,
        o.state,
        o.via if o.state != PENDING else None,
        o.result,
        o.error_type,
        o.error_status,
        o.error_class,
        o.error_message,
        o.request_id,
        o.usage.get("input_tokens") or 0,
        o.usage.get("output_tokens") or 0,
        o.usage.get("cache_creation_input_tokens") or 0,
        o.usage.get("cache_read_input_tokens") or 0,
        _writes_1h(o.usage),
        o.stop_reason,
        _data_column(o),
        o.cost_usd,
        len(o.attempts),
    )


def _data_column(o: Outcome) -> str | None:
    """The data as stored: '' when it is exactly the reply's text (the `answers` view reads it from the result)."""
    if not o.data or o.result is None:
        return o.data
    blocks = (orjson.loads(o.result).get("message") or {}).get("content")
    if not isinstance(blocks, list):
        return o.data
    texts = [b.get("text") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
    if texts and all(isinstance(t, str) for t in texts) and "".join(texts) == o.data:
        return ""
    return o.data


def _writes_1h(usage: dict[str, Any]) -> int | None:
    """The reply's 1-hour cache writes, or None when it has no per-TTL breakdown."""
    breakdown = usage.get("cache_creation")
    if not isinstance(breakdown, dict) or "ephemeral_1h_input_tokens" not in breakdown:
        return None
    return breakdown["ephemeral_1h_input_tokens"] or 0
