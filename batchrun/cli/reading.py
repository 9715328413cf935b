"""The commands that read the store: status, runs, results, report, doctor."""

from __future__ import annotations

import sys

import click

from batchrun.cli.common import check_run_output, load_env, open_store, written
from batchrun.cli.errors import handle_errors
from batchrun.cli.options import csv_raw_option, db_option
from batchrun.library import db_location


@click.command()
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


@click.command("runs")
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


@click.command()
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
    from batchrun.stored import load_run

    load_env()
    store = open_store(db_path)
    load_run(store, run_id)
    check_run_output(store, run_id, output)
    fmt = format_of(output, fmt)
    if output:
        count = export_results(store, run_id, output, only, fmt, csv_raw)
        click.echo(f"batchrun: wrote {count} {written(output, fmt)} to {output}", err=True)
    else:
        write_export(store, run_id, sys.stdout.buffer, only, fmt, csv_raw)
        sys.stdout.buffer.flush()


@click.command()
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
    check_run_output(store, run_id, output)  # never over the database or the run's input; a directory that exists
    path = write_report(store, run_id, output)
    click.echo(f"batchrun: wrote the report of run {run_id} to {path}", err=True)


@click.command()
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
