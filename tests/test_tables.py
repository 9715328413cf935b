"""Tables in and out: CSV/TSV/Parquet inputs with their own ids and kept columns, CSV/Parquet exports, the
answers view."""

from __future__ import annotations

import csv
import io
import sqlite3
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.emulator.replies import expected_output, expected_text
from batchrun.inputs import CUSTOM_ID
from tests.conftest import batchrun, cli_env, db_rows

MODEL = "claude-haiku-4-5"
SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "account", "other"]},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "minItems": 1, "maxItems": 2},
    },
    "required": ["category", "urgency", "tags"],
    "additionalProperties": False,
}
TICKETS = [
    ("ann@example.com", "Acme, Inc.", "2025-01-02", 'Charged twice.\nSecond line, with "quotes".'),
    ("T-2", "Globex", "2025-01-03", "Export is empty"),
    ("3.14", "Initech", "2025-01-04", "Cannot log in\r\nafter the update"),
    ("bob.smith+help@example.org", "Umbrella", "", "Where is my invoice?"),
]
COLUMNS = [
    "custom_id",
    "id",
    "ticket_id",
    "customer",
    "created_at",
    "category",
    "urgency",
    "tags",
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
]


def write_tickets(path: Path, rows=TICKETS, delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["ticket_id", "customer", "created_at", "text"])
        writer.writerows(rows)
    return path


def write_job(workdir: Path, schema: bool = True) -> Path:
    (workdir / "ticket.schema.json").write_bytes(orjson.dumps(SCHEMA))
    job = workdir / "job.toml"
    job.write_text(
        f'model = "{MODEL}"\nmax_tokens = 300\ntemplate = "Ticket from {{customer}}:\\n{{text}}"\n'
        'id_field = "ticket_id"\nkeep = ["ticket_id", "customer", "created_at"]\n'
        + ('schema_file = "ticket.schema.json"\n' if schema else "")
    )
    return job


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_id(workdir: Path) -> str:
    return db_rows(workdir / "batchrun.db", "SELECT id FROM runs")[0][0]


def stored_params(workdir: Path) -> list[dict]:
    return [
        orjson.loads(p) for (p,) in db_rows(workdir / "batchrun.db", "SELECT params FROM requests ORDER BY line_no")
    ]


def test_csv_in_with_email_ids_quoted_newlines_and_kept_columns_exports_to_csv_with_the_exact_columns(
    emulator, workdir
):
    write_tickets(workdir / "tickets.csv")
    job = write_job(workdir)
    env = cli_env(emulator.base_url)
    r = batchrun(["submit", "tickets.csv", "--job", job, "-o", "out.csv"], cwd=workdir, env=env)
    assert r.returncode == 0, r.stderr
    rows = read_csv(workdir / "out.csv")
    assert list(rows[0]) == COLUMNS
    assert [row["id"] for row in rows] == [t[0] for t in TICKETS]  # input order, original ids
    assert [row["ticket_id"] for row in rows] == [t[0] for t in TICKETS]
    assert [(row["customer"], row["created_at"]) for row in rows] == [(t[1], t[2]) for t in TICKETS]
    assert rows[1]["custom_id"] == "T-2"  # a valid id is used as is
    custom_ids = [row["custom_id"] for row in rows]
    assert all(CUSTOM_ID.fullmatch(c) for c in custom_ids) and len(set(custom_ids)) == 4
    assert custom_ids[0].startswith("ann_example_com-")
    for row, params, ticket in zip(rows, stored_params(workdir), TICKETS, strict=True):
        assert params["messages"][0]["content"] == f"Ticket from {ticket[1]}:\n{ticket[3]}"  # the newline kept
        data = expected_output(params)
        assert (row["category"], int(row["urgency"]), orjson.loads(row["tags"])) == (
            data["category"],
            data["urgency"],
            data["tags"],
        )
        assert (row["state"], row["stop_reason"], row["answered_by"], row["model"]) == (
            "succeeded",
            "end_turn",
            "api",
            MODEL,
        )
        assert int(row["output_tokens"]) > 0 and float(row["cost_usd"]) > 0
    # a second submit of the same file and job is the same run, and the same ids
    r = batchrun(["submit", "tickets.csv", "--job", job, "-o", "again.csv"], cwd=workdir, env=env)
    assert r.returncode == 0 and "continuing run" in r.stderr
    assert (workdir / "again.csv").read_bytes() == (workdir / "out.csv").read_bytes()


