"""Folder inputs (batchrun/documents.py): each item's file, and the files uploaded with the Files API."""

from __future__ import annotations

import time
from collections.abc import Iterator

from batchrun.store.connection import StoreBase
from batchrun.store.record import PENDING
from batchrun.store.schema import NOT_DONE


class FileInputs(StoreBase):
    """Each item's file, and the files uploaded with the Files API."""

    def _file_extra(self, run_id: str) -> str:
        """SQL adding an item's file block's bytes to its stored size (nothing for a run not made from a folder)."""
        if not self.has_item_files(run_id):
            return ""
        return (
            " + coalesce((SELECT f.extra FROM item_files f WHERE f.run_id = items.run_id "
            "AND f.line_no = items.line_no), 0)"
        )

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
