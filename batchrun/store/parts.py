"""Request parts: an item's request is `head + own + tail`, its shared head and tail stored once by content."""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any

import orjson


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
