"""The Python API's implementation; `batchrun/__init__.py` re-exports it lazily so the CLI starts fast."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from batchrun.errors import (
    EXIT_FAILED_ITEMS,
    EXIT_NOT_FINISHED,
    EXIT_OK,
    EXIT_USAGE,
    BatchrunError,
    RunFailed,
    RunLocked,
    RunNotFinished,
    UsageError,
)

if TYPE_CHECKING:
    from batchrun.events import Listener, Stop
    from batchrun.job import Job
    from batchrun.settings import RunOptions
    from batchrun.store import Store


DEFAULT_DB = "batchrun.db"
ItemsArg = str | os.PathLike[str] | Iterable[Mapping[str, Any]]


@dataclass(slots=True)
class RunResult:
    """How a submit, resume, retry or cancel left the run: the CLI's exit code, counts, cost, why it stopped."""

    run_id: str
    exit_code: int
    counts: dict[str, int]
    cost_usd: float
    seconds: float
    sent: int
    db: str
    created: bool = False
    reused: int = 0
    stop: Stop | None = None
    stop_message: str | None = None
    results_path: str | None = None
    results_written: int | None = None
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        return self.counts.get("succeeded", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def pending(self) -> int:
        return self.counts.get("pending", 0) + self.counts.get("in_flight", 0)

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    def check(self) -> RunResult:
        """Raise RunFailed (exit 1) or RunNotFinished (exit 3) unless every item succeeded; returns self."""
        if self.exit_code == EXIT_USAGE:
            raise UsageError(self.stop_message or f"run {self.run_id}: bad usage")
        if self.exit_code == EXIT_NOT_FINISHED:
            raise RunNotFinished(self.stop_message or f"run {self.run_id}: {self.pending} item(s) still pending")
        if self.exit_code != EXIT_OK:
            raise RunFailed(self.stop_message or f"run {self.run_id}: {self.failed} item(s) failed")
        return self

    def results(self, only: str | None = None) -> Results:
        return results(self.run_id, db=self.db, only=only)


class Results:
    """A run's results in input order, as dicts in the Message Batches result format; iterate it once or more."""

    def __init__(self, db: str | os.PathLike[str] | None, run_id: str, only: str | None = None) -> None:
        self.db = db
        self.run_id = run_id
        self.only = only
        with _store(db) as store:
            from batchrun.stored import load_run

            load_run(store, run_id)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import orjson

        with _store(self.db) as store:
            for custom_id, _, result in store.iter_results(self.run_id, self.only):
                yield {"custom_id": custom_id, "result": orjson.loads(result)}

    def parsed(self, model: Any) -> Iterator[Any]:
        """Each succeeded item's answer (a schema job's data) as an instance of `model`, a Pydantic model class."""
        with _store(self.db) as store:
            from batchrun.store import answer_rows

            rows = list(answer_rows(store, self.run_id, ["data"], "succeeded"))
        import orjson

        for (data,) in rows:
            if data:
                yield model.model_validate(orjson.loads(data))

    def to_pandas(self) -> Any:
        """A DataFrame, one row per item: custom_id, type, text, model, tokens, error type and message."""
        try:
            import pandas as pd
        except ImportError:
            raise UsageError("to_pandas() needs pandas (pip install pandas)") from None
        return pd.DataFrame([_flat_row(r) for r in self])


def _flat_row(row: dict[str, Any]) -> dict[str, Any]:
    result = row["result"]
    message = result.get("message") or {}
    error = (result.get("error") or {}).get("error") or {}
    usage = message.get("usage") or {}
    text = "".join(b.get("text", "") for b in message.get("content") or [] if b.get("type") == "text")
    return {
        "custom_id": row["custom_id"],
        "type": result.get("type"),
        "text": text if message else None,
        "model": message.get("model"),
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "error_type": error.get("type"),
        "error_message": error.get("message"),
    }


# the store and the client


def db_location(db: str | os.PathLike[str] | None) -> Path:
    """The database a command uses: --db, else $BATCHRUN_DB, else ./batchrun.db; a directory is refused."""
    path = Path(db or os.environ.get("BATCHRUN_DB") or DEFAULT_DB)
    if path.is_dir():
        from batchrun.store import store_error

        raise store_error(IsADirectoryError(str(path)), path)
    return path


def open_store(db: str | os.PathLike[str] | None, create: bool = False) -> Store:
    """Only submit creates a database; everything else on a missing one says where it looked."""
    from batchrun.store import Store

    path = db_location(db)
    if not create and not path.exists():
        raise UsageError(
            f"no batchrun database at {path} (give --db or set BATCHRUN_DB; `batchrun submit` creates one)"
        )
    return Store(path)


@contextlib.contextmanager
def _store(db: str | os.PathLike[str] | None, create: bool = False) -> Iterator[Store]:
    store = open_store(db, create)
    try:
        yield store
    finally:
        store.close()


class Target(NamedTuple):
    """Where a command's requests go: the client factory, and the endpoint a run records."""

    make_client: Callable[[], Any]
    endpoint: str


def client_factory(
    stack: contextlib.ExitStack,
    emulate: bool,
    backend: str = "aiohttp",
    say: Callable[[str], Any] | None = None,
    emulator_extra: str | None = None,
) -> Target:
    """Decide where requests go before anything is sent; the emulator is used only when asked for.
    `emulator_extra`: flags added to the emulator's default ones (ignored when BATCHRUN_EMULATOR_ARGS is set)."""
    from batchrun.endpoints import endpoint_of

    def make_client(*args: Any, **kwargs: Any) -> Any:
        from batchrun.api import make_client

        return make_client(*args, **kwargs)

    if emulate:
        from batchrun.emulate import DEFAULT_ARGS, EMULATOR_KEY, divergence_label, emulator

        chosen = os.environ.get("BATCHRUN_EMULATOR_ARGS")
        args = None if chosen or not emulator_extra else f"{DEFAULT_ARGS} {emulator_extra}"
        label = divergence_label(args)
        url = stack.enter_context(emulator(args))
        if say is not None:
            say(f"--emulate: requests go to the built-in API emulator at {url}; no request leaves this machine")
        endpoint = endpoint_of(True) if label is None else f"{endpoint_of(True)} ({label})"
        return Target(lambda: make_client(backend, base_url=url, api_key=EMULATOR_KEY), endpoint)
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise UsageError(
            "ANTHROPIC_API_KEY is not set (export it or put it in ./.env; "
            "or add --emulate to try batchrun on the built-in API emulator)"
        )
    return Target(lambda: make_client(backend), endpoint_of(False))


# processing a run: shared by the CLI and the functions below


def process(
    store: Store,
    run_id: str,
    options: RunOptions,
    target: Target,
    events: Listener | None = None,
    *,
    output: str | None = None,
    on_finish: str | None = None,
    say: Callable[[str], Any] | None = None,
    cancel: bool = False,
    created: bool = False,
    ended: Callable[[], Any] | None = None,
    csv_raw: bool = False,
) -> RunResult:
    """Process (or, `cancel`, cancel) a stored run, write its results if asked, then run the on-finish hook.

    `ended` is called as soon as the work is over (before the export and the hook): progress closes there.
    `csv_raw`: a CSV `output` gets its cells as stored (no `'` before a formula: for programs, not spreadsheets).
    The hook runs at every end, an error's included (then told the exit code the CLI gives that error)."""
    say = say or (lambda text: None)
    try:
        if not cancel:
            output = remembered_output(store, run_id, output)
        result = _process(store, run_id, options, target, events, output, say, cancel, created, ended, csv_raw)
    except BaseException as e:
        if not isinstance(e, RunLocked):  # a locked run did not end: its holder's hook runs when it does
            _finish_hook(store, run_id, on_finish, say, _exit_code_of(e))
        raise
    _finish_hook(store, run_id, on_finish, say, result.exit_code, result)
    return result


def _process(
    store: Store,
    run_id: str,
    options: RunOptions,
    target: Target,
    events: Listener | None,
    output: str | None,
    say: Callable[[str], Any],
    cancel: bool,
    created: bool,
    ended: Callable[[], Any] | None,
    csv_raw: bool,
) -> RunResult:
    from batchrun.events import ignore
    from batchrun.runs import cancel_run, process_run

    try:
        if cancel:
            ending = cancel_run(store, run_id, options, target, events or ignore)
        else:
            ending = process_run(store, run_id, options, target.make_client, events or ignore, target.endpoint)
    finally:
        if ended is not None:
            ended()
    result = _result(store, run_id, ending, created)
    if output and (result.exit_code == EXIT_NOT_FINISHED or result.pending) and not cancel:
        say(
            f"{output} not written: the run is not finished (`batchrun resume {run_id}` writes it when the run ends; "
            f"`batchrun results {run_id} -o {output}` exports what is done so far)"
        )
    elif output:
        from batchrun.export import export_results

        result.results_path = output
        result.results_written = export_results(store, run_id, output, csv_raw=csv_raw)
    return result


def remembered_output(store: Store, run_id: str, output: str | None) -> str | None:
    """The results file of a command that processes a run. A given -o becomes the run's own (absolute, so a resume
    from another directory writes the same file; recorded under the run's lock); without -o, the one an earlier
    submit or resume of the run asked for, so a resume after an interruption still writes it."""
    from batchrun.lock import RunLock
    from batchrun.stored import load_run

    run, _ = load_run(store, run_id)
    if output is None:
        return run.get("output_path")
    path = os.path.abspath(output)
    if path != run.get("output_path"):
        with RunLock(store.path, run_id):
            store.set_run_output(run_id, path)
    return output


def _exit_code_of(e: BaseException) -> int:
    """The exit code the CLI gives a command that ends with `e`."""
    if isinstance(e, BatchrunError):
        return e.exit_code
    if isinstance(e, KeyboardInterrupt):
        return EXIT_NOT_FINISHED
    if isinstance(e, SystemExit):
        return e.code if isinstance(e.code, int) else EXIT_FAILED_ITEMS
    return EXIT_USAGE if isinstance(e, OSError) and not isinstance(e, BrokenPipeError) else EXIT_FAILED_ITEMS


def _finish_hook(
    store: Store,
    run_id: str,
    on_finish: str | None,
    say: Callable[[str], Any],
    exit_code: int,
    result: RunResult | None = None,
) -> None:
    """The on-finish command, told how the run ended; after an error, with what the store can still tell."""
    from batchrun.job import Job

    counts: dict[str, int] = result.counts if result else {}
    cost = result.cost_usd if result else 0.0
    try:
        run = store.get_run(run_id)
        if run is None:
            return  # no such run: nothing ended
        job = Job.from_dict(run["job"])
        if result is None:
            counts, cost = dict(store.counts(run_id)), run_cost(store, run_id)
    except Exception:  # the store is what failed: the hook still runs, with what is known
        job = None
    command = on_finish or getattr(job, "on_finish", None)
    if not command:
        return
    from batchrun.hooks import finish_env, run_on_finish

    variables = finish_env(
        run_id=run_id,
        exit_code=exit_code,
        counts=counts,
        cost_usd=cost or 0.0,
        results_path=result.results_path if result else None,
        db_path=store.path,
    )
    run_on_finish(command, variables, say)


def run_cost(store: Store, run_id: str) -> float:
    from batchrun.report import run_status

    return run_status(store, run_id)["cost_usd"] or 0.0


def watched(store: Store, run_id: str, options: RunOptions, target: Target, progress: Any, **kwargs: Any) -> RunResult:
    """`process` with `progress` as its listener, closed as soon as the work is over, and on any error."""
    try:
        return process(store, run_id, options, target, progress.event, ended=progress.close, **kwargs)
    finally:
        progress.close()


def _result(store: Store, run_id: str, ending: Any, created: bool) -> RunResult:
    from batchrun.report import run_status
    from batchrun.stops import describe_stop

    s = run_status(store, run_id)
    return RunResult(
        run_id=run_id,
        exit_code=ending.exit_code,
        counts=dict(ending.counts),
        cost_usd=s["cost_usd"],
        seconds=ending.seconds,
        sent=ending.sent,
        db=str(store.path),
        created=created,
        reused=ending.reused,
        stop=ending.stop,
        stop_message=describe_stop(ending.stop) if ending.stop is not None else None,
        status=s,
    )


def load_job_arg(job: str | os.PathLike[str] | Job | None, settings: Mapping[str, Any]) -> Job:
    """A job given as a TOML path, a Job, or nothing; keyword settings (model=..., max_tokens=...) override it.
    `schema=` may be a Pydantic model class: its JSON Schema is sent."""
    from batchrun.job import Job, load_job

    base = job if isinstance(job, Job) else load_job(job)
    settings = dict(settings)
    if settings.get("schema") is not None:
        settings["schema"] = json_schema_of(settings["schema"])
    return base.with_overrides(**settings)


def json_schema_of(schema: Any) -> Any:
    """A JSON Schema dict as is; a Pydantic model class as its JSON Schema."""
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()
    return schema


def _options(**given: Any) -> RunOptions:
    from batchrun.settings import RunOptions

    return RunOptions(**{k: v for k, v in given.items() if v is not None})


def _progress(log: str | None) -> Any:
    from batchrun.progress import Progress

    return Progress(enabled=log is not None, log_format=log or "text")


def refuse_missing_input(items: ItemsArg) -> None:
    """A file that is not there is said at once, in one line: before the key is asked for or an emulator starts."""
    if not isinstance(items, str | os.PathLike):
        return
    path = os.fspath(items)
    if path != "-" and not any(c in path for c in "*?[") and not os.path.lexists(path):
        raise UsageError(f"{path}: no such file (check the path)")


@contextlib.contextmanager
def _spooled(items: ItemsArg) -> Iterator[str]:
    """A path as is; an iterable of dicts written to a temporary JSONL file (named items.jsonl)."""
    if isinstance(items, str | os.PathLike):
        yield os.fspath(items)
        return
    import tempfile

    import orjson

    with tempfile.TemporaryDirectory(prefix="batchrun-") as tmp:
        path = Path(tmp) / "items.jsonl"
        with path.open("wb") as f:
            for n, item in enumerate(items, 1):
                if not isinstance(item, Mapping):
                    raise UsageError(f"items[{n - 1}]: {type(item).__name__}, not a dict (give one dict per item)")
                f.write(orjson.dumps(dict(item)) + b"\n")
        yield str(path)


def _blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `fn` here, or, under a running event loop (a notebook), in a thread so asyncio.run works."""
    import asyncio
    import concurrent.futures

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


# the public operations


def submit(
    items: ItemsArg,
    job: str | os.PathLike[str] | Job | None = None,
    *,
    db: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    new_run: bool = False,
    output: str | None = None,
    emulate: bool = False,
    backend: str = "aiohttp",
    no_wait: bool = False,
    timeout: float | None = None,
    use_cache: bool = True,
    on_finish: str | None = None,
    log: str | None = "text",
    csv_raw: bool = False,
    **settings: Any,
) -> RunResult:
    """Create a run from `items` (a JSONL path, or an iterable of dicts) and process it; the same items and
    settings again continue that run. `settings` are job keys (model, max_tokens, system, mode, concurrency...).
    `log`: "text", "json" or None (silent) progress lines on stderr. `csv_raw`: a CSV `output` without the `'`
    that keeps a spreadsheet from running a cell as a formula."""
    return _blocking(
        _submit,
        items,
        job,
        db=db,
        run_id=run_id,
        new_run=new_run,
        output=output,
        emulate=emulate,
        backend=backend,
        options=_options(no_wait=no_wait, timeout=timeout, use_cache=use_cache),
        on_finish=on_finish,
        log=log,
        settings=settings,
        csv_raw=csv_raw,
    )


def _refuse_emulated_no_wait(emulate: bool, options: RunOptions) -> None:
    if emulate and options.no_wait:
        from batchrun.emulate import refuse_no_wait

        refuse_no_wait(emulate, options.no_wait)


def _submit(
    items: ItemsArg,
    job: Any,
    *,
    db: Any,
    run_id: str | None,
    new_run: bool,
    output: str | None,
    emulate: bool,
    backend: str,
    options: RunOptions,
    on_finish: str | None,
    log: str | None,
    settings: dict[str, Any],
    csv_raw: bool = False,
) -> RunResult:
    from batchrun.runs import prepare_run

    _refuse_emulated_no_wait(emulate, options)
    the_job = load_job_arg(job, settings)
    refuse_missing_input(items)
    progress = _progress(log)
    with contextlib.ExitStack() as stack:
        target = client_factory(stack, emulate, backend, progress.write)
        path = stack.enter_context(_spooled(items))  # bad items: refused before a database is made
        store = stack.enter_context(_store(db, create=True))
        try:
            run_id, created = prepare_run(store, path, the_job, target.endpoint, run_id, new_run)
        except BatchrunError:
            store.discard()
            raise
        return watched(
            store,
            run_id,
            replace(options, settings=the_job.given_settings(k for k, v in settings.items() if v is not None)),
            target,
            progress,
            output=output,
            on_finish=on_finish,
            say=progress.write,
            created=created,
            csv_raw=csv_raw,
        )


def resume(
    run_id: str,
    *,
    db: str | os.PathLike[str] | None = None,
    output: str | None = None,
    emulate: bool = False,
    backend: str = "aiohttp",
    no_wait: bool = False,
    timeout: float | None = None,
    use_cache: bool = True,
    on_finish: str | None = None,
    log: str | None = "text",
    csv_raw: bool = False,
) -> RunResult:
    """Continue an interrupted run: send only what has no result yet (batch mode: collect the batches)."""
    options = _options(no_wait=no_wait, timeout=timeout, use_cache=use_cache)
    return _blocking(_resume, run_id, db, output, emulate, backend, options, on_finish, log, csv_raw)


def _resume(
    run_id: str,
    db: Any,
    output: str | None,
    emulate: bool,
    backend: str,
    options: RunOptions,
    on_finish: str | None,
    log: str | None,
    csv_raw: bool = False,
) -> RunResult:
    _refuse_emulated_no_wait(emulate, options)
    progress = _progress(log)
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(_store(db))
        target = client_factory(stack, emulate, backend, progress.write)
        return watched(
            store,
            run_id,
            options,
            target,
            progress,
            output=output,
            on_finish=on_finish,
            say=progress.write,
            csv_raw=csv_raw,
        )


def status(run_id: str | None = None, *, db: str | os.PathLike[str] | None = None) -> Any:
    """`status --json`: the run's dict, or, without a run id, a list of every run's."""
    from batchrun.report import run_status

    with _store(db) as store:
        if run_id is not None:
            return run_status(store, run_id)
        return [run_status(store, i) for i in store.run_ids()]


def results(run_id: str, *, db: str | os.PathLike[str] | None = None, only: str | None = None) -> Results:
    """The run's results in input order (iterate for dicts; `.to_pandas()` for a DataFrame)."""
    return Results(db, run_id, only)


async def asubmit(items: ItemsArg, job: Any = None, **kwargs: Any) -> RunResult:
    """`submit` for async code: the run goes in a thread of its own, so the caller's loop keeps going."""
    import asyncio

    return await asyncio.to_thread(submit, items, job, **kwargs)


async def aresume(run_id: str, **kwargs: Any) -> RunResult:
    """`resume` for async code, in a thread of its own."""
    import asyncio

    return await asyncio.to_thread(resume, run_id, **kwargs)


async def astatus(run_id: str | None = None, **kwargs: Any) -> Any:
    """`status` for async code."""
    import asyncio

    return await asyncio.to_thread(status, run_id, **kwargs)


def compare(
    items: ItemsArg,
    job: str | os.PathLike[str] | Job | None = None,
    *,
    models: Iterable[str],
    reference: str,
    sample: int | None = None,
    target: float = 0.9,
    judge: str | None = None,
    tolerance: Mapping[str, float] | None = None,
    max_cost: float | None = None,
    db: str | os.PathLike[str] | None = None,
    emulate: bool = False,
    backend: str = "aiohttp",
    use_cache: bool = True,
    log: str | None = "text",
    **settings: Any,
) -> Any:
    """Run `items` (all, or a deterministic sample of `sample`) on each of `models` and on `reference`, each as a
    normal run in the store, and compare every schema field of their answers with the reference's (a text job
    needs `judge`). Returns a Comparison: `.to_dict()` is `compare --json`'s output, `.exit_code` the CLI's.
    `max_cost` (USD) covers the whole comparison; `settings` are job keys (mode, concurrency, schema...)."""
    return _blocking(
        _compare,
        items,
        job,
        models=tuple(models),
        reference=reference,
        sample=sample,
        target=target,
        judge=judge,
        tolerance=dict(tolerance or {}),
        max_cost=max_cost,
        db=db,
        emulate=emulate,
        backend=backend,
        options=_options(use_cache=use_cache),
        log=log,
        settings=settings,
    )


def compare_job(job: Any, settings: Mapping[str, Any], max_cost: float | None) -> tuple[Job, float | None]:
    """The job the comparison's runs share, and the comparison's budget (the job's max_cost when none given)."""
    the_job = load_job_arg(job, {k: v for k, v in settings.items() if k != "max_cost"})
    budget = max_cost if max_cost is not None else the_job.max_cost
    return replace(the_job, max_cost=None), budget


def _compare(
    items: ItemsArg,
    job: Any,
    *,
    models: tuple[str, ...],
    reference: str,
    sample: int | None,
    target: float,
    judge: str | None,
    tolerance: dict[str, float],
    max_cost: float | None,
    db: Any,
    emulate: bool,
    backend: str,
    options: RunOptions,
    log: str | None,
    settings: dict[str, Any],
    progress_factory: Callable[[], Any] | None = None,
    say: Callable[[str], Any] | None = None,
) -> Any:
    import tempfile

    from batchrun.comparison import EMULATED_DIVERGENCE, Comparer, Spec
    from batchrun.runs import prepare_run

    the_job, budget = compare_job(job, settings, max_cost)
    spec = Spec(models, reference, sample, target, judge, tolerance, budget)
    spec.check(the_job)
    new_progress = progress_factory or (lambda: _progress(log))
    say = say or new_progress().write
    with contextlib.ExitStack() as stack:
        target_ = client_factory(stack, emulate, backend, say, f"--model-divergence {EMULATED_DIVERGENCE}")
        if emulate and not os.environ.get("BATCHRUN_EMULATOR_ARGS"):
            say(
                "--emulate: the emulator's models answer as the reference would, but for a set share of fields "
                f"({EMULATED_DIVERGENCE.replace(',', ', ')}; BATCHRUN_EMULATOR_ARGS='--model-divergence ...' "
                "sets others)"
            )
        path = stack.enter_context(_spooled(items))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="batchrun-compare-")))
        store = stack.enter_context(_store(db, create=True))

        def prepare(leg: Any) -> str:
            return prepare_run(store, leg.path, leg.job, target_.endpoint)[0]

        def run_leg(leg: Any, ceiling: float | None) -> RunResult:
            settings = leg.job.runtime_settings()
            settings["max_cost"] = ceiling
            return watched(store, leg.run_id, replace(options, settings=settings), target_, new_progress())

        comparer = Comparer(store, the_job, spec, prepare, run_leg, workdir, say)
        try:
            return comparer.run(path)
        except BatchrunError:
            store.discard()  # bad input: a database this command made, holding no run, is removed
            raise


