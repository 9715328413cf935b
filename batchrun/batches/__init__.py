"""The Message Batches path: half the price of the online path, results within 24 hours.

A run in batch mode goes through these steps, and each one is in the store before the next begins, so a
crash or a kill anywhere is resumed by `batchrun resume` without losing a result or paying for one twice:

1. plan: the pending items, in input order, are cut into batches of at most `batch_size` requests and
   `batch_max_bytes` bytes of request body. Each plan row and the move of its items to in_flight are one
   transaction, written before anything is sent.
2. create: the body is built from the params stored at input (never re-serialised) and sent; the batch id the
   API returns is stored at once. A plan left without an id (the process died between the two, or a create
   failed in a way that leaves open whether the API got it) is reconciled before anything else is created:
   the account's batches are listed newest first back to the plan's time, and one created since then with
   the same number of requests that no run of this store owns is adopted instead of creating another.
3. poll: every open batch is retrieved, with exponential backoff and jitter from `poll_interval` up to
   `poll_max_interval`.
4. collect: an ended batch's results are streamed into the store in chunks; each result is written in the
   transaction that marks its item succeeded or failed, in the same format as the online path's results.
5. follow up: items that errored with a retryable error type, and expired items, go back to pending; once
   every open batch is collected they are sent again in a follow-up batch, until `max_attempts`. Items a
   cancel stopped go back to pending and wait for `batchrun resume`.

SIGINT and SIGTERM never cancel a batch: the process stops polling and exits 3, and the batches keep
processing at Anthropic until `resume` (or a later `submit`) collects them. Only `batchrun cancel` cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from batchrun.batches.engine import (
    BODY_PIECE,
    CANCEL_CHECK_S,
    CLOCK_SKEW_S,
    CRASH_AFTER_CREATE,
    INGEST_CHUNK,
    LIST_PAGE,
    MALFORMED,
    MIN_POLL_S,
    POLL_GROWTH,
    RETRYABLE_RESULT_ERRORS,
    TOKEN_KEYS,
    BatchEngine,
)
from batchrun.batches.plan import API_MAX_BYTES, API_MAX_REQUESTS, BODY_OVERHEAD, REQUEST_OVERHEAD, Capped, plan_cuts
from batchrun.batches.results import (
    SWITCH_INTERVAL_S,
    ForeignBatch,
    LookedUp,
    Members,
    Tally,
    first_time,
    parse_results,
    result_chunks,
    short_switches,
)
from batchrun.budget import Budget
from batchrun.errors import RunLocked
from batchrun.events import Listener, Stop, Stopped, StopReason, ignore
from batchrun.lock import RunLock
from batchrun.signals import on_signals
from batchrun.store import Store

# The public names batchrun.batches had as one module, importable from it as before. A test that patches a constant
# patches it where it is read: monkeypatch.setattr("batchrun.batches.engine.INGEST_CHUNK", ...).
__all__ = [
    "API_MAX_BYTES",
    "API_MAX_REQUESTS",
    "BODY_OVERHEAD",
    "BODY_PIECE",
    "CANCEL_CHECK_S",
    "CLOCK_SKEW_S",
    "CRASH_AFTER_CREATE",
    "INGEST_CHUNK",
    "LIST_PAGE",
    "LOCK_WAIT_S",
    "MALFORMED",
    "MIN_POLL_S",
    "POLL_GROWTH",
    "REQUEST_OVERHEAD",
    "RETRYABLE_RESULT_ERRORS",
    "SWITCH_INTERVAL_S",
    "TOKEN_KEYS",
    "BatchEngine",
    "Capped",
    "ForeignBatch",
    "LookedUp",
    "Members",
    "Tally",
    "cancel_and_drain",
    "cancel_batches",
    "first_time",
    "parse_results",
    "plan_cuts",
    "result_chunks",
    "run_batches",
    "short_switches",
]

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from batchrun.job import Job

LOCK_WAIT_S = 120.0  # how long `batchrun cancel` waits for a process polling the run to stop


@contextlib.contextmanager
def _stop_on_signals(engine: BatchEngine) -> Iterator[None]:
    """A first signal stops the engine at its next safe point, a second one at once; no batch is ever canceled."""
    task = asyncio.current_task()

    def first(name: str) -> None:
        engine.emit("signal", name=name, batches=True)
        engine.interrupt()

    def again(name: str) -> None:
        engine.emit("signal_again", name=name)
        if task is not None:
            task.cancel()

    with on_signals(first, again):
        yield


async def run_batches(
    store: Store,
    run_id: str,
    job: Job,
    client: AsyncAnthropic,
    events: Listener = ignore,
    *,
    no_wait: bool = False,
    timeout: float | None = None,
    budget: Budget | None = None,
    limit: int | None = None,
    switch: Callable[[], float] | None = None,
) -> Stop | None:
    """Process a batch-mode run (the caller holds its lock); returns why it stopped early, if it did.
    `switch` (deadline mode) gives the seconds left until the rest must go online: at 0 it stops with
    SWITCH_ONLINE, its batches still open, for the caller to cancel (`cancel_and_drain`).

    A signal never cancels a batch: the first stops at the next safe point, a second at once."""
    store.clear_cancel(run_id)
    engine = BatchEngine(
        store,
        run_id,
        job,
        client,
        events=events,
        no_wait=no_wait,
        timeout=timeout,
        budget=budget,
        limit=limit,
        switch=switch,
    )
    interrupted = Stop(StopReason.INTERRUPTED, run_id, {"batches": True})
    try:
        with _stop_on_signals(engine):
            return await engine.run()
    except asyncio.CancelledError:
        return interrupted
    finally:
        await client.close()


async def cancel_batches(
    store: Store,
    run_id: str,
    job: Job,
    client: AsyncAnthropic,
    events: Listener = ignore,
    *,
    timeout: float | None = None,
) -> Stop | None:
    """`batchrun cancel`: cancel the run's open batches, store what they finished, leave the rest pending.

    The cancel request is stored first and the API batches are canceled at once, even while another process
    polls the run; that process sees the request, stops, and frees the run's lock, which this one then takes
    to collect the canceled batches' results.
    """
    store.request_cancel(run_id)
    engine = BatchEngine(store, run_id, job, client, events=events, timeout=timeout, honour_cancel=False)
    try:
        await engine.cancel_open(reconcile=False)
        try:
            lock = await _wait_for_lock(store, run_id, timeout if timeout is not None else LOCK_WAIT_S)
        except RunLocked as e:
            raise RunLocked(
                f"{e}; the batches it knew of are canceled; `batchrun cancel {run_id}` again collects them"
            ) from None
        try:
            await engine.cancel_open(reconcile=True)
            return await engine.drain()
        finally:
            lock.__exit__(None, None, None)
    except Stopped as stopped:
        return stopped.stop
    finally:
        engine.close()
        await client.close()


async def cancel_and_drain(
    store: Store,
    run_id: str,
    job: Job,
    client: AsyncAnthropic,
    events: Listener = ignore,
    *,
    timeout: float | None = None,
) -> Stop | None:
    """Deadline mode's switch (the caller holds the run's lock): cancel every open batch, wait until each has
    ended, and store what it finished; its other items are pending again. Returns None once no batch of the run
    is open, so none can answer an item sent online afterwards; otherwise why it stopped (a signal, --timeout,
    an API call that kept failing), with batches still open: their items must not be sent online yet."""
    engine = BatchEngine(store, run_id, job, client, events=events, timeout=timeout, honour_cancel=False)
    try:
        with _stop_on_signals(engine):
            await engine.cancel_open(reconcile=True)
            return await engine.drain()
    except Stopped as stopped:
        return stopped.stop
    except asyncio.CancelledError:
        return Stop(StopReason.INTERRUPTED, run_id, {"batches": True})
    finally:
        engine.close()
        await client.close()


async def _wait_for_lock(store: Store, run_id: str, wait: float) -> RunLock:
    """The run's lock (held on return), once a process polling the run has seen the cancel request and stopped."""
    deadline = time.monotonic() + wait
    while True:
        lock = RunLock(store.path, run_id)
        try:
            lock.__enter__()
        except RunLocked:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        return lock
