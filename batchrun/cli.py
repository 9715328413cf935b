"""The command line: parse, open the store, call one function, turn the outcome into an exit code."""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import sqlite3
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

import click

from batchrun.errors import (
    EXIT_FAILED_ITEMS,
    EXIT_NOT_FINISHED,
    EXIT_USAGE,
    APIUnavailable,
    BatchrunError,
    UsageError,
)
from batchrun.library import DEFAULT_DB, db_location

MAX_CONCURRENCY = 1000


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Every expected failure is one line on stderr and its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BatchrunError as e:
            click.echo(f"batchrun: error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("batchrun: interrupted", err=True)
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


def check_output(output: str | None, db: Path, *inputs: str | None) -> None:
    """Refuse an `-o` that would overwrite the database, its -wal/-shm files or an input file, or that cannot be
    written (missing or read-only directory), before anything runs."""
    if output is None:
        return
    out = Path(output)
    parent = out.parent
    if not parent.is_dir():
        raise UsageError(f"-o {output}: directory {parent} does not exist (create it first, or write elsewhere)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"-o {output}: directory {parent} is not writable (choose a writable directory)")
    protected = {f"{db}{suffix}": "the database" for suffix in ("", "-wal", "-shm", "-journal")}
    protected.update({str(i): "the input file" for i in inputs if i and i != "-"})
    for path, what in protected.items():
        if os.path.realpath(path) == os.path.realpath(out) or _same_file(path, out):
            raise UsageError(f"-o {output} is {what} ({path}): results would overwrite it (write them to another file)")


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_run_output(store: Any, run_id: str, output: str | None) -> None:
    """`check_output` for a command on an existing run: its database and the file the run was made from."""
    run = store.get_run(run_id) if output else None
    check_output(output, store.path, run["input_path"] if run else None)


def db_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        "db_path",
        type=click.Path(),  # a directory is refused by db_location, in the same words as BATCHRUN_DB=DIR
        default=None,
        help=f"SQLite store (default: $BATCHRUN_DB or ./{DEFAULT_DB}).",
    )(fn)


def stacked(*options: Callable[..., Any]) -> Callable[..., Any]:
    """Apply click options so that --help lists them in the order given."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Where requests go and how: options of every command that talks to the API."""
    fn = click.option(
        "--backend",
        type=click.Choice(["aiohttp", "httpx"]),
        default="aiohttp",
        show_default=True,
        help="HTTP stack of the Anthropic SDK.",
    )(fn)
    return click.option("--emulate", is_flag=True, help="Send to the built-in API emulator instead of the API.")(fn)


def see_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """How a run is watched: the progress log's format, and a command run when it stops."""
    fn = click.option(
        "--on-finish",
        metavar="CMD",
        help="Run CMD (with sh) when the run stops for any reason; BATCHRUN_* variables tell how it ended.",
    )(fn)
    return click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Progress lines off a terminal: timestamped text, or one JSON object per line.",
    )(fn)


