"""Every expected failure of a command as one line on stderr and its exit code."""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import sqlite3
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from batchrun.errors import EXIT_FAILED_ITEMS, EXIT_NOT_FINISHED, EXIT_USAGE, BatchrunError


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Every expected failure is one line on stderr and its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BatchrunError as e:
            click.echo(f"batchrun: error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:  # before a run's own signal handling began, or after it ended
            more = INTERRUPTED_HINT if fn.__name__ in PROCESSING_COMMANDS else ""
            click.echo(f"batchrun: interrupted{more}", err=True)
            sys.exit(EXIT_NOT_FINISHED)
        except sqlite3.Error as e:
            from batchrun.store import store_error

            error = store_error(e)
            click.echo(f"batchrun: error: {error}", err=True)
            sys.exit(error.exit_code)
        except BrokenPipeError:
            reader_gone(EXIT_NOT_FINISHED if fn.__name__ in PROCESSING_COMMANDS else 0)
        except OSError as e:
            click.echo(f"batchrun: error: {os_error_line(e)}", err=True)
            sys.exit(EXIT_NOT_FINISHED if e.errno in TRY_LATER_ERRNOS else EXIT_USAGE)
        except (SystemExit, click.exceptions.Exit, click.ClickException):
            raise
        except Exception as e:
            if debugging():
                raise
            click.echo(
                f"batchrun: error: unexpected {type(e).__name__}: {e} (a bug in batchrun: rerun with --debug for "
                "the traceback and report it)",
                err=True,
            )
            sys.exit(EXIT_FAILED_ITEMS)

    return wrapper


PROCESSING_COMMANDS = frozenset({"submit", "resume", "retry", "cancel"})
INTERRUPTED_HINT = " (what was done is kept: `batchrun runs` lists the runs, `batchrun resume RUN` continues one)"


class OneLineUsageError(click.UsageError):
    """click's usage error (a wrong option value, a missing option, an unknown command) in batchrun's one line."""

    def show(self, file: Any = None) -> None:
        where = self.ctx.command_path if self.ctx is not None else "batchrun"
        click.echo(f"batchrun: error: {self.format_message()} (`{where} --help` lists the options)", err=True)


class OneLineUsage(click.Group):
    """The command group whose usage errors, its own and its commands', are one line like every other error."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_usage():
            return super().invoke(ctx)


@contextlib.contextmanager
def _one_line_usage() -> Any:
    try:
        yield
    except OneLineUsageError:
        raise
    except click.UsageError as e:
        raise OneLineUsageError(e.format_message(), e.ctx) from None


def reader_gone(code: int) -> NoReturn:
    """The reader of our output went away (`batchrun results RUN | head -1`): stop quietly, without a traceback
    and without Python's own complaint when it flushes the closed pipe at exit. A read command has done what was
    asked (exit 0); a command processing a run may have stopped early (exit 3: resumable)."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        fd = sys.stdout.fileno()  # not a real file in-process (CliRunner): nothing to redirect then
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    sys.exit(code)


def debugging() -> bool:
    ctx = click.get_current_context(silent=True)
    flag = bool(ctx and ctx.find_root().params.get("debug"))
    return flag or os.environ.get("BATCHRUN_DEBUG") == "1"


TRY_LATER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def os_error_line(e: OSError) -> str:
    """A file problem as one line: what, where, and the fix."""
    where = f"{e.filename}: " if e.filename else ""
    if e.errno in TRY_LATER_ERRNOS:
        fix = "free some space and run the command again"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make it writable by this user, or choose another path"
    elif e.errno == errno.ENOENT:
        fix = "check that the path and its directory exist"
    else:
        fix = "check the path"
    return f"{where}{e.strerror or e} ({fix})"