def test_the_parquet_export_has_the_same_rows_and_typed_columns(emulator, workdir):
    write_tickets(workdir / "tickets.csv")
    env = cli_env(emulator.base_url)
    assert batchrun(["submit", "tickets.csv", "--job", write_job(workdir)], cwd=workdir, env=env).returncode == 0
    rid = run_id(workdir)
    assert batchrun(["results", rid, "-o", "out.csv"], cwd=workdir, env=env).returncode == 0
    r = batchrun(["results", rid, "-o", "out.parquet"], cwd=workdir, env=env)
    assert r.returncode == 0 and "wrote 4 parquet row(s)" in r.stderr
    table = pq.read_table(workdir / "out.parquet")
    assert table.column_names == COLUMNS
    assert table.schema.field("urgency").type == pa.int64() and table.schema.field("cost_usd").type == pa.float64()
    from_csv = read_csv(workdir / "out.csv")
    for row, csv_row in zip(table.to_pylist(), from_csv, strict=True):
        assert {k: "" if v is None else str(v) for k, v in row.items()} == csv_row
    # --format wins over the extension, and stdout gets the table without -o
    r = batchrun(["results", rid, "--format", "csv"], cwd=workdir, env=env)
    assert list(csv.DictReader(io.StringIO(r.stdout))) == from_csv


def test_the_answers_view_returns_the_same_rows_as_the_csv_export(emulator, workdir):
    emulator.configure(p_refusal=0.3)
    write_tickets(workdir / "tickets.csv", [*TICKETS, *[(f"x{i}@y.z", f"C{i}", "", f"t {i}") for i in range(8)]])
    env = cli_env(emulator.base_url)
    r = batchrun(["submit", "tickets.csv", "--job", write_job(workdir), "-o", "out.csv"], cwd=workdir, env=env)
    assert r.returncode == 1  # some refused
    exported = read_csv(workdir / "out.csv")
    conn = sqlite3.connect(workdir / "batchrun.db")
    conn.row_factory = sqlite3.Row
    view = [dict(row) for row in conn.execute("SELECT * FROM answers ORDER BY line_no")]
    conn.close()
    assert len(view) == len(exported) == 12
    assert {v["state"] for v in view} == {"succeeded", "failed"}
    fixed = [c for c in COLUMNS if c not in ("ticket_id", "customer", "created_at", "category", "urgency", "tags")]
    for v, row in zip(view, exported, strict=True):
        assert {c: "" if v[c] is None else str(v[c]) for c in fixed} == {c: row[c] for c in fixed}
        kept = orjson.loads(v["kept"])
        assert kept == {"ticket_id": row["ticket_id"], "customer": row["customer"], "created_at": row["created_at"]}
        data = orjson.loads(v["data"]) if v["data"] else {}
        assert [str(data.get(k, "")) if k != "tags" else row[k] for k in ("category", "urgency", "tags")] == [
            row["category"],
            row["urgency"],
            orjson.dumps(data["tags"]).decode() if data else "",
        ]
        assert (v["answered_at"] is not None) and v["run_id"] == run_id(workdir)


def test_a_text_job_exports_its_text_and_tsv_is_read_with_tabs(emulator, workdir):
    write_tickets(workdir / "tickets.tsv", delimiter="\t")
    env = cli_env(emulator.base_url)
    job = write_job(workdir, schema=False)
    r = batchrun(["submit", "tickets.tsv", "--job", job, "--max-tokens", "64", "-o", "out.csv"], cwd=workdir, env=env)
    assert r.returncode == 0, r.stderr
    rows = read_csv(workdir / "out.csv")
    assert [c for c in rows[0] if c not in COLUMNS] == ["text"]
    assert [row["text"] for row in rows] == [expected_text(p) for p in stored_params(workdir)]