def csv_raw_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--csv-raw",
        is_flag=True,
        help="CSV output: write cells exactly as stored, without the ' that stops a spreadsheet running a cell "
        "starting with = + - @ as a formula (for programs, not spreadsheets).",
    )(fn)


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options of every command that processes a run."""
    fn = see_options(fn)
    fn = stacked(
        click.option(
            "--request-timeout",
            type=click.FloatRange(1),
            default=600.0,
            show_default=True,
            help="Online: the most seconds one request may take, first byte to last, before it is retried.",
        ),
        click.option(
            "--grace",
            type=float,
            default=5.0,
            show_default=True,
            help="Seconds requests in flight get to finish after SIGINT/SIGTERM.",
        ),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar or progress lines."),
        click.option(
            "--no-cache",
            is_flag=True,
            help="Send every item, even those an identical earlier request in this database answered.",
        ),
        click.option(
            "-o",
            "--output",
            type=click.Path(dir_okay=False),
            help="Write results here when the run ends; the run remembers it, so a later resume without -o (or "
            "the same submit again) writes it when the run ends.",
        ),
        csv_raw_option,
    )(fn)
    return client_options(fn)


def setting_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Settings that do not change what is sent: given to resume, retry or a repeated submit, they apply to the rest
    of the run (and are kept for later resumes)."""
    fn = stacked(
        click.option(
            "--mode",
            type=click.Choice(["online", "batch", "auto"]),
            help="Online workers, Message Batches, or auto: batches until the --deadline needs the rest online.",
        ),
        click.option(
            "--deadline",
            help="Mode auto: finish by this ISO time (06:00, 2025-06-01T06:00) or duration from the run's start "
            "(6h, 90m).",
        ),
        click.option(
            "--deadline-margin",
            type=click.FloatRange(0),
            help="Mode auto: seconds of safety added to 20% of the online time (default 60).",
        ),
        click.option(
            "--force",
            is_flag=True,
            default=None,
            help="Mode auto: go on (all online at once) even when the deadline cannot be met.",
        ),
        click.option("--concurrency", type=click.IntRange(1, MAX_CONCURRENCY), help="Ceiling on requests in flight."),
        click.option("--max-attempts", type=click.IntRange(1, 100), help="Attempts per item before it fails."),
        click.option("--rpm", type=click.IntRange(1), help="Stay under this many requests per minute."),
        click.option("--itpm", type=click.IntRange(1), help="Stay under this many input tokens per minute."),
        click.option("--otpm", type=click.IntRange(1), help="Stay under this many output tokens per minute."),
        click.option(
            "--max-cost",
            type=click.FloatRange(0, min_open=True),
            help="Spend at most this many USD on the run, across all its resumes.",
        ),
        click.option(
            "--limit",
            type=click.IntRange(1),
            help="Process at most this many more items, then stop (exit 3 if items remain): a cheap canary.",
        ),
    )(fn)
    return fn


