"""A run's life: create it from an input file (or find the one that already exists), process it on its path,
finish it (one bookkeeping for both paths), and say how it ended."""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchrun.answers import Judge
from batchrun.endpoints import DEFAULT_ENDPOINT, EMULATOR_ENDPOINT
from batchrun.errors import EXIT_FAILED_ITEMS, EXIT_NOT_FINISHED, EXIT_OK, EXIT_USAGE, UsageError
from batchrun.events import Event, Listener, Stop, StopReason, ignore
from batchrun.inputs import file_sha256, input_label, read_items
from batchrun.job import Job
from batchrun.lock import RunLock
from batchrun.settings import RunOptions
from batchrun.store import State, Store
from batchrun.stored import load_run

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(slots=True)
class Ending:
    """How a command left a run: counts, exit code, and why it stopped early (None when it did not)."""

    run_id: str
    counts: dict[str, int]
    exit_code: int
    seconds: float
    sent: int
    stop: Stop | None = None
    reused: int = 0


def prepare_run(
    store: Store, input_path: str, job: Job, endpoint: str, run_id: str | None = None, new_run: bool = False
) -> tuple[str, bool]:
    """The run for this input, these settings and this endpoint: the existing one, or a new one with every item
    stored.

    Returns (run id, created). A new run is written in one transaction, so bad input leaves the store as it was.
    A file that changed under an unfinished run is refused unless `new_run`: sending it as a new run would
    pay again for every line the old run already has. So is an unfinished run of the same file on another
    endpoint: its answers and these would mix.
    """
    from batchrun.documents import folder_input

    folder = folder_input(input_path, job)  # a folder or a glob: one item per file
    if folder is not None:
        job = folder.job
    sha = folder.sha256 if folder else file_sha256(input_path)
    fingerprint = job.fingerprint()
    input_path = folder.label if folder else input_label(input_path)
    if run_id is not None:
        if not RUN_ID.fullmatch(run_id):
            raise UsageError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' (at most 64)")
        existing = store.get_run(run_id)
        if existing is not None:
            if (existing["input_sha256"], existing["fingerprint"]) != (sha, fingerprint):
                raise UsageError(
                    f"run {run_id} already exists with a different input file or settings that change the requests "
                    f"(use `batchrun resume {run_id}` to continue it, or choose another --run-id)"
                )
            check_endpoint(existing, endpoint)
            return run_id, False
    else:
        found = store.find_run(sha, fingerprint, endpoint)
        if found is not None:
            check_endpoint(store.get_run(found) or {}, endpoint)
            return found, False
        elsewhere = store.unfinished_elsewhere(sha, fingerprint, endpoint)
        if elsewhere is not None and not new_run:
            raise UsageError(
                f"run {elsewhere['id']} of this file was made on {describe_endpoint(elsewhere['endpoint'])} and is not "
                f"finished; this command talks to {describe_endpoint(endpoint)} ({how_to_reach(elsewhere['endpoint'])} "
                f"and `batchrun resume {elsewhere['id']}` finishes it there; or pass --new-run to start a new run here)"
            )
        unfinished = store.unfinished_run_from(input_path, fingerprint, sha)
        if unfinished is not None and not new_run:
            raise UsageError(
                f"{input_path} changed since run {unfinished} was created from it, and that run is not finished "
                f"(`batchrun resume {unfinished}` finishes it from the stored items; "
                "or pass --new-run to start a new run from the changed file)"
            )
        run_id = default_run_id(input_path, sha, fingerprint + endpoint)
    check_job_alone(job)  # a run found above keeps its stored settings (its deadline, say): only a new one is checked
    run = {
        "id": run_id,
        "input_path": str(input_path),
        "input_sha256": sha,
        "fingerprint": fingerprint,
        "mode": job.mode,
        "job": job.to_dict(),
        "endpoint": endpoint,
    }
    store.create_run(run, folder.items() if folder else read_items(input_path, job))
    try:
        check_new_run(store, run_id, job)
    except UsageError:
        _forget(store, run_id)
        raise
    return run_id, True


def check_job_alone(job: Job) -> None:
    """What can be refused from the settings alone, before a run is looked for or created."""
    if job.mode == "auto" and not job.deadline:
        raise UsageError(
            "this run is in mode auto and has no deadline (pass --deadline, e.g. --deadline 6h or --deadline 06:00, or "
            'set deadline = "6h" in the job file)'
        )
    if job.deadline and job.mode != "auto":  # else it would be stored and never used: a run the user thinks is timed
        raise UsageError(
            f"a deadline ({job.deadline}) is for mode auto, and this run is in mode {job.mode} (add --mode auto, or "
            'mode = "auto" in the job file, to meet it at batch price; or leave the deadline out)'
        )


