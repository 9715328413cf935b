"""The commands that process a run: submit, resume, retry, cancel."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import click

from batchrun.cli.common import check_output, check_run_output, client_factory, load_env, note, open_store, written
from batchrun.cli.errors import debugging, handle_errors
from batchrun.cli.options import (
    batch_options,
    client_options,
    csv_raw_option,
    db_option,
    run_options,
    see_options,
    setting_options,
)
from batchrun.errors import APIUnavailable, BatchrunError, UsageError
from batchrun.library import db_location


@click.command()
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
    from batchrun.library import refuse_missing_input

    refuse_missing_input(items)
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
        target = client_factory(stack, emulate, backend)  # no key: refused before anything is stored
        store = open_store(db_path, create=True)
        try:
            run_id, created = prepare_run(store, items, job, target.endpoint, run_id, new_run)
        except BatchrunError:
            store.discard()
            raise
        note(f"{'created' if created else 'continuing'} run {run_id}", log_format)
        from batchrun.documents import skipped_notes

        for line in skipped_notes(items):  # a folder input: the files it does not send
            note(line, log_format)
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


@click.command()
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


@click.command()
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


@click.command()
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
        _known_run(store, run_id)
        check_run_output(store, run_id, output)
        target = client_factory(stack, emulate, backend)
        options = RunOptions(timeout=timeout)
        _process(store, run_id, options, target, quiet, output, log_format, on_finish, cancel=True, csv_raw=csv_raw)


def _dry_run(items: str, job: Any, emulate: bool, backend: str) -> None:
    from batchrun.dryrun import format_plan, plan

    if not (emulate or os.environ.get("ANTHROPIC_API_KEY")):  # estimated here: the API layer is not needed
        click.echo(format_plan(plan(items, job, None)))
        return
    from batchrun.api import APIFailure

    with ExitStack() as stack:
        make_client = client_factory(stack, emulate, backend).make_client
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


def _known_run(store: Any, run_id: str) -> None:
    """A run id that is not in the store is said first: before the key is asked for or an emulator starts."""
    from batchrun.stored import load_run

    load_run(store, run_id)


def _run_command(db_path: str | None, run_id: str, given: dict[str, Any], **more: Any) -> None:
    """resume and retry: open the store (it must exist), check the key, process the run."""
    with ExitStack() as stack:
        store = open_store(db_path)
        _known_run(store, run_id)
        check_run_output(store, run_id, given["output"])
        target = client_factory(stack, given["emulate"], given["backend"])
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
        say(f"wrote {result.results_written} {written(result.results_path)} to {result.results_path}")
    sys.exit(result.exit_code)
