"""Deadline mode (`--mode auto --deadline TIME`): batch price when the batches end in time, online certainty
when they might not.

1. The plan (batchrun.deadline) gives the latest moment to switch: the deadline, less the time the items left
   would take online, less a safety margin. It is made again after every poll, from the items left then.
2. Until then the run is a batch run (batches.run_batches): batches are created, polled and collected.
3. At the switch the batches still open are cancelled and drained (batches.cancel_and_drain): what they
   finished is stored at batch price, their other items are pending again, and no batch of the run is open
   any more -- so no item sent online can be answered by a batch as well. If the drain cannot finish (a
   signal, --timeout, an API call that keeps failing) nothing is sent online: `resume` goes on from there.
4. The items left go online (online.run_online); an item a batch answered is never pending, so never sent.

A run past its switch already (a resume, or a deadline too near for batches) goes online at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from batchrun.deadline import Plan, capacity_of, less, make_plan, parse_deadline, work_of
from batchrun.events import Event, Listener, Stop, StopReason
from batchrun.job import Job
from batchrun.settings import RunOptions
from batchrun.store import State, Store

Clock = Callable[[], float]


def run_plan(store: Store, run_id: str, job: Job, now: float) -> Plan:
    """The plan of an auto run from what it has left at `now` (Unix time)."""
    run = store.get_run(run_id) or {}
    if not job.deadline:
        raise ValueError("mode auto needs a deadline")
    deadline_at = parse_deadline(job.deadline, run.get("created_at") or now)
    work = work_of(store.unfinished_work(run_id))
    # Where the API shows progress (the real one keeps "processing" until a batch ends), a request an open batch
    # has answered needs no online time: a cancelled batch still returns it.
    answered = sum((row["request_counts"] or {}).get("succeeded", 0) for row in store.batches(run_id, open_only=True))
    return make_plan(deadline_at, now, less(work, answered), capacity_of(job), job.deadline_margin)


async def run_auto(
    store: Store,
    run_id: str,
    job: Job,
    make_client: Callable[[], Any],
    events: Listener,
    options: RunOptions,
    make_budget: Callable[[], Any],
    clock: Clock = time.time,
) -> Stop | None:
    """Process an auto run (the caller holds its lock); returns why it stopped early, if it did."""
    from batchrun.batches import cancel_and_drain, run_batches
    from batchrun.online import run_online

    done_before = _done(store, run_id)
    plan = run_plan(store, run_id, job, clock())
    events(Event("deadline_plan", run_id, plan.to_dict()))
    if plan.feasible and plan.now < plan.switch_at:

        def seconds_to_switch() -> float:
            return run_plan(store, run_id, job, clock()).switch_at - clock()

        stop = await run_batches(
            store,
            run_id,
            job,
            make_client(),
            events,
            no_wait=options.no_wait,
            timeout=options.timeout,
            budget=make_budget(),
            limit=options.limit,
            switch=seconds_to_switch,
        )
        if stop is None or stop.reason != StopReason.SWITCH_ONLINE:
            return stop
    if store.batches(run_id, open_only=True):
        events(Event("switching_online", run_id, {"items": _left(store, run_id), "open": store.open_batch_ids(run_id)}))
        stop = await cancel_and_drain(store, run_id, job, make_client(), events, timeout=options.timeout)
        if stop is not None:
            return stop
        if store.batches(run_id, open_only=True):  # never send online what a batch may still answer
            return Stop(StopReason.CANCEL_TIMEOUT, run_id, {"open": store.open_batch_ids(run_id), "timeout": None})
    left = _left(store, run_id)
    if not left:
        return None
    limit = options.limit  # --limit counts the items this invocation gave an outcome, on both paths
    if limit is not None:
        limit -= _done(store, run_id) - done_before
        if limit <= 0:
            return Stop(StopReason.LIMIT, run_id, {"limit": options.limit})
    plan = run_plan(store, run_id, job, clock())
    events(Event("going_online", run_id, {"items": left, "plan": plan.to_dict()}))
    return await run_online(
        store,
        run_id,
        job,
        make_client(),
        events,
        grace=options.grace,
        request_timeout=options.request_timeout,
        budget=make_budget(),
        limit=limit,
    )


def _done(store: Store, run_id: str) -> int:
    counts = store.counts(run_id)
    return counts[State.SUCCEEDED] + counts[State.FAILED]


def _left(store: Store, run_id: str) -> int:
    counts = store.counts(run_id)
    return counts[State.PENDING] + counts[State.IN_FLIGHT]
