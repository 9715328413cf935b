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
    """Problems found in the input file, each as `FILE:LINE: what is wrong (how to fix)`."""

    def __init__(self, problems: list[str], more: int = 0) -> None:
        self.problems = problems
        self.more = more
        text = "\n".join(problems)
        if more:
            text += f"\n... and {more} more problem(s) in the file"
        super().__init__(text + "\nnothing was sent; fix the file and submit again")


class RunLocked(BatchrunError):
    exit_code = EXIT_LOCKED


class FatalAPIError(BatchrunError):
    """An error that every item would hit (bad key, no permission, no credit): the run stops, items stay pending."""

    exit_code = EXIT_NOT_FINISHED


class RunFailed(BatchrunError):
    """The run ended with items that failed for good (the CLI's exit code 1)."""

    exit_code = EXIT_FAILED_ITEMS


class RunNotFinished(BatchrunError):
    """The run stopped with items still pending (exit code 3): `resume` continues it."""

    exit_code = EXIT_NOT_FINISHED
