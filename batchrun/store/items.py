"""An item's way through a run: claimed, released when unfinished, and put back to pending for a retry."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from batchrun.store.connection import StoreBase
from batchrun.store.parts import _PartIds, split_bounds
from batchrun.store.record import FAILED, IN_FLIGHT, PENDING, ClaimedItem
from batchrun.store.schema import NOT_DONE


class Items(StoreBase):
    """Claiming pending items, releasing unfinished ones, putting failed ones back for a retry."""

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