def check_new_run(store: Store, run_id: str, job: Job) -> None:
    """The checks that need the run's items (the models they name, the work they are): made as soon as the run
    exists, so a refused run is removed again instead of being left pending for the next command to pick up."""
    check_budget(store, run_id, job, "the run")
    if job.mode == "auto":
        check_deadline(store, run_id, job, new=True)


def _forget(store: Store, run_id: str) -> None:
    """Remove a run this command just created and then refused (unless another process already works on it)."""
    from batchrun.errors import RunLocked
    from batchrun.store import delete_run

    with contextlib.suppress(RunLocked), RunLock(store.path, run_id):
        delete_run(store, run_id)


def check_endpoint(run: dict[str, Any], endpoint: str) -> None:
    """A run's answers all come from one endpoint: the emulator's are never mixed with the API's."""
    made_on = run.get("endpoint")
    if made_on is not None and made_on != endpoint:
        raise UsageError(
            f"run {run['id']} was made on {describe_endpoint(made_on)}, and this command talks to "
            f"{describe_endpoint(endpoint)}: their answers would mix ({how_to_reach(made_on)} to continue it there; "
            "or `batchrun submit ... --new-run` starts a new run here)"
        )


def describe_endpoint(endpoint: str) -> str:
    if endpoint.startswith(f"{EMULATOR_ENDPOINT} ("):  # an emulator whose models diverge (batchrun compare)
        return f"the built-in emulator with {endpoint[len(EMULATOR_ENDPOINT) + 2 : -1]}"
    return "the built-in emulator" if endpoint == EMULATOR_ENDPOINT else endpoint


def how_to_reach(endpoint: str) -> str:
    if endpoint == EMULATOR_ENDPOINT:
        return "add --emulate"
    if endpoint.startswith(f"{EMULATOR_ENDPOINT} (model divergence "):
        shares = endpoint[len(EMULATOR_ENDPOINT) + len(" (model divergence ") : -1]
        return (
            "run the same `batchrun compare ... --emulate`, "
            f"or add --emulate with BATCHRUN_EMULATOR_ARGS='--model-divergence {shares}'"
        )
    if endpoint == DEFAULT_ENDPOINT:
        return "unset ANTHROPIC_BASE_URL"
    return f"set ANTHROPIC_BASE_URL={endpoint}"


def default_run_id(input_path: str, sha: str, fingerprint: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(input_path).name.split(".")[0])[:40].strip("-") or "run"
    return f"{stem}-{hashlib.sha256((sha + fingerprint).encode()).hexdigest()[:8]}"


def process_run(
    store: Store,
    run_id: str,
    options: RunOptions,
    make_client: Callable[[], Any],
    events: Listener = ignore,
    endpoint: str = DEFAULT_ENDPOINT,
) -> Ending:
    """Send what has no result yet, holding the run's lock, and say how the run stands at the end.

    Everything that changes the store happens under the lock: a command that cannot take it changes nothing.
    A run made before endpoints were recorded takes the endpoint of the first command that continues it."""
    run, _ = load_run(store, run_id)
    check_endpoint(run, endpoint)
    started = time.monotonic()
    with RunLock(store.path, run_id):
        # checked before the settings are stored: a refused setting must not stay with the run for every resume
        check_run(store, run_id, load_run(store, run_id)[1].with_overrides(**options.settings))
        job = _apply_settings(store, run_id, options.settings, events)
        if run.get("endpoint") is None:
            store.set_run_endpoint(run_id, endpoint)
        job = job.with_overrides(batch_size=options.batch_size, poll_interval=options.poll_interval)
        attempts_before = store.attempt_count(run_id)
        if options.retry:
            error_type = options.retry if isinstance(options.retry, str) else None
            retried = store.retry_failed(run_id, error_type, options.retry_changes)
            events(Event("retrying_failed", run_id, {"items": retried, "error_type": error_type}))
        reused = store.reuse_results(run_id, Judge(job)) if options.use_cache else 0
        from batchrun.documents import before_sending

        make_client = before_sending(store, run_id, job, make_client)  # a folder run: files checked (uploaded)
        counts = store.counts(run_id)
        stop = None
        if counts[State.PENDING] + counts[State.IN_FLIGHT]:
            store.set_run_status(run_id, "running")
            events(Event("run_started", run_id, started_detail(store, run_id, job, counts)))
            import asyncio  # not for a run with nothing left to send: a command's start-up

            stop = asyncio.run(_engine(store, run_id, job, options, make_client, events))
        return finish(store, run_id, job, started, attempts_before, stop, reused)