def batch_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options of the Message Batches path, for the commands that process a run."""
    fn = stacked(
        click.option(
            "--batch-size",
            type=click.IntRange(1, 100_000),
            help="Batch mode: at most this many requests per batch (default 100,000, the API's limit).",
        ),
        click.option(
            "--poll-interval",
            type=click.FloatRange(0, min_open=True),
            help="Batch mode: seconds between the first checks of a batch (default 5; the wait grows to 60).",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(0),
            help="Batch mode: stop waiting for batches after this many seconds and exit 3 (they keep running).",
        ),
    )(fn)
    return fn


def open_store(db_path: str | None, create: bool = False) -> Any:
    """Only `submit` creates a database; every other command on a missing one says where it looked."""
    import batchrun

    store = batchrun.open_store(db_path, create)
    click.get_current_context().call_on_close(store.close)
    return store


def load_env() -> None:
    from batchrun.hooks import load_env as load

    load(Path.cwd() / ".env")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchrun")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error (or set BATCHRUN_DEBUG=1).")
def cli(debug: bool) -> None:
    """Push large volumes of prompts through Claude, and never lose or pay twice for a result.

    Exit codes: 0 all items succeeded, 1 some failed for good, 2 bad usage or input (nothing sent),
    3 not finished (resumable), 75 another batchrun holds the run.
    """
    import_sqlite_utils_without_pandas()


def import_sqlite_utils_without_pandas() -> None:
    """sqlite-utils imports pandas and numpy whenever they are installed (0.5-1 s, most of a command's start-up),
    for types batchrun never stores. A command imports it with them hidden; they stay importable afterwards, and a
    process that has them already (a notebook) keeps them. Only the command line does this: one thread, at start."""
    if "sqlite_utils" in sys.modules:
        return
    hidden = [name for name in ("pandas", "numpy") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import pandas` raises ImportError
    try:
        import sqlite_utils  # noqa: F401
    except ImportError:
        pass  # a sqlite-utils that needs them after all: the store imports it the usual way
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


@cli.command()
@click.argument("items", type=click.Path())
@click.option("--job", "job_path", type=click.Path(dir_okay=False), help="Job settings (TOML).")
@click.option("--model", help="Model for lines that do not name one.")
@click.option("--max-tokens", type=int, help="max_tokens for lines that do not set it.")
@click.option("--system", help="System prompt, or @FILE to read it from a file.")
@click.option(
    "--schema",
    type=click.Path(dir_okay=False),
    help="JSON Schema file every reply must meet (like the job's schema_file); replies are validated.",
)
@click.option("--id-field", help="The input field holding each row's id (like the job's id_field).")
@setting_options
@click.option("--run-id", help="Name the run (default: derived from the file name and its content).")
@click.option("--dry-run", is_flag=True, help="Validate, count tokens, print expected cost and time; send nothing.")
@click.option("--new-run", is_flag=True, help="Start a new run even if the file changed under an unfinished one.")
@click.option("--no-wait", is_flag=True, help="Batch mode: submit the batches and exit 3; `resume` collects.")
@batch_options
@run_options
@db_option
@handle_errors
def submit(
    items: str,
    job_path: str | None,
    run_id: str | None,
    dry_run: bool,
    new_run: bool,
    no_wait: bool,
    timeout: float | None,
    db_path: str | None,
    output: str | None,
    emulate: bool,
    backend: str,
    quiet: bool,
    grace: float,
    request_timeout: float,
    no_cache: bool,
    log_format: str,
    on_finish: str | None,
    csv_raw: bool,
    **flags: Any,
) -> None:
    """Create a run from ITEMS (JSONL) and process it; the same file and settings again continue that run."""
    from batchrun.emulate import refuse_no_wait
    from batchrun.job import load_job, load_schema, load_system
    from batchrun.runs import prepare_run

    refuse_no_wait(emulate, no_wait and not dry_run)
    flags["system"] = load_system(flags["system"])
    flags["schema"] = load_schema(flags["schema"]) if flags["schema"] else None
    limit = flags.pop("limit")
    job = load_job(job_path).with_overrides(**flags)
    load_env()
    check_output(output, db_location(db_path), items)
    if dry_run:
        from batchrun.documents import is_folder_input

        if is_folder_input(items):
            raise UsageError(
                f"{items}: --dry-run reads JSONL and table files, not folders (a folder's files are checked when it "
                "is submitted, before anything is sent; try it on a few files with --limit)"
            )
        _dry_run(items, job, emulate, backend)
        return
    with ExitStack() as stack:
        target = _client_factory(stack, emulate, backend)  # no key: refused before anything is stored
        store = open_store(db_path, create=True)
        try:
            run_id, created = prepare_run(store, items, job, target.endpoint, run_id, new_run)
        except BatchrunError:
            store.discard()
            raise
        _note(f"{'created' if created else 'continuing'} run {run_id}", log_format)
        from batchrun.documents import skipped_notes

        for line in skipped_notes(items):  # a folder input: the files it does not send
            _note(line, log_format)
        given = {"grace": grace, "no_cache": no_cache, "request_timeout": request_timeout, "limit": limit}
        options = _options(
            given,
            settings=job.given_settings(k for k, v in flags.items() if v is not None),
            no_wait=no_wait,
            timeout=timeout,
            batch_size=flags["batch_size"],
            poll_interval=flags["poll_interval"],
        )
        _process(store, run_id, options, target, quiet, output, log_format, on_finish, csv_raw=csv_raw)


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--no-wait", is_flag=True, help="Batch mode: collect ended batches, create new ones, exit 3 if open.")
@setting_options
@batch_options
@run_options
@db_option
@handle_errors
def resume(
    run_id: str,
    db_path: str | None,
    no_wait: bool,
    batch_size: int | None,
    poll_interval: float | None,
    timeout: float | None,
    **options: Any,
) -> None:
    """Continue an interrupted run: send only what has no result yet (batch mode: collect the batches)."""
    from batchrun.emulate import refuse_no_wait

    refuse_no_wait(options["emulate"], no_wait)
    load_env()
    _run_command(
        db_path, run_id, options, no_wait=no_wait, timeout=timeout, batch_size=batch_size, poll_interval=poll_interval
    )


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--error-type", help="Only items that failed with this error type (e.g. overloaded_error).")
@click.option(
    "--max-tokens",
    "retry_max_tokens",
    type=click.IntRange(1),
    help="Send those items again with this max_tokens (e.g. after --error-type max_tokens).",
)
@click.option("--model", "retry_model", help="Send those items again to this model.")
@setting_options
@run_options
@db_option
@handle_errors
def retry(
    run_id: str,
    error_type: str | None,
    retry_max_tokens: int | None,
    retry_model: str | None,
    db_path: str | None,
    **options: Any,
) -> None:
    """Put permanently failed items back to pending and process them again (under the run's lock: a retry that
    cannot proceed changes nothing). With --max-tokens or --model those items become new requests; the other
    items of the run, and the old attempts, are left as they were."""
    if retry_max_tokens is not None:
        from batchrun.models import max_tokens_problem

        problem = max_tokens_problem(retry_model, retry_max_tokens)
        if problem:
            raise UsageError(f"--max-tokens {retry_max_tokens}: {problem}")
    load_env()
    changes = {k: v for k, v in (("max_tokens", retry_max_tokens), ("model", retry_model)) if v is not None}
    _run_command(db_path, run_id, options, retry=error_type or True, retry_changes=changes or None)


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--timeout",
    type=click.FloatRange(0),
    help="Stop waiting for the canceled batches to end after this many seconds (exit 3; cancel again collects).",
)
@client_options
@see_options
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the results collected so far here.")
@csv_raw_option
@db_option
@handle_errors
def cancel(
    run_id: str,
    timeout: float | None,
    emulate: bool,
    backend: str,
    quiet: bool,
    output: str | None,
    db_path: str | None,
    log_format: str,
    on_finish: str | None,
    csv_raw: bool,
) -> None:
    """Cancel RUN's open batches: what they finished is stored, the rest stays pending for `resume` (exit 3)."""
    from batchrun.settings import RunOptions

    load_env()
    with ExitStack() as stack:
        store = open_store(db_path)
        check_run_output(store, run_id, output)
        target = _client_factory(stack, emulate, backend)
        options = RunOptions(timeout=timeout)
        _process(store, run_id, options, target, quiet, output, log_format, on_finish, cancel=True, csv_raw=csv_raw)


def _dry_run(items: str, job: Any, emulate: bool, backend: str) -> None:
    from batchrun.api import APIFailure
    from batchrun.dryrun import format_plan, plan

    with ExitStack() as stack:
        counting = emulate or bool(os.environ.get("ANTHROPIC_API_KEY"))
        make_client = _client_factory(stack, emulate, backend).make_client if counting else None
        try:
            click.echo(format_plan(plan(items, job, make_client)))
        except APIFailure as f:
            what = f"{f.status or 'no response'} {f.error_type}: {f.message}"
            if f.status is not None and 400 <= f.status < 500 and not f.retryable:
                raise UsageError(
                    f"dry run: counting tokens, the API answered {what} (fix the job's model or request; nothing was "
                    "sent)"
                ) from None
            raise APIUnavailable(
                f"dry run: could not count tokens: {what} (the API looks unreachable or overloaded; try again later)"
            ) from None


def _options(given: dict[str, Any], **more: Any) -> Any:
    """The RunOptions of a command from its parsed options."""
    from batchrun.job import RUNTIME_KEYS
    from batchrun.settings import RunOptions

    more.setdefault("settings", {k: given[k] for k in RUNTIME_KEYS if given.get(k) is not None})
    return RunOptions(
        grace=given["grace"],
        use_cache=not given["no_cache"],
        request_timeout=given["request_timeout"],
        limit=given["limit"],
        **more,
    )


def _run_command(db_path: str | None, run_id: str, given: dict[str, Any], **more: Any) -> None:
    """resume and retry: open the store (it must exist), check the key, process the run."""
    with ExitStack() as stack:
        store = open_store(db_path)
        check_run_output(store, run_id, given["output"])
        target = _client_factory(stack, given["emulate"], given["backend"])
        _process(
            store,
            run_id,
            _options(given, **more),
            target,
            given["quiet"],
            given["output"],
            given["log_format"],
            given["on_finish"],
            csv_raw=given["csv_raw"],
        )


def _process(
    store: Any,
    run_id: str,
    options: Any,
    target: Any,
    quiet: bool,
    output: str | None,
    log_format: str = "text",
    on_finish: str | None = None,
    *,
    cancel: bool = False,
    csv_raw: bool = False,
) -> None:
    """Process (or cancel) the run through the Python API's `process`, say how it ended, exit with its code."""
    import batchrun
    from batchrun.progress import Progress

    progress = Progress(enabled=not quiet, log_format=log_format)
    say = functools.partial(_say, progress)
    result = batchrun.watched(
        store,
        run_id,
        options,
        target,
        progress,
        output=output,
        on_finish=on_finish,
        say=say,
        cancel=cancel,
        csv_raw=csv_raw,
    )
    _report_ending(result, say)


def _say(progress: Any, text: str) -> None:
    """A closing line: timestamped (or JSON) like the progress lines off a terminal, shown even with --quiet."""
    progress.enabled = True
    progress.write(text, event="ending")


def deadline_ending(d: dict[str, Any]) -> str:
    """Mode auto's closing line: items at batch price and online, and the time left before the deadline."""
    from batchrun.deadline import duration
    from batchrun.report import format_deadline

    text = format_deadline(d).strip()
    if d["phase"] == "done":
        left = d["seconds_to_deadline"]
        text += f" ({duration(left)} before the deadline)" if left >= 0 else f" ({duration(-left)} AFTER the deadline)"
    return text


def _report_ending(result: Any, say: Callable[[str], Any]) -> None:
    from batchrun.report import cost_text

    c = result.counts
    t = result.status["tokens"]
    say(  # the counts and the cost are the whole run's (as progress and `status` show them); the rest this command's
        f"run {result.run_id}: {c['succeeded']:,} succeeded, {c['failed']:,} failed, "
        f"{c['pending'] + c['in_flight']:,} pending (whole run); this command: {result.sent:,} request(s) sent in "
        f"{result.seconds:.1f}s, {result.reused:,} item(s) from the response cache"
    )
    say(
        f"cost so far {cost_text(result.status)} (whole run): {t['input']:,} input, {t['output']:,} output, "
        f"{t['cache_creation']:,} cache-write and {t['cache_read']:,} cache-read tokens"
    )
    if result.status.get("deadline"):
        say(deadline_ending(result.status["deadline"]))
    if result.stop is not None:
        say(result.stop_message)
        if result.stop.error is not None and debugging():
            import traceback

            traceback.print_exception(result.stop.error, file=sys.stderr)
    if result.results_path:
        say(f"wrote {result.results_written} {_written(result.results_path)} to {result.results_path}")
    sys.exit(result.exit_code)


def _written(path: str, fmt: str | None = None) -> str:
    """What an export of `path` holds: result lines (jsonl), or rows of a table."""
    from batchrun.export import format_of

    fmt = format_of(path, fmt)
    return "result line(s)" if fmt == "jsonl" else f"{fmt} row(s)"


def _client_factory(stack: ExitStack, emulate: bool, backend: str) -> Any:
    """Where requests go (the library's Target), decided before anything is stored or sent."""
    import batchrun

    return batchrun.client_factory(stack, emulate, backend, _note)


def _note(text: str, log_format: str = "text") -> None:
    """A line before progress starts, written like the progress lines (timestamped, or JSON, off a terminal)."""
    from batchrun.progress import Progress

    Progress(log_format=log_format).write(text)


@cli.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@db_option
@handle_errors
def status(run_id: str | None, as_json: bool, db_path: str | None) -> None:
    """Counts by state, tokens and cost of RUN, or of every run."""
    import orjson

    from batchrun.report import format_status, run_status

    load_env()
    store = open_store(db_path)
    ids = [run_id] if run_id else store.run_ids()
    statuses = [run_status(store, i) for i in ids]
    if as_json:
        data = statuses[0] if run_id else {"runs": statuses}
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    elif not statuses:
        click.echo("no runs yet (`batchrun submit ITEMS.jsonl` starts one)")
    else:
        click.echo("\n".join(format_status(s) for s in statuses))


@cli.command("runs")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@db_option
@handle_errors
def runs_command(as_json: bool, db_path: str | None) -> None:
    """List every run: id, created, input, mode, endpoint, counts, cost and size in the database."""
    import orjson

    from batchrun.housekeeping import format_runs, list_runs
    from batchrun.store import database_bytes

    store = open_store(db_path)
    listed = list_runs(store)
    if as_json:
        data = {"runs": listed, "database_bytes": database_bytes(store)}
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_runs(listed, database_bytes(store)))


