"""One exception per way a command can fail; the CLI maps each to its exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED_ITEMS = 1
EXIT_USAGE = 2
EXIT_NOT_FINISHED = 3
EXIT_LOCKED = 75


class BatchrunError(Exception):
    exit_code = EXIT_USAGE


class UsageError(BatchrunError):
    """Bad flags, job file or input: nothing was sent."""


class InputError(UsageError):
    """Problems found in the input file, each as `FILE:LINE: what is wrong (how to fix)`.

    `lines` (when known) are the line numbers of `problems`, so problems found by different checks can be merged in
    file order.
    """

    def __init__(self, problems: list[str], more: int = 0, lines: list[int] | None = None) -> None:
        self.problems = problems
        self.more = more
        self.lines = lines if lines is not None else [0] * len(problems)
        text = "\n".join(problems)
        if more:
            text += f"\n... and {more} more problem(s) in the file"
        super().__init__(text + "\nnothing was sent; fix the file and submit again")


class RunLocked(BatchrunError):
    exit_code = EXIT_LOCKED


class StoreError(BatchrunError):
    """The database or a file next to it cannot be used as it is (a directory, read-only, damaged, a symlinked
    lock file); the message says how to fix it."""


class StoreCorrupt(StoreError):
    """The database file is not a SQLite database, or is damaged."""


class StoreUnavailable(StoreError):
    """The database cannot be written right now (another process kept it locked too long, disk full): try later."""

    exit_code = EXIT_NOT_FINISHED


class APIUnavailable(BatchrunError):
    """The API could not be reached (or kept failing) for a command that needs it: try again later."""

    exit_code = EXIT_NOT_FINISHED


class RunFailed(BatchrunError):
    """The run ended with items that failed for good (the CLI's exit code 1)."""

    exit_code = EXIT_FAILED_ITEMS


class RunNotFinished(BatchrunError):
    """The run stopped with items still pending (exit code 3): `resume` continues it."""

    exit_code = EXIT_NOT_FINISHED
