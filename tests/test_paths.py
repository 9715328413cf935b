"""Where a command reads and writes: the database path (missing, a directory), the results file a run remembers,
and a standard output whose reader went away."""

from __future__ import annotations

import csv
import subprocess as sp
import sys
from pathlib import Path

import pytest

import batchrun
from tests.conftest import batchrun as run_batchrun
from tests.conftest import cli_env, prompts, read_jsonl, write_jsonl

MODEL = "claude-haiku-4-5"
READ_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["status", "r"],
    ["runs"],
    ["runs", "--json"],
    ["results", "r"],
    ["report", "r"],
    ["doctor"],
    ["prune", "--older-than", "30d"],
    ["delete", "r"],
]


@pytest.fixture
def env(emulator) -> dict[str, str]:
    return cli_env(emulator.base_url)


def made_run(workdir: Path, env: dict[str, str], n: int = 3) -> Path:
    items = write_jsonl(workdir / "items.jsonl", prompts(n))
    done = run_batchrun(["submit", str(items), "--model", MODEL, "--run-id", "r", "-q"], cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr
    return workdir / "batchrun.db"


# a path with no database is an error for every read command, and for the Python API


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_a_read_command_on_a_missing_database_is_an_error(workdir: Path, env: dict[str, str], args: list[str]) -> None:
    missing = workdir / "missing.db"
    done = run_batchrun([*args, "--db", str(missing)], cwd=workdir, env=env)
    assert done.returncode == 2
    assert done.stderr == (
        f"batchrun: error: no batchrun database at {missing} (give --db or set BATCHRUN_DB; `batchrun submit` "
        "creates one)\n"
    )
    assert done.stdout == ""
    assert not missing.exists()


def test_the_python_api_on_a_missing_database_raises(workdir: Path) -> None:
    missing = workdir / "missing.db"
    for call in (lambda: batchrun.status(db=missing), lambda: batchrun.status("r", db=missing)):
        with pytest.raises(batchrun.UsageError, match=f"no batchrun database at {missing}"):
            call()
    assert not missing.exists()


# --db DIR: the same one line as BATCHRUN_DB=DIR


@pytest.mark.parametrize("args", [["status"], ["runs"], ["results", "r"], ["doctor"], ["resume", "r"]], ids=" ".join)
def test_db_given_a_directory_is_one_line(workdir: Path, env: dict[str, str], args: list[str]) -> None:
    folder = workdir / "dbs"
    folder.mkdir()
    flag = run_batchrun([*args, "--db", str(folder)], cwd=workdir, env=env)
    variable = run_batchrun(args, cwd=workdir, env={**env, "BATCHRUN_DB": str(folder)})
    line = (
        f"batchrun: error: {folder} is a directory, not a database file (give --db a file path, e.g. "
        f"{folder}/batchrun.db)\n"
    )
    assert (flag.returncode, flag.stderr) == (2, line)
    assert (variable.returncode, variable.stderr) == (2, line)
    assert list(folder.iterdir()) == []


# the results file of a run: remembered by resume


def test_resume_writes_the_results_file_the_submit_asked_for(workdir: Path, env: dict[str, str]) -> None:
    """The cron recipe: `submit -o out.csv` is interrupted (exit 3), the next `resume RUN` has no -o."""
    items = write_jsonl(workdir / "items.jsonl", prompts(4))
    submit = ["submit", str(items), "--model", MODEL, "--run-id", "r", "-q", "-o", "out.csv"]
    first = run_batchrun([*submit, "--limit", "2"], cwd=workdir, env=env)
    assert first.returncode == 3 and not (workdir / "out.csv").exists()
    elsewhere = workdir / "cron"
    elsewhere.mkdir()
    db = str(workdir / "batchrun.db")
    second = run_batchrun(["resume", "r", "--db", db, "-q", "--limit", "1"], cwd=elsewhere, env=env)
    assert second.returncode == 3 and "out.csv not written" in second.stderr
    last = run_batchrun(["resume", "r", "--db", db, "-q"], cwd=elsewhere, env=env)
    assert last.returncode == 0, last.stderr
    with (workdir / "out.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["custom_id"] for r in rows] == [f"item-{i}" for i in range(4)]
    assert f"to {workdir / 'out.csv'}" in last.stderr
    assert not (elsewhere / "out.csv").exists()


def test_a_repeated_submit_writes_the_remembered_file_and_resume_o_overrides_it(
    workdir: Path, env: dict[str, str]
) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(4))
    submit = ["submit", str(items), "--model", MODEL, "--run-id", "r", "-q"]
    assert run_batchrun([*submit, "-o", "first.jsonl", "--limit", "1"], cwd=workdir, env=env).returncode == 3
    assert run_batchrun([*submit, "--limit", "1"], cwd=workdir, env=env).returncode == 3  # the same submit again
    assert (
        run_batchrun(["resume", "r", "-q", "-o", "second.jsonl", "--limit", "1"], cwd=workdir, env=env).returncode == 3
    )
    assert run_batchrun(["resume", "r", "-q"], cwd=workdir, env=env).returncode == 0
    assert not (workdir / "first.jsonl").exists()
    assert [r["custom_id"] for r in read_jsonl(workdir / "second.jsonl")] == [f"item-{i}" for i in range(4)]


# a closed pipe: `batchrun results RUN | head -1`


@pytest.mark.parametrize("args", [["results", "r"], ["status"], ["runs"]], ids=" ".join)
def test_a_closed_pipe_ends_a_read_command_quietly(workdir: Path, env: dict[str, str], args: list[str]) -> None:
    """A real pipe, its reading end closed before the command writes (what `head` does once it has its line)."""
    made_run(workdir, env)
    child = sp.Popen([sys.executable, "-m", "batchrun", *args], cwd=workdir, env=env, stdout=sp.PIPE, stderr=sp.PIPE)
    child.stdout.close()
    _, err = child.communicate(timeout=30)
    assert (child.returncode, err.decode()) == (0, "")
