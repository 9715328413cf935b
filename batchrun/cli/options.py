"""Options several commands share, in the order --help lists them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from batchrun.library import DEFAULT_DB

MAX_CONCURRENCY = 1000


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
