"""The SQLite store: the only source of truth. Every SQL statement of batchrun lives in this module."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from batchrun.errors import InputError

PENDING, IN_FLIGHT, SUCCEEDED, FAILED = "pending", "in_flight", "succeeded", "failed"
STATES = (PENDING, IN_FLIGHT, SUCCEEDED, FAILED)
INSERT_CHUNK = 2000

migrations = Migrations("batchrun")


@migrations()
def m001_initial(db: Database) -> None:
    db.executescript(
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
        """
    )


@dataclass(slots=True)
class Attempt:
    started_at: float
    seconds: float
    outcome: str
    status: int | None = None
    error_class: str | None = None
    retry_after: float | None = None
    request_id: str | None = None


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


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    line_no: int
    custom_id: str
    params: dict[str, Any]


def create_private_file(path: Path) -> None:
    """The database holds prompts and replies: only its owner may read it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.is_new = not self.path.exists()
        create_private_file(self.path)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self.db = Database(conn)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        migrations.apply(self.db)

    def close(self) -> None:
        self.db.close()

    def discard(self) -> None:
        """Remove a database this process created and that holds no run: bad input leaves no trace."""
        if self.is_new and not self.run_ids():
            self.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | tuple | None:
        return self.db.execute(sql, list(params)).fetchone()

    # runs

    def find_run(self, input_sha256: str, fingerprint: str) -> str | None:
        row = self._one(
            "SELECT id FROM runs WHERE input_sha256 = ? AND fingerprint = ? ORDER BY created_at DESC LIMIT 1",
            [input_sha256, fingerprint],
        )
        return row[0] if row else None

    def unfinished_run_from(self, input_path: str, fingerprint: str) -> str | None:
        """A run made from this path with these settings that still has items to send."""
        row = self._one(
            "SELECT id FROM runs r WHERE input_path = ? AND fingerprint = ? AND EXISTS (SELECT 1 FROM items "
            "WHERE run_id = r.id AND state IN (?, ?)) ORDER BY created_at DESC LIMIT 1",
            [input_path, fingerprint, PENDING, IN_FLIGHT],
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
        """Insert a run and all its items in one transaction: on any input problem nothing is written."""
        now = time.time()
        row = {
            **run,
            "job": orjson.dumps(run["job"]).decode(),
            "created_at": now,
            "updated_at": now,
            "status": "pending",
            "total": 0,
        }
        total = 0
        with self.db.atomic():
            self.db.execute(
                "INSERT INTO runs (id, created_at, updated_at, input_path, input_sha256, fingerprint, mode, job, "
                "status, total) VALUES (:id, :created_at, :updated_at, :input_path, :input_sha256, :fingerprint, "
                ":mode, :job, :status, :total)",
                row,
            )
            for chunk in _chunks(items, INSERT_CHUNK):
                self.db.conn.executemany(
                    "INSERT INTO items (run_id, line_no, custom_id, model, params, state) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (
                            run["id"],
                            i.line_no,
                            i.custom_id,
                            i.params["model"],
                            orjson.dumps(i.params),
                            PENDING,
                        )
                        for i in chunk
                    ],
                )
                total += len(chunk)
            self._refuse_duplicates(run["id"], run["input_path"])
            self.db.execute("UPDATE runs SET total = ? WHERE id = ?", [total, run["id"]])
        return total

    def _refuse_duplicates(self, run_id: str, input_path: str) -> None:
        rows = self.db.execute(
            "SELECT custom_id, group_concat(line_no) FROM items WHERE run_id = ? GROUP BY custom_id "
            "HAVING count(*) > 1 ORDER BY min(line_no) LIMIT 21",
            [run_id],
        ).fetchall()
        if rows:
            problems = []
            for custom_id, lines in rows[:20]:
                first, *others = lines.split(",")
                problems.extend(
                    f"{input_path}:{line}: duplicate custom_id {custom_id!r}, first used on line {first} "
                    "(give every line its own custom_id)"
                    for line in others
                )
            raise InputError(problems[:20], more=max(0, len(problems) - 20))

    def set_run_status(self, run_id: str, status: str) -> None:
        self.db.execute("UPDATE runs SET status = ?, updated_at = ? WHERE id = ?", [status, time.time(), run_id])

    # items

    def release_in_flight(self, run_id: str) -> int:
        """Items a dead process left in flight have no result: they go back to pending."""
        cur = self.db.execute("UPDATE items SET state = ? WHERE run_id = ? AND state = ?", [PENDING, run_id, IN_FLIGHT])
        return cur.rowcount

    def claim_pending(self, run_id: str, after_line: int, limit: int) -> list[ClaimedItem]:
        """Mark the next pending items in input order as in flight and return them."""
        rows = self.db.execute(
            "UPDATE items SET state = ? WHERE run_id = ? AND line_no IN (SELECT line_no FROM items "
            "WHERE run_id = ? AND state = ? AND line_no > ? ORDER BY line_no LIMIT ?) "
            "RETURNING line_no, custom_id, params",
            [IN_FLIGHT, run_id, run_id, PENDING, after_line, limit],
        ).fetchall()
        rows.sort()
        return [ClaimedItem(line, cid, orjson.loads(params)) for line, cid, params in rows]

    def record(self, outcomes: list[Outcome]) -> None:
        """Write a group of outcomes, each result with the state change that marks it, in one transaction."""
        now = time.time()
        with self.db.atomic():
            self.db.conn.executemany(
                "UPDATE items SET state = :state, via = :via, result = :result, error_type = :error_type, "
                "error_status = :error_status, error_class = :error_class, error_message = :error_message, "
                "request_id = :request_id, input_tokens = :input_tokens, output_tokens = :output_tokens, "
                "cache_creation_tokens = :cache_creation_tokens, cache_read_tokens = :cache_read_tokens, "
                "attempts = attempts + :n_attempts, updated_at = :now "
                "WHERE run_id = :run_id AND line_no = :line_no AND state != 'succeeded'",
                [_outcome_row(o, now) for o in outcomes],
            )
            self.db.conn.executemany(
                "INSERT INTO attempts (run_id, line_no, started_at, seconds, status, outcome, error_class, "
                "retry_after, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        o.run_id,
                        o.line_no,
                        a.started_at,
                        a.seconds,
                        a.status,
                        a.outcome,
                        a.error_class,
                        a.retry_after,
                        a.request_id,
                    )
                    for o in outcomes
                    for a in o.attempts
                ],
            )

    def retry_failed(self, run_id: str, error_type: str | None = None) -> int:
        """Failed items back to pending; their earlier errors stay in the attempts table."""
        sql = (
            "UPDATE items SET state = ?, result = NULL, error_type = NULL, error_status = NULL, error_class = NULL, "
            "error_message = NULL WHERE run_id = ? AND state = ?"
        )
        params: list[Any] = [PENDING, run_id, FAILED]
        if error_type is not None:
            sql += " AND error_type = ?"
            params.append(error_type)
        return self.db.execute(sql, params).rowcount

    def check(self) -> list[str]:
        """Inconsistencies a crash or a hand edit could leave; an empty list means the store is sound."""
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
        counts = dict.fromkeys(STATES, 0)
        for state, n in self.db.execute("SELECT state, count(*) FROM items WHERE run_id = ? GROUP BY state", [run_id]):
            counts[state] = n
        return counts

    def usage(self, run_id: str) -> list[dict[str, Any]]:
        """Tokens by model and path (online or batch), for what the run has been billed so far."""
        return list(
            self.db.query(
                "SELECT model, via, count(*) AS items, sum(input_tokens) AS input, sum(output_tokens) AS output, "
                "sum(cache_creation_tokens) AS cache_creation, sum(cache_read_tokens) AS cache_read "
                "FROM items WHERE run_id = ? AND via IS NOT NULL GROUP BY model, via ORDER BY model, via",
                [run_id],
            )
        )

    def failures(self, run_id: str) -> list[dict[str, Any]]:
        """Failed items grouped by error type and status, with one example message each."""
        return list(
            self.db.query(
                "SELECT error_type, error_status, count(*) AS items, min(error_message) AS example "
                "FROM items WHERE run_id = ? AND state = ? GROUP BY error_type, error_status ORDER BY items DESC",
                [run_id, FAILED],
            )
        )

    def attempt_count(self, run_id: str) -> int:
        return self._one("SELECT count(*) FROM attempts WHERE run_id = ?", [run_id])[0]

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


def _outcome_row(o: Outcome, now: float) -> dict[str, Any]:
    return {
        "run_id": o.run_id,
        "line_no": o.line_no,
        "state": o.state,
        "via": o.via if o.state != PENDING else None,
        "result": o.result,
        "error_type": o.error_type,
        "error_status": o.error_status,
        "error_class": o.error_class,
        "error_message": o.error_message,
        "request_id": o.request_id,
        "input_tokens": o.usage.get("input_tokens") or 0,
        "output_tokens": o.usage.get("output_tokens") or 0,
        "cache_creation_tokens": o.usage.get("cache_creation_input_tokens") or 0,
        "cache_read_tokens": o.usage.get("cache_read_input_tokens") or 0,
        "n_attempts": len(o.attempts),
        "now": now,
    }


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