async def acompare(items: ItemsArg, job: Any = None, **kwargs: Any) -> Any:
    """`compare` for async code, in a thread of its own."""
    import asyncio

    return await asyncio.to_thread(compare, items, job, **kwargs)


def compare_plan(
    items: ItemsArg,
    job: Any = None,
    *,
    models: Iterable[str],
    reference: str,
    sample: int | None = None,
    target: float = 0.9,
    judge: str | None = None,
    max_cost: float | None = None,
    emulate: bool = False,
    backend: str = "aiohttp",
    **settings: Any,
) -> str:
    """`compare --dry-run`: what each run of the comparison would cost at most; nothing is sent (input tokens are
    counted with count_tokens when a key or the emulator is at hand)."""
    import tempfile

    from batchrun.comparison import Spec, dry_run

    the_job, budget = compare_job(job, settings, max_cost)
    spec = Spec(tuple(models), reference, sample, target, judge, {}, budget)
    spec.check(the_job)
    with contextlib.ExitStack() as stack:
        counting = emulate or bool(os.environ.get("ANTHROPIC_API_KEY"))
        make_client = client_factory(stack, emulate, backend).make_client if counting else None
        path = stack.enter_context(_spooled(items))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="batchrun-compare-")))
        return _blocking(dry_run, path, the_job, spec, make_client, workdir)