def started_detail(store: Store, run_id: str, job: Job, counts: dict[str, int]) -> dict[str, Any]:
    """Where the whole run stands as a command takes it up: progress counts from there (one basis, the run)."""
    from batchrun.pricing import total_cost

    usage = store.usage(run_id)
    usd, unpriced = total_cost(usage, job.prices, job.cache_ttl)
    tokens = sum(row[k] or 0 for row in usage for k in ("input", "output", "cache_creation", "cache_read"))
    return {
        "total": sum(counts.values()),
        "done": counts[State.SUCCEEDED] + counts[State.FAILED],
        "succeeded": counts[State.SUCCEEDED],
        "failed": counts[State.FAILED],
        "tokens": tokens,
        "usd": None if unpriced else usd,
        "mode": job.mode,
    }


def check_run(store: Store, run_id: str, job: Job) -> None:
    check_budget(store, run_id, job)
    if job.mode == "auto":
        check_deadline(store, run_id, job)


def _apply_settings(store: Store, run_id: str, settings: dict[str, Any], events: Listener) -> Job:
    """Settings that do not change requests (concurrency, limits, attempts, budget, mode) apply to the rest of the
    run, and are kept for its later resumes. The mode changes only while no batch of the run is open: an item in a
    batch sent online as well would be paid twice."""
    _, job = load_run(store, run_id)
    new = job.with_overrides(**settings)
    changed = {k: v for k, v in settings.items() if getattr(job, k) != v}
    if not changed:
        return job
    if "mode" in changed and store.batches(run_id, open_only=True):
        raise UsageError(
            f"run {run_id} has batches still open: its mode cannot change to {new.mode} now "
            f"(`batchrun resume {run_id}` collects them, or `batchrun cancel {run_id}` cancels them; "
            "then change the mode)"
        )
    store.update_run_job(run_id, new.to_dict(), new.mode)
    events(Event("settings_changed", run_id, {"changed": changed}))
    return new


def check_budget(store: Store, run_id: str, job: Job, label: str | None = None) -> None:
    """A budget needs a price for every model of the run: an unknown price would make the ceiling meaningless."""
    if job.max_cost is None:
        return
    from batchrun.pricing import price_for

    unpriced = [m for m in store.models(run_id) if price_for(m, job.prices) is None]
    if unpriced:
        raise UsageError(
            f"--max-cost needs the price of every model of {label or 'run ' + run_id}; "
            f"no price is known for {', '.join(unpriced)} "
            '(add them to the job\'s [prices] table, e.g. [prices."MODEL"] input = 3.0, output = 15.0 in USD per '
            "million tokens)"
        )


def check_deadline(store: Store, run_id: str, job: Job, *, new: bool = False) -> None:
    """Mode auto needs a deadline; one the run cannot meet even online from the start is refused before anything
    is sent, unless --force (then everything goes online at once)."""
    if not job.deadline:
        raise UsageError(
            f"run {run_id} is in mode auto and has no deadline (pass --deadline, e.g. --deadline 6h or "
            '--deadline 06:00, or set deadline = "6h" in the job file)'
        )
    if job.force or store.attempt_count(run_id) or store.batches(run_id):
        return  # forced, or not the start: the driver goes online at once when it is past the switch
    from batchrun.auto import run_plan
    from batchrun.deadline import refusal

    plan = run_plan(store, run_id, job, time.time())
    if not plan.feasible:
        raise UsageError(refusal(plan, None if new else run_id))


async def _engine(
    store: Store, run_id: str, job: Job, options: RunOptions, make_client: Callable[[], Any], events: Listener
) -> Stop | None:
    # The engines are imported here, not at the top: status and results start faster without them.
    from batchrun.budget import Budget
    from batchrun.pricing import total_cost

    def make_budget() -> Budget:
        spent, _ = total_cost(store.usage(run_id), job.prices, job.cache_ttl)
        return Budget(job.max_cost, spent, job.prices)

    if job.mode == "auto":
        from batchrun.auto import run_auto

        return await run_auto(store, run_id, job, make_client, events, options, make_budget)
    budget = make_budget()
    client = make_client()
    if job.mode == "batch":
        from batchrun.batches import run_batches

        return await run_batches(
            store,
            run_id,
            job,
            client,
            events,
            no_wait=options.no_wait,
            timeout=options.timeout,
            budget=budget,
            limit=options.limit,
        )
    from batchrun.online import run_online

    return await run_online(
        store,
        run_id,
        job,
        client,
        events,
        grace=options.grace,
        request_timeout=options.request_timeout,
        budget=budget,
        limit=options.limit,
    )


