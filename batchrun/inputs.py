"""Streaming JSONL reader: one object per line, validated with line numbers, in constant memory."""

from __future__ import annotations

import atexit
import gzip
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from batchrun.errors import InputError, UsageError
from batchrun.job import Job, RenderError, render

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # always used with fullmatch: "$" would let a final "\n" in
MAX_PROBLEMS = 20
MAX_REQUEST_BYTES = 32 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
STDIN_NAMES = ("-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0")
STDIN_LABEL = "<stdin>"
_spools: dict[str, Path] = {}


@dataclass(frozen=True, slots=True)
class Item:
    line_no: int
    custom_id: str
    params: dict[str, Any]


def derived_custom_id(line_no: int) -> str:
    """The custom_id of a line that has none: stable as long as the line stays where it is."""
    return f"line-{line_no}"


def is_stream(path: str | Path) -> bool:
    """Standard input (`-`), a FIFO or a device: it can be read only once, so it is spooled to a file first."""
    if str(path) == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def input_label(path: str | Path) -> str:
    """The input's name as a run records it: the file's real path, `<stdin>` for a pipe into standard input,
    or the absolute path of a FIFO. Reading from the label reads the same spooled bytes."""
    if str(path) == STDIN_LABEL and str(path) in _spools:
        return STDIN_LABEL
    if is_stream(path):
        return STDIN_LABEL if str(path) in STDIN_NAMES else str(Path(path).absolute())
    return str(Path(path).resolve())


def _display(path: str | Path) -> str:
    return STDIN_LABEL if str(path) in STDIN_NAMES else str(path)


def source(path: str | Path) -> Path:
    """The file to read for `path`: itself, or for a stream a private temporary copy made on first use (so the
    hash and the items come from the same bytes), removed when the process exits."""
    if str(path) in _spools:
        return _spools[str(path)]
    if not is_stream(path):
        return Path(path)
    spool = _spool(path)
    _spools[str(path)] = _spools[input_label(path)] = spool
    return spool


def _spool(path: str | Path) -> Path:
    from_stdin = str(path) == "-"
    if from_stdin and (sys.stdin is None or sys.stdin.isatty()):
        raise UsageError(
            "ITEMS is `-` but standard input is a terminal (pipe the items in: cat items.jsonl | batchrun submit -)"
        )
    fd, name = tempfile.mkstemp(prefix="batchrun-input-", suffix=".spool")
    atexit.register(_unlink, name)
    try:
        with os.fdopen(fd, "wb") as out:
            if from_stdin:
                shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
            else:
                with Path(path).open("rb") as stream:
                    shutil.copyfileobj(stream, out, 1 << 20)
    except OSError as e:
        raise UsageError(
            f"{_display(path)}: cannot copy the stream to {name}: {e.strerror} "
            "(check that it is readable and that the temporary directory has space, or set TMPDIR)"
        ) from None
    return Path(name)


def _unlink(name: str) -> None:
    Path(name).unlink(missing_ok=True)


def open_input(path: str | Path) -> IO[bytes]:
    """Open a JSONL file for reading bytes; a gzip-compressed file is read through gzip."""
    shown = _display(path)
    path = source(path)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise UsageError(f"{shown}: no such file (check the path)") from None
    except IsADirectoryError:
        raise UsageError(f"{shown}: is a directory (give a .jsonl file)") from None
    except PermissionError:
        raise UsageError(f"{shown}: permission denied (make the file readable)") from None
    if f.read(2) == GZIP_MAGIC:
        f.close()
        return gzip.open(path, "rb")
    f.seek(0)
    return f


def file_sha256(path: str | Path) -> str:
    """Hash of the file's bytes as stored (compressed files hash compressed)."""
    shown = _display(path)
    digest = hashlib.sha256()
    try:
        with source(path).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except FileNotFoundError:
        raise UsageError(f"{shown}: no such file (check the path)") from None
    except IsADirectoryError:
        raise UsageError(f"{shown}: is a directory (give a .jsonl file)") from None
    except OSError as e:
        raise UsageError(f"{shown}: {e.strerror}") from None
    return digest.hexdigest()


def read_items(path: str | Path, job: Job) -> Iterator[Item]:
    """Yield every good item of the file; raise InputError listing the problems once the whole file is read.

    Items are yielded before the file is known to be good (and after a bad line too, so the store can find
    custom_ids used twice anywhere in the file), so callers write them in a transaction that they roll back on
    InputError.
    """
    shown = _display(path)
    problems: list[str] = []
    lines: list[int] = []
    more = 0
    count = 0
    line_no = 0
    with open_input(path) as f:
        try:
            for line_no, raw in enumerate(f, start=1):
                try:
                    item = parse_line(raw, line_no, job)
                except RenderError as e:
                    if len(problems) < MAX_PROBLEMS:
                        problems.append(f"{shown}:{line_no}: {e}")
                        lines.append(line_no)
                    else:
                        more += 1
                    continue
                if item is not None:
                    count += 1
                    yield item
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise InputError(
                [
                    f"{shown}: not a complete gzip file ({e or type(e).__name__}"
                    + (f", after line {line_no}" if line_no else "")
                    + "); compress it again, or give the uncompressed file"
                ]
            ) from None
    if problems:
        raise InputError(problems, more, lines)
    if count == 0:
        raise InputError([f"{shown}: no items: the file is empty or has only blank lines (one JSON object per line)"])


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
    if isinstance(custom_id, int) and not isinstance(custom_id, bool) and custom_id >= 0:
        custom_id = str(custom_id)  # {"custom_id": 17} is the id "17"
    if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
        raise RenderError(f"custom_id {custom_id!r} is not allowed (use 1-64 characters from a-z, A-Z, 0-9, _ and -)")
    return Item(line_no, custom_id, render(obj, job))
