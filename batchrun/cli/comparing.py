"""compare: the same items on several models, each answer compared with a reference model's."""

from __future__ import annotations

import sys

import click

from batchrun.cli.common import check_output, load_env
from batchrun.cli.errors import handle_errors
from batchrun.cli.options import MAX_CONCURRENCY, client_options, db_option
from batchrun.errors import UsageError
from batchrun.library import db_location


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


@click.command()
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
