"""Streaming JSONL reader: one object per line, validated with line numbers, in constant memory."""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from batchrun.errors import InputError, UsageError
from batchrun.job import Job, RenderError, render

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_PROBLEMS = 20
MAX_REQUEST_BYTES = 32 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class Item:
    line_no: int
    custom_id: str
    params: dict[str, Any]


def derived_custom_id(line_no: int) -> str:
    """The custom_id of a line that has none: stable as long as the line stays where it is."""
    return f"line-{line_no}"


def open_input(path: str | Path) -> IO[bytes]:
    """Open a JSONL file for reading bytes; a gzip-compressed file is read through gzip."""
    path = Path(path)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file (check the path)") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory (give a .jsonl file)") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied (make the file readable)") from None
    if f.read(2) == GZIP_MAGIC:
        f.close()
        return gzip.open(path, "rb")
    f.seek(0)
    return f


def file_sha256(path: str | Path) -> str:
    """Hash of the file's bytes as stored (compressed files hash compressed)."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file (check the path)") from None
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    return digest.hexdigest()


def read_items(path: str | Path, job: Job) -> Iterator[Item]:
    """Yield every item of the file; raise InputError listing the problems once the whole file is read.

    Items are yielded before the file is known to be good, so callers write them in a transaction
    that they roll back on InputError.
    """
    problems: list[str] = []
    more = 0
    count = 0
    with open_input(path) as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                item = parse_line(raw, line_no, job)
            except RenderError as e:
                if len(problems) < MAX_PROBLEMS:
                    problems.append(f"{path}:{line_no}: {e}")
                else:
                    more += 1
                continue
            if item is not None:
                count += 1
                if not problems:
                    yield item
    if problems:
        raise InputError(problems, more)
    if count == 0:
        raise InputError([f"{path}: no items: the file is empty or has only blank lines (one JSON object per line)"])


def parse_line(raw: bytes, line_no: int, job: Job) -> Item | None:
    """One line to one item, or None for a blank line; RenderError says what is wrong."""
    if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        return None
    if len(raw) > MAX_REQUEST_BYTES:
        raise RenderError(f"line is {len(raw):,} bytes, over the API's 32 MB request limit (split or shorten it)")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RenderError(f"not valid UTF-8 at byte {e.start} (save the file as UTF-8)") from None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise RenderError(f"not valid JSON: {e} (each line must be one complete JSON object)") from None
    if not isinstance(obj, dict):
        raise RenderError(f"expected a JSON object, got {type(obj).__name__} (wrap the line in {{...}})")
    custom_id = obj.get("custom_id", derived_custom_id(line_no))
    if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
        raise RenderError(f"custom_id {custom_id!r} is not allowed (use 1-64 characters from a-z, A-Z, 0-9, _ and -)")
    return Item(line_no, custom_id, render(obj, job))
