"""`--emulate`: run a command against the built-in API emulator, started as a child process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from batchrun.errors import UsageError

if TYPE_CHECKING:  # the emulator is imported only when it is started: not a command's start-up
    from batchrun.emulator.config import EmulatorConfig

# What --emulate imitates unless BATCHRUN_EMULATOR_ARGS says otherwise: a Tier 4 account, 0.1-0.5 s replies.
DEFAULT_ARGS = "--rpm 4000 --itpm 2000000 --otpm 400000 --latency-ms 300 --latency-jitter-ms 200"
EMULATOR_KEY = "emulator-key-not-secret"


@contextlib.contextmanager
def emulator(extra_args: str | None = None) -> Iterator[str]:
    """Start the emulator on a free local port and yield its base URL; stop it on the way out."""
    from batchrun.emulator.process import EmulatorProcess

    config = _config(extra_args)
    with EmulatorProcess(config) as process:
        yield process.base_url


def divergence_label(args: str | None = None) -> str | None:
    """`model divergence M=S,...` when the emulator these flags start makes models diverge from a reference, else None.

    Such an emulator answers differently from a plain one, so it is recorded as another endpoint: the response cache
    never serves a plain emulated run's answers to a comparison (or the other way round)."""
    divergence = _config(args).model_divergence
    if not divergence:
        return None
    return "model divergence " + ",".join(f"{model}={share:g}" for model, share in sorted(divergence.items()))


def _config(args: str | None) -> EmulatorConfig:
    """The emulator's settings from its flags; flags it cannot take are bad usage, said in one line."""
    from batchrun.emulator.config import FlagError, config_from_argv

    chosen = os.environ.get("BATCHRUN_EMULATOR_ARGS")
    try:
        return config_from_argv((args or chosen or DEFAULT_ARGS).split())[0]
    except FlagError as e:
        where = "BATCHRUN_EMULATOR_ARGS" if chosen and not args else "the emulator's flags"
        raise UsageError(f"{where}: {e} (`batchrun emulator --help` lists the flags)") from None


def refuse_no_wait(emulate: bool, no_wait: bool) -> None:
    """The emulator lives as long as the command: batches left in it by --no-wait could never be collected,
    cancelled or deleted."""
    if emulate and no_wait:
        raise UsageError(
            "--emulate with --no-wait: the batches would live in an emulator that stops with this command, so the "
            "run could never finish (drop --no-wait to wait for them, or leave out --emulate)"
        )
