"""Table exports read back: every JSON Schema type through Parquet and CSV with its values and types, and CSV
cells that a spreadsheet would run as formulas neutralised (unless --csv-raw)."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

import batchrun
from batchrun.emulator.replies import expected_output
from tests.conftest import batchrun as run_batchrun
from tests.conftest import cli_env, db_rows

MODEL = "claude-haiku-4-5"
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "count": {"type": "integer", "minimum": -5, "maximum": 50},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "urgent": {"type": "boolean"},
        "label": {"type": "string", "enum": ["low", "mid", "high"]},
        "level": {"enum": [1, 2, 3]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "author": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
        "note": {"type": ["string", "null"]},
        "maybe_count": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "null"}]},
        "maybe_flag": {"type": ["boolean", "null"]},
    },
    "required": [
        "title",
        "count",
        "score",
        "urgent",
        "label",
        "level",
        "tags",
        "author",
        "note",
        "maybe_count",
        "maybe_flag",
    ],
    "additionalProperties": False,
}
ARROW = {
    "title": pa.string(),
    "count": pa.int64(),
    "score": pa.float64(),
    "urgent": pa.bool_(),
    "label": pa.string(),
    "level": pa.int64(),
    "tags": pa.string(),  # nested values as JSON text
    "author": pa.string(),
    "note": pa.string(),
    "maybe_count": pa.int64(),
    "maybe_flag": pa.bool_(),
}


def typed_run(workdir: Path, emulator, n: int = 24) -> tuple[dict, list[dict]]:
    """A schema run of every JSON Schema type on the emulator; returns the env and each item's expected data."""
    (workdir / "s.json").write_bytes(orjson.dumps(SCHEMA))
    items = [{"custom_id": f"i-{i}", "prompt": f"item {i}"} for i in range(n)]
    (workdir / "items.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in items))
    env = cli_env(emulator.base_url)
    args = ["submit", "items.jsonl", "--model", MODEL, "--schema", "s.json", "--max-tokens", "600", "--run-id", "t"]
    proc = run_batchrun([*args, "-q", "-o", "out.parquet"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 24 parquet row(s) to out.parquet" in proc.stderr
    params = [orjson.loads(p) for (p,) in db_rows(workdir / "batchrun.db", "SELECT params FROM requests ORDER BY 1")]
    expected = [expected_output(p) for p in sorted(params, key=lambda p: int(p["messages"][0]["content"][5:]))]
    return env, expected


def as_csv(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def test_every_json_schema_type_reads_back_from_parquet_and_csv_with_its_values(workdir: Path, emulator) -> None:
    env, expected = typed_run(workdir, emulator)
    table = pq.read_table(workdir / "out.parquet")
    assert {name: table.schema.field(name).type for name in ARROW} == ARROW
    rows = table.to_pylist()
    assert [r["custom_id"] for r in rows] == [f"i-{i}" for i in range(24)]
    for row, data in zip(rows, expected, strict=True):
        for name in SCHEMA["properties"]:
            value = data[name]
            want = orjson.dumps(value).decode() if isinstance(value, dict | list) else value
            assert row[name] == want and type(row[name]) is type(want), (name, row[name], want)
    # the answers hold both booleans, and nulls beside integers (the emulator answers a type list with its
    # non-null type, anyOf with either)
    assert {d["urgent"] for d in expected} == {True, False}
    assert None in {d["maybe_count"] for d in expected} and {type(d["maybe_count"]) for d in expected} > {int}
    proc = run_batchrun(["results", "t", "-o", "out.csv"], cwd=workdir, env=env)
    assert proc.returncode == 0 and "wrote 24 csv row(s)" in proc.stderr
    with (workdir / "out.csv").open(newline="", encoding="utf-8") as f:
        csv_rows = list(csv.DictReader(f))
    for row, data in zip(csv_rows, expected, strict=True):
        assert {name: row[name] for name in SCHEMA["properties"]} == {k: as_csv(v) for k, v in data.items()}


HOSTILE_CELLS = ['=HYPERLINK("http://x","y")', "+1+1", "-1+2", "@SUM(A1:A2)", "\tTAB", "\rCR", "-2", "+3.5", "ok"]


def formula_job(workdir: Path) -> tuple[Path, Path]:
    """A CSV input whose id and kept columns start with formula characters, a kept column named `=cmd` and one
    named `text` (no clash in a schema job), and a schema whose enum answers do too (the model's text)."""
    with (workdir / "in.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["ticket", "=cmd", "text"])
        for n, cell in enumerate(HOSTILE_CELLS):
            writer.writerow([f"{cell}#{n}", cell, cell])
    schema = {
        "type": "object",
        "properties": {"verdict": {"type": "string", "enum": ["=1+1", "@x", "-y", "-4", "fine"]}},
        "required": ["verdict"],
        "additionalProperties": False,
    }
    (workdir / "s.json").write_bytes(orjson.dumps(schema))
    job = workdir / "job.toml"
    job.write_text(
        f'model = "{MODEL}"\nmax_tokens = 200\ntemplate = "Ticket {{text}}"\nid_field = "ticket"\n'
        'keep = ["ticket", "=cmd", "text"]\nschema_file = "s.json"\n'
    )
    return workdir / "in.csv", job


def read_cells(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


FORMULA = ("=", "+", "-", "@", "\t", "\r")


def is_plain_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_csv_cells_that_would_run_as_formulas_get_a_quote_unless_csv_raw(workdir: Path, emulator, monkeypatch) -> None:
    items, job = formula_job(workdir)
    env = cli_env(emulator.base_url)
    proc = run_batchrun(["submit", str(items), "--job", str(job), "-q", "-o", "out.csv"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    cells = read_cells(workdir / "out.csv")
    header, rows = cells[0], cells[1:]
    assert header[:5] == ["custom_id", "id", "ticket", "'=cmd", "text"]  # `text` keeps its name: no clash
    every = [cell for row in cells for cell in row]
    assert not [c for c in every if c.startswith(FORMULA) and not is_plain_number(c)]
    for n, (row, cell) in enumerate(zip(rows, HOSTILE_CELLS, strict=True)):
        shown = cell if cell == "ok" or is_plain_number(cell) else "'" + cell
        assert row[3:5] == [shown, shown]  # kept columns
        ticket = f"{cell}#{n}"  # never a plain number
        assert row[1] == row[2] == (ticket if cell == "ok" else "'" + ticket)  # the original id
    verdicts = {row[header.index("verdict")] for row in rows}
    assert verdicts & {"'=1+1", "'@x", "'-y"} and not verdicts & {"=1+1", "@x", "-y"}
    # for programs: exactly as stored, from `results` and from `resume`/`submit -o`
    raw = run_batchrun(["results", run_id(workdir), "--csv-raw", "-o", "raw.csv"], cwd=workdir, env=env)
    assert raw.returncode == 0, raw.stderr
    raw_cells = read_cells(workdir / "raw.csv")
    assert raw_cells[0][3] == "=cmd" and [r[3] for r in raw_cells[1:]] == HOSTILE_CELLS
    proc = run_batchrun(["resume", run_id(workdir), "--csv-raw", "-q", "-o", "raw2.csv"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert read_cells(workdir / "raw2.csv") == raw_cells
    proc = run_batchrun(["resume", run_id(workdir), "-q", "-o", "safe.csv"], cwd=workdir, env=env)
    assert read_cells(workdir / "safe.csv") == cells
    stdout = run_batchrun(["results", run_id(workdir), "--format", "csv"], cwd=workdir, env=env).stdout
    assert list(csv.reader(stdout.splitlines(keepends=True))) == cells
    # the Python API: the same default, and csv_raw=True
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = batchrun.resume(run_id(workdir), db=workdir / "batchrun.db", output=str(workdir / "api.csv"), log=None)
    assert result.ok and read_cells(workdir / "api.csv") == cells
    result = batchrun.resume(
        run_id(workdir), db=workdir / "batchrun.db", output=str(workdir / "api_raw.csv"), log=None, csv_raw=True
    )
    assert result.ok and read_cells(workdir / "api_raw.csv") == raw_cells


def run_id(workdir: Path) -> str:
    return db_rows(workdir / "batchrun.db", "SELECT id FROM runs")[0][0]
