"""Streaming input readers: JSONL (one object per line), CSV/TSV and Parquet (one object per row), validated with
line or row numbers, in constant memory."""

from __future__ import annotations

import atexit
import csv
import gzip
import hashlib
import io
import math
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
from batchrun.job import MAX_DEPTH, Job, RenderError, render, too_deep

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # always used with fullmatch: "$" would let a final "\n" in
MAX_PROBLEMS = 20
MAX_REQUEST_BYTES = 32 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
STDIN_NAMES = ("-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0")
STDIN_LABEL = "<stdin>"
_spools: dict[str, Path] = {}


TABLE_KINDS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
SNIFF_BYTES = 64 * 1024
PARQUET_BATCH = 2048
DELIMITERS = ",;\t|"


@dataclass(frozen=True, slots=True)
class Item:
    line_no: int
    custom_id: str
    params: dict[str, Any]
    source_id: str | None = None  # the row's own id, when it is not usable as a custom_id
    kept: dict[str, Any] | None = None  # the job's `keep` fields of the row


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


def table_kind(path: str | Path) -> str | None:
    """ "csv", "tsv" or "parquet" for a table input (by its extension; `.csv.gz` too), None for JSONL."""
    name = Path(str(path)).name.lower().removesuffix(".gz")
    return TABLE_KINDS.get(Path(name).suffix)


def read_items(path: str | Path, job: Job) -> Iterator[Item]:
    """Yield every good item of the file; raise InputError listing the problems once the whole file is read.

    Items are yielded before the file is known to be good (and after a bad line too, so the store can find
    custom_ids used twice anywhere in the file), so callers write them in a transaction that they roll back on
    InputError. A CSV, TSV or Parquet file gives one item per row (ROW in the messages counts the rows after the
    header, from 1).
    """
    shown = _display(path)
    kind = table_kind(path)
    problems: list[str] = []
    lines: list[int] = []
    more = 0
    count = 0
    entries = _jsonl_entries(path, job) if kind is None else _table_entries(path, job, kind)
    for line_no, entry in entries:
        if isinstance(entry, RenderError):
            if len(problems) < MAX_PROBLEMS:
                problems.append(f"{shown}:{line_no}: {entry}")
                lines.append(line_no)
            else:
                more += 1
        elif entry is not None:
            count += 1
            yield entry
    if problems:
        raise InputError(problems, more, lines)
    if count == 0:
        what = "one JSON object per line" if kind is None else "a header row, then one row per item"
        raise InputError([f"{shown}: no items: the file is empty or has only blank lines ({what})"])


Entry = tuple[int, "Item | RenderError | None"]


SUPPORTED_FORMATS = (
    "JSONL (one JSON object per line: .jsonl, or any other name), CSV (.csv), TSV (.tsv, .tab) or Parquet "
    "(.parquet, .pq); JSONL, CSV and TSV may be gzip-compressed (.gz)"
)
SPREADSHEET_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")
SPREADSHEET_MAGIC = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")  # zip (xlsx, ods), OLE2 (xls)


def _unsupported(path: str | Path, head: bytes) -> str | None:
    """Why a file read as JSONL is in a format batchrun does not read (a spreadsheet, a zip, a JSON array), or None.
    Said once for the file, instead of "not valid JSON" for each of its lines."""
    suffix = Path(str(path).lower().removesuffix(".gz")).suffix
    if suffix in SPREADSHEET_SUFFIXES or head.startswith(SPREADSHEET_MAGIC):
        if suffix in SPREADSHEET_SUFFIXES:
            return (
                f"a {suffix} file is not a supported input format (save the sheet as CSV; supported: "
                f"{SUPPORTED_FORMATS})"
            )
        return (
            "a zip or Office file (not text) is not a supported input format (unzip it, or save a sheet as CSV; "
            f"supported: {SUPPORTED_FORMATS})"
        )
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if first.startswith(b"[") and (suffix == ".json" or first[1:].lstrip(b" \t\r").startswith((b"\n", b"{"))):
        return (
            "a JSON array is not a supported input format (write one object per line, JSONL: e.g. "
            f"jq -c '.[]' FILE > items.jsonl; supported: {SUPPORTED_FORMATS})"
        )
    return None


