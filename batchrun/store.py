"""The SQLite store: the only source of truth. Every SQL statement of batchrun lives in this module."""

from __future__ import annotations

import errno
import functools
import hashlib
import itertools
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from batchrun.errors import InputError, StoreCorrupt, StoreError, StoreUnavailable, UsageError
from batchrun.lock import MIGRATION_LOCK, lock_dir, migration_lock


class State(StrEnum):
    """An item's state: pending -> in_flight -> succeeded | failed (or back to pending when not finished)."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


PENDING, IN_FLIGHT, SUCCEEDED, FAILED = State.PENDING, State.IN_FLIGHT, State.SUCCEEDED, State.FAILED
STATES = tuple(s.value for s in State)
INSERT_CHUNK = 2000
CREATE_CHUNK = 500  # items per insert statement when a run is created (at most two chunks are held at once)
BUSY_TIMEOUT_S = 30
PAGE_SIZE = 8192  # a grown item (about 900 bytes with its result) leaves less of a 4 KB page unused
MAX_PROBLEMS = 20
T = TypeVar("T")

migrations = Migrations("batchrun")


def execute_script(db: Database, script: str) -> None:
    """Each statement of `script` in the transaction that is open: sqlite3's executescript would commit first, and
    sqlite-utils' splits a script one character at a time (8 ms of every new database's 25)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        db.execute(statement)


@migrations()
def m001_initial(db: Database) -> None:
    execute_script(
        db,
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            input_path TEXT NOT NULL,
            input_sha256 TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            mode TEXT NOT NULL,
            job TEXT NOT NULL,
            status TEXT NOT NULL,
            total INTEGER NOT NULL
        );
        CREATE INDEX runs_by_input ON runs (input_sha256, fingerprint);
        CREATE TABLE items (
            run_id TEXT NOT NULL REFERENCES runs(id),
            line_no INTEGER NOT NULL,
            custom_id TEXT NOT NULL,
            model TEXT NOT NULL,
            params TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            via TEXT,
            result TEXT,
            error_type TEXT,
            error_status INTEGER,
            error_class TEXT,
            error_message TEXT,
            request_id TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens INTEGER NOT NULL DEFAULT 0,
            updated_at REAL,
            PRIMARY KEY (run_id, line_no)
        );
        CREATE INDEX items_by_state ON items (run_id, state, line_no);
        CREATE INDEX items_by_custom_id ON items (run_id, custom_id);
        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            line_no INTEGER NOT NULL,
            started_at REAL NOT NULL,
            seconds REAL NOT NULL,
            status INTEGER,
            outcome TEXT NOT NULL,
            error_class TEXT,
            retry_after REAL,
            request_id TEXT
        );
        CREATE INDEX attempts_by_item ON attempts (run_id, line_no);
        """,
    )


@migrations()
def m002_batches(db: Database) -> None:
    """The Message Batches path: one row per batch (planned before it is created), and each item's batch."""
    script = """
        CREATE TABLE batches (
            run_id TEXT NOT NULL REFERENCES runs(id),
            seq INTEGER NOT NULL,
            id TEXT UNIQUE,
            planned_at REAL NOT NULL,
            n_items INTEGER NOT NULL,
            n_bytes INTEGER NOT NULL,
            first_line INTEGER NOT NULL,
            last_line INTEGER NOT NULL,
            first_custom_id TEXT NOT NULL,
            last_custom_id TEXT NOT NULL,
            processing_status TEXT NOT NULL,
            request_counts TEXT,
            created_at TEXT,
            ended_at TEXT,
            expires_at TEXT,
            cancel_initiated_at TEXT,
            results_url TEXT,
            adopted INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            collected_at REAL,
            PRIMARY KEY (run_id, seq)
        );
        ALTER TABLE items ADD COLUMN batch_seq INTEGER;
        CREATE INDEX items_by_batch ON items (run_id, batch_seq);
        ALTER TABLE runs ADD COLUMN cancel_requested_at REAL;
        """
    execute_script(db, script)


@migrations()
def m003_response_cache(db: Database) -> None:
    """Each item's request hash, so an identical request made before in this database is answered from the store."""
    db.execute("ALTER TABLE items ADD COLUMN request_hash TEXT")
    db.execute("CREATE INDEX items_by_request ON items (request_hash, state)")


@migrations()
def m004_batch_tokens(db: Database) -> None:
    """A token per planned batch, carried in the custom_ids sent, so a batch found after a crash is proven to be
    this plan's by its results before any is stored; and the batches found not to be ours."""
    db.execute("ALTER TABLE batches ADD COLUMN token TEXT")
    db.execute(
        "CREATE TABLE foreign_batches (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, seq INTEGER NOT NULL, found_at REAL)"
    )


@migrations()
def m005_endpoints(db: Database) -> None:
    """Where a run's answers come from (the emulator, the API, a gateway), and the run a cached answer was copied
    from: an answer from one endpoint is never served to a run on another."""
    db.execute("ALTER TABLE runs ADD COLUMN endpoint TEXT")
    db.execute("ALTER TABLE items ADD COLUMN answered_from TEXT")


@migrations()
def m006_fingerprint_without_mode(db: Database) -> None:
    """The mode no longer decides a run's identity (it may change under a run): recompute stored fingerprints."""
    from batchrun.job import Job

    for run_id, job in db.execute("SELECT id, job FROM runs").fetchall():
        fingerprint = Job.from_dict(orjson.loads(job)).fingerprint()
        db.execute("UPDATE runs SET fingerprint = ? WHERE id = ?", [fingerprint, run_id])


@migrations()
def m007_cache_ttl_tokens(db: Database) -> None:
    """The part of each item's cache writes made with the 1-hour TTL, which costs 2x input instead of 1.25x."""
    db.execute("ALTER TABLE items ADD COLUMN cache_creation_1h_tokens INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "UPDATE items SET cache_creation_1h_tokens = cache_creation_tokens "
        'WHERE cache_creation_tokens > 0 AND instr(params, \'"ttl":"1h"\')'
    )


ANSWERS_VIEW = """
CREATE VIEW answers AS
SELECT
    i.run_id AS run_id,
    i.line_no AS line_no,
    i.custom_id AS custom_id,
    coalesce(i.source_id, i.custom_id) AS id,
    i.kept AS kept,
    i.state AS state,
    i.stop_reason AS stop_reason,
    (SELECT group_concat(json_extract(b.value, '$.text'), '') FROM json_each(i.result, '$.message.content') b
     WHERE json_extract(b.value, '$.type') = 'text') AS text,
    i.data AS data,
    i.model AS model,
    CASE i.via WHEN 'online' THEN 'api' ELSE i.via END AS answered_by,
    i.error_type AS error_type,
    i.error_message AS error_message,
    i.input_tokens AS input_tokens,
    i.output_tokens AS output_tokens,
    i.cache_creation_tokens AS cache_creation_tokens,
    i.cache_read_tokens AS cache_read_tokens,
    round(i.cost_usd, 9) AS cost_usd,
    CASE WHEN i.state IN ('succeeded', 'failed') AND i.updated_at IS NOT NULL
         THEN strftime('%Y-%m-%dT%H:%M:%fZ', i.updated_at, 'unixepoch') END AS answered_at
FROM items i
"""
ANSWER_COLUMNS = (
    "run_id",
    "line_no",
    "custom_id",
    "id",
    "kept",
    "state",
    "stop_reason",
    "text",
    "data",
    "model",
    "answered_by",
    "error_type",
    "error_message",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "cost_usd",
    "answered_at",
)


@migrations()
def m008_answers(db: Database) -> None:
    """Answers as data: each result's stop_reason, a schema job's validated object, the row's own id and kept
    columns (table inputs), each item's cost, and the documented `answers` view over them."""
    for column in ("stop_reason TEXT", "data TEXT", "source_id TEXT", "kept TEXT", "cost_usd REAL"):
        db.execute(f"ALTER TABLE items ADD COLUMN {column}")
    db.execute(
        "UPDATE items SET stop_reason = json_extract(result, '$.message.stop_reason') "
        "WHERE result IS NOT NULL AND json_extract(result, '$.type') = 'succeeded'"
    )
    db.execute(ANSWERS_VIEW)


@migrations()
def m009_request_parts(db: Database) -> None:
    """Shared request parts stored once, and per-run tallies kept up to date instead of counting rows.

    An item's request is `head + own + tail`: `own` is the serialised value of its "messages" (what is its own),
    head and tail are the rest of the request's bytes, stored once in `request_parts` by content (the same
    system prompt across items and runs is one row). The bytes, so the request sent and its hash, are unchanged.
    `run_tallies` holds items, tokens and bytes per (run, model, via, state), kept exact by a trigger on every
    change of an item, so status and the runs list read a few rows instead of a million.
    """
    execute_script(db, PARTS_SCHEMA)
    db.execute("ALTER TABLE items RENAME COLUMN params TO own")
    db.execute("ALTER TABLE items ADD COLUMN parts INTEGER")
    db.execute("ALTER TABLE runs ADD COLUMN pruned_at REAL")
    parts = _PartIds(db.conn)
    last = 0
    while rows := db.execute(
        "SELECT rowid, own FROM items WHERE rowid > ? ORDER BY rowid LIMIT ?", [last, INSERT_CHUNK]
    ).fetchall():
        updates = []
        for rowid, params in rows:
            raw = params.encode() if isinstance(params, str) else bytes(params)
            head, own, tail = split_request(raw, orjson.loads(raw))
            updates.append((own, parts.get(head, tail), rowid))
        db.conn.executemany("UPDATE items SET own = ?, parts = ? WHERE rowid = ?", updates)
        last = rows[-1][0]
    db.execute(
        "INSERT INTO run_tallies SELECT run_id, model, coalesce(via, ''), state, count(*), sum(input_tokens), "
        "sum(output_tokens), sum(cache_creation_tokens), sum(cache_creation_1h_tokens), sum(cache_read_tokens), "
        "sum(length(own) + coalesce(length(result), 0)) FROM items GROUP BY 1, 2, 3, 4"
    )
    db.execute(TALLY_TRIGGER)
    db.execute(REQUESTS_VIEW)
    # without the state: a result stored no longer rewrites an entry at a random place of this index
    db.execute("DROP INDEX items_by_request")
    db.execute("CREATE INDEX items_by_request ON items (request_hash)")


