"""The `emulator_proc` (one per session) and `emulator` (fresh state per test) pytest fixtures."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

import batchrun.emulate
from batchrun.emulator.config import config_from_argv
from batchrun.emulator.process import EmulatorProcess


@pytest.fixture(scope="session")
def emulator_proc() -> Iterator[EmulatorProcess]:
    """One emulator process for the whole test session."""
    process = EmulatorProcess()
    try:
        yield process
    finally:
        process.stop()


# A batch lasts this long in a test unless the test says otherwise (the emulator's own default is 2 s).
TEST_BATCH_SECONDS = 0.05


@pytest.fixture
def emulator(emulator_proc: EmulatorProcess) -> EmulatorProcess:
    """The session's emulator with default config (batches of TEST_BATCH_SECONDS) and fresh state for this test."""
    emulator_proc.reset(batch_seconds=TEST_BATCH_SECONDS)
    return emulator_proc


def stand_in_for_emulate(emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--emulate` gets the session's emulator with fresh state, configured as --emulate configures its own
    (BATCHRUN_EMULATOR_ARGS included), timings aside: no latency, batches of TEST_BATCH_SECONDS."""

    @contextlib.contextmanager
    def fresh_emulator(extra_args: str | None = None) -> Iterator[str]:
        argv = extra_args or os.environ.get("BATCHRUN_EMULATOR_ARGS") or batchrun.emulate.DEFAULT_ARGS
        config = config_from_argv(argv.split())[0].to_dict()
        emulator.reset(**{**config, "latency_ms": 0, "latency_jitter_ms": 0, "batch_seconds": TEST_BATCH_SECONDS})
        yield emulator.base_url

    monkeypatch.setattr(batchrun.emulate, "emulator", fresh_emulator)
