"""What a newcomer met following the README in order, with the failure cases a user can cause on its commands.

`--emulate` gets the session's emulator, reset and configured as --emulate configures its own (as in
tests/test_readme.py), so each command sees a fresh emulator, as a user does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

import batchrun.emulate
from batchrun.emulator.config import config_from_argv
from tests.conftest import batchrun as run_cli
from tests.conftest import write_jsonl

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def emulated(emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.contextmanager
    def fresh_emulator(extra_args: str | None = None) -> Iterator[str]:
        argv = extra_args or os.environ.get("BATCHRUN_EMULATOR_ARGS") or batchrun.emulate.DEFAULT_ARGS
        config = config_from_argv(argv.split())[0].to_dict()
        emulator.reset(**{**config, "latency_ms": 0, "latency_jitter_ms": 0})
        yield emulator.base_url

    monkeypatch.setattr(batchrun.emulate, "emulator", fresh_emulator)


def user_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}


def tickets(workdir: Path, n: int = 12) -> Path:
    """The first n of the README's tickets, as JSONL."""
    lines = (ROOT / "jobs/examples/tickets.jsonl").read_bytes().splitlines()[:n]
    return write_jsonl(workdir / "tickets.jsonl", [orjson.loads(line) for line in lines])


def compare(workdir: Path, items: Path, db: str, *models: str) -> dict:
    args = ["compare", str(items), "--job", str(ROOT / "jobs/classify_tickets.toml"), "--models", ",".join(models)]
    done = run_cli([*args, "--reference", OPUS, "--emulate", "--json", "--db", db], cwd=workdir, env=user_env())
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def test_compare_on_the_emulator_is_not_fed_the_answers_of_the_guides_earlier_runs(workdir: Path, emulated) -> None:
    """The README's guide runs the tickets on claude-sonnet-4-6 (step 1) before it compares models: the comparison
    must report what a fresh database reports, not the plain emulated answers the response cache holds."""
    items = tickets(workdir)
    fresh = compare(workdir, items, "fresh.db", SONNET)
    job = str(ROOT / "jobs/classify_tickets.toml")
    done = run_cli(["submit", str(items), "--job", job, "--emulate", "--db", "guide.db"], cwd=workdir, env=user_env())
    assert done.returncode == 0, done.stderr
    after_the_guide = compare(workdir, items, "guide.db", SONNET)
    assert after_the_guide["models"][0]["agreement"] == fresh["models"][0]["agreement"]
    assert after_the_guide["models"][0]["agreement_all"] == fresh["models"][0]["agreement_all"] >= 0.9
    assert after_the_guide["recommended"] == fresh["recommended"] == SONNET


def test_compare_with_a_model_the_api_does_not_know_exits_2_naming_it(workdir: Path, emulated) -> None:
    items = tickets(workdir, 4)
    args = ["compare", str(items), "--job", str(ROOT / "jobs/classify_tickets.toml"), "--models", "claude-nosuch-1"]
    done = run_cli([*args, "--reference", OPUS, "--emulate", "--db", "c.db"], cwd=workdir, env=user_env())
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("batchrun: error:") and "claude-nosuch-1 does not exist" in last, done.stderr
    assert "recommended" not in done.stdout