PARTS_SCHEMA = """
CREATE TABLE request_parts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL UNIQUE,
    head BLOB NOT NULL,
    tail BLOB NOT NULL,
    max_tokens INTEGER,
    ttl_1h INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE run_tallies (
    run_id TEXT NOT NULL,
    model TEXT NOT NULL,
    via TEXT NOT NULL,
    state TEXT NOT NULL,
    items INTEGER NOT NULL,
    input INTEGER NOT NULL,
    output INTEGER NOT NULL,
    cache_creation INTEGER NOT NULL,
    cache_creation_1h INTEGER NOT NULL,
    cache_read INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (run_id, model, via, state)
) WITHOUT ROWID;
"""
TALLY_TRIGGER = """
CREATE TRIGGER items_tally AFTER UPDATE OF state, via, model, own, result, input_tokens, output_tokens,
    cache_creation_tokens, cache_creation_1h_tokens, cache_read_tokens ON items
BEGIN
    UPDATE run_tallies SET items = items - 1, input = input - OLD.input_tokens, output = output - OLD.output_tokens,
        cache_creation = cache_creation - OLD.cache_creation_tokens,
        cache_creation_1h = cache_creation_1h - OLD.cache_creation_1h_tokens,
        cache_read = cache_read - OLD.cache_read_tokens,
        bytes = bytes - length(OLD.own) - coalesce(length(OLD.result), 0)
    WHERE run_id = OLD.run_id AND model = OLD.model AND via = coalesce(OLD.via, '') AND state = OLD.state;
    INSERT INTO run_tallies VALUES (NEW.run_id, NEW.model, coalesce(NEW.via, ''), NEW.state, 1, NEW.input_tokens,
        NEW.output_tokens, NEW.cache_creation_tokens, NEW.cache_creation_1h_tokens, NEW.cache_read_tokens,
        length(NEW.own) + coalesce(length(NEW.result), 0))
    ON CONFLICT DO UPDATE SET items = items + 1, input = input + excluded.input, output = output + excluded.output,
        cache_creation = cache_creation + excluded.cache_creation,
        cache_creation_1h = cache_creation_1h + excluded.cache_creation_1h,
        cache_read = cache_read + excluded.cache_read, bytes = bytes + excluded.bytes;
END
"""
# Every item's request as it is sent (the bytes its request_hash is the SHA-256 of), for reading by hand and tests.
REQUESTS_VIEW = """
CREATE VIEW requests AS SELECT i.run_id, i.line_no, i.custom_id, i.request_hash,
    CAST(p.head || i.own || p.tail AS BLOB) AS params
FROM items i JOIN request_parts p ON p.id = i.parts
"""


@migrations()
def m010_lean_items(db: Database) -> None:
    """Fewer bytes and statements per item.

    - The request hash is stored as its 32 bytes (the same SHA-256), no longer as 64 hex characters; the
      `requests` view still shows it in hex. Its index holds only the first 8 bytes (the response cache
      compares all 32).
    - `items_by_batch` holds only the items in flight (the ones a batch still waits for), `items_by_state` only
      the items not succeeded: most items of a finished run are in neither.
    - A batch result that succeeded has no attempts row: its attempt is the item (succeeded, via batch) and its
      batch (`started_at`, `seconds`); the `all_attempts` view lists both kinds. The rows written so far are folded
      into their batches.
    - A schema answer whose reply text is exactly its data's JSON stores its data as '' (the `answers` view
      gives the text): the answer is held once, in the result.
    - The tally trigger stands aside while `tally_paused` holds a row: `Store.record` then adjusts the tallies once
      per group of outcomes, in the same transaction.
    """
    db.conn.create_function("hash_bytes", 1, _hash_bytes, deterministic=True)
    db.execute("DROP INDEX items_by_request")
    db.execute("UPDATE items SET request_hash = hash_bytes(request_hash) WHERE typeof(request_hash) = 'text'")
    db.execute("CREATE INDEX items_by_request ON items (substr(request_hash, 1, 8))")
    db.execute("ALTER TABLE batches ADD COLUMN started_at REAL")
    db.execute("ALTER TABLE batches ADD COLUMN seconds REAL")
    db.execute(
        "UPDATE batches SET (started_at, seconds) = (SELECT a.started_at, a.seconds FROM items i JOIN attempts a "
        f"ON a.run_id = i.run_id AND a.line_no = i.line_no WHERE {BATCH_SUCCESS} LIMIT 1)"
    )
    db.execute(
        "DELETE FROM attempts WHERE rowid IN (SELECT a.rowid FROM batches JOIN items i ON i.run_id = batches.run_id "
        f"AND i.batch_seq = batches.seq JOIN attempts a ON a.run_id = i.run_id AND a.line_no = i.line_no "
        f"WHERE {BATCH_SUCCESS})"
    )
    db.execute("DROP VIEW requests")
    db.execute(REQUESTS_VIEW_HEX)
    db.execute(ALL_ATTEMPTS_VIEW)
    db.execute("CREATE TABLE tally_paused (paused INTEGER)")
    db.execute("DROP INDEX items_by_state")
    db.execute(f"CREATE INDEX items_by_state ON items (run_id, state, line_no) WHERE {NOT_DONE}")
    db.execute("DROP INDEX items_by_batch")
    db.execute("CREATE INDEX items_by_batch ON items (run_id, batch_seq) WHERE state = 'in_flight'")
    db.execute("DROP VIEW answers")
    db.execute(ANSWERS_VIEW.replace("i.data AS data", f"{DATA.format(p='i.')} AS data"))
    db.execute("DROP TRIGGER items_tally")
    db.execute(TALLY_TRIGGER.replace("BEGIN", "WHEN NOT EXISTS (SELECT 1 FROM tally_paused)\nBEGIN", 1))


# A schema answer's data; '' stands for "the reply's text, which is exactly the data's JSON" (stored once).
DATA = (
    "CASE WHEN {p}data = '' THEN (SELECT group_concat(json_extract(b.value, '$.text'), '') "
    "FROM json_each({p}result, '$.message.content') b WHERE json_extract(b.value, '$.type') = 'text') "
    "ELSE {p}data END"
)
# the attempts row (as written before m010) of an item's batch success, from `batches` joined to the item
BATCH_SUCCESS = (
    "i.run_id = batches.run_id AND i.batch_seq = batches.seq AND i.state = 'succeeded' AND i.via = 'batch' "
    "AND a.outcome = 'succeeded' AND a.status IS NULL"
)
REQUESTS_VIEW_HEX = """
CREATE VIEW requests AS SELECT i.run_id, i.line_no, i.custom_id, lower(hex(i.request_hash)) AS request_hash,
    CAST(p.head || i.own || p.tail AS BLOB) AS params
FROM items i JOIN request_parts p ON p.id = i.parts
"""
# Every request sent: the attempts rows, and one per item a batch answered (its batch's times).
ALL_ATTEMPTS_VIEW = """
CREATE VIEW all_attempts AS
SELECT run_id, line_no, started_at, seconds, status, outcome, error_class, retry_after, request_id FROM attempts
UNION ALL
SELECT i.run_id, i.line_no, b.started_at, b.seconds, NULL, 'succeeded', NULL, NULL, NULL
FROM items i JOIN batches b ON b.run_id = i.run_id AND b.seq = i.batch_seq
WHERE i.state = 'succeeded' AND i.via = 'batch'
"""
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


@migrations()
def m011_stop_reason_tallies(db: Database) -> None:
    """`run_tallies` also counts by stop_reason, so `status` shows why replies stopped without reading a row per
    item ('' when an item has none). The table is rebuilt from the items (its key changes) and the trigger and
    the group adjustment of `Store.record` keep the new column."""
    db.execute("DROP TRIGGER items_tally")
    db.execute("ALTER TABLE run_tallies RENAME TO run_tallies_m010")
    db.execute(STOP_TALLIES_SCHEMA)
    db.execute(
        "INSERT INTO run_tallies SELECT run_id, model, coalesce(via, ''), state, coalesce(stop_reason, ''), count(*), "
        "sum(input_tokens), sum(output_tokens), sum(cache_creation_tokens), sum(cache_creation_1h_tokens), "
        "sum(cache_read_tokens), sum(length(own) + coalesce(length(result), 0)) FROM items GROUP BY 1, 2, 3, 4, 5"
    )
    db.execute("DROP TABLE run_tallies_m010")
    db.execute(STOP_TALLY_TRIGGER)


@migrations()
def m012_versions(db: Database) -> None:
    """Which batchrun applied each migration: a database upgraded by a newer batchrun names the version an older
    one needs to be replaced by (see check_not_newer)."""
    db.execute("CREATE TABLE batchrun_versions (migration TEXT PRIMARY KEY, version TEXT NOT NULL) WITHOUT ROWID")


def batchrun_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchrun")
    except PackageNotFoundError:
        return "unknown"


def record_versions(conn: sqlite3.Connection) -> None:
    """Note this version against every applied migration not noted yet (after migrations were applied)."""
    conn.execute(
        "INSERT OR IGNORE INTO batchrun_versions SELECT name, ? FROM _sqlite_migrations WHERE migration_set = ?",
        [batchrun_version(), migrations.name],
    )


