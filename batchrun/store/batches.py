"""The Message Batches path's rows: batch plans, what each batch holds and sends, and its results' members."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import orjson

from batchrun.store.files import FileInputs
from batchrun.store.record import IN_FLIGHT, PENDING
from batchrun.store.schema import IN_BATCH, NOT_DONE

MAX_TOKENS = "coalesce(p.max_tokens, json_extract(own, '$.max_tokens'))"
TOKEN_LEN = 10  # "br" + 8 hex digits
SENT_ID_OVERHEAD = TOKEN_LEN + 1  # the token and the "-" before the line number


def sent_custom_id(token: str, line_no: int) -> str:
    """The custom_id a batch request carries: the plan's token and the item's line; the user's id stays ours."""
    return f"{token}-{line_no}"


def new_batch_token() -> str:
    return "br" + os.urandom(4).hex()  # what secrets.token_hex does, without importing it (hmac, hashlib)


class Batches(FileInputs):
    """Batch plans and their batches (a batch's bytes count its items' file blocks, hence FileInputs)."""

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