def cancel_run(store: Store, run_id: str, options: RunOptions, target: Any, events: Listener = ignore) -> Ending:
    """`batchrun cancel`: cancel the run's open batches, keep what they finished, leave the rest pending.
    `target` has the client factory and the endpoint (the run's batches live there)."""
    run, job = load_run(store, run_id)
    check_endpoint(run, target.endpoint)
    make_client = target.make_client
    if job.mode == "online":
        raise UsageError(
            f"run {run_id} is an online run: it has no batches to cancel (stop the process running it with "
            f"Ctrl-C or SIGTERM; `batchrun resume {run_id}` continues it)"
        )
    from batchrun.batches import cancel_batches

    started = time.monotonic()
    attempts_before = store.attempt_count(run_id)
    counts = store.counts(run_id)
    events(Event("run_started", run_id, started_detail(store, run_id, job, counts)))
    import asyncio

    stop = asyncio.run(cancel_batches(store, run_id, job, make_client(), events, timeout=options.timeout))
    pending = store.counts(run_id)[State.PENDING]
    if stop is None and pending:
        stop = Stop(StopReason.BATCH_CANCELED, run_id, {"items": pending})
    return finish(store, run_id, job, started, attempts_before, stop, canceled=True)


def finish(
    store: Store,
    run_id: str,
    job: Job,
    started: float,
    attempts_before: int,
    stop: Stop | None,
    reused: int = 0,
    *,
    canceled: bool = False,
) -> Ending:
    """The bookkeeping at the end of every command that processed a run, whichever path it took."""
    counts = store.counts(run_id)
    exit_code = exit_code_for(counts)
    if stop is not None and stop.reason in (StopReason.BUDGET, StopReason.LIMIT):
        if exit_code != EXIT_NOT_FINISHED:  # it stopped with nothing left to do: nothing to say
            stop = None
        else:
            stop.detail["left"] = counts[State.PENDING] + counts[State.IN_FLIGHT]
            if stop.reason == StopReason.BUDGET:
                from batchrun.pricing import total_cost

                stop.detail["spent"] = total_cost(store.usage(run_id), job.prices, job.cache_ttl)[0]
    if stop is not None and stop.reason == StopReason.BUG:
        exit_code = EXIT_FAILED_ITEMS
    if stop is not None and stop.reason == StopReason.UNKNOWN_MODEL:
        exit_code = EXIT_USAGE  # bad usage, not "try again later": a resume would only ask the API again
    status = run_status(exit_code, stop, canceled, job.mode != "online" and bool(store.batches(run_id, open_only=True)))
    sent = store.attempt_count(run_id) - attempts_before
    with contextlib.suppress(sqlite3.Error):  # a store that cannot be written already said so
        from batchrun.stops import stop_record

        store.set_run_status(run_id, status, stop_record(stop) if stop is not None and status != "succeeded" else None)
    return Ending(run_id, counts, exit_code, time.monotonic() - started, sent, stop, reused)


# Stops after which the run is plainly "interrupted" (a signal) or has "batches processing" (--no-wait, --timeout).
# Any other stop (an unknown model, a key the API refuses, the budget, an outage, --limit...) leaves it "stopped":
# its reason is kept with it, and status, runs and the report say what happened and what to do.
RESUMABLE_STOPS = frozenset({StopReason.INTERRUPTED, StopReason.NO_WAIT, StopReason.TIMEOUT, StopReason.CANCEL_TIMEOUT})


def run_status(exit_code: int, stop: Stop | None, canceled: bool, open_batches: bool) -> str:
    """The status a command leaves its run in."""
    if exit_code == EXIT_OK:
        return "succeeded"
    if exit_code == EXIT_FAILED_ITEMS and stop is None:
        return "finished with failures"
    if canceled:
        return "canceled"
    if stop is not None and stop.reason not in RESUMABLE_STOPS:
        return "stopped"
    return "batches processing" if open_batches else "interrupted"


def exit_code_for(counts: dict[str, int]) -> int:
    if counts[State.PENDING] or counts[State.IN_FLIGHT]:
        return EXIT_NOT_FINISHED
    return EXIT_FAILED_ITEMS if counts[State.FAILED] else EXIT_OK
