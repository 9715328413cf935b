"""Start-up: a command imports what it needs. sqlite-utils imports pandas and numpy whenever they are installed (the
dev extra, most data environments), which made `batchrun status` take 0.6-1 s instead of 0.13 s. What a fresh
process imports can only be seen in a fresh process: this test starts one (timings are bench/startup.py's job)."""

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

for args in {commands!r}:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (args, result.output, result.exception)
loaded = sorted(m for m in ("pandas", "numpy") if m in sys.modules)
import pandas  # still importable afterwards: hidden only while sqlite-utils was imported
print(loaded)
"""


def test_the_commands_do_not_import_pandas_or_numpy(workdir: Path, emulator) -> None:
    pytest.importorskip("pandas")  # the case this guards: installed, as the dev extra does
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    done = batchrun(["submit", str(items), "--model", MODEL, "--run-id", "r", "-q"], cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr
    commands = [
        ["status"],
        ["runs"],
        ["results", "r", "-o", "out.csv"],
        ["report", "r"],
        ["doctor"],
        ["submit", str(items), "--model", MODEL, "--dry-run"],
    ]
    keyless = {k: v for k, v in env.items() if k != "ANTHROPIC_API_KEY"}  # the dry run estimates, sends nothing
    child = sp.run(
        [sys.executable, "-c", CHILD.format(commands=commands)],
        cwd=workdir,
        env=keyless,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert orjson.loads(child.stdout.strip().replace("'", '"')) == []
