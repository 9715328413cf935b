"""Results export: one line per finished item in the Message Batches result format (jsonl), or one row per item
in a table (csv, parquet) with the original id, the kept input columns and the schema's fields as columns."""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from batchrun.errors import UsageError
from batchrun.job import Job
from batchrun.store import Store, answer_rows

TEMPORARY = re.compile(r"\..+\.tmp-([0-9]+)")


def write_results(store: Store, run_id: str, out: IO[bytes], only: str | None = None) -> int:
    """Write `{"custom_id": ..., "result": {...}}` lines, serialised by orjson (the stored result is embedded as
    the JSON it already is)."""
    count = 0
    for custom_id, _state, result in store.iter_results(run_id, only):
        out.write(orjson.dumps({"custom_id": custom_id, "result": orjson.Fragment(result)}) + b"\n")
        count += 1
    return count


def export_results(
    store: Store,
    run_id: str,
    path: str | Path,
    only: str | None = None,
    fmt: str | None = None,
    csv_raw: bool = False,
) -> int:
    """Write the results file atomically (a reader never sees half a file), readable by its owner only; the
    format is `fmt`, else the one the file's extension names (.csv, .parquet), else jsonl."""
    fmt = format_of(path, fmt)
    if fmt == "parquet":
        _pyarrow()  # a missing extra is said before anything is written
    with private_file(path) as out:
        return write_export(store, run_id, out, only, fmt, csv_raw)


