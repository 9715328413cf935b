"""Bad input is named in the user's words: their id field, rows of a table, a format batchrun does not read."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import batchrun, cli_env

MODEL = "claude-haiku-4-5"
JOB = f'model = "{MODEL}"\nmax_tokens = 50\ntemplate = "Ticket: {{text}}"\nid_field = "ticket_id"\n'


@pytest.fixture
def env(emulator) -> dict[str, str]:
    return cli_env(emulator.base_url)


def submit(workdir: Path, env: dict[str, str], name: str, *more: str) -> tuple[int, str]:
    done = batchrun(["submit", name, "-q", *more], cwd=workdir, env=env)
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr
    return done.returncode, done.stderr


def with_job(workdir: Path) -> list[str]:
    (workdir / "job.toml").write_text(JOB)
    return ["--job", "job.toml"]


def test_a_duplicate_id_in_a_csv_names_the_id_field_and_the_rows(workdir: Path, env: dict[str, str]) -> None:
    (workdir / "tickets.csv").write_text(
        "ticket_id,text\nT-1,a\nann@example.com,b\nT-1,c\nann@example.com,d\nT-2,e\n", encoding="utf-8"
    )
    code, err = submit(workdir, env, "tickets.csv", *with_job(workdir))
    assert code == 2
    path = workdir / "tickets.csv"
    assert (
        f"{path}:3: duplicate ticket_id 'T-1' in row 3, first used in row 1 (give every row its own ticket_id)" in err
    )
    # an id that is not a valid custom_id is shown as the user wrote it, not as the id batchrun mapped it to
    assert f"{path}:4: duplicate ticket_id 'ann@example.com' in row 4, first used in row 2" in err
    assert "custom_id" not in err and "line" not in err.replace("nothing was sent", "")
    assert not (workdir / "batchrun.db").exists()


def test_a_duplicate_custom_id_in_a_csv_is_a_row_and_in_jsonl_a_line(workdir: Path, env: dict[str, str]) -> None:
    (workdir / "plain.csv").write_text("custom_id,prompt\na,x\nb,y\na,z\n", encoding="utf-8")
    code, err = submit(workdir, env, "plain.csv", "--model", MODEL)
    assert code == 2
    assert (
        "plain.csv:3: duplicate custom_id 'a' in row 3, first used in row 1 (give every row its own custom_id)" in err
    )
    lines = [{"ticket_id": "T-1", "text": "x"}, {"ticket_id": "T-1", "text": "y"}]
    (workdir / "items.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    code, err = submit(workdir, env, "items.jsonl", *with_job(workdir))
    assert code == 2
    assert "items.jsonl:2: duplicate ticket_id 'T-1', first used on line 1 (give every line its own ticket_id)" in err


def _xlsx(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")


@pytest.mark.parametrize(
    ("name", "write", "said"),
    [
        ("tickets.xlsx", _xlsx, "a .xlsx file is not a supported input format (save the sheet as CSV; supported: "),
        (
            "tickets.xls",
            lambda p: p.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600)),
            "a .xls file is not a supported input format",
        ),
        ("export.zip", _xlsx, "a zip or Office file (not text) is not a supported input format (unzip it"),
        (
            "items.json",
            lambda p: p.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b"}\n]\n'),
            "a JSON array is not a supported input format (write one object per line, JSONL",
        ),
        (
            "oneline.json",
            lambda p: p.write_text('[{"prompt": "a"}, {"prompt": "b"}]\n'),
            "a JSON array is not a supported input format",
        ),
    ],
)
def test_an_unsupported_format_is_said_once_with_the_supported_ones(
    workdir: Path, env: dict[str, str], name: str, write, said: str
) -> None:
    write(workdir / name)
    code, err = submit(workdir, env, name, "--model", MODEL)
    assert code == 2
    problem, *rest = err.splitlines()
    assert problem.startswith(f"batchrun: error: {workdir / name}: {said}"), err
    assert "CSV (.csv), TSV (.tsv, .tab) or Parquet (.parquet, .pq)" in problem
    assert rest == ["nothing was sent; fix the file and submit again"]
    assert "not valid JSON" not in err
    assert not (workdir / "batchrun.db").exists()


def test_a_nan_or_infinite_parquet_id_is_missing_not_a_duplicate(workdir: Path, env: dict[str, str]) -> None:
    table = pa.table({"ticket_id": [1.0, math.nan, 3.0, math.inf, math.nan], "text": ["a", "b", "c", "d", "e"]})
    pq.write_table(table, workdir / "tickets.parquet")
    code, err = submit(workdir, env, "tickets.parquet", *with_job(workdir))
    assert code == 2
    for row, value in ((2, "nan"), (4, "inf"), (5, "nan")):
        assert (
            f"tickets.parquet:{row}: the id in field 'ticket_id' of row {row} is missing or not a number ({value}"
            in err
        )
    assert "duplicate" not in err and "'null'" not in err
    assert not (workdir / "batchrun.db").exists()
