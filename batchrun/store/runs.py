"""The runs table: finding, creating (with all its items, in one transaction) and updating a run."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import orjson

from batchrun.errors import InputError, UsageError
from batchrun.store.connection import StoreBase
from batchrun.store.parts import _PartIds, _SharedParts, split_bounds
from batchrun.store.record import IN_FLIGHT, PENDING

if TYPE_CHECKING:
    from concurrent.futures import Future

CREATE_CHUNK = 500  # items per insert statement when a run is created (at most two chunks are held at once)
MAX_PROBLEMS = 20
UNFINISHED = "EXISTS (SELECT 1 FROM run_tallies WHERE run_id = r.id AND state IN (?, ?) AND items > 0)"


# A chunk of new items in one statement (its work done without the GIL, so the reading thread keeps hashing): the
# rows are a JSON array of [line_no, custom_id, model, own's length, parts, source_id, kept, own's start], each
# item's own bytes a slice of one BLOB (`:owns`) and its 32-byte hash one of another (`:hashes`), both kept BLOBs.
INSERT_ITEMS = (
    "INSERT INTO items (run_id, line_no, custom_id, model, own, parts, request_hash, state, source_id, kept) "
    "SELECT :run_id, value ->> 0, value ->> 1, value ->> 2, substr(:owns, value ->> 7, value ->> 3), value ->> 4, "
    "substr(:hashes, key * 32 + 1, 32), :state, value ->> 5, value ->> 6 FROM json_each(:rows)"
)


class Runs(StoreBase):
    """Finding the run of an input, creating one with all its items, and its settings and status."""

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

        from concurrent.futures import ThreadPoolExecutor  # only a new run needs it: not a command's start-up

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

    def set_run_status(self, run_id: str, status: str, stop: str | None = None) -> None:
        """The run's status, and why it stopped (batchrun.stops' record; None: it did not stop early)."""
        self.db.execute(
            "UPDATE runs SET status = ?, stop = ?, updated_at = ? WHERE id = ?", [status, stop, time.time(), run_id]
        )


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