@contextmanager
def private_file(path: str | Path) -> Iterator[IO[bytes]]:
    """A file written whole or not at all, readable by its owner only (0600): written as `.NAME.tmp-PID`, then
    renamed over `path`; a failure (a full disk) leaves `path` as it was. Temporaries that a killed writer left
    in the directory (their process is gone) are removed first."""
    path = Path(path)
    remove_stale_temporaries(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a write that failed: say which file
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove `.NAME.tmp-PID` regular files of this user whose process no longer runs; return what was removed."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = TEMPORARY.fullmatch(entry.name)
        if not match or _alive(int(match.group(1))):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if entry.is_file(follow_symlinks=False) and st.st_uid == os.geteuid():
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


# tables


FORMATS = ("jsonl", "csv", "parquet")
NOT_WRITTEN = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers", ".zip")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
FIXED_BEFORE = ("custom_id", "id")
FIXED_AFTER = (
    "stop_reason",
    "state",
    "error_type",
    "error_message",
    "model",
    "answered_by",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "cost_usd",
)
INTEGER_COLUMNS = frozenset({"input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens"})
PARQUET_ROWS = 10_000
JSON_TYPES = {"integer": "int64", "number": "float64", "boolean": "bool_", "string": "string"}


def format_of(path: str | Path | None, given: str | None = None) -> str:
    """The export format: the one given, else the one the file's extension names, else jsonl."""
    if given:
        return given
    if not path:
        return "jsonl"
    refuse_spreadsheet(path)
    return SUFFIXES.get(Path(path).suffix.lower(), "jsonl")


def refuse_spreadsheet(path: str | Path) -> None:
    """`-o out.xlsx` would get JSONL lines a spreadsheet cannot open: say so before anything runs."""
    suffix = Path(path).suffix.lower()
    if suffix in NOT_WRITTEN:
        raise UsageError(
            f"-o {path}: batchrun does not write {suffix} files (give a .csv file, which spreadsheets open, "
            "or .jsonl or .parquet)"
        )


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # as exported
    source: str  # "row" (a column of the answers view), "kept" or "data"
    key: str  # the view column, kept field or schema property it comes from
    arrow: str = "string"  # its Parquet type


def table_columns(job: Job) -> list[Column]:
    """The columns of a table export, in order: custom_id, the original id, the kept columns, one per top-level
    property of the schema (or `text` for a job without one), then the item's outcome, tokens and cost. A kept
    column keeps its name unless a column of the table has it (then `input_`), a property unless a column before
    it took it (then `answer_`)."""
    columns = [Column(name, "row", name) for name in FIXED_BEFORE]
    taken = {*FIXED_BEFORE, *FIXED_AFTER} | ({"text"} if job.schema is None else set())
    for key in job.keep:
        name = key if key not in taken else f"input_{key}"
        taken.add(name)
        columns.append(Column(name, "kept", key))
    if job.schema is None:
        columns.append(Column("text", "row", "text"))
    else:
        properties = job.schema.get("properties") if isinstance(job.schema.get("properties"), dict) else None
        if properties is None:
            columns.append(Column("answer" if "answer" not in taken else "answer_data", "data", ""))
        for key, spec in (properties or {}).items():
            name = key if key not in taken else f"answer_{key}"
            taken.add(name)
            columns.append(Column(name, "data", key, arrow_type(spec)))
    for name in FIXED_AFTER:
        arrow = "int64" if name in INTEGER_COLUMNS else "float64" if name == "cost_usd" else "string"
        columns.append(Column(name, "row", name, arrow))
    return columns


def arrow_type(spec: Any) -> str:
    """The Parquet type of a schema property: its JSON type's (a nullable one too: ["integer", "null"], or anyOf
    an integer and null); an enum's values' common type; anything else (objects, arrays, mixed types) as JSON
    text."""
    if not isinstance(spec, dict):
        return "string"
    if isinstance(spec.get("enum"), list) and spec["enum"]:
        return _common_type([_json_type(v) for v in spec["enum"] if v is not None])
    if "const" in spec:
        return _common_type([_json_type(spec["const"])])
    options = spec.get("anyOf") or spec.get("oneOf")
    if isinstance(options, list):
        return _common_type([arrow_type(o) for o in options if not (isinstance(o, dict) and o.get("type") == "null")])
    kind = spec.get("type")
    kinds = [k for k in kind if k != "null"] if isinstance(kind, list) else [kind]
    return _common_type([JSON_TYPES.get(k, "string") if isinstance(k, str) else "string" for k in kinds])


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool_"
    return "int64" if isinstance(value, int) else "float64" if isinstance(value, float) else "string"


def _common_type(types: list[str]) -> str:
    kinds = set(types)
    if kinds == {"int64", "float64"}:
        return "float64"
    return kinds.pop() if len(kinds) == 1 else "string"


def table_rows(store: Store, run_id: str, columns: list[Column], only: str | None = None) -> Iterator[list[Any]]:
    """Each item's row of values, in input order; nested values (objects, lists) as JSON text."""
    view_columns = [c.key for c in columns if c.source == "row"]
    position = {name: n for n, name in enumerate(view_columns)}
    kept_at, data_at = len(view_columns), len(view_columns) + 1
    plan = [(c.source, position[c.key] if c.source == "row" else c.key) for c in columns]
    loads = orjson.loads
    for row in answer_rows(store, run_id, [*view_columns, "kept", "data"], only):
        kept = loads(row[kept_at]) if row[kept_at] else {}
        data = loads(row[data_at]) if row[data_at] else None
        values = []
        for source, key in plan:
            if source == "row":
                values.append(row[key])
            elif source == "kept":
                values.append(_flat(kept.get(key)))
            elif key == "":
                values.append(_flat(data))
            else:
                values.append(_flat(data.get(key)) if isinstance(data, dict) else None)
        yield values


def _flat(value: Any) -> Any:
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else value


def write_csv(store: Store, run_id: str, job: Job, out: IO[bytes], only: str | None = None, raw: bool = False) -> int:
    """A CSV table (header row, RFC 4180 quoting, UTF-8); null is an empty field, booleans are true/false. A cell
    a spreadsheet would run as a formula gets a leading `'` (see `neutralise`), unless `raw`."""
    columns = table_columns(job)
    cell = _as_cell if raw else _as_safe_cell
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    try:
        writer = csv.writer(text)
        writer.writerow([cell(c.name) for c in columns])
        count = 0
        for values in table_rows(store, run_id, columns, only):
            writer.writerow([cell(v) for v in values])
            count += 1
        text.flush()
    finally:
        text.detach()
    return count


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def neutralise(text: str) -> str:
    """OWASP's rule against CSV formula injection: a cell starting with =, +, -, @, tab or carriage return is
    prefixed with `'`, so a spreadsheet shows it as text instead of running it; a plain number (-2, +1.5e3)
    stays as it is."""
    if text.startswith(FORMULA_START) and not PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def _as_cell(value: Any) -> Any:
    return "true" if value is True else "false" if value is False else value


def _as_safe_cell(value: Any) -> Any:
    return neutralise(value) if isinstance(value, str) else _as_cell(value)


def write_parquet(store: Store, run_id: str, job: Job, out: IO[bytes], only: str | None = None) -> int:
    """A Parquet table, written in row groups of PARQUET_ROWS; schema properties keep their JSON types."""
    pa, pq = _pyarrow()
    columns = table_columns(job)
    schema = pa.schema([(c.name, getattr(pa, c.arrow)()) for c in columns])
    count = 0
    with pq.ParquetWriter(out, schema) as writer:
        chunk: list[list[Any]] = []
        for values in table_rows(store, run_id, columns, only):
            chunk.append(values)
            if len(chunk) >= PARQUET_ROWS:
                writer.write_table(_arrow_table(pa, schema, columns, chunk))
                count += len(chunk)
                chunk = []
        if chunk or not count:
            writer.write_table(_arrow_table(pa, schema, columns, chunk))
            count += len(chunk)
    return count


def _arrow_table(pa: Any, schema: Any, columns: list[Column], rows: list[list[Any]]) -> Any:
    arrays = []
    for n, column in enumerate(columns):
        values = [row[n] for row in rows]
        if column.arrow == "string":
            values = [v if v is None or isinstance(v, str) else _as_text(v) for v in values]
        elif column.arrow == "int64":
            values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]  # 3.0 is an integer
        arrays.append(pa.array(values, type=schema.field(n).type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _as_text(value: Any) -> str:
    return orjson.dumps(value).decode() if isinstance(value, bool) else str(value)


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(
            "Parquet needs pyarrow, which is not installed (pip install 'batchrun[parquet]'; or use --format csv)"
        ) from None
    return pa, pq


def write_export(
    store: Store, run_id: str, out: IO[bytes], only: str | None = None, fmt: str = "jsonl", csv_raw: bool = False
) -> int:
    """Write the run's results to `out` in `fmt`: jsonl (the Message Batches result format), csv or parquet.
    `csv_raw`: CSV cells exactly as stored, formulas not neutralised (for programs, not spreadsheets)."""
    if fmt == "jsonl":
        return write_results(store, run_id, out, only)
    run = store.get_run(run_id)
    job = Job.from_dict(run["job"]) if run else Job()
    if fmt == "csv":
        return write_csv(store, run_id, job, out, only, raw=csv_raw)
    return write_parquet(store, run_id, job, out, only)
