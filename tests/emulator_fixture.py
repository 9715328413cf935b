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


@pytest.fixture
def emulator(emulator_proc: EmulatorProcess) -> EmulatorProcess:
    """The session's emulator with default config and fresh state for this test."""
    emulator_proc.restore_defaults()
    emulator_proc.reset()
    return emulator_proc
