"""Start-up: a command imports what it needs. sqlite-utils imports pandas and numpy whenever they are installed (the
dev extra, most data environments), which made `batchrun status` take 0.6-1 s instead of 0.13 s; asyncio, tenacity,
tqdm and the SDK cost a command that sends nothing 60-100 ms more. What a fresh process imports can only be seen in
a fresh process: this test starts one (timings are bench/startup.py's job)."""

from __future__ import annotations

import subprocess as sp
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import batchrun, cli_env, prompts, write_jsonl

MODEL = "claude-haiku-4-5"

CHILD = """
import sys
from click.testing import CliRunner
from batchrun.cli import cli

HEAVY = ("pandas", "numpy", "sqlite_utils", "asyncio", "tenacity", "tqdm", "anthropic", "dotenv")
for args, code, keyless in {commands!r}:
    result = CliRunner().invoke(cli, args, env={{"ANTHROPIC_API_KEY": None}} if keyless else None)
    assert result.exit_code == code, (args, result.output, result.exception)
by_commands = sorted(m for m in HEAVY if m in sys.modules)
from batchrun.store import Store

Store("fresh.db").close()  # a new database: its migrations need sqlite-utils, never pandas or numpy
by_a_new_database = sorted(m for m in ("pandas", "numpy") if m in sys.modules)
import pandas  # still importable afterwards: hidden only while sqlite-utils was imported
print([by_commands, by_a_new_database])
"""


def test_commands_that_send_nothing_import_neither_pandas_nor_sqlite_utils_nor_the_api_layer(
    workdir: Path, emulator
) -> None:
    pytest.importorskip("pandas")  # the case this guards: installed, as the dev extra does
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    done = batchrun(["submit", str(items), "--model", MODEL, "--run-id", "r", "-q"], cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr
    commands = [
        (["status"], 0, False),
        (["status", "r", "--json"], 0, False),
        (["runs"], 0, False),
        (["results", "r", "-o", "out.csv"], 0, False),
        (["report", "r"], 0, False),
        (["doctor"], 0, False),
        (["prune", "--older-than", "3650d"], 0, False),
        (["submit", str(items), "--model", MODEL, "--dry-run"], 0, True),  # keyless: estimated, not counted
        (["resume", "r", "-q"], 0, False),  # a finished run: nothing to send
        (["retry", "r", "-q"], 0, False),  # nothing failed
        (["cancel", "r", "-q"], 2, False),  # an online run has no batches to cancel
        (["delete", "r"], 0, False),
    ]
    child = sp.run(
        [sys.executable, "-c", CHILD.format(commands=commands)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert orjson.loads(child.stdout.strip().replace("'", '"')) == [[], []]