@cli.command()
@click.option("--older-than", "older_than", required=True, metavar="AGE", help="e.g. 30d, 12h, 2w (last activity).")
@click.option("--keep-results", is_flag=True, help="Keep the runs' results; drop their requests and attempts.")
@db_option
@handle_errors
def prune(older_than: str, keep_results: bool, db_path: str | None) -> None:
    """Remove runs not touched for AGE (never a running one or one with open batches), then reclaim space."""
    from batchrun import housekeeping

    age = housekeeping.parse_age(older_than)
    store = open_store(db_path)
    done = housekeeping.prune(store, age, keep_results)
    for line in housekeeping.format_removal(done, "pruned" if keep_results else "removed"):
        click.echo(f"batchrun: {line}", err=True)


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--force", is_flag=True, help="Cancel the run's open batches first, then delete it.")
@client_options
@db_option
@handle_errors
def delete(run_id: str, force: bool, emulate: bool, backend: str, db_path: str | None) -> None:
    """Delete RUN and everything stored for it, then reclaim space (never a run another process holds)."""
    from batchrun import housekeeping

    load_env()
    with ExitStack() as stack:
        store = open_store(db_path)

        def cancel(run: str) -> None:
            from batchrun.runs import cancel_run
            from batchrun.settings import RunOptions

            cancel_run(store, run, RunOptions(), _client_factory(stack, emulate, backend))

        done = housekeeping.delete(store, run_id, force, cancel)
    for line in housekeeping.format_removal(done, "deleted"):
        click.echo(f"batchrun: {line}", err=True)


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of standard output.")
@click.option("--only", type=click.Choice(["succeeded", "failed"]), help="Only items that ended this way.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv", "parquet"]),
    help="jsonl: Message Batches result lines; csv, parquet: one row per item (default: from the -o extension).",
)
@csv_raw_option
@db_option
@handle_errors
def results(
    run_id: str, output: str | None, only: str | None, fmt: str | None, csv_raw: bool, db_path: str | None
) -> None:
    """Export RUN's results in input order: Message Batches result lines, or a CSV or Parquet table."""
    from batchrun.export import export_results, format_of, write_export
    from batchrun.runs import load_run

    load_env()
    store = open_store(db_path)
    load_run(store, run_id)
    check_run_output(store, run_id, output)
    fmt = format_of(output, fmt)
    if output:
        count = export_results(store, run_id, output, only, fmt, csv_raw)
        click.echo(f"batchrun: wrote {count} {_written(output, fmt)} to {output}", err=True)
    else:
        write_export(store, run_id, sys.stdout.buffer, only, fmt, csv_raw)
        sys.stdout.buffer.flush()


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), default="report.html", show_default=True, help="HTML file."
)
@db_option
@handle_errors
def report(run_id: str, output: str, db_path: str | None) -> None:
    """Write a one-file HTML report of RUN: throughput, concurrency, latency, cost, failures, batches, results."""
    from batchrun.htmlreport import write_report

    store = open_store(db_path)
    path = write_report(store, run_id, output)
    click.echo(f"batchrun: wrote the report of run {run_id} to {path}", err=True)