def _jsonl_entries(path: str | Path, job: Job) -> Iterator[Entry]:
    line_no = 0
    with open_input(path) as f:
        try:
            problem = _unsupported(path, f.peek(SNIFF_BYTES)[:SNIFF_BYTES] if hasattr(f, "peek") else b"")
            if problem:
                raise InputError([f"{_display(path)}: {problem}"])
            for line_no, raw in enumerate(f, start=1):
                try:
                    yield line_no, parse_line(raw, line_no, job)
                except RenderError as e:
                    yield line_no, e
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise InputError(
                [
                    f"{_display(path)}: not a complete gzip file ({e or type(e).__name__}"
                    + (f", after line {line_no}" if line_no else "")
                    + "); compress it again, or give the uncompressed file"
                ]
            ) from None


def _table_entries(path: str | Path, job: Job, kind: str) -> Iterator[Entry]:
    rows = _parquet_rows(path) if kind == "parquet" else _csv_rows(path, kind)
    header = next(rows)
    _check_header(_display(path), header, job)
    for row_no, row in rows:
        if isinstance(row, RenderError):
            yield row_no, row
            continue
        try:
            yield row_no, row_item(row, row_no, job)
        except RenderError as e:
            yield row_no, e


def _check_header(shown: str, header: list[str], job: Job) -> None:
    """The columns the job needs, checked once instead of on every row."""
    import string

    needed = {f"id_field {job.id_field!r}": job.id_field} if job.id_field else {}
    needed.update({f"keep {k!r}": k for k in job.keep})
    if job.template is not None:
        fields = [name for _, name, _, _ in string.Formatter().parse(job.template) if name]
        needed.update({f"template field {{{n}}}": n for n in fields})
    missing = [what for what, column in needed.items() if column not in header]
    if missing:
        raise InputError(
            [
                f"{shown}:0: the header has no column for {', '.join(missing)} (its columns: "
                f"{', '.join(header)[:300]}; rename a column or change the job)"
            ]
        )


def _csv_rows(path: str | Path, kind: str) -> Iterator[Any]:
    """The header, then (row number, dict or RenderError) per row; quoted line breaks stay in their field."""
    shown = _display(path)
    csv.field_size_limit(MAX_REQUEST_BYTES)
    with open_input(path) as raw:
        sample = raw.read(SNIFF_BYTES)
        raw.seek(0)
        dialect = _dialect(sample, kind)
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, dialect)
        row_no = 0
        try:
            header = next(reader, None)
            if not header:
                raise InputError([f"{shown}: no header row: the file is empty (the first row names the columns)"])
            problem = _header_problem(header)
            if problem:
                raise InputError([f"{shown}:0: {problem}"])
            yield header
            for row_no, values in enumerate(reader, start=1):
                if not any(v.strip() for v in values):
                    yield row_no, None
                elif len(values) != len(header):
                    yield (
                        row_no,
                        RenderError(
                            f"the row has {len(values)} field(s), the header {len(header)} "
                            "(quote a field that holds the delimiter or a line break)"
                        ),
                    )
                else:
                    yield row_no, dict(zip(header, values, strict=True))
        except UnicodeDecodeError as e:
            raise InputError(
                [f"{shown}:{row_no + 1}: not valid UTF-8 at byte {e.start} of a chunk (save the file as UTF-8)"]
            ) from None
        except csv.Error as e:
            raise InputError(
                [f"{shown}:{row_no + 1}: not readable as {kind.upper()}: {e} (check its quoting)"]
            ) from None


def _header_problem(header: list[str]) -> str | None:
    seen: set[str] = set()
    for n, name in enumerate(header, start=1):
        if not name.strip():
            return f"column {n} of the header has no name (name every column)"
        if name in seen:
            return f"column {name!r} appears twice in the header (give every column its own name)"
        seen.add(name)
    return None


def _dialect(sample: bytes, kind: str) -> type[csv.Dialect]:
    """The file's delimiter and quote character as Python's Sniffer sees them (tab for .tsv); quotes inside a
    field are doubled as in RFC 4180 whatever the sample shows."""
    base = csv.excel_tab if kind == "tsv" else csv.excel
    if kind == "tsv":
        return base
    text = sample.decode("utf-8-sig", errors="ignore")
    try:
        sniffed = csv.Sniffer().sniff(text, delimiters=DELIMITERS)
        delimiter, quotechar, skip = sniffed.delimiter, sniffed.quotechar or '"', sniffed.skipinitialspace
    except csv.Error:  # quoted line breaks can puzzle the Sniffer: the header row names the delimiter then
        header = text.split("\n", 1)[0]
        delimiter = max(DELIMITERS, key=header.count)
        if not header.count(delimiter):
            return base
        quotechar, skip = '"', False

    class Sniffed(csv.excel):
        pass

    Sniffed.delimiter, Sniffed.quotechar, Sniffed.skipinitialspace = delimiter, quotechar, skip

    return Sniffed


