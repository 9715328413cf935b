"""The schema: every migration (sqlite-utils), in the order they are applied, the views and triggers they make,
and the versions check that keeps an older batchrun off a newer database.

sqlite-utils is imported only when a database is made or upgraded: which migrations are applied is read from its
`_sqlite_migrations` table directly, so opening an up-to-date database (every command but the first) costs no
sqlite-utils import."""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import orjson

from batchrun.errors import StoreError
from batchrun.store.parts import _hash_bytes, _PartIds, split_request

if TYPE_CHECKING:
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

INSERT_CHUNK = 2000  # items rewritten per statement by m009
# Written out in the queries they serve, so SQLite can use the partial indexes items_by_batch and items_by_state.
IN_BATCH = "state = 'in_flight'"
NOT_DONE = "state != 'succeeded'"
# For the queries over succeeded items: the run's rows in line order (its primary key), not in custom_id order.
BY_LINE = "line_no > 0"


MIGRATION_SET = "batchrun"
_steps: list[Callable[[Database], None]] = []


def migration(fn: Callable[[Database], None]) -> Callable[[Database], None]:
    """Register a migration: they are applied in the order of this module."""
    _steps.append(fn)
    return fn


def migration_names() -> list[str]:
    return [fn.__name__ for fn in _steps]


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """The names of the migrations this database has had (read only; none for a database without the table)."""
    if not _has_table(conn, "_sqlite_migrations"):
        return []
    sql = "SELECT name FROM _sqlite_migrations WHERE migration_set = ?"
    return [name for (name,) in conn.execute(sql, [MIGRATION_SET])]


def pending_migrations(applied: list[str]) -> list[str]:
    """The names of the migrations a database that has had `applied` has not had yet."""
    done = set(applied)
    return [name for name in migration_names() if name not in done]


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).fetchone() is not None


@cache
def migration_set() -> Migrations:
    """The sqlite-utils migration set of every step, built when a database is made or upgraded."""
    migrations = _import_sqlite_utils().migrations.Migrations(MIGRATION_SET)
    for fn in _steps:
        migrations()(fn)
    return migrations


def apply_migrations(conn: sqlite3.Connection) -> None:
    migration_set().apply(_import_sqlite_utils().Database(conn))


def _import_sqlite_utils() -> ModuleType:
    """sqlite-utils imports pandas and numpy whenever they are installed (0.5-1 s), for types batchrun never stores.
    They are hidden while it is imported, when no other thread could be importing them at the same moment (a
    command line); they stay importable afterwards, and a process that has them already (a notebook) keeps them."""
    if "sqlite_utils" not in sys.modules and threading.active_count() == 1:
        hidden = [name for name in ("pandas", "numpy") if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]  # `import pandas` raises ImportError
        try:
            import sqlite_utils.migrations
        except ImportError:
            pass  # a sqlite-utils that needs them after all: imported the usual way below
        finally:
            for name in hidden:
                if sys.modules.get(name, False) is None:
                    del sys.modules[name]
    import sqlite_utils
    import sqlite_utils.migrations

    return sqlite_utils


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


@migration
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


@migration
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


@migration
def m003_response_cache(db: Database) -> None:
    """Each item's request hash, so an identical request made before in this database is answered from the store."""
    db.execute("ALTER TABLE items ADD COLUMN request_hash TEXT")
    db.execute("CREATE INDEX items_by_request ON items (request_hash, state)")


@migration
def m004_batch_tokens(db: Database) -> None:
    """A token per planned batch, carried in the custom_ids sent, so a batch found after a crash is proven to be
    this plan's by its results before any is stored; and the batches found not to be ours."""
    db.execute("ALTER TABLE batches ADD COLUMN token TEXT")
    db.execute(
        "CREATE TABLE foreign_batches (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, seq INTEGER NOT NULL, found_at REAL)"
    )


