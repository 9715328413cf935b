"""The online path: feeder -> bounded queue -> workers -> one writer that group-commits to the store.

A worker keeps its item (and its slot) until the writer has committed the item's outcome, so a crash
loses at most the replies in flight, never a backlog. Store calls run on one thread of their own so the
event loop keeps sending while SQLite writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson

from batchrun.answers import Judge, Verdict, add_usage, failed_result, item_cost
from batchrun.api import APIFailure, Reply, send
from batchrun.budget import Budget
from batchrun.caching import CacheWatch, prefix_key
from batchrun.documents import sent_params
from batchrun.estimate import estimate_input_tokens
from batchrun.events import Event, Listener, Stop, StopReason, ignore
from batchrun.limiter import Limiter
from batchrun.neighbours import Neighbours, account_key
from batchrun.outage import OutageWatch
from batchrun.pricing import add_cost, usage_cost
from batchrun.retry import retrying
from batchrun.signals import on_signals
from batchrun.store import Attempt, ClaimedItem, Outcome, State, Store

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

    from batchrun.job import Job

MAX_GROUP = 1000
INVALID_STREAK = 5  # the first outcomes of a run all failing with one invalid-request message stop it here
TICK_S = 1.0  # how often the engine reports what it waits on (progress lines while nothing moves)


class InvalidOutput(APIFailure):
    """A reply that is not a valid answer to a schema job: sent again while attempts remain."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(None, verdict.error_type or "invalid_output", verdict.message or "", "InvalidOutput")
        self._retryable = True


class StopRequested(Exception):
    """The run is stopping (signal, or an error every item would meet): the item goes back to pending."""