def test_parquet_input_rows_fill_the_template(emulator, workdir):
    table = pa.table({"ticket_id": [10, 11], "customer": ["A", "B"], "created_at": ["x", "y"], "text": ["p", "q"]})
    pq.write_table(table, workdir / "tickets.parquet")
    env = cli_env(emulator.base_url)
    r = batchrun(["submit", "tickets.parquet", "--job", write_job(workdir), "-o", "out.csv"], cwd=workdir, env=env)
    assert r.returncode == 0, r.stderr
    rows = read_csv(workdir / "out.csv")
    assert [(row["custom_id"], row["customer"]) for row in rows] == [("10", "A"), ("11", "B")]
    assert [p["messages"][0]["content"] for p in stored_params(workdir)] == ["Ticket from A:\np", "Ticket from B:\nq"]


def test_bad_rows_are_named_by_file_and_row_and_nothing_is_stored(emulator, workdir):
    (workdir / "bad.csv").write_text(
        'ticket_id,customer,created_at,text\nT-1,A,x,"fine"\nT-2,B,x\n,C,x,no id\nT-1,D,x,"twice"\n'
    )
    r = batchrun(["submit", "bad.csv", "--job", write_job(workdir)], cwd=workdir, env=cli_env(emulator.base_url))
    assert r.returncode == 2
    assert "bad.csv:2: the row has 3 field(s), the header 4" in r.stderr
    assert "bad.csv:3: no id in field 'ticket_id'" in r.stderr
    assert (
        "bad.csv:4: duplicate ticket_id 'T-1' in row 4, first used in row 1 (give every row its own ticket_id)"
        in r.stderr
    )
    assert "Traceback" not in r.stderr and not (workdir / "batchrun.db").exists()
    (workdir / "cols.csv").write_text("id,body\n1,x\n")
    r = batchrun(["submit", "cols.csv", "--job", write_job(workdir)], cwd=workdir, env=cli_env(emulator.base_url))
    assert r.returncode == 2 and "cols.csv:0: the header has no column for id_field 'ticket_id'" in r.stderr


def test_without_pyarrow_parquet_says_which_extra_to_install(emulator, workdir, monkeypatch):
    write_tickets(workdir / "tickets.csv")
    env = cli_env(emulator.base_url)
    assert batchrun(["submit", "tickets.csv", "--job", write_job(workdir)], cwd=workdir, env=env).returncode == 0
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    r = batchrun(["results", run_id(workdir), "-o", "out.parquet"], cwd=workdir, env=env)
    assert r.returncode == 2 and "pip install 'batchrun[parquet]'" in r.stderr
    assert not (workdir / "out.parquet").exists()
    pq_input = workdir / "in.parquet"
    pq_input.write_bytes(b"PAR1")
    r = batchrun(["submit", "in.parquet", "--job", write_job(workdir)], cwd=workdir, env=env)
    assert r.returncode == 2 and "batchrun[parquet]" in r.stderr


@pytest.mark.parametrize("delimiter", [";", "|"])
def test_the_csv_dialect_is_sniffed(emulator, workdir, delimiter):
    write_tickets(workdir / "t.csv", delimiter=delimiter)
    env = cli_env(emulator.base_url)
    r = batchrun(["submit", "t.csv", "--job", write_job(workdir), "-o", "out.csv"], cwd=workdir, env=env)
    assert r.returncode == 0, r.stderr
    assert [(row["id"], row["customer"]) for row in read_csv(workdir / "out.csv")] == [(t[0], t[1]) for t in TICKETS]
    assert stored_params(workdir)[0]["messages"][0]["content"] == f"Ticket from Acme, Inc.:\n{TICKETS[0][3]}"
