"""The commands that remove runs: prune, delete."""

from __future__ import annotations

from contextlib import ExitStack

import click

from batchrun.cli.common import client_factory, load_env, open_store
from batchrun.cli.errors import handle_errors
from batchrun.cli.options import client_options, db_option


@click.command()
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


@click.command()
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

            cancel_run(store, run, RunOptions(), client_factory(stack, emulate, backend))

        done = housekeeping.delete(store, run_id, force, cancel)
    for line in housekeeping.format_removal(done, "deleted"):
        click.echo(f"batchrun: {line}", err=True)
