"""The command line: parse, open the store, call one function, turn the outcome into an exit code."""

from __future__ import annotations

import sys

import click

from batchrun.cli.comparing import compare
from batchrun.cli.errors import OneLineUsage, reader_gone
from batchrun.cli.housekeeping import delete, prune
from batchrun.cli.reading import doctor, report, results, runs_command, status
from batchrun.cli.running import cancel, resume, retry, submit

__all__ = ["cli", "main"]


@click.group(cls=OneLineUsage, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchrun")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error (or set BATCHRUN_DEBUG=1).")
def cli(debug: bool) -> None:
    """Push large volumes of prompts through Claude, and never lose or pay twice for a result.

    Exit codes: 0 all items succeeded, 1 some failed for good, 2 bad usage or input (nothing sent),
    3 not finished (resumable), 75 another batchrun holds the run.
    """


for command in (submit, resume, retry, cancel, status, runs_command, results, report, doctor, prune, delete, compare):
    cli.add_command(command)


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