@migration
def m005_endpoints(db: Database) -> None:
    """Where a run's answers come from (the emulator, the API, a gateway), and the run a cached answer was copied
    from: an answer from one endpoint is never served to a run on another."""
    db.execute("ALTER TABLE runs ADD COLUMN endpoint TEXT")
    db.execute("ALTER TABLE items ADD COLUMN answered_from TEXT")


@migration
def m006_fingerprint_without_mode(db: Database) -> None:
    """The mode no longer decides a run's identity (it may change under a run): recompute stored fingerprints."""
    from batchrun.job import Job

    for run_id, job in db.execute("SELECT id, job FROM runs").fetchall():
        fingerprint = Job.from_dict(orjson.loads(job)).fingerprint()
        db.execute("UPDATE runs SET fingerprint = ? WHERE id = ?", [fingerprint, run_id])


@migration
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


@migration
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


@migration
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


@migration
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


@migration
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


@migration
def m012_versions(db: Database) -> None:
    """Which batchrun applied each migration: a database upgraded by a newer batchrun names the version an older
    one needs to be replaced by (see check_not_newer)."""
    db.execute("CREATE TABLE batchrun_versions (migration TEXT PRIMARY KEY, version TEXT NOT NULL) WITHOUT ROWID")


@cache
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
        [batchrun_version(), MIGRATION_SET],
    )


def check_not_newer(conn: sqlite3.Connection, path: Path, applied: list[str]) -> None:
    """Refuse, before anything is written, a database a newer batchrun has migrated (`applied` names a migration
    this version does not know): this version does not know its tables, and writing to them would damage it."""
    known = set(migration_names())
    unknown = [n for n in applied if n not in known]
    if not unknown:
        return
    versions: list[str] = []
    if _has_table(conn, "batchrun_versions"):
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


@migration
def m012b_run_output(db: Database) -> None:
    """The results file (-o) a run's submit or resume asked for: whichever command ends the run writes it."""
    db.execute("ALTER TABLE runs ADD COLUMN output_path TEXT")


@migration
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


@migration
def m014_limit_use(db: Database) -> None:
    """What a run's online sending took of the account's rate limits, and the 429s it met (status, report)."""
    db.execute("ALTER TABLE runs ADD COLUMN limit_use TEXT")


@migration
def m015_billed(db: Database) -> None:
    """What the API billed each run, by model and path (online or batch), whatever became of the items: a reply
    billed to an item that went back to pending (cut, invalid, malformed, stopped) is counted once, when its
    outcome is committed, at the price of the path that got it. `Store.record` adds to it in the transaction
    that writes the outcomes; status, the progress lines and the report read it.

    Filled from the items' tokens (every billed reply added up), at the item's path; an item pending since its
    last reply has none, so its tokens are the run's mode (online, or batch)."""
    db.execute(
        "CREATE TABLE run_billed (run_id TEXT NOT NULL, model TEXT NOT NULL, via TEXT NOT NULL, "
        "input INTEGER NOT NULL, output INTEGER NOT NULL, cache_creation INTEGER NOT NULL, "
        "cache_creation_1h INTEGER NOT NULL, cache_read INTEGER NOT NULL, PRIMARY KEY (run_id, model, via)) "
        "WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO run_billed SELECT i.run_id, i.model, CASE WHEN i.via IN ('online', 'batch') THEN i.via "
        "WHEN r.mode = 'batch' THEN 'batch' ELSE 'online' END, sum(i.input_tokens), sum(i.output_tokens), "
        "sum(i.cache_creation_tokens), sum(i.cache_creation_1h_tokens), sum(i.cache_read_tokens) "
        "FROM items i JOIN runs r ON r.id = i.run_id WHERE i.input_tokens + i.output_tokens + "
        "i.cache_creation_tokens + i.cache_read_tokens > 0 GROUP BY 1, 2, 3"
    )


@migration
def m015b_run_stop(db: Database) -> None:
    """Why a run stopped before its items were done (a stop reason and the detail its words need, JSON), kept
    with its status until a later command takes the run up: `runs`, `status` and the report say what happened
    and what to do, not just "interrupted"."""
    db.execute("ALTER TABLE runs ADD COLUMN stop TEXT")