def check_not_newer(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse, before anything is written, a database a newer batchrun has migrated: this version does not know
    its tables, and writing to them would damage it."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "_sqlite_migrations" not in tables:
        return
    known = {m.name for m in migrations._migrations}
    applied = [n for (n,) in conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set = ?", ["batchrun"])]
    unknown = [n for n in applied if n not in known]
    if not unknown:
        return
    versions: list[str] = []
    if "batchrun_versions" in tables:
        marks = ",".join("?" * len(unknown))
        sql = f"SELECT version FROM batchrun_versions WHERE migration IN ({marks})"
        versions = [v for (v,) in conn.execute(sql, unknown) if v != "unknown"]
    needed = max(versions, key=_version_key) if versions else None
    raise StoreError(
        f"{path} was upgraded by a newer batchrun{f' ({needed})' if needed else ''} than this one "
        f"({batchrun_version()}): upgrade batchrun{f' to {needed} or later' if needed else ''} to use it "
        f"(pip install -U batchrun); nothing was changed"
    )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in version.replace("-", ".").split("."))


STOP_TALLIES_SCHEMA = """
CREATE TABLE run_tallies (
    run_id TEXT NOT NULL,
    model TEXT NOT NULL,
    via TEXT NOT NULL,
    state TEXT NOT NULL,
    stop_reason TEXT NOT NULL,
    items INTEGER NOT NULL,
    input INTEGER NOT NULL,
    output INTEGER NOT NULL,
    cache_creation INTEGER NOT NULL,
    cache_creation_1h INTEGER NOT NULL,
    cache_read INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (run_id, model, via, state, stop_reason)
) WITHOUT ROWID
"""
STOP_TALLY_TRIGGER = """
CREATE TRIGGER items_tally AFTER UPDATE OF state, via, model, own, result, stop_reason, input_tokens,
    output_tokens, cache_creation_tokens, cache_creation_1h_tokens, cache_read_tokens ON items
WHEN NOT EXISTS (SELECT 1 FROM tally_paused)
BEGIN
    UPDATE run_tallies SET items = items - 1, input = input - OLD.input_tokens, output = output - OLD.output_tokens,
        cache_creation = cache_creation - OLD.cache_creation_tokens,
        cache_creation_1h = cache_creation_1h - OLD.cache_creation_1h_tokens,
        cache_read = cache_read - OLD.cache_read_tokens,
        bytes = bytes - length(OLD.own) - coalesce(length(OLD.result), 0)
    WHERE run_id = OLD.run_id AND model = OLD.model AND via = coalesce(OLD.via, '') AND state = OLD.state
        AND stop_reason = coalesce(OLD.stop_reason, '');
    INSERT INTO run_tallies VALUES (NEW.run_id, NEW.model, coalesce(NEW.via, ''), NEW.state,
        coalesce(NEW.stop_reason, ''), 1, NEW.input_tokens, NEW.output_tokens, NEW.cache_creation_tokens,
        NEW.cache_creation_1h_tokens, NEW.cache_read_tokens, length(NEW.own) + coalesce(length(NEW.result), 0))
    ON CONFLICT DO UPDATE SET items = items + 1, input = input + excluded.input, output = output + excluded.output,
        cache_creation = cache_creation + excluded.cache_creation,
        cache_creation_1h = cache_creation_1h + excluded.cache_creation_1h,
        cache_read = cache_read + excluded.cache_read, bytes = bytes + excluded.bytes;
END
"""


@migrations()
def m012b_run_output(db: Database) -> None:
    """The results file (-o) a run's submit or resume asked for: whichever command ends the run writes it."""
    db.execute("ALTER TABLE runs ADD COLUMN output_path TEXT")


@migrations()
def m013_documents(db: Database) -> None:
    """Folder inputs: each item's file (relative path, SHA-256, size, and the bytes its request grows by when the
    file's block replaces the stored placeholder), and the files uploaded with the Files API, by endpoint and
    content, so a resume or a later run never uploads the same bytes twice."""
    execute_script(
        db,
        """
        CREATE TABLE item_files (
            run_id TEXT NOT NULL, line_no INTEGER NOT NULL, file TEXT NOT NULL, sha256 TEXT NOT NULL,
            bytes INTEGER NOT NULL, extra INTEGER NOT NULL, PRIMARY KEY (run_id, line_no)) WITHOUT ROWID;
        CREATE TABLE uploads (
            endpoint TEXT NOT NULL, sha256 TEXT NOT NULL, file_id TEXT NOT NULL, file TEXT NOT NULL,
            media_type TEXT NOT NULL, bytes INTEGER NOT NULL, uploaded_at REAL NOT NULL,
            PRIMARY KEY (endpoint, sha256)) WITHOUT ROWID;
        """,
    )


@migrations()
def m014_limit_use(db: Database) -> None:
    """What a run's online sending took of the account's rate limits, and the 429s it met (status, report)."""
    db.execute("ALTER TABLE runs ADD COLUMN limit_use TEXT")


def _hash_bytes(hex_digest: str) -> bytes:
    return bytes.fromhex(hex_digest)


HOLE = b'"messages":'
TTL_1H = b'"ttl":"1h"'


def split_request(full: bytes, params: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """(head, own, tail) of a request's bytes `full` (orjson, sorted keys): `own` is the value of "messages",
    the rest is what items share. A request that does not split that way is all `own` (empty head and tail)."""
    start, length = split_bounds(full, params)
    return full[:start], full[start : start + length], full[start + length :]


def split_bounds(full: bytes, params: dict[str, Any]) -> tuple[int, int]:
    """Where the item's own part (the value of "messages") starts in `full`, and its length; (0, len(full))
    when the request does not split that way. Checked against the bytes, so head + own + tail is always `full`."""
    messages = params.get("messages")
    if messages is None:
        return 0, len(full)
    own = orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)
    before = {k: v for k, v in params.items() if k < "messages"}
    head = orjson.dumps(before, option=orjson.OPT_SORT_KEYS)[:-1] + (b"," if before else b"") + HOLE
    if not full.startswith(head) or full[len(head) : len(head) + len(own)] != own:
        return 0, len(full)
    return len(head), len(own)


class _SharedParts:
    """The shared part (head, tail) of each request in a stream, given only when it differs from the previous
    request's (None when it is the same), compared without copying it."""

    def __init__(self) -> None:
        self.head: bytes | None = None
        self.tail = b""

    def changed(self, full: bytes, start: int, length: int) -> tuple[bytes, bytes] | None:
        head = self.head
        if (
            head is not None
            and len(head) == start
            and len(full) - start - length == len(self.tail)
            and full.startswith(head)
            and full.endswith(self.tail)
        ):
            return None
        self.head, self.tail = full[:start], full[start + length :]
        return self.head, self.tail


class _PartIds:
    """Part ids by content, inserting a part the first time it is seen (in the caller's transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.ids: dict[str, int] = {}
        self.last: tuple[bytes, bytes, int] | None = None

    def of(self, full: bytes, start: int, length: int) -> int:
        """The part of a request split at (start, length), without copying its shared bytes when they are the
        previous request's."""
        last = self.last
        if (
            last is not None
            and len(last[0]) == start
            and len(full) - start - length == len(last[1])
            and full.startswith(last[0])
            and full.endswith(last[1])
        ):
            return last[2]
        return self.get(full[:start], full[start + length :])

    def get(self, head: bytes, tail: bytes) -> int:
        last = self.last
        if last is not None and last[1] == tail and last[0] == head:
            return last[2]
        key = hashlib.sha256(head + b"\0" + tail).hexdigest()
        part = self.ids.get(key)
        if part is None:
            row = self.conn.execute("SELECT id FROM request_parts WHERE hash = ?", [key]).fetchone()
            if row is None:
                max_tokens = orjson.loads(head + b"[]" + tail).get("max_tokens") if head else None
                row = self.conn.execute(
                    "INSERT INTO request_parts (hash, head, tail, max_tokens, ttl_1h) VALUES (?, ?, ?, ?, ?) "
                    "RETURNING id",
                    [key, head, tail, max_tokens if isinstance(max_tokens, int) else None, TTL_1H in head + tail],
                ).fetchone()
            part = self.ids[key] = row[0]
        self.last = (head, tail, part)
        return part


# Written out in the queries they serve, so SQLite can use the partial indexes items_by_batch and items_by_state.
IN_BATCH = "state = 'in_flight'"
NOT_DONE = "state != 'succeeded'"
# The response cache (Store.reuse_results): a pending item's identical requests that succeeded on its run's
# endpoint (items_by_request finds them by the hash's first 8 characters).
_REUSE_SOURCE = (
    "FROM items c JOIN runs cr ON cr.id = c.run_id WHERE substr(c.request_hash, 1, 8) = "
    "substr(i.request_hash, 1, 8) AND c.request_hash = i.request_hash AND c.state = 'succeeded' "
    "AND cr.endpoint = (SELECT endpoint FROM runs WHERE id = ?)"
)
# the runs on the endpoint and how each judges a reply
REUSE_JUDGING = (
    "SELECT id, json_extract(job, '$.schema'), json_extract(job, '$.schema_via'), "
    "json_extract(job, '$.accept_truncated') FROM runs WHERE endpoint = (SELECT endpoint FROM runs WHERE id = ?)"
)
# The cache's fast path: sources stored by a run that judges alike (:alike, a JSON list of run ids), not served from
# the cache themselves; items_by_request finds them (the unary + keeps the planner off the run_id index).
_ALIKE_SOURCE = (
    "FROM items c WHERE substr(c.request_hash, 1, 8) = substr(items.request_hash, 1, 8) "
    "AND c.request_hash = items.request_hash AND c.state = 'succeeded' AND c.via IS NOT 'cache' "
    "AND +c.run_id IN (SELECT value FROM json_each(:alike))"
)
REUSE_ALIKE = (
    f"UPDATE items SET state = :succeeded, via = 'cache', result = (SELECT c.result {_ALIKE_SOURCE} LIMIT 1), "
    f"answered_from = (SELECT c.run_id {_ALIKE_SOURCE} LIMIT 1), updated_at = :now, "
    f"stop_reason = (SELECT c.stop_reason {_ALIKE_SOURCE} LIMIT 1), data = (SELECT c.data {_ALIKE_SOURCE} LIMIT 1), "
    f"cost_usd = coalesce(cost_usd, 0) WHERE run_id = :run AND state = :pending AND {NOT_DONE} "
    f"AND EXISTS (SELECT 1 {_ALIKE_SOURCE})"
)
REUSE_MATCHED = (
    f"SELECT i.line_no FROM items i WHERE i.run_id = ? AND i.state = ? AND i.{NOT_DONE} "
    f"AND EXISTS (SELECT 1 {_REUSE_SOURCE}) ORDER BY i.line_no"
)
REUSE_CANDIDATES = (
    "SELECT i.line_no, c.run_id, c.result, c.stop_reason FROM items i JOIN items c ON substr(c.request_hash, 1, 8) "
    "= substr(i.request_hash, 1, 8) AND c.request_hash = i.request_hash JOIN runs cr ON cr.id = c.run_id "
    "WHERE i.run_id = ? AND c.state = 'succeeded' AND cr.endpoint = (SELECT endpoint FROM runs WHERE id = ?) "
    f"AND i.state = ? AND i.{NOT_DONE} AND i.line_no IN (SELECT value FROM json_each(?)) "
    "ORDER BY i.line_no, c.run_id, c.line_no"
)
REUSE_UPDATE = (
    "UPDATE items SET state = ?, via = 'cache', result = ?, answered_from = ?, updated_at = ?, stop_reason = ?, "
    f"data = ?, cost_usd = coalesce(cost_usd, 0) WHERE run_id = ? AND line_no = ? AND state = ? AND {NOT_DONE}"
)
REUSE_CHUNK = 500


class CacheJudge(Protocol):
    """How the response cache asks the current job whether a stored reply is an answer for it."""

    def judges_like(self, schema: Any, schema_via: str | None, accept_truncated: bool) -> bool: ...

    def accepts_stored(self, result: Any) -> tuple[bool, str | None]: ...


# For the queries over succeeded items: the run's rows in line order (its primary key), not in custom_id order.
BY_LINE = "line_no > 0"
UNFINISHED = "EXISTS (SELECT 1 FROM run_tallies WHERE run_id = r.id AND state IN (?, ?) AND items > 0)"
MAX_TOKENS = "coalesce(p.max_tokens, json_extract(own, '$.max_tokens'))"
TOKEN_LEN = 10  # "br" + 8 hex digits
SENT_ID_OVERHEAD = TOKEN_LEN + 1  # the token and the "-" before the line number


def sent_custom_id(token: str, line_no: int) -> str:
    """The custom_id a batch request carries: the plan's token and the item's line; the user's id stays ours."""
    return f"{token}-{line_no}"


def new_batch_token() -> str:
    return "br" + secrets.token_hex(4)


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


# A chunk of new items in one statement (its work done without the GIL, so the reading thread keeps hashing): the
# rows are a JSON array of [line_no, custom_id, model, own's length, parts, source_id, kept, own's start], each
# item's own bytes a slice of one BLOB (`:owns`) and its 32-byte hash one of another (`:hashes`), both kept BLOBs.
INSERT_ITEMS = (
    "INSERT INTO items (run_id, line_no, custom_id, model, own, parts, request_hash, state, source_id, kept) "
    "SELECT :run_id, value ->> 0, value ->> 1, value ->> 2, substr(:owns, value ->> 7, value ->> 3), value ->> 4, "
    "substr(:hashes, key * 32 + 1, 32), :state, value ->> 5, value ->> 6 FROM json_each(:rows)"
)


def create_private_file(path: Path) -> None:
    """The database holds prompts and replies: only its owner may read it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))


def store_error(e: BaseException, path: str | Path | None = None) -> StoreError:
    """One line saying what is wrong with the database and how to fix it, for a sqlite3 or OS error."""
    where = str(path) if path is not None else "the batchrun database"
    text = str(e) or type(e).__name__
    low = text.lower()
    code = getattr(e, "errno", None)
    if isinstance(e, IsADirectoryError) or (path is not None and Path(path).is_dir()):
        return StoreError(
            f"{where} is a directory, not a database file (give --db a file path, e.g. {where}/batchrun.db)"
        )
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return StoreCorrupt(
            f"{where} is damaged or not a batchrun database ({text}); restore it from a backup, "
            "or give another --db (`batchrun doctor` reports what is wrong)"
        )
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or "full" in low or "disk i/o" in low:
        return StoreUnavailable(
            f"cannot write {where}: the disk is full or a file size limit was reached ({text}); "
            "free some space and run the command again (nothing that was committed is lost)"
        )
    if "locked" in low or "busy" in low:
        return StoreUnavailable(
            f"{where} stayed locked by another process for over {BUSY_TIMEOUT_S}s ({text}); try again later"
        )
    if isinstance(e, PermissionError) or code in (errno.EACCES, errno.EPERM, errno.EROFS) or "readonly" in low:
        return StoreError(
            f"cannot write {where} ({text}): the database and its directory must be writable by this user "
            "(fix their permissions, or give another --db)"
        )
    if "unable to open" in low:
        return StoreError(
            f"cannot open {where} ({text}): check that its directory exists and is writable by this user "
            "(SQLite writes -wal and -shm files next to it)"
        )
    return StoreError(f"cannot use {where}: {text} (check the path given to --db or BATCHRUN_DB)")


def _is_busy(e: BaseException) -> bool:
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


def retry_busy(fn: Callable[[], T]) -> T:
    """Run a statement that can meet another process's write; SQLITE_BUSY that the busy timeout does not cover
    (a WAL snapshot upgrade, a journal-mode change) is retried with jitter until the same timeout."""
    for attempt in Retrying(
        retry=retry_if_exception(_is_busy),
        stop=stop_after_delay(BUSY_TIMEOUT_S),
        wait=wait_random_exponential(multiplier=0.01, max=0.5),
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable")


class Store:
    def __init__(self, path: str | Path) -> None:
        """Open (and create or upgrade) the database; any problem is a StoreError with the fix in its message."""
        self.path = Path(path)
        self.db: Database | None = None
        self._parts: dict[int, tuple[bytes, bytes]] = {}
        try:
            self._open()
        except (sqlite3.Error, OSError) as e:
            if self.db is not None:
                self.db.close()
            raise store_error(e, self.path) from None

    def _open(self) -> None:
        if self.path.is_dir():
            raise IsADirectoryError(str(self.path))
        self.is_new = not self.path.exists() and self._create()
        create_private_file(self.path)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self.db = Database(conn)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        retry_busy(lambda: check_not_newer(conn, self.path))
        retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute("PRAGMA synchronous=NORMAL")
        if retry_busy(lambda: migrations.pending(self.db)):
            with migration_lock(self.path):
                retry_busy(lambda: migrations.apply(self.db))
                retry_busy(lambda: record_versions(conn))

    def _create(self) -> bool:
        """Make the database with its whole schema under a private name, then link it into place: no process ever
        sees it without its tables, and of processes creating it at once one wins and the others open its file.
        Returns whether this process created it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one name per thread too: two threads of a process making the database must not share (and unlink) it
        tmp = self.path.with_name(f".{self.path.name}.new-{os.getpid()}-{threading.get_ident()}")
        tmp.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA synchronous=OFF")  # one fsync below instead of one per migration
                conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # new databases only: it is set before any table
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # prune gives pages back without a whole VACUUM
                migrations.apply(Database(conn))
                record_versions(conn)
            finally:
                conn.close()
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            return not self.path.exists()  # no hard links here: create in place, the migration lock serialises
        finally:
            tmp.unlink(missing_ok=True)
            Path(f"{tmp}-journal").unlink(missing_ok=True)

    def close(self) -> None:
        self.db.close()

    def discard(self) -> None:
        """Remove a database this process created and that holds no run: bad input leaves no trace."""
        if self.is_new and not self.run_ids():
            self.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            locks = lock_dir(self.path)
            (locks / MIGRATION_LOCK).unlink(missing_ok=True)
            with suppress(OSError):
                locks.rmdir()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """A write transaction that takes the write lock up front (BEGIN IMMEDIATE): a transaction that read first
        and then writes can get SQLITE_BUSY from SQLite at once, without the busy timeout."""
        retry_busy(lambda: self.db.execute("BEGIN IMMEDIATE"))
        try:
            yield
        except BaseException:
            if self.db.conn.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def _big_cache(self, kib: int = 32768) -> Iterator[None]:
        """A larger page cache while a run's items are inserted (four indexes grow at random places), given back
        after, so a long run's memory stays what it was."""
        before = self._one("PRAGMA cache_size")[0]
        self.db.execute(f"PRAGMA cache_size = -{kib}")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA cache_size = {int(before)}")

    def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | tuple | None:
        return self.db.execute(sql, list(params)).fetchone()

    # runs

    def find_run(self, input_sha256: str, fingerprint: str, endpoint: str) -> str | None:
        """The run of this input and settings on this endpoint (or on an unknown one: made before endpoints were
        recorded)."""
        row = self._one(
            "SELECT id FROM runs WHERE input_sha256 = ? AND fingerprint = ? AND (endpoint = ? OR endpoint IS NULL) "
            "ORDER BY endpoint IS NULL, created_at DESC LIMIT 1",
            [input_sha256, fingerprint, endpoint],
        )
        return row[0] if row else None

    def unfinished_elsewhere(self, input_sha256: str, fingerprint: str, endpoint: str) -> dict[str, Any] | None:
        """An unfinished run of this input and settings made on another endpoint."""
        rows = list(
            self.db.query(
                "SELECT id, endpoint FROM runs r WHERE input_sha256 = ? AND fingerprint = ? AND endpoint != ? "
                f"AND {UNFINISHED} "
                "ORDER BY created_at DESC LIMIT 1",
                [input_sha256, fingerprint, endpoint, PENDING, IN_FLIGHT],
            )
        )
        return rows[0] if rows else None

    def update_run_job(self, run_id: str, job: dict[str, Any], mode: str) -> None:
        self.db.execute(
            "UPDATE runs SET job = ?, mode = ?, updated_at = ? WHERE id = ?",
            [orjson.dumps(job).decode(), mode, time.time(), run_id],
        )

    def models(self, run_id: str) -> list[str]:
        return [
            m
            for (m,) in self.db.execute(
                "SELECT DISTINCT model FROM run_tallies WHERE run_id = ? AND items > 0 ORDER BY model", [run_id]
            )
        ]

    def set_run_output(self, run_id: str, path: str) -> None:
        self.db.execute("UPDATE runs SET output_path = ? WHERE id = ?", [path, run_id])

    def add_limit_use(self, run_id: str, use: dict[str, Any]) -> None:
        """Add one command's online sending (seconds, amounts used, 429s) to the run's; limits are the latest."""
        with self._write():
            (stored,) = self.db.execute("SELECT limit_use FROM runs WHERE id = ?", [run_id]).fetchone()
            total = orjson.loads(stored) if stored else {"seconds": 0.0, "rate_limited": 0, "used": {}, "limits": {}}
            total["seconds"] += use["seconds"]
            total["rate_limited"] += use["rate_limited"]
            for name, amount in use["used"].items():
                total["used"][name] = total["used"].get(name, 0) + amount
            total["limits"].update({k: v for k, v in use["limits"].items() if v})
            self.db.execute("UPDATE runs SET limit_use = ? WHERE id = ?", [orjson.dumps(total).decode(), run_id])

    def set_run_endpoint(self, run_id: str, endpoint: str) -> None:
        self.db.execute("UPDATE runs SET endpoint = ? WHERE id = ?", [endpoint, run_id])

    def unfinished_run_from(self, input_path: str, fingerprint: str, input_sha256: str) -> str | None:
        """A run made from this path, when its content was different, with these settings, that still has items
        to send. (A run of the same content is not one: another process may have just created it.)"""
        row = self._one(
            f"SELECT id FROM runs r WHERE input_path = ? AND fingerprint = ? AND input_sha256 != ? AND {UNFINISHED} "
            "ORDER BY created_at DESC LIMIT 1",
            [input_path, fingerprint, input_sha256, PENDING, IN_FLIGHT],
        )
        return row[0] if row else None

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        if not rows:
            return None
        run = rows[0]
        run["job"] = orjson.loads(run["job"])
        return run

    def run_ids(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT id FROM runs ORDER BY created_at").fetchall()]

    def create_run(self, run: dict[str, Any], items: Iterable[Any]) -> int:
        """Insert a run and all its items in one transaction: on any input problem nothing is written.

        Every problem of the file is reported at once, in line order: those `items` raises (InputError, after the
        whole file is read) merged with custom_ids used twice. If another process created the same run (same id,
        input and settings) meanwhile, that run is kept and its size returned.
        """
        now = time.time()
        row = {
            "endpoint": None,
            **run,
            "job": orjson.dumps(run["job"]).decode(),
            "created_at": now,
            "updated_at": now,
            "status": "pending",
            "total": 0,
        }
        with self._write(), self._big_cache():
            inserted = self.db.execute(
                "INSERT INTO runs (id, created_at, updated_at, input_path, input_sha256, fingerprint, mode, job, "
                "status, total, endpoint) VALUES (:id, :created_at, :updated_at, :input_path, :input_sha256, "
                ":fingerprint, :mode, :job, :status, :total, :endpoint) ON CONFLICT (id) DO NOTHING",
                row,
            ).rowcount
            if not inserted:
                return self._same_run(run)
            total, error = self._insert_items(run["id"], items)
            _raise_input_problems(error, self._duplicates(run["id"], run["input_path"], run["job"].get("id_field")))
            self.db.execute("UPDATE runs SET total = ? WHERE id = ?", [total, run["id"]])
            self.db.execute(
                "INSERT INTO run_tallies SELECT run_id, model, '', state, '', count(*), 0, 0, 0, 0, 0, "
                "sum(length(own)) FROM items WHERE run_id = ? GROUP BY model, state",
                [run["id"]],
            )
        return total

    def _same_run(self, run: dict[str, Any]) -> int:
        total, sha, fingerprint = self._one(
            "SELECT total, input_sha256, fingerprint FROM runs WHERE id = ?", [run["id"]]
        )
        if (sha, fingerprint) != (run["input_sha256"], run["fingerprint"]):
            raise UsageError(
                f"run {run['id']} already exists with a different input file or settings "
                f"(use `batchrun resume {run['id']}` to continue it, or choose another --run-id)"
            )
        return total

    def _insert_items(self, run_id: str, items: Iterable[Any]) -> tuple[int, InputError | None]:
        """Insert every item `items` yields; an InputError it raises at the end is returned, not raised.

        Two stages overlap: this thread reads, renders and hashes each request while its bytes are in the CPU's
        cache (SHA-256 runs without the GIL), and a writer thread inserts the previous chunk (so does SQLite). A
        chunk holds each item's own part and hash, and a request's shared part only where it differs from the
        previous request's. Only the writer touches the connection until it is done; at most two chunks are held."""
        parts = _PartIds(self.db.conn)
        shared = _SharedParts()
        part = 0
        total = 0
        error = None
        chunk: list[tuple[Any, ...]] = []
        writing: Future[None] | None = None

        def write(rows: list[tuple[Any, ...]]) -> None:
            nonlocal part
            values = []
            files = []
            for line, cid, model, own, new_part, _, source_id, kept, file in rows:
                if new_part is not None:
                    part = parts.get(*new_part)
                values.append((line, cid, model, len(own), part, source_id, kept))
                if file is not None:
                    files.append((run_id, line, *file))
            if files:
                self.db.conn.executemany(
                    "INSERT INTO item_files (run_id, line_no, file, sha256, bytes, extra) VALUES (?, ?, ?, ?, ?, ?)",
                    files,
                )
            owns = [row[3] for row in rows]
            starts = itertools.accumulate(map(len, owns), initial=1)  # one more than there are rows
            self.db.execute(
                INSERT_ITEMS,
                {
                    "run_id": run_id,
                    "state": PENDING,
                    "rows": orjson.dumps([(*v, s) for v, s in zip(values, starts, strict=False)]).decode(),
                    "owns": b"".join(owns),
                    "hashes": b"".join(row[5] for row in rows),
                },
            )

        def flush() -> None:
            nonlocal writing, chunk, total
            if writing is not None:
                writing.result()
            writing = pool.submit(write, chunk) if chunk else None
            total += len(chunk)
            chunk = []

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrun-insert") as pool:
            try:
                try:
                    for item in items:
                        params = item.params
                        full = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
                        start, length = split_bounds(full, params)
                        kept = getattr(item, "kept", None)
                        chunk.append(
                            (
                                item.line_no,
                                item.custom_id,
                                params["model"],
                                full[start : start + length],
                                shared.changed(full, start, length),
                                hashlib.sha256(full).digest(),
                                getattr(item, "source_id", None),
                                None if kept is None else orjson.dumps(kept, default=str).decode(),
                                getattr(item, "file", None),
                            )
                        )
                        if len(chunk) >= CREATE_CHUNK:
                            flush()
                except InputError as e:
                    error = e
                flush()
            finally:
                if writing is not None:
                    with suppress(BaseException):
                        writing.result()
            if writing is not None:
                writing.result()
        return total, error

    def _duplicates(self, run_id: str, input_path: str, id_field: str | None = None) -> InputError | None:
        """Lines whose custom_id an earlier line already used, first ones first (found by the index, so memory
        does not grow with the file)."""
        if not self._one(
            "SELECT 1 FROM items WHERE run_id = ? GROUP BY custom_id HAVING count(*) > 1 LIMIT 1", [run_id]
        ):
            return None
        from batchrun.inputs import duplicate_problem

        rows = self.db.execute(
            "SELECT line_no, coalesce(source_id, custom_id), first FROM (SELECT line_no, custom_id, source_id, "
            "min(line_no) OVER (PARTITION BY custom_id) AS first FROM items WHERE run_id = ?) "
            "WHERE line_no > first ORDER BY line_no",
            [run_id],
        )
        lines, problems, more = [], [], 0
        for line, custom_id, first in rows:
            if len(problems) >= MAX_PROBLEMS:
                more += 1
                continue
            lines.append(line)
            problems.append(duplicate_problem(input_path, line, first, custom_id, id_field))
        return InputError(problems, more, lines)

    def set_run_status(self, run_id: str, status: str) -> None:
        self.db.execute("UPDATE runs SET status = ?, updated_at = ? WHERE id = ?", [status, time.time(), run_id])

    # items

    def release_in_flight(self, run_id: str) -> int:
        """Items a dead process left in flight have no result: they go back to pending."""
        cur = self.db.execute(
            f"UPDATE items SET state = ? WHERE run_id = ? AND state = ? AND {NOT_DONE}", [PENDING, run_id, IN_FLIGHT]
        )
        return cur.rowcount

    def claim_pending(self, run_id: str, after_line: int, limit: int) -> list[ClaimedItem]:
        """Mark the next pending items in input order as in flight and return them."""
        rows = self.db.execute(
            "UPDATE items SET state = ? WHERE run_id = ? AND line_no IN (SELECT line_no FROM items "
            f"WHERE run_id = ? AND state = ? AND {NOT_DONE} AND line_no > ? ORDER BY line_no LIMIT ?) "
            "RETURNING line_no, custom_id, own, parts",
            [IN_FLIGHT, run_id, run_id, PENDING, after_line, limit],
        ).fetchall()
        rows.sort()
        return [ClaimedItem(line, cid, orjson.loads(self.request(own, parts))) for line, cid, own, parts in rows]

    def request(self, own: bytes, part: int) -> bytes:
        """An item's request bytes (as sent and hashed) from its own part and its shared part's id."""
        shared = self._parts.get(part)
        if shared is None:
            row = self._one("SELECT head, tail FROM request_parts WHERE id = ?", [part])
            shared = self._parts[part] = (bytes(row[0]), bytes(row[1]))
        return shared[0] + own + shared[1]

    def record(self, outcomes: list[Outcome], batch: BatchTimes | None = None) -> None:
        """Write a group of outcomes, each result with the state change that marks it, in one transaction.

        The tallies are adjusted once for the group (the per-row trigger stands aside meanwhile). A batch's
        succeeded results get no attempts row: `batch` (its seq and times) is their attempt."""
        rows = [_outcome_row(o) for o in outcomes]
        lines: dict[str, list[int]] = {}
        for o in outcomes:
            lines.setdefault(o.run_id, []).append(o.line_no)
        with self._write():
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

    def reuse_results(self, run_id: str, judge: CacheJudge) -> int:
        """Answer pending items from identical requests that already succeeded in this database, on the same
        endpoint: never pay twice, and never serve one endpoint's answer (the emulator's) to a run on another.

        Only a reply this run's job accepts is served (stop reason, schema, truncation): the run that stored it
        may have judged it otherwise (e.g. accept_truncated). A reply a run that judges alike stored itself was
        accepted by the same judge: such replies are served by one statement, as before. Any other candidate
        reply is judged by `judge.accepts_stored`, as a new reply would be, a chunk of items at a time.

        The reused result is the original reply; the item is billed nothing (via 'cache', zero tokens), and
        `answered_from` names the run it was copied from.
        """
        if not self.db.execute(REUSE_MATCHED + " LIMIT 1", [run_id, PENDING, run_id]).fetchall():
            return 0  # no identical request (most runs): one look-up per pending item, as before
        alike = [
            other
            for other, schema, via, accept in self.db.execute(REUSE_JUDGING, [run_id])
            if judge.judges_like(schema if schema is None else orjson.loads(schema), via, bool(accept))
        ]
        values = {"alike": orjson.dumps(alike).decode(), "succeeded": SUCCEEDED, "now": time.time()}
        reused = self.db.execute(REUSE_ALIKE, {**values, "run": run_id, "pending": PENDING}).rowcount
        matched = [line for (line,) in self.db.execute(REUSE_MATCHED, [run_id, PENDING, run_id])]
        for at in range(0, len(matched), REUSE_CHUNK):
            with self._write():
                reused += self._reuse_chunk(run_id, matched[at : at + REUSE_CHUNK], judge)
        return reused

    def _reuse_chunk(self, run_id: str, lines: list[int], judge: CacheJudge) -> int:
        rows = self.db.execute(REUSE_CANDIDATES, [run_id, run_id, PENDING, orjson.dumps(lines).decode()]).fetchall()
        now = time.time()
        updates: dict[int, tuple[Any, ...]] = {}
        for line_no, source_run, result, stop_reason in rows:
            if line_no in updates:
                continue
            ok, data = judge.accepts_stored(result)
            if ok:
                updates[line_no] = (SUCCEEDED, result, source_run, now, stop_reason, data, run_id, line_no, PENDING)
        self.db.conn.executemany(REUSE_UPDATE, list(updates.values()))
        return len(updates)

    def retry_failed(self, run_id: str, error_type: str | None = None, changes: dict[str, Any] | None = None) -> int:
        """Failed items back to pending; their earlier errors stay in the attempts table.

        `changes` (e.g. `{"max_tokens": 64}`) are set in those items' params: they become new requests (a new
        request hash), and the other items of the run keep theirs."""
        where = f"WHERE run_id = ? AND state = ? AND {NOT_DONE}" + (" AND error_type = ?" if error_type else "")
        params: list[Any] = [run_id, FAILED] + ([error_type] if error_type is not None else [])
        with self._write():
            if changes:
                self._change_params(where, params, changes)
            return self.db.execute(
                "UPDATE items SET state = ?, result = NULL, error_type = NULL, error_status = NULL, "
                f"error_class = NULL, error_message = NULL, stop_reason = NULL, data = NULL {where}",
                [PENDING, *params],
            ).rowcount

    def _change_params(self, where: str, params: list[Any], changes: dict[str, Any]) -> None:
        """Set `changes` in the requests of the items `where` selects: new request bytes, split and stored like a
        new item's (its shared part found or added), with their new hash."""
        rows = self.db.execute(f"SELECT line_no, own, parts FROM items {where}", params).fetchall()
        parts = _PartIds(self.db.conn)
        updates = []
        for line_no, own, part in rows:
            new_params = {**orjson.loads(self.request(bytes(own), part)), **changes}
            full = orjson.dumps(new_params, option=orjson.OPT_SORT_KEYS)
            start, length = split_bounds(full, new_params)
            updates.append(
                (
                    full[start : start + length],
                    parts.of(full, start, length),
                    hashlib.sha256(full).digest(),
                    new_params["model"],
                    params[0],
                    line_no,
                )
            )
        self.db.conn.executemany(
            "UPDATE items SET own = ?, parts = ?, request_hash = ?, model = ? WHERE run_id = ? AND line_no = ?",
            updates,
        )

    def check(self) -> list[str]:
        """Inconsistencies a crash or a hand edit could leave; an empty list means the store is sound."""
        try:
            return self._check()
        except sqlite3.DatabaseError as e:
            return [f"the database is damaged: {e} (restore it from a backup; `sqlite3 DB .recover` may save rows)"]

    def _check(self) -> list[str]:
        problems = [f"integrity_check: {row[0]}" for row in self.db.execute("PRAGMA integrity_check") if row[0] != "ok"]
        checks = {
            "items whose run does not exist": "SELECT count(*) FROM items WHERE run_id NOT IN (SELECT id FROM runs)",
            "attempts whose item does not exist": "SELECT count(*) FROM attempts a WHERE NOT EXISTS "
            "(SELECT 1 FROM items i WHERE i.run_id = a.run_id AND i.line_no = a.line_no)",
            "items in an unknown state": f"SELECT count(*) FROM items WHERE state NOT IN {STATES!r}",
            "succeeded items without a result": "SELECT count(*) FROM items WHERE state = 'succeeded' "
            "AND (result IS NULL OR json_extract(result, '$.type') != 'succeeded')",
            "failed items without an error": "SELECT count(*) FROM items WHERE state = 'failed' "
            "AND (result IS NULL OR error_type IS NULL)",
            "pending items holding a result": "SELECT count(*) FROM items WHERE state IN ('pending', 'in_flight') "
            "AND result IS NOT NULL",
            "runs whose item count is wrong": "SELECT count(*) FROM runs r WHERE total != "
            "(SELECT count(*) FROM items WHERE run_id = r.id)",
            "run tallies that differ from the items": "SELECT count(*) FROM (SELECT run_id, model, via, state, "
            "stop_reason, sum(n) FROM (SELECT run_id, model, via, state, stop_reason, items AS n FROM run_tallies "
            "UNION ALL SELECT run_id, model, coalesce(via, ''), state, coalesce(stop_reason, ''), -count(*) "
            "FROM items GROUP BY 1, 2, 3, 4, 5) GROUP BY 1, 2, 3, 4, 5 HAVING sum(n) != 0)",
            "custom_ids used twice in a run": "SELECT count(*) FROM (SELECT 1 FROM items GROUP BY run_id, custom_id "
            "HAVING count(*) > 1)",
        }
        for what, sql in checks.items():
            n = self.db.execute(sql).fetchone()[0]
            if n:
                problems.append(f"{n} {what}")
        return problems

    def in_flight_count(self) -> int:
        """Items left in flight: a process is sending them, or one died and a resume will send them again."""
        return self._one("SELECT count(*) FROM items WHERE state = ?", [IN_FLIGHT])[0]

    def counts(self, run_id: str) -> dict[str, int]:
        """Items by state, from the run's tallies (kept exact by a trigger, so no row is counted)."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in self.db.execute(
            "SELECT state, sum(items) FROM run_tallies WHERE run_id = ? GROUP BY state", [run_id]
        ):
            counts[state] = n
        return counts

    def counted_counts(self, run_id: str) -> dict[str, int]:
        """Items by state counted row by row: what the tallies must always equal (for `doctor` and tests)."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in self.db.execute("SELECT state, count(*) FROM items WHERE run_id = ? GROUP BY state", [run_id]):
            counts[state] = n
        return counts

    def usage(self, run_id: str) -> list[dict[str, Any]]:
        """Tokens by model and path (online or batch), for what the run has been billed so far."""
        return list(
            self.db.query(
                "SELECT model, via, sum(items) AS items, sum(input) AS input, sum(output) AS output, "
                "sum(cache_creation) AS cache_creation, sum(cache_creation_1h) AS cache_creation_1h, "
                "sum(cache_read) AS cache_read FROM run_tallies WHERE run_id = ? AND via != '' "
                "GROUP BY model, via HAVING sum(items) > 0 ORDER BY model, via",
                [run_id],
            )
        )

    def answered_by(self, run_id: str) -> dict[str, int]:
        """Succeeded items by what answered them: the API online, a batch, or the response cache."""
        names = {"online": "api", "batch": "batch", "cache": "cache"}
        counts = dict.fromkeys(names.values(), 0)
        for via, n in self.db.execute(
            "SELECT via, sum(items) FROM run_tallies WHERE run_id = ? AND state = ? GROUP BY via HAVING sum(items)",
            [run_id, SUCCEEDED],
        ):
            counts[names.get(via, via)] = n
        return counts

    def stop_reasons(self, run_id: str) -> dict[str, int]:
        """Succeeded items by the reply's stop_reason (end_turn, tool_use, max_tokens accepted, ...)."""
        rows = self.db.execute(
            "SELECT CASE stop_reason WHEN '' THEN 'unknown' ELSE stop_reason END, sum(items) FROM run_tallies "
            "WHERE run_id = ? AND state = ? GROUP BY 1 HAVING sum(items) > 0 ORDER BY 2 DESC, 1",
            [run_id, SUCCEEDED],
        )
        return dict(rows.fetchall())

    def failures(self, run_id: str) -> list[dict[str, Any]]:
        """Failed items grouped by error type and status, with one example message each."""
        return list(
            self.db.query(
                "SELECT error_type, error_status, count(*) AS items, min(error_message) AS example "
                f"FROM items WHERE run_id = ? AND state = ? AND {NOT_DONE} GROUP BY error_type, error_status "
                "ORDER BY items DESC",
                [run_id, FAILED],
            )
        )

    def attempt_count(self, run_id: str) -> int:
        """Requests the run has sent: its attempts rows and the items its batches answered (from the tallies)."""
        return self._one(
            "SELECT (SELECT count(*) FROM attempts WHERE run_id = ?1) + (SELECT coalesce(sum(items), 0) "
            "FROM run_tallies WHERE run_id = ?1 AND via = 'batch' AND state = ?2)",
            [run_id, SUCCEEDED],
        )[0]

    def iter_results(self, run_id: str, only: str | None = None) -> Iterator[tuple[str, str, str]]:
        """(custom_id, state, result JSON) in input order, for succeeded and failed items."""
        states = [only] if only else [SUCCEEDED, FAILED]
        marks = ",".join("?" * len(states))
        cur = self.db.execute(
            f"SELECT custom_id, state, result FROM items WHERE run_id = ? AND state IN ({marks}) ORDER BY line_no",
            [run_id, *states],
        )
        while rows := cur.fetchmany(1000):
            yield from rows

    # batches

    def pending_costs(self, run_id: str) -> Iterator[tuple[int, int, str, int]]:
        """(line_no, bytes as sent, model, max_tokens) of the pending items in input order: what a batch plan and
        the budget need, without loading params."""
        cur = self.db.execute(
            "SELECT line_no, ? + length(CAST(line_no AS TEXT)) + length(own) + length(p.head) + length(p.tail)"
            f"{self._file_extra(run_id)}, model, {MAX_TOKENS} FROM items JOIN request_parts p ON p.id = parts "
            f"WHERE run_id = ? AND state = ? AND {NOT_DONE} ORDER BY line_no",
            [SENT_ID_OVERHEAD, run_id, PENDING],
        )
        while rows := cur.fetchmany(5000):
            yield from rows

    def open_batch_costs(self, run_id: str) -> Iterator[tuple[int, int, str, int]]:
        """The same for the items waiting in the run's open batches."""
        cur = self.db.execute(
            f"SELECT line_no, length(own) + length(p.head) + length(p.tail){self._file_extra(run_id)}, model, "
            f"{MAX_TOKENS} FROM items "
            f"JOIN request_parts p ON p.id = parts WHERE run_id = ? AND {IN_BATCH} AND batch_seq IN "
            "(SELECT seq FROM batches WHERE run_id = ? AND collected_at IS NULL)",
            [run_id, run_id],
        )
        while rows := cur.fetchmany(5000):
            yield from rows

    def _file_extra(self, run_id: str) -> str:
        """SQL adding an item's file block's bytes to its stored size (nothing for a run not made from a folder)."""
        if not self.has_item_files(run_id):
            return ""
        return (
            " + coalesce((SELECT f.extra FROM item_files f WHERE f.run_id = items.run_id "
            "AND f.line_no = items.line_no), 0)"
        )

    # folder inputs (batchrun/documents.py)

    def has_item_files(self, run_id: str) -> bool:
        return self._one("SELECT 1 FROM item_files WHERE run_id = ? LIMIT 1", [run_id]) is not None

    def pending_files(self, run_id: str) -> Iterator[tuple[str, int]]:
        """(relative path, size at creation) of the files of the pending items, in input order (not those in an
        open batch: their files were sent, and their results must be collected whatever became of the files)."""
        cur = self.db.execute(
            "SELECT f.file, f.bytes FROM items JOIN item_files f ON f.run_id = items.run_id AND f.line_no = "
            f"items.line_no WHERE items.run_id = ? AND items.state = ? AND {NOT_DONE} ORDER BY items.line_no",
            [run_id, PENDING],
        )
        while rows := cur.fetchmany(5000):
            yield from rows

    def pending_requests(self, run_id: str) -> Iterator[tuple[int, bytes]]:
        """(line_no, request bytes as stored) of the pending items, in input order."""
        cur = self.db.execute(
            f"SELECT line_no, own, parts FROM items WHERE run_id = ? AND state = ? AND {NOT_DONE} ORDER BY line_no",
            [run_id, PENDING],
        )
        while rows := cur.fetchmany(1000):
            for line_no, own, part in rows:
                yield line_no, self.request(own, part)

    def set_item_file_extra(self, run_id: str, line_no: int, extra: int) -> None:
        self.db.execute("UPDATE item_files SET extra = ? WHERE run_id = ? AND line_no = ?", [extra, run_id, line_no])

    def upload_ids(self, run_id: str, endpoint: str) -> dict[str, str]:
        """{sha256: file_id} of the run's files already uploaded to this endpoint."""
        rows = self.db.execute(
            "SELECT u.sha256, u.file_id FROM uploads u WHERE u.endpoint = ? AND u.sha256 IN "
            "(SELECT sha256 FROM item_files WHERE run_id = ?)",
            [endpoint, run_id],
        )
        return dict(rows.fetchall())

    def add_upload(self, endpoint: str, sha256: str, file_id: str, file: str, media_type: str, size: int) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO uploads (endpoint, sha256, file_id, file, media_type, bytes, uploaded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [endpoint, sha256, file_id, file, media_type, size, time.time()],
        )

    def add_batch_plans(self, run_id: str, plans: list[tuple[int, int, int, int]], now: float) -> list[dict[str, Any]]:
        """Write planned batches, each `(first_line, last_line, n_items, n_bytes)` over the pending items, in one
        transaction: the plan rows, and every item moved to in_flight with its batch. Nothing is sent yet; after a
        crash, a plan without a batch id is reconciled against the account's batches before anything is created."""
        with self._write():
            seq = self._one("SELECT coalesce(max(seq), 0) FROM batches WHERE run_id = ?", [run_id])[0]
            for first, last, n_items, n_bytes in plans:
                seq += 1
                moved = self.db.execute(
                    f"UPDATE items SET state = ?, batch_seq = ? WHERE run_id = ? AND state = ? AND {NOT_DONE} "
                    "AND line_no BETWEEN ? AND ?",
                    [IN_FLIGHT, seq, run_id, PENDING, first, last],
                ).rowcount
                if moved != n_items:
                    raise RuntimeError(f"batch plan {seq} of run {run_id}: {moved} pending items, expected {n_items}")
                first_id, last_id = (
                    self._one("SELECT custom_id FROM items WHERE run_id = ? AND line_no = ?", [run_id, line])[0]
                    for line in (first, last)
                )
                self.db.execute(
                    "INSERT INTO batches (run_id, seq, planned_at, n_items, n_bytes, first_line, last_line, "
                    "first_custom_id, last_custom_id, processing_status, token) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, seq, now, n_items, n_bytes, first, last, first_id, last_id, "planned", new_batch_token()],
                )
            count = len(plans)
        return self.batches(run_id)[-count:] if count else []

    def batch_request_lines(self, run_id: str, seq: int) -> Iterator[bytes]:
        """The batch's requests as `{"custom_id":...,"params":...}` JSON, in input order, from the stored params
        (never re-serialised: what was validated at input is what is sent)."""
        token = self._batch_token(run_id, seq)
        cur = self.db.execute(
            f"SELECT custom_id, line_no, own, parts FROM items WHERE run_id = ? AND batch_seq = ? AND {IN_BATCH} "
            "ORDER BY line_no",
            [run_id, seq],
        )
        while rows := cur.fetchmany(5000):
            for custom_id, line_no, own, part in rows:
                sent = sent_custom_id(token, line_no) if token else custom_id
                yield orjson.dumps({"custom_id": sent, "params": orjson.Fragment(self.request(own, part))})

    def _batch_token(self, run_id: str, seq: int) -> str | None:
        """The plan's token; None for plans made before tokens existed (they send the user's custom_ids)."""
        row = self._one("SELECT token FROM batches WHERE run_id = ? AND seq = ?", [run_id, seq])
        return row[0] if row else None

    def batch_content(self, run_id: str, seq: int) -> tuple[int, int]:
        """(items, bytes of custom_id + params) the batch holds now, to check against its plan before sending."""
        id_bytes = (
            "? + length(CAST(line_no AS TEXT))" if self._batch_token(run_id, seq) else "0 * ? + length(custom_id)"
        )
        row = self._one(
            f"SELECT count(*), coalesce(sum({id_bytes} + length(own) + length(p.head) + length(p.tail)"
            f"{self._file_extra(run_id)}), 0) "
            f"FROM items JOIN request_parts p ON p.id = parts WHERE run_id = ? AND batch_seq = ? AND {IN_BATCH}",
            [SENT_ID_OVERHEAD, run_id, seq],
        )
        return row[0], row[1]

    def batch_created(self, run_id: str, seq: int, batch: dict[str, Any], *, adopted: bool = False) -> None:
        """The API's batch id, stored right after create returns (or when a reconcile found it)."""
        self.db.execute(
            "UPDATE batches SET id = ?, adopted = ? WHERE run_id = ? AND seq = ?",
            [batch["id"], int(adopted), run_id, seq],
        )
        self.update_batch(run_id, seq, batch)

    def update_batch(self, run_id: str, seq: int, batch: dict[str, Any]) -> None:
        """What the API last said about the batch (status, counts, timestamps)."""
        self.db.execute(
            "UPDATE batches SET processing_status = ?, request_counts = ?, created_at = ?, ended_at = ?, "
            "expires_at = ?, cancel_initiated_at = ?, results_url = ? WHERE run_id = ? AND seq = ?",
            [
                batch.get("processing_status"),
                orjson.dumps(batch.get("request_counts")).decode(),
                batch.get("created_at"),
                batch.get("ended_at"),
                batch.get("expires_at"),
                batch.get("cancel_initiated_at"),
                batch.get("results_url"),
                run_id,
                seq,
            ],
        )

    def batches(self, run_id: str, *, open_only: bool = False) -> list[dict[str, Any]]:
        """The run's batches in order; `open_only`: those whose results are not stored yet (planned ones too)."""
        sql = "SELECT * FROM batches WHERE run_id = ?" + (" AND collected_at IS NULL" if open_only else "")
        rows = list(self.db.query(sql + " ORDER BY seq", [run_id]))
        for row in rows:
            row["request_counts"] = orjson.loads(row["request_counts"]) if row["request_counts"] else None
        return rows

    def open_batch_ids(self, run_id: str) -> list[str]:
        """The API ids of the run's batches whose results are not stored yet (plans without an id left out)."""
        return [row["id"] for row in self.batches(run_id, open_only=True) if row["id"]]

    def batch(self, run_id: str, seq: int) -> dict[str, Any]:
        return next(iter(self.db.query("SELECT * FROM batches WHERE run_id = ? AND seq = ?", [run_id, seq])))

    def batch_known(self, batch_id: str) -> bool:
        """Whether any run in this store already owns this API batch id."""
        return (
            self._one(
                "SELECT 1 FROM batches WHERE id = ? UNION ALL SELECT 1 FROM foreign_batches WHERE id = ?",
                [batch_id, batch_id],
            )
            is not None
        )

    def reject_foreign(self, run_id: str, seq: int, batch_id: str) -> None:
        """An adopted batch whose results are not this plan's: forget it (never look at it again) and leave the
        plan without a batch, so it is looked for again or created."""
        with self.db.atomic():
            self.db.execute(
                "INSERT OR IGNORE INTO foreign_batches (id, run_id, seq, found_at) VALUES (?, ?, ?, ?)",
                [batch_id, run_id, seq, time.time()],
            )
            self.db.execute(
                "UPDATE batches SET id = NULL, adopted = 0, processing_status = 'planned', request_counts = NULL, "
                "created_at = NULL, ended_at = NULL, expires_at = NULL, results_url = NULL, error = ? "
                "WHERE run_id = ? AND seq = ?",
                [f"{batch_id} was adopted but its results are another run's: left alone", run_id, seq],
            )

    def batch_members(self, run_id: str, seq: int, custom_ids: list[str]) -> dict[str, tuple[int, int, str]]:
        """custom_id as sent -> (line_no, attempts so far, model) of those items of the batch that still wait for a
        result. Items already recorded are left out, so reading a batch's results again never records twice."""
        token = self._batch_token(run_id, seq)
        if token is None:
            rows = self.db.execute(
                "SELECT i.custom_id, i.line_no, i.attempts, i.model FROM json_each(?) AS j CROSS JOIN items AS i "
                "ON i.run_id = ? AND i.custom_id = j.value WHERE i.batch_seq = ? AND i.state = ?",
                [orjson.dumps(custom_ids).decode(), run_id, seq, IN_FLIGHT],
            ).fetchall()
            return {custom_id: (line_no, attempts, model) for custom_id, line_no, attempts, model in rows}
        prefix = f"{token}-"
        lines = [int(c[len(prefix) :]) for c in custom_ids if c.startswith(prefix) and c[len(prefix) :].isdigit()]
        rows = self.db.execute(
            # the chunk's lines drive the join (one index lookup each), not a scan of the whole batch per chunk
            "SELECT i.line_no, i.attempts, i.model FROM json_each(?) AS j CROSS JOIN items AS i "
            "ON i.run_id = ? AND i.line_no = j.value WHERE i.batch_seq = ? AND i.state = ?",
            [orjson.dumps(lines).decode(), run_id, seq, IN_FLIGHT],
        ).fetchall()
        return {sent_custom_id(token, line_no): (line_no, attempts, model) for line_no, attempts, model in rows}

    def release_batch(self, run_id: str, seq: int) -> int:
        """Items of the batch still without a result go back to pending (sent again by a later batch)."""
        return self.db.execute(
            f"UPDATE items SET state = ? WHERE run_id = ? AND batch_seq = ? AND {IN_BATCH}",
            [PENDING, run_id, seq],
        ).rowcount

    def close_batch(self, run_id: str, seq: int, *, status: str | None = None, error: str | None = None) -> None:
        """The batch is done with: its results are stored (or, status 'not_created', it was never sent)."""
        self.db.execute(
            "UPDATE batches SET collected_at = ?, processing_status = coalesce(?, processing_status), "
            "error = coalesce(?, error) WHERE run_id = ? AND seq = ?",
            [time.time(), status, error, run_id, seq],
        )

    def set_batch_error(self, run_id: str, seq: int, error: str | None) -> None:
        self.db.execute("UPDATE batches SET error = ? WHERE run_id = ? AND seq = ?", [error, run_id, seq])

    def release_stray_in_flight(self, run_id: str) -> int:
        """In-flight items in no open batch (none should exist) go back to pending, so nothing is stuck."""
        return self.db.execute(
            f"UPDATE items SET state = ? WHERE run_id = ? AND state = ? AND {NOT_DONE} AND (batch_seq IS NULL OR "
            "batch_seq NOT IN "
            "(SELECT seq FROM batches WHERE run_id = ? AND collected_at IS NULL))",
            [PENDING, run_id, IN_FLIGHT, run_id],
        ).rowcount

    def unfinished_work(self, run_id: str) -> tuple[int, int, int]:
        """(items, characters of their params, sum of max_tokens) of the items without an outcome yet: what
        deadline mode's plan needs to size the rest of the run online."""
        row = self._one(
            "SELECT count(*), coalesce(sum(length(own) + length(p.head) + length(p.tail)), 0), "
            f"coalesce(sum({MAX_TOKENS}), 0) FROM items JOIN request_parts p ON p.id = parts "
            f"WHERE run_id = ? AND state IN (?, ?) AND {NOT_DONE}",
            [run_id, PENDING, IN_FLIGHT],
        )
        return int(row[0]), int(row[1]), int(row[2])

    def request_cancel(self, run_id: str) -> None:
        """`batchrun cancel`: a process polling this run stops at its next check, and creates no batch."""
        self.db.execute("UPDATE runs SET cancel_requested_at = ? WHERE id = ?", [time.time(), run_id])

    def cancel_requested(self, run_id: str) -> bool:
        row = self._one("SELECT cancel_requested_at FROM runs WHERE id = ?", [run_id])
        return bool(row and row[0] is not None)

    def clear_cancel(self, run_id: str) -> None:
        self.db.execute("UPDATE runs SET cancel_requested_at = NULL WHERE id = ?", [run_id])


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


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _raise_input_problems(*errors: InputError | None) -> None:
    """Raise one InputError holding the problems of all `errors`, in line order, at most MAX_PROBLEMS listed."""
    found = [e for e in errors if e is not None]
    if not found:
        return
    pairs = sorted(
        (line, n, text) for e in found for n, (line, text) in enumerate(zip(e.lines, e.problems, strict=True))
    )
    more = sum(e.more for e in found) + max(0, len(pairs) - MAX_PROBLEMS)
    kept = pairs[:MAX_PROBLEMS]
    raise InputError([text for _, _, text in kept], more, [line for line, _, _ in kept])


# housekeeping
# The queries of `batchrun runs`, `prune` and `delete` (batchrun/housekeeping.py).

ITEM_OVERHEAD_BYTES = 280  # per item beyond its own request and result (bench/scale.py): hash, ids, indexes, free space


def run_summaries(store: Store) -> list[dict[str, Any]]:
    """Every run, oldest first, with its counts by state and the bytes its items hold (from the tallies)."""
    rows = list(
        store.db.query(
            "SELECT r.id, r.created_at, r.updated_at, r.input_path, r.mode, r.endpoint, r.status, r.total, r.job, "
            "r.pruned_at, coalesce(t.bytes, 0) AS bytes, "
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
        for table in ("attempts", "items", "batches", "foreign_batches", "run_tallies"):
            store.db.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
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


def _drop_unused_parts(store: Store) -> None:
    store.db.execute(
        "DELETE FROM request_parts WHERE id NOT IN (SELECT DISTINCT parts FROM items WHERE parts IS NOT NULL)"
    )


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


def _checkpoint(store: Store, wait_s: float = 2.0) -> None:
    """Copy the write-ahead log into the database file, which shrinks it to its pages, and empty the log. A
    reader still on an older snapshot (a long export) is waited for `wait_s` only: then the part it does not
    need is copied, and the last connection to close finishes the job."""
    store.db.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
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


# report
# The queries of `batchrun report` (batchrun/htmlreport.py): module functions over a Store, so this section only
# appends to the module.


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