@cli.command()
@db_option
@handle_errors
def doctor(db_path: str | None) -> None:
    """Check the store for damage or inconsistent rows; exit 1 if any are found."""
    from batchrun.errors import StoreCorrupt

    load_env()
    try:
        store = open_store(db_path)
    except StoreCorrupt as e:
        click.echo(f"batchrun doctor: {e}")
        click.echo(f"batchrun doctor: {db_location(db_path)}: 1 problem(s)")
        sys.exit(1)
    problems = store.check()
    for problem in problems:
        click.echo(f"batchrun doctor: {problem}")
    in_flight = 0 if problems else store.in_flight_count()
    if in_flight:
        click.echo(
            f"batchrun doctor: note: {in_flight} item(s) in flight (being sent, or left by a process that died: "
            "`batchrun resume RUN` sends them again)"
        )
    click.echo(f"batchrun doctor: {store.path}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    sys.exit(1 if problems else 0)


# compare: the same items on several models, each answer compared with a reference model's


def _tolerances(values: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for value in values:
        name, sep, number = value.partition("=")
        try:
            out[name.strip()] = float(number)
        except ValueError:
            sep = ""
        if not sep or not name.strip() or out.get(name.strip(), -1) < 0:
            raise UsageError(f"--tolerance {value}: write FIELD=NUMBER, a number >= 0 (e.g. --tolerance urgency=1)")
    return out


@cli.command()
@click.argument("items", type=click.Path(dir_okay=False))
@click.option("--job", "job_path", type=click.Path(dir_okay=False), help="Job settings (TOML).")
@click.option("--models", required=True, help="Comma-separated models to compare with the reference.")
@click.option("--reference", required=True, help="The model whose answers count as right.")
@click.option("--sample", type=click.IntRange(1), help="Compare on this many items, chosen deterministically.")
@click.option(
    "--target",
    type=click.FloatRange(0, 1),
    default=0.9,
    show_default=True,
    help="Recommend the cheapest model whose answers agree on every field with at least this share of items.",
)
@click.option("--mode", type=click.Choice(["online", "batch"]), help="How every run of the comparison is sent.")
@click.option("--judge", help="Text jobs: the model that decides whether each answer agrees with the reference's.")
@click.option(
    "--tolerance",
    multiple=True,
    metavar="FIELD=N",
    help="A number field agrees when within N of the reference's (repeatable).",
)
@click.option(
    "--max-cost",
    type=click.FloatRange(0, min_open=True),
    help="Spend at most this many USD on the whole comparison, across all its runs and resumes.",
)
@click.option("--concurrency", type=click.IntRange(1, MAX_CONCURRENCY), help="Ceiling on requests in flight.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write an HTML report here.")
@click.option("--dry-run", is_flag=True, help="Price every run of the comparison; send nothing.")
@click.option("--no-cache", is_flag=True, help="Send every item, even those an identical earlier request answered.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@client_options
@db_option
@handle_errors
def compare(
    items: str,
    job_path: str | None,
    models: str,
    reference: str,
    sample: int | None,
    target: float,
    mode: str | None,
    judge: str | None,
    tolerance: tuple[str, ...],
    max_cost: float | None,
    concurrency: int | None,
    as_json: bool,
    report_path: str | None,
    dry_run: bool,
    no_cache: bool,
    quiet: bool,
    log_format: str,
    emulate: bool,
    backend: str,
    db_path: str | None,
) -> None:
    """Run ITEMS on each of --models and on --reference (each a normal, resumable run) and compare every field
    of their answers with the reference's; recommend the cheapest model that agrees often enough."""
    import orjson

    import batchrun
    from batchrun.comparereport import format_table, write_compare_report

    load_env()
    names = tuple(m.strip() for m in models.split(",") if m.strip())
    settings = {k: v for k, v in (("mode", mode), ("concurrency", concurrency)) if v is not None}
    check_output(report_path, db_location(db_path), items)
    common = dict(models=names, reference=reference, sample=sample, target=target, judge=judge, max_cost=max_cost)
    if dry_run:
        click.echo(batchrun.compare_plan(items, job_path, **common, emulate=emulate, backend=backend, **settings))
        return
    result = batchrun.compare(
        items,
        job_path,
        **common,
        tolerance=_tolerances(tolerance),
        db=db_path,
        emulate=emulate,
        backend=backend,
        use_cache=not no_cache,
        log=None if quiet else log_format,
        **settings,
    )
    if as_json and result.finished:
        click.echo(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
    elif not as_json:
        click.echo(format_table(result, job_path))
    if report_path and result.finished:
        path = write_compare_report(result, report_path)
        click.echo(f"batchrun: wrote the comparison's report to {path}", err=True)
    if not result.finished:
        click.echo(f"batchrun: {result.stop_message}", err=True)
    sys.exit(result.exit_code)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.pass_context
def emulator(ctx: click.Context) -> None:
    """Run the built-in API emulator (options: `batchrun emulator --help`)."""
    from batchrun.emulator.__main__ import main

    sys.exit(main(ctx.args))


def main() -> None:
    try:
        cli()
    except BrokenPipeError:
        reader_gone(0)