class Engine:
    def __init__(
        self,
        store: Store,
        run_id: str,
        job: Job,
        client: AsyncAnthropic,
        events: Listener = ignore,
        limiter: Limiter | None = None,
        request_timeout: float = 600.0,
        budget: Budget | None = None,
        limit: int | None = None,
        cache_watch: CacheWatch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.job = job
        self.client = client
        self.events = events
        self.request_timeout = request_timeout
        self.limiter = limiter or Limiter(
            job.rpm, job.itpm, job.otpm, concurrency=job.concurrency, neighbours=_neighbours(client)
        )
        self.queue: asyncio.Queue[ClaimedItem | None] = asyncio.Queue(maxsize=2 * job.concurrency)
        self.results: asyncio.Queue[tuple[Outcome, asyncio.Future[None]] | None] = asyncio.Queue()
        self.stopping = asyncio.Event()
        self.gates: dict[str, asyncio.Event] = {}
        self.cache_watch = cache_watch or CacheWatch()
        self.stopped_by: Stop | None = None
        self.outage = OutageWatch(clock)
        self.interrupted = False
        self.left_pending = 0
        self.budget = budget or Budget(None, 0.0, job.prices)
        self.limit = limit
        self.limit_reached = False
        self.models = store.models(run_id)
        self.dead_models: dict[str, str] = {}
        self.invalid_streak = 0
        self.invalid_message: str | None = None
        self.workers: list[asyncio.Task[None]] = []
        self.judge = Judge(job)
        self.sleeping: list[float] = []  # when each retry backoff in progress ends (monotonic)
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrun-store")
        self.sent_params = sent_params(store, run_id)  # a folder run's files are read as their items are sent

    async def _db(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    async def run(self) -> Stop | None:
        """Send every pending item; return why the run stopped early, or None when no item is left to send.

        Feeder, workers and writer run under one TaskGroup: an error in any of them (a store that cannot be
        written, a bug) stops them all instead of leaving workers waiting forever on a dead writer. Items
        not committed go back to pending; what was committed stays.
        """
        try:
            await self._db(self.store.release_in_flight, self.run_id)
            await self._supervised()
        except* Exception as group:
            self._crashed(group.exceptions[0])
        finally:
            try:
                await self._db(self.store.release_in_flight, self.run_id)
                if (use := self.limiter.use()) is not None:
                    await self._db(self.store.add_limit_use, self.run_id, use)
            except Exception as e:  # the store is failing: a resume releases them
                self._crashed(e)
            self._db_thread.shutdown(wait=True)
            self.limiter.close()
        if self.stopped_by is None and self.interrupted:
            self.stopped_by = Stop(StopReason.INTERRUPTED, self.run_id)
        if self.dead_models and (self.stopped_by is None or self.stopped_by.reason == StopReason.LIMIT):
            self.stopped_by = Stop(StopReason.UNKNOWN_MODEL, self.run_id, {"models": self.dead_models})
        if self.stopped_by is None and self.limit_reached:
            self.stopped_by = Stop(StopReason.LIMIT, self.run_id, {"limit": self.limit})
        if self.stopped_by is None and self.left_pending:
            self.stopped_by = Stop(StopReason.OVERLOADED, self.run_id, {"items": self.left_pending})
        return self.stopped_by

    async def _supervised(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._writer())
            feeder = tasks.create_task(self._feeder())
            ticker = tasks.create_task(self._ticker())
            async with asyncio.TaskGroup() as crew:
                self.workers = [crew.create_task(self._worker()) for _ in range(self.job.concurrency)]
            feeder.cancel()
            ticker.cancel()
            self.results.put_nowait(None)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            detail = {
                "in_flight": self.limiter.in_flight,
                "retrying": len(self.sleeping),
                "wait": max(0.0, min(self.sleeping) - now) if self.sleeping else 0.0,
                "paused": max(0.0, self.limiter.paused_until - self.limiter.clock()),
            }
            self.events(Event("tick", self.run_id, detail))

    def _crashed(self, error: BaseException) -> None:
        kind = StopReason.STORE_ERROR if isinstance(error, sqlite3.Error | OSError) else StopReason.BUG
        if self.stopped_by is None or self.stopped_by.reason not in (StopReason.STORE_ERROR, StopReason.BUG):
            self.stopped_by = Stop(kind, self.run_id, {"error": f"{type(error).__name__}: {error}"}, error)
        self.stop()

    def stop(self, cause: Stop | None = None) -> None:
        """Stop taking new items; items not yet sent go back to pending."""
        if cause is not None and self.stopped_by is None:
            self.stopped_by = cause
        self.stopping.set()
        for gate in self.gates.values():
            gate.set()

    def interrupt(self) -> None:
        """A signal: stop feeding and let requests in flight finish (until abort)."""
        self.interrupted = True
        self.stop()

    def abort(self) -> None:
        """Stop now: requests in flight are dropped (their items go back to pending); committed results stay."""
        self.interrupted = True
        self.stop()
        for task in self.workers:
            task.cancel()

    async def _feeder(self) -> None:
        """Claim pending items page by page into the bounded queue, then tell each worker there is no more.

        Abort cancels the feeder; it then puts no end markers, since the workers are cancelled too.
        """
        last = 0
        page = max(64, self.job.concurrency * 2)
        left = self.limit
        while not self.stopping.is_set() and left != 0:
            size = page if left is None else min(page, left)
            items = await self._db(self.store.claim_pending, self.run_id, last, size)
            if not items:
                break
            for item in items:
                await self.queue.put(item)
            last = items[-1].line_no
            left = None if left is None else left - len(items)
        if left == 0:
            self.limit_reached = True
        for _ in range(self.job.concurrency):
            await self.queue.put(None)

    async def _worker(self) -> None:
        while (item := await self.queue.get()) is not None:
            attempts: list[Attempt] = []
            replies: list[Reply] = []
            try:
                if self.stopping.is_set():
                    outcome = Outcome(self.run_id, item.line_no, State.PENDING)
                else:
                    outcome = await self._process(item, attempts, replies)
            except asyncio.CancelledError:
                # aborted mid-request: the item goes back to pending, and the requests it sent stay on record with
                # the replies they were billed for (an invalid one it was sending again)
                pending = Outcome(self.run_id, item.line_no, State.PENDING, attempts=attempts)
                self._commit_later(self._billed(pending, item, replies))
                raise
            await self._commit_later(outcome)

    def _commit_later(self, outcome: Outcome) -> asyncio.Future[None]:
        """Hand an outcome to the writer; the future resolves once it is committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.results.put_nowait((outcome, done))
        return done

    async def _process(self, item: ClaimedItem, attempts: list[Attempt], replies: list[Reply]) -> Outcome:
        sent_at: list[float] = []  # when each attempt was sent, on the outage watch's clock
        try:
            async for attempt in retrying(self.job.max_attempts, self._sleep):
                with attempt:
                    reply = await self._attempt(item, attempts, sent_at)
                    replies.append(reply)
                    verdict = self._judged(reply, attempts)
        except StopRequested:
            return self._billed(Outcome(self.run_id, item.line_no, State.PENDING, attempts=attempts), item, replies)
        except InvalidOutput as failure:
            outcome = failed_outcome(self.run_id, item.line_no, failure, attempts)
            outcome.result = failed_result(self.judge(replies[-1].message), replies[-1].message, failure.request_id)
            return self._billed(outcome, item, replies)
        except APIFailure as failure:
            if failure.status == 404 and failure.error_type == "not_found_error":
                self._unknown_model(item.params["model"], failure)
            elif self._invalid_streak(failure):
                return self._billed(failed_outcome(self.run_id, item.line_no, failure, attempts), item, replies)
            elif failure.fatal:
                self.stop(Stop(StopReason.FATAL_API, self.run_id, _failure_detail(failure)))
            elif failure.retryable and sent_at and self.outage.none_since(sent_at[-1]):
                self._no_success_anywhere(failure, sent_at[-1])
            elif failure.api_wide:
                self.left_pending += 1
            else:
                return self._billed(failed_outcome(self.run_id, item.line_no, failure, attempts), item, replies)
            return self._billed(Outcome(self.run_id, item.line_no, State.PENDING, attempts=attempts), item, replies)
        if verdict.ok:
            outcome = succeeded_outcome(self.run_id, item.line_no, reply, attempts)
            outcome.data = verdict.stored_data()
        else:
            outcome = answer_failed_outcome(self.run_id, item.line_no, verdict, reply, attempts)
        return self._billed(outcome, item, replies)

    def _judged(self, reply: Reply, attempts: list[Attempt]) -> Verdict:
        """What the reply means; one that a new request may well fix (invalid output) is sent again."""
        verdict = self.judge(reply.message)
        if verdict.worth_retrying:
            attempts[-1].outcome = verdict.error_type or "invalid_output"
            failure = InvalidOutput(verdict)
            failure.request_id = reply.request_id
            raise failure
        return verdict

    def _billed(self, outcome: Outcome, item: ClaimedItem, replies: list[Reply]) -> Outcome:
        """Every reply the item got is billed, the invalid ones too: the outcome carries their usage and cost."""
        usage: dict[str, Any] = {}
        for reply in replies:
            usage = add_usage(usage, reply.message.get("usage") or {})
        outcome.usage = usage
        outcome.stop_reason = replies[-1].message.get("stop_reason") if replies else None
        outcome.cost_usd = item_cost(item.params["model"], "online", usage, self.job) if replies else 0.0
        return outcome

    def _unknown_model(self, model: str, failure: APIFailure) -> None:
        """A model the API does not know: none of its items is sent (they stay pending), the others go on; a run
        with no other model stops at once."""
        self.dead_models.setdefault(model, failure.message)
        if set(self.dead_models) >= set(self.models):
            self.stop()

    def _invalid_streak(self, failure: APIFailure) -> bool:
        """The first INVALID_STREAK outcomes of the run all failed with the same invalid-request message: every item
        would, so the run stops there instead of sending the whole file. Returns whether this failure counts."""
        if self.outage.any_success or failure.status not in (400, 422):
            return False
        if self.invalid_message not in (None, failure.message):
            self.invalid_streak = 0
        self.invalid_message = failure.message
        self.invalid_streak += 1
        if self.invalid_streak >= INVALID_STREAK:
            self.stop(Stop(StopReason.INVALID_REQUESTS, self.run_id, _failure_detail(failure, self.invalid_streak)))
        return True

    def _no_success_anywhere(self, failure: APIFailure, since: float) -> None:
        """Retries ran out on the API's error while nothing succeeded anywhere since this item's last attempt was
        sent: not shown to be the item's fault, so it waits for a resume instead of being burnt. Only when the
        whole pool has had no success for a while (see outage.py) does the API look down: the run stops."""
        if self.outage.looks_down(since):
            self.stop(Stop(StopReason.OUTAGE, self.run_id, _failure_detail(failure, self.job.max_attempts)))
        else:
            self.left_pending += 1

    async def _attempt(self, item: ClaimedItem, attempts: list[Attempt], sent_at: list[float]) -> Reply:
        led = await self._wait_turn(item.params)
        try:
            reply = await self._send(item, attempts, sent_at)
            self._watch_cache(item.params, reply)
            return reply
        finally:
            for gate in led:
                gate.set()

    async def _wait_turn(self, params: dict[str, Any]) -> list[asyncio.Event]:
        """The run's first request goes alone: its headers teach the limits. So does the first request of each
        cached prefix: it writes the cache that the others then read, instead of each worker writing its own.
        Returns the gates this request leads, opened when its reply (or failure) is in."""
        led = []
        for key in ("first", prefix_key(params)):
            if key is None or (key != "first" and not self.cache_watch.serialise(key)):
                continue
            gate = self.gates.get(key)
            if gate is None:
                self.gates[key] = gate = asyncio.Event()
                led.append(gate)
            else:
                await gate.wait()
        if self.stopping.is_set():
            for gate in led:
                gate.set()
            raise StopRequested
        return led

    def _watch_cache(self, params: dict[str, Any], reply: Reply) -> None:
        """The first reply of a cached prefix tells whether the API cached it; if not, the user is told once."""
        key = prefix_key(params)
        if key is None:
            return
        notice = self.cache_watch.first_reply(key, params, reply.message.get("usage") or {})
        if notice is not None:
            self.events(Event("notice", self.run_id, {"text": notice}))

    async def _send(self, item: ClaimedItem, attempts: list[Attempt], sent_at: list[float]) -> Reply:
        if item.params["model"] in self.dead_models:
            raise StopRequested
        params, file_tokens = await self.sent_params(item.params)  # a folder run's files: read, and counted
        budgeted = await self._reserve(item.params, file_tokens)
        try:
            estimate = estimate_input_tokens(item.params) + file_tokens
            reservation = await self.limiter.acquire(estimate, item.params["max_tokens"])
        except BaseException:
            self.budget.settle(budgeted, 0.0)
            raise
        started = time.time()
        sent_at.append(self.outage.clock())
        try:
            reply = await send(self.client, params, self.request_timeout)
        except asyncio.CancelledError:
            attempts.append(Attempt(started, time.time() - started, "aborted"))
            self.budget.settle(budgeted, 0.0)
            raise
        except APIFailure as failure:
            self.budget.settle(budgeted, 0.0)
            self.limiter.failed(reservation, failure.headers, failure.status, failure.retry_after)
            self.events(
                Event(
                    "api_error",
                    self.run_id,
                    {"status": failure.status, "error_type": failure.error_type, "retry_after": failure.retry_after},
                )
            )
            attempts.append(
                Attempt(
                    started,
                    time.time() - started,
                    failure.error_type,
                    failure.status,
                    failure.error_class,
                    failure.retry_after,
                    failure.request_id,
                )
            )
            raise
        usage = reply.message.get("usage") or {}
        self.budget.settle(
            budgeted, usage_cost(item.params["model"], "online", usage, self.job.prices, self.job.cache_ttl)
        )
        self.limiter.release(reservation, usage)
        self.limiter.observe(reply.headers, reservation)
        self.limiter.succeeded()
        self.outage.succeeded()
        attempts.append(Attempt(started, time.time() - started, "succeeded", 200, request_id=reply.request_id))
        return reply

    async def _reserve(self, params: dict[str, Any], file_tokens: int = 0) -> float:
        """The request's worst case, held against --max-cost. While other requests hold reservations, wait for them
        to settle (most cost far less than their worst case); when none does and it still does not fit, the run
        has reached its budget."""
        while (budgeted := self.budget.reserve(params, file_tokens)) is None:
            if not self.budget.holders or self.stopping.is_set():
                self.stop(Stop(StopReason.BUDGET, self.run_id, {"limit": self.budget.limit}))
                raise StopRequested
            self.budget.settled.clear()
            await self.budget.settled.wait()
        return budgeted

    async def _sleep(self, seconds: float) -> None:
        self.events(Event("retry_wait", self.run_id, {"seconds": seconds}))
        end = time.monotonic() + seconds
        self.sleeping.append(end)
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return
        finally:
            self.sleeping.remove(end)
        raise StopRequested

    async def _writer(self) -> None:
        while (first := await self.results.get()) is not None:
            group = [first]
            end = False
            while len(group) < MAX_GROUP and not self.results.empty():
                nxt = self.results.get_nowait()
                if nxt is None:
                    end = True
                    break
                group.append(nxt)
            await self._db(self.store.record, [outcome for outcome, _ in group])
            for _, done in group:
                if not done.done():  # a worker aborted while waiting has cancelled its future
                    done.set_result(None)
            self._report(group)
            if end:
                break

    def _report(self, group: list[tuple[Outcome, asyncio.Future[None]]]) -> None:
        """Items done, and what every reply committed here cost: the failed, invalid and cut ones are billed too,
        and so are the replies of an item that went back to pending (`status` counts those once the item ends)."""
        ok = sum(1 for o, _ in group if o.state == State.SUCCEEDED)
        bad = sum(1 for o, _ in group if o.state == State.FAILED)
        usd: float | None = 0.0
        tokens = 0
        for o, _ in group:
            if o.usage:
                usd = add_cost(usd, o.cost_usd)
                tokens += _tokens(o.usage)
        if ok or bad or tokens:
            self.events(
                Event("items_done", self.run_id, {"succeeded": ok, "failed": bad, "usd": usd, "tokens": tokens})
            )


def _neighbours(client: Any) -> Neighbours | None:
    """This run's entry among the batchrun processes here that share the client's key (batchrun.neighbours)."""
    return Neighbours.join(account_key(getattr(client, "api_key", None), str(getattr(client, "base_url", ""))))


def _tokens(usage: dict[str, Any]) -> int:
    keys = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return sum(usage.get(k) or 0 for k in keys)


def _failure_detail(failure: APIFailure, attempts: int | None = None) -> dict[str, Any]:
    return {
        "status": failure.status,
        "error_type": failure.error_type,
        "message": failure.message,
        "attempts": attempts,
    }


def succeeded_outcome(run_id: str, line_no: int, reply: Reply, attempts: list[Attempt]) -> Outcome:
    result = orjson.dumps({"type": "succeeded", "message": reply.message}).decode()
    return Outcome(
        run_id,
        line_no,
        State.SUCCEEDED,
        result=result,
        usage=reply.message.get("usage") or {},
        request_id=reply.request_id,
        attempts=attempts,
        model=reply.message.get("model"),
    )


def answer_failed_outcome(
    run_id: str, line_no: int, verdict: Verdict, reply: Reply, attempts: list[Attempt]
) -> Outcome:
    """A reply that is not an answer (a refusal, a cut reply): the item fails with the verdict's error type."""
    return Outcome(
        run_id,
        line_no,
        State.FAILED,
        result=failed_result(verdict, reply.message, reply.request_id),
        error_type=verdict.error_type,
        error_message=verdict.message,
        request_id=reply.request_id,
        attempts=attempts,
        model=reply.message.get("model"),
    )


def failed_outcome(run_id: str, line_no: int, failure: APIFailure, attempts: list[Attempt]) -> Outcome:
    result = orjson.dumps({"type": "errored", "error": failure.error_body()}).decode()
    return Outcome(
        run_id,
        line_no,
        State.FAILED,
        result=result,
        error_type=failure.error_type,
        error_status=failure.status,
        error_class=failure.error_class,
        error_message=failure.message,
        request_id=failure.request_id,
        attempts=attempts,
    )


async def run_online(
    store: Store,
    run_id: str,
    job: Job,
    client: AsyncAnthropic,
    events: Listener = ignore,
    *,
    grace: float = 5.0,
    request_timeout: float = 600.0,
    budget: Budget | None = None,
    limit: int | None = None,
) -> Stop | None:
    """Process an online run (the caller holds its lock); returns why it stopped early, if it did.

    The first signal stops feeding and gives requests in flight `grace` seconds; a second one stops at once."""
    engine = Engine(store, run_id, job, client, events, request_timeout=request_timeout, budget=budget, limit=limit)
    loop = asyncio.get_running_loop()

    def first(name: str) -> None:
        events(Event("signal", run_id, {"name": name, "grace": grace}))
        engine.interrupt()
        loop.call_later(grace, engine.abort)

    def again(name: str) -> None:
        events(Event("signal_again", run_id, {"name": name}))
        engine.abort()

    try:
        with on_signals(first, again):
            return await engine.run()
    finally:
        await client.close()
