"""Trustworthy runs: answers never cross endpoints, what answered each item is recorded, an unfinished run leaves
no partial results file, and settings that do not change requests can change on resume."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchrun.emulator.process import EmulatorProcess
from tests.conftest import batchrun, cli_env, db_rows, prompts, read_jsonl, write_jsonl

MODEL = "claude-haiku-4-5"


@pytest.fixture
def second_emulator():
    """Another emulator: stands in for "the real API" (a different endpoint) in these tests."""
    with EmulatorProcess() as process:
        yield process


def status_json(workdir: Path, env: dict, run_id: str | None = None) -> dict:
    proc = batchrun(["status", *([run_id] if run_id else []), "--json"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def test_answers_from_one_endpoint_are_never_served_on_another(workdir: Path, emulator, second_emulator) -> None:
    """The quick start's answers (one endpoint) are not reused when the same command talks to another endpoint:
    a new run is made and every request is sent there."""
    items = write_jsonl(workdir / "items.jsonl", prompts(30))
    args = ["submit", str(items), "--model", MODEL, "-o", "results.jsonl"]
    first = batchrun(args, cwd=workdir, env=cli_env(emulator.base_url))
    assert first.returncode == 0, first.stderr
    second = batchrun(args, cwd=workdir, env=cli_env(second_emulator.base_url))
    assert second.returncode == 0, second.stderr
    assert "created run" in second.stderr and "0 item(s) from the response cache" in second.stderr
    assert second_emulator.stats()["requests"] == 30
    runs = status_json(workdir, cli_env(emulator.base_url))["runs"]
    assert len(runs) == 2
    assert {r["endpoint"] for r in runs} == {emulator.base_url, second_emulator.base_url}
    assert [r["answered_by"] for r in runs] == [{"api": 30, "batch": 0, "cache": 0}] * 2
    # a third file with the same requests on the first endpoint is answered from that endpoint's results
    copy = write_jsonl(workdir / "copy.jsonl", prompts(30))
    copy.write_bytes(copy.read_bytes() + b"\n")
    third = batchrun(["submit", str(copy), "--model", MODEL], cwd=workdir, env=cli_env(emulator.base_url))
    assert third.returncode == 0 and "30 item(s) from the response cache" in third.stderr
    copied = db_rows(workdir / "batchrun.db", "SELECT DISTINCT answered_from FROM items WHERE via = 'cache'")
    assert copied == [(runs[0]["run_id"],)]


def test_the_emulate_flag_is_an_endpoint_of_its_own(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(5))
    quick = batchrun(["submit", str(items), "--model", MODEL, "--emulate"], cwd=workdir, env=cli_env(emulator.base_url))
    assert quick.returncode == 0, quick.stderr
    real = batchrun(["submit", str(items), "--model", MODEL], cwd=workdir, env=cli_env(emulator.base_url))
    assert real.returncode == 0 and "created run" in real.stderr
    assert emulator.stats()["requests"] == 5
    assert {r["endpoint"] for r in status_json(workdir, cli_env(emulator.base_url))["runs"]} == {
        "emulator",
        emulator.base_url,
    }


def test_an_unfinished_run_is_not_continued_on_another_endpoint(workdir: Path, emulator, second_emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(20))
    emulator.configure(api_key="the-right-key-1234")  # a wrong key: the run stops with every item pending
    args = ["submit", str(items), "--model", MODEL, "--run-id", "r", "-o", "out.jsonl"]
    assert batchrun(args, cwd=workdir, env=cli_env(emulator.base_url)).returncode == 3
    emulator.configure(api_key=None)
    assert not (workdir / "out.jsonl").exists()  # an unfinished run leaves no partial results file

    other = cli_env(second_emulator.base_url)
    for command in (["resume", "r"], args, ["submit", str(items), "--model", MODEL]):
        proc = batchrun(command, cwd=workdir, env=other)
        assert proc.returncode == 2, proc.stderr
        assert emulator.base_url in proc.stderr and "Traceback" not in proc.stderr
    assert second_emulator.stats()["requests"] == 0

    done = batchrun(["resume", "r", "-o", "out.jsonl"], cwd=workdir, env=cli_env(emulator.base_url))
    assert done.returncode == 0
    assert len(read_jsonl(workdir / "out.jsonl")) == 20
    new = batchrun(["submit", str(items), "--model", MODEL, "--new-run"], cwd=workdir, env=other)
    assert new.returncode == 0 and second_emulator.stats()["requests"] == 20


def test_an_unfinished_run_keeps_an_existing_results_file(workdir: Path, emulator) -> None:
    (workdir / "out.jsonl").write_text("yesterday's results\n")
    items = write_jsonl(workdir / "items.jsonl", prompts(5))
    emulator.configure(api_key="the-right-key-1234")
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "-o", "out.jsonl"], cwd=workdir, env=cli_env(emulator.base_url)
    )
    emulator.configure(api_key=None)
    assert proc.returncode == 3
    assert "out.jsonl not written: the run is not finished" in proc.stderr
    assert (workdir / "out.jsonl").read_text() == "yesterday's results\n"