def _parquet_rows(path: str | Path) -> Iterator[Any]:
    shown = _display(path)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(
            f"{shown}: reading Parquet needs pyarrow, which is not installed (pip install 'batchrun[parquet]')"
        ) from None
    try:
        table = pq.ParquetFile(source(path))
        yield table.schema_arrow.names
        row_no = 0
        for batch in table.iter_batches(batch_size=PARQUET_BATCH):
            for row in batch.to_pylist():
                row_no += 1
                yield row_no, row
    except FileNotFoundError:
        raise UsageError(f"{shown}: no such file (check the path)") from None
    except OSError as e:  # pyarrow's errors (ArrowInvalid, ArrowIOError) are OSError or ValueError
        raise InputError([f"{shown}: not a readable Parquet file: {e} (write it again, or give a CSV)"]) from None
    except ValueError as e:
        raise InputError([f"{shown}: not a readable Parquet file: {e} (write it again, or give a CSV)"]) from None


def row_item(row: dict[str, Any], row_no: int, job: Job) -> Item:
    """One table row to one item: its columns fill the job's template (or give prompt/messages/params)."""
    custom_id, source_id = item_ids(row, row_no, job, f"row-{row_no}", "row")
    kept = {k: row.get(k) for k in job.keep} if job.keep else None
    return Item(row_no, custom_id, render(row, job), source_id, kept)


def item_ids(obj: dict[str, Any], n: int, job: Job, default: str, unit: str = "line") -> tuple[str, str | None]:
    """(custom_id, the original id when it differs). With `id_field`, an id that is not a valid custom_id (an
    email, `3.14`, over 64 characters) is mapped to one, deterministically; the original is kept for export."""
    if job.id_field is None:
        custom_id = obj.get("custom_id", default)
        if isinstance(custom_id, int) and not isinstance(custom_id, bool) and custom_id >= 0:
            custom_id = str(custom_id)  # {"custom_id": 17} is the id "17"
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            raise RenderError(
                f"custom_id {custom_id!r} is not allowed (use 1-64 characters from a-z, A-Z, 0-9, _ and -; "
                "or name the id's field with id_field to have it mapped)"
            )
        return custom_id, None
    value = obj.get(job.id_field)
    if value is None or (isinstance(value, str) and not value.strip()) or isinstance(value, dict | list):
        raise RenderError(f"no id in field {job.id_field!r} (give every row its id, or drop id_field)")
    if isinstance(value, float) and not math.isfinite(value):
        raise RenderError(
            f"the id in field {job.id_field!r} of {unit} {n} is missing or not a number ({value}: an empty cell read "
            "as NaN, or an infinity; give every row its id, or drop id_field)"
        )
    original = value if isinstance(value, str) else orjson.dumps(value).decode()
    if CUSTOM_ID.fullmatch(original):
        return original, None
    return safe_custom_id(original), original


def duplicate_problem(path: str, n: int, first: int, value: str, id_field: str | None) -> str:
    """A line or row whose id an earlier one used, named as the user knows it: their id field (id_field, else
    custom_id), and rows for a table (CSV, TSV, Parquet), lines for JSONL."""
    field = id_field or "custom_id"
    if table_kind(path):
        return (
            f"{path}:{n}: duplicate {field} {value!r} in row {n}, first used in row {first} "
            f"(give every row its own {field})"
        )
    return f"{path}:{n}: duplicate {field} {value!r}, first used on line {first} (give every line its own {field})"


def safe_custom_id(original: str) -> str:
    """A valid custom_id for any id: its safe characters (at most 40) and 12 hex digits of its SHA-256."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", original).strip("_")[:40]
    digest = hashlib.sha256(original.encode()).hexdigest()[:12]
    return f"{readable or 'id'}-{digest}"


def check_depth(obj: Any) -> None:
    """A line nested deeper than MAX_DEPTH could not be written to the store or sent (orjson stops at 255)."""
    if too_deep(obj, MAX_DEPTH):
        raise RenderError(
            f"nested more than {MAX_DEPTH} levels deep (objects and lists inside each other); no request needs "
            "that many: flatten the line's params or messages"
        )


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
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:  # only then can it be nested too deep: look closer
        check_depth(obj)
    custom_id, source_id = item_ids(obj, line_no, job, derived_custom_id(line_no))
    kept = {k: obj.get(k) for k in job.keep} if job.keep else None
    return Item(line_no, custom_id, render(obj, job), source_id, kept)
