"""The Python API end to end on the emulator: submit (dicts or a path), status, results, resume, async, errors."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

import batchrun
from tests.conftest import TEST_KEY, cli_env, prompts, write_jsonl
from tests.conftest import batchrun as run_cli

MODEL = "claude-haiku-4-5"


@pytest.fixture
def api_env(emulator, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> Path:
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.base_url)
    monkeypatch.delenv("BATCHRUN_DB", raising=False)
    return workdir / "runs.db"


def test_submit_dicts_then_status_and_results_like_the_cli(api_env: Path, emulator) -> None:
    rows = prompts(12)
    rows[5] = {"custom_id": "item-5", "params": {"messages": [{"role": "user", "content": "x"}], "bogus": 1}}
    run = batchrun.submit(iter(rows), db=api_env, model=MODEL, max_tokens=64, concurrency=4, log=None)
    assert (run.exit_code, run.succeeded, run.failed, run.pending) == (1, 11, 1, 0)
    assert run.created and run.run_id.startswith("items-")
    with pytest.raises(batchrun.RunFailed) as raised:
        run.check()
    assert raised.value.exit_code == 1
    status = batchrun.status(run.run_id, db=api_env)
    assert status["counts"]["succeeded"] == 11 and status["cost_usd"] == run.cost_usd > 0
    results = list(batchrun.results(run.run_id, db=api_env))
    assert [r["custom_id"] for r in results] == [f"item-{i}" for i in range(12)]
    assert results[5]["result"]["type"] == "errored"
    assert results[0]["result"]["message"]["content"][0]["text"]
    again = batchrun.submit(rows, db=api_env, model=MODEL, max_tokens=64, concurrency=4, log=None)
    assert again.run_id == run.run_id and not again.created and again.sent == 0
    assert emulator.stats()["by_status"]["200"] == 11


def test_a_path_and_a_job_file_and_async_resume(api_env: Path, workdir: Path) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(5))
    job = workdir / "job.toml"
    job.write_text(f'model = "{MODEL}"\nmax_tokens = 64\n')
    run = batchrun.submit(items, job, db=api_env, output=str(workdir / "out.jsonl"), log=None)
    assert run.check() is run and run.results_written == 5 and run.ok

    async def later() -> batchrun.RunResult:
        status = await batchrun.astatus(db=api_env)
        assert [s["run_id"] for s in status] == [run.run_id]
        return await batchrun.aresume(run.run_id, db=api_env, log=None)

    resumed = asyncio.run(later())
    assert resumed.exit_code == 0 and resumed.sent == 0


def test_async_submit_shares_the_callers_loop(api_env: Path) -> None:
    async def main() -> tuple[batchrun.RunResult, int]:
        ticks = 0

        async def count() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        counter = asyncio.create_task(count())
        run = await batchrun.asubmit(prompts(4), db=api_env, model=MODEL, max_tokens=64, log=None)
        counter.cancel()
        return run, ticks

    run, ticks = asyncio.run(main())
    assert run.exit_code == 0 and run.succeeded == 4
    assert ticks > 0  # the caller's loop kept running while the run went


def test_errors_carry_the_cli_exit_codes(api_env: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(batchrun.UsageError) as raised:
        batchrun.status("nope", db=api_env)
    assert raised.value.exit_code == 2 and "no batchrun database" in str(raised.value)
    with pytest.raises(batchrun.UsageError) as raised:
        batchrun.submit([{"prompt": "hi"}, "not a dict"], db=api_env, model=MODEL, log=None)
    assert raised.value.exit_code == 2 and "items[1]" in str(raised.value)
    assert not api_env.exists()  # nothing stored
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(batchrun.BatchrunError, match="ANTHROPIC_API_KEY is not set"):
        batchrun.submit([{"prompt": "hi"}], db=api_env, model=MODEL, log=None)


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas is not installed")
def test_results_to_pandas(api_env: Path) -> None:
    run = batchrun.submit(prompts(3), db=api_env, model=MODEL, max_tokens=64, log=None)
    frame = batchrun.results(run.run_id, db=api_env).to_pandas()
    assert list(frame["custom_id"]) == ["item-0", "item-1", "item-2"] and set(frame["type"]) == {"succeeded"}


def test_a_missing_ca_bundle_is_one_line_naming_the_variable(workdir, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(1))
    env = cli_env(emulator.base_url, SSL_CERT_FILE=str(workdir / "no-such-bundle.pem"))
    proc = run_cli(["submit", str(items), "--model", "claude-haiku-4-5"], cwd=workdir, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "SSL_CERT_FILE=" in proc.stderr and "no-such-bundle.pem" in proc.stderr and "Traceback" not in proc.stderr
    assert emulator.stats()["requests"] == 0
