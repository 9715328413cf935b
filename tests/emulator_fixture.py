"""The `emulator_proc` (one per session) and `emulator` (fresh state per test) pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
