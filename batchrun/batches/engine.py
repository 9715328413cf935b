"""BatchEngine: plans, creates, polls and collects a run's batches (the steps in batchrun.batches)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from batchrun.answers import Judge, failed_result, item_cost
from batchrun.api import APIFailure, _message_problem, _usage_problem, api_errors, redact
from batchrun.batches.plan import API_MAX_BYTES, API_MAX_REQUESTS, BODY_OVERHEAD, REQUEST_OVERHEAD, Capped, plan_cuts
from batchrun.batches.results import (
    ForeignBatch,
    LookedUp,
    Members,
    Tally,
    first_time,
    parse_results,
    result_chunks,
    short_switches,
)
from batchrun.budget import Budget, worst_cost
from batchrun.documents import resolver
from batchrun.events import Event, Listener, Stop, Stopped, StopReason, ignore
from batchrun.pricing import add_cost, total_cost, usage_cost
from batchrun.retry import retrying
from batchrun.store import Attempt, BatchTimes, Outcome, State, Store

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic
    from anthropic.types.messages import MessageBatch

    from batchrun.job import Job

T = TypeVar("T")

MALFORMED = "MalformedResult"  # the error class of a result line of the wrong shape
RETRYABLE_RESULT_ERRORS = frozenset({"rate_limit_error", "overloaded_error", "api_error", "timeout_error"})
CLOCK_SKEW_S = 600.0  # the plan's time is ours, a batch's created_at the API's: look this much further back
LIST_PAGE = 100
INGEST_CHUNK = 2000  # results per store transaction
BODY_PIECE = 1 << 20  # bytes of request body read from the store at a time
MIN_POLL_S = 0.01
POLL_GROWTH = 1.5
TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
CANCEL_CHECK_S = 1.0  # how often a waiting process looks for `batchrun cancel`


# Test hook (tests only): with BATCHRUN_TEST_CRASH_AFTER_CREATE=1 the process kills itself with SIGKILL right
# after the API returned a created batch and before its id is stored -- the one moment at which a crash
# would pay for a batch twice if resume did not reconcile. tests/test_batches.py sets it; nothing else may.
CRASH_AFTER_CREATE = "BATCHRUN_TEST_CRASH_AFTER_CREATE"


class BatchEngine:
    def __init__(
        self,
        store: Store,
        run_id: str,
        job: Job,
        client: AsyncAnthropic,
        *,
        events: Listener = ignore,
        no_wait: bool = False,
        timeout: float | None = None,
        honour_cancel: bool = True,
        budget: Budget | None = None,
        limit: int | None = None,
        switch: Callable[[], float] | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.job = job
        self.client = client
        self.events = events
        self.no_wait = no_wait
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.honour_cancel = honour_cancel
        self.budget = budget or Budget(None, 0.0, job.prices)
        self.limit = self.limit_given = limit
        self.dead_models: dict[str, str] = {}
        self.max_items = min(job.batch_size, API_MAX_REQUESTS)
        self.max_bytes = min(job.batch_max_bytes, API_MAX_BYTES)
        self.poll_min = max(MIN_POLL_S, job.poll_interval)
        self.poll_max = max(self.poll_min, job.poll_max_interval)
        self.api_key = getattr(client, "api_key", None)
        self.stopping = asyncio.Event()
        self.canceled_items = 0
        self.judge = Judge(job)
        self.switch = switch  # deadline mode: seconds left until the rest must go online
        self.switch_at: float | None = None  # the same as a time.monotonic() moment
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchrun-store")
        self.resolver = resolver(store, run_id)  # a folder run's files are read as their batch is sent

    # the run

    async def run(self) -> Stop | None:
        """Process the run until every item has its result, or until it must stop; returns why it stopped."""
        try:
            return await self._run()
        except Stopped as stopped:
            return stopped.stop
        finally:
            self.close()

    def emit(self, kind: str, **detail: Any) -> None:
        self.events(Event(kind, self.run_id, detail))

    def stop_with(self, reason: StopReason, **detail: Any) -> Stopped:
        return Stopped(Stop(reason, self.run_id, detail))

    async def _run(self) -> Stop | None:
        stray = self.store.release_stray_in_flight(self.run_id)
        if stray:
            self.emit("stray_released", items=stray)
        for row in self.store.batches(self.run_id, open_only=True):
            if row["id"] is None:
                await self._create(row, reconcile=True)
        interval = self.poll_min
        while True:
            await self._collect_ended()
            self._check_stop()
            if self.dead_models and not self.store.batches(self.run_id, open_only=True):
                return Stop(StopReason.UNKNOWN_MODEL, self.run_id, {"models": self.dead_models})
            if self._switch_due():
                return self._still_open(StopReason.SWITCH_ONLINE)
            for row in self.store.batches(self.run_id, open_only=True):
                if row["id"] is None:  # an adopted batch turned out to be another run's: look again, or create
                    await self._create(row, reconcile=True)
            if not self.store.batches(self.run_id, open_only=True):
                if self.canceled_items:
                    return Stop(StopReason.BATCH_CANCELED, self.run_id, {"items": self.canceled_items})
                if not self.store.counts(self.run_id)[State.PENDING]:
                    return None
                await self._submit_pending()
                interval = self.poll_min
            if self.no_wait:
                return self._still_open(StopReason.NO_WAIT)
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return self._still_open(StopReason.TIMEOUT)
            self._report_poll(interval)
            await self._pause(interval / 2 + random.uniform(0, interval / 2))
            interval = min(self.poll_max, interval * POLL_GROWTH)

    def interrupt(self) -> None:
        """A signal: stop at the next safe point (after a create's id is stored, between result chunks)."""
        self.stopping.set()

    def close(self) -> None:
        self._db_thread.shutdown(wait=True)

    def _check_signal(self) -> None:
        if self.stopping.is_set():
            raise self.stop_with(StopReason.INTERRUPTED, batches=True)

    def _switch_due(self) -> bool:
        """Deadline mode: the plan, made again from what is left now, says the rest must go online."""
        if self.switch is None:
            return False
        left = self.switch()
        self.switch_at = time.monotonic() + left
        return left <= 0

    def _check_stop(self) -> None:
        self._check_signal()
        if self.honour_cancel and self.store.cancel_requested(self.run_id):
            raise self.stop_with(StopReason.CANCEL_REQUESTED)

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short by a signal, a cancel request or the --timeout deadline."""
        end = time.monotonic() + seconds
        if self.deadline is not None:
            end = min(end, self.deadline)
        if self.switch_at is not None:
            end = min(end, self.switch_at)
        while True:
            self._check_stop()
            self.emit("tick")
            left = end - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), min(left, CANCEL_CHECK_S))

    def _still_open(self, reason: StopReason) -> Stop:
        return Stop(reason, self.run_id, {"open": self.store.open_batch_ids(self.run_id), "timeout": self.timeout})

    # creating batches

    async def _submit_pending(self) -> None:
        capped = Capped(self.limit, self._budget_left(), self.job.cache_ttl)
        plans = plan_cuts(
            capped.prefix(self.store.pending_costs(self.run_id), self.job.prices), self.max_items, self.max_bytes
        )
        if not plans:
            if capped.over_budget:
                raise self.stop_with(StopReason.BUDGET, limit=self.budget.limit, spent=self._spent())
            raise self.stop_with(StopReason.LIMIT, limit=self.limit_given)
        if self.limit is not None:
            self.limit -= sum(p[2] for p in plans)
        follow_up = bool(self.store.batches(self.run_id))
        rows = self.store.add_batch_plans(self.run_id, plans, time.time())
        items = sum(p[2] for p in plans)
        self.emit("batches_planned", items=items, batches=len(rows), follow_up=follow_up)
        for i, row in enumerate(rows):
            try:
                self._check_stop()
            except Stopped:
                self._drop_plans(rows[i:])
                raise
            try:
                await self._create(row, reconcile=False)
            except (Stopped, asyncio.CancelledError):
                self._drop_plans(rows[i + 1 :])
                raise

    def _spent(self) -> float:
        return total_cost(self.store.usage(self.run_id), self.job.prices, self.job.cache_ttl)[0]

    def _budget_left(self) -> float | None:
        """What the budget leaves for new batches: the limit, less what was spent, less the worst case of the
        batches still open (their results are not billed yet)."""
        if self.budget.limit is None:
            return None
        open_worst = sum(
            worst_cost(model, size, max_tokens, self.job.prices, batch=True, cached_chars=size, ttl=self.job.cache_ttl)
            or 0.0
            for _, size, model, max_tokens in self.store.open_batch_costs(self.run_id)
        )
        return self.budget.limit - self._spent() - open_worst

    def _drop_plans(self, rows: list[dict[str, Any]]) -> None:
        """Plans this process never sent (no create attempted): their items go back to pending, and no
        reconcile is needed for them later."""
        for row in rows:
            self.store.release_batch(self.run_id, row["seq"])
            self.store.close_batch(self.run_id, row["seq"], status="not_created")

    async def _create(self, row: dict[str, Any], *, reconcile: bool) -> None:
        """Create the planned batch (or adopt the one an earlier attempt created) and store its id."""

        seq = row["seq"]
        checked = False
        batch: MessageBatch | None = None
        listing = False
        try:
            async for attempt in retrying(self.job.max_attempts, self._pause):
                with attempt:
                    if reconcile:
                        listing = True
                        found = await self._translate(lambda: self._find_orphan(row))
                        listing = False
                        if found is not None:
                            self.store.batch_created(self.run_id, seq, found.to_dict(mode="json"), adopted=True)
                            self.emit("batch_adopted", seq=seq, id=found.id, requests=row["n_items"])
                            return
                    # From here on a failure may leave open whether the API created the batch: look first.
                    reconcile = True
                    if not checked:
                        self._check_plan(row)
                        checked = True
                    batch = await self._translate(functools.partial(self._post_batch, row))
        except APIFailure as failure:
            if failure.retryable or listing:  # the batch may exist: keep the plan for a reconcile
                self.store.set_batch_error(self.run_id, seq, str(failure))
                raise self.stop_with(StopReason.CREATE_FAILED, seq=seq, **_failure(failure)) from None
            # The API refused it: no batch exists; its items go back to pending.
            self.store.release_batch(self.run_id, seq)
            self.store.close_batch(self.run_id, seq, status="not_created", error=str(failure))
            raise self.stop_with(
                StopReason.CREATE_REFUSED, seq=seq, requests=row["n_items"], bytes=row["n_bytes"], **_failure(failure)
            ) from None
        assert batch is not None
        if os.environ.get(CRASH_AFTER_CREATE) == "1":  # test hook, see CRASH_AFTER_CREATE
            os.kill(os.getpid(), signal.SIGKILL)
        self.store.batch_created(self.run_id, seq, batch.to_dict(mode="json"))
        self.emit(
            "batch_created",
            seq=seq,
            id=batch.id,
            requests=row["n_items"],
            bytes=row["n_bytes"],
            first=row["first_custom_id"],
            last=row["last_custom_id"],
        )

    async def _post_batch(self, row: dict[str, Any]) -> MessageBatch:
        """POST the batch, its body streamed from the store in pieces with the exact Content-Length the plan
        computed (on the wire the same as a body sent whole): a 256 MB batch never sits in memory, and what was
        validated at input is sent byte for byte, never parsed and re-serialised as the SDK's create would."""
        from anthropic.types.messages import MessageBatch

        return await self.client.post(
            "/v1/messages/batches",
            cast_to=MessageBatch,
            content=self._body(row),
            options={"headers": {"Content-Type": "application/json", "Content-Length": str(row["n_bytes"])}},
        )

    def _check_plan(self, row: dict[str, Any]) -> None:
        n_items, n_bytes = self.store.batch_content(self.run_id, row["seq"])
        body_bytes = BODY_OVERHEAD + n_bytes + n_items * REQUEST_OVERHEAD
        if (n_items, body_bytes) != (row["n_items"], row["n_bytes"]):
            raise RuntimeError(
                f"batch {row['seq']} of run {self.run_id} holds {n_items} items in {body_bytes} bytes, "
                f"its plan says {row['n_items']} in {row['n_bytes']}"
            )

    async def _body(self, row: dict[str, Any]) -> AsyncIterator[bytes]:
        """`{"requests":[...]}` in pieces of about BODY_PIECE bytes, read from the store as they are sent."""
        piece = bytearray(b'{"requests":[')
        n = sent = 0
        for line in self.store.batch_request_lines(self.run_id, row["seq"]):
            if self.resolver is not None:
                line = self.resolver.line(line)
            if n:
                piece += b","
            piece += line
            n += 1
            if len(piece) >= BODY_PIECE:
                sent += len(piece)
                yield bytes(piece)
                piece.clear()
        piece += b"]}"
        sent += len(piece)
        if (n, sent) != (row["n_items"], row["n_bytes"]):  # _check_plan makes this unreachable
            raise RuntimeError(f"batch {row['seq']}: sent {n} items in {sent} bytes, planned {row['n_bytes']}")
        yield bytes(piece)

    async def _find_orphan(self, row: dict[str, Any]) -> MessageBatch | None:
        """The batch an interrupted create made for this plan, if any: created after the plan was written (allowing
        for clock skew), with as many requests, and owned by no run of this store. The oldest such one wins, as
        plans are created in order. Its results are matched to items by custom_id, so a batch that is not this
        plan's would only leave the plan's items pending, never give an item a foreign result."""
        floor = row["planned_at"] - CLOCK_SKEW_S
        found: list[MessageBatch] = []
        async for batch in self.client.messages.batches.list(limit=LIST_PAGE):
            if batch.created_at.timestamp() < floor:
                break
            if self.store.batch_known(batch.id):
                continue
            c = batch.request_counts
            if c.processing + c.succeeded + c.errored + c.canceled + c.expired == row["n_items"]:
                found.append(batch)
        return min(found, key=lambda b: b.created_at) if found else None

    # polling and collecting

    async def _collect_ended(self) -> None:
        """Retrieve every open batch; store the results of those that ended."""
        for row in self.store.batches(self.run_id, open_only=True):
            if row["id"] is None:
                continue
            self._check_stop()
            batch = await self._call(
                f"check batch {row['id']}", lambda batch_id=row["id"]: self.client.messages.batches.retrieve(batch_id)
            )
            info = batch.to_dict(mode="json")
            self.store.update_batch(self.run_id, row["seq"], info)
            if batch.processing_status == "ended":
                await self._collect(row, batch)

    async def _collect(self, row: dict[str, Any], batch: MessageBatch) -> None:
        started = time.monotonic()
        tally = Tally()
        try:
            async for attempt in retrying(self.job.max_attempts, self._pause):
                with attempt:
                    await self._translate(lambda: self._ingest(row, batch, tally))
        except ForeignBatch:
            self.store.reject_foreign(self.run_id, row["seq"], batch.id)
            self.emit("batch_foreign", seq=row["seq"], id=batch.id)
            return
        except APIFailure as failure:
            raise self.stop_with(
                StopReason.API_CALL_FAILED, what=f"read the results of {batch.id}", **_failure(failure)
            ) from None
        missing = self.store.release_batch(self.run_id, row["seq"])
        self.store.close_batch(self.run_id, row["seq"])
        self.canceled_items += tally.canceled
        self.emit(
            "batch_ended",
            seq=row["seq"],
            id=batch.id,
            counts=batch.request_counts.to_dict(),
            seconds=time.monotonic() - started,
            stored=tally.stored,
            succeeded=tally.succeeded,
            failed=tally.failed,
            again=tally.again,
            canceled=tally.canceled,
            missing=missing,
            stray=tally.stray,
            unreadable=tally.unreadable,
        )

    async def _ingest(self, row: dict[str, Any], batch: MessageBatch, tally: Tally) -> None:
        """Stream the results file into the store, a chunk at a time (never the whole file in memory)."""
        started = batch.created_at.timestamp()
        seconds = (batch.ended_at.timestamp() - started) if batch.ended_at else 0.0
        tally.lines = 0  # lines of this download (a retry reads the whole file again)
        async with self.client.messages.batches.with_streaming_response.results(batch.id) as response:
            chunks = result_chunks(response.iter_bytes(), INGEST_CHUNK)
            await self._store_results(row["seq"], chunks, started, seconds, tally)
        c = batch.request_counts
        expected = c.succeeded + c.errored + c.canceled + c.expired
        if tally.lines < expected:  # never let a cut download send items again: read the file again
            raise APIFailure(
                None, "api_error", f"the results of {batch.id} ended after {tally.lines} of {expected} lines", "Short"
            )

    async def _store_results(
        self, seq: int, chunks: AsyncIterator[list[bytes]], started: float, seconds: float, tally: Tally
    ) -> None:
        """Judge and record a batch's result lines, one store transaction per chunk.

        Judging a chunk on this thread overlaps with the store's thread writing the chunk before it. The
        store's thread parses each chunk and looks up its items before it writes the chunk ahead of it, so
        neither thread waits for the other; memory holds three chunks at most. A transaction under way is
        always completed, never abandoned."""
        loop = asyncio.get_running_loop()
        judged = bytearray()  # a byte per line of this download: one the file repeats is not recorded twice
        held: asyncio.Future[LookedUp] | None = None
        writing: asyncio.Future[Tally] | None = None

        async def judge_and_write(looked_up: asyncio.Future[LookedUp]) -> None:
            nonlocal writing
            outcomes, part = self._judge_chunk(*await looked_up, judged, started, seconds)
            if writing is not None:
                done, writing = writing, None
                self._add(tally, await done)
            self._check_signal()
            times = BatchTimes(self.run_id, seq, started, seconds)
            writing = loop.run_in_executor(self._db_thread, self._record_chunk, outcomes, times, part)

        try:
            with short_switches():
                async for lines in chunks:
                    looked_up = loop.run_in_executor(self._db_thread, self._members, seq, lines)
                    previous, held = held, looked_up
                    if previous is not None:
                        await judge_and_write(previous)
                if held is not None:
                    await judge_and_write(held)
        finally:
            if held is not None and not held.cancel() and not held.cancelled():
                held.exception()  # a look-up nobody will judge: its failure, if any, is not the one to report
            if writing is not None:
                self._add(tally, await writing)

    def _add(self, tally: Tally, part: Tally) -> None:
        tally.succeeded += part.succeeded
        tally.failed += part.failed
        tally.again += part.again
        tally.canceled += part.canceled
        tally.stray += part.stray
        tally.unreadable += part.unreadable
        tally.lines += part.lines
        tally.usd = add_cost(tally.usd, part.usd)
        tally.tokens += part.tokens
        if part.succeeded or part.failed or part.tokens:
            self.emit("items_done", succeeded=part.succeeded, failed=part.failed, usd=part.usd, tokens=part.tokens)

    def _members(self, seq: int, lines: list[bytes]) -> LookedUp:
        """On the store's thread: the chunk's lines parsed (and how many are unreadable), and the items of the
        batch they answer that still wait."""
        parsed, unreadable = parse_results(lines)
        ids = [p["custom_id"] for p in parsed]
        row = self.store.batch(self.run_id, seq)
        if ids and row["adopted"] and row["token"] and not any(i.startswith(row["token"] + "-") for i in ids):
            raise ForeignBatch(seq)
        return parsed, unreadable, self.store.batch_members(self.run_id, seq, ids)

    def _judge_chunk(
        self,
        parsed: list[dict[str, Any]],
        unreadable: int,
        members: Members,
        judged: bytearray,
        started: float,
        seconds: float,
    ) -> tuple[list[Outcome], Tally]:
        """Each result line's outcome, and their counts; a line for no waiting item (or repeated) is stray."""
        part = Tally(lines=len(parsed) + unreadable, unreadable=unreadable)
        outcomes: list[Outcome] = []
        for line in parsed:
            member = members.pop(line["custom_id"], None)
            if member is None or not first_time(judged, member[0]):
                part.stray += 1
                continue
            outcome = self._outcome(*member, line.get("result"), started, seconds)
            if outcome.attempts and outcome.attempts[0].error_class == MALFORMED:
                part.unreadable += 1
            if outcome.usage:  # every reply is billed: a cut, refused or invalid one as well as an answer
                usd = (  # the item's cost, unless the reply names another model (priced by that one)
                    outcome.cost_usd
                    if outcome.model in (None, member[2])
                    else usage_cost(
                        outcome.model or "", outcome.via, outcome.usage, self.job.prices, self.job.cache_ttl
                    )
                )
                part.usd = add_cost(part.usd, usd)
                part.tokens += sum(outcome.usage.get(k) or 0 for k in TOKEN_KEYS)
            if outcome.state == State.SUCCEEDED:
                part.succeeded += 1
            elif outcome.state == State.FAILED:
                part.failed += 1
            elif outcome.attempts:
                part.again += 1
            else:
                part.canceled += 1
            outcomes.append(outcome)
        return outcomes, part

    def _record_chunk(self, outcomes: list[Outcome], times: BatchTimes, part: Tally) -> Tally:
        """On the store's thread: the chunk's outcomes in one transaction."""
        self.store.record(outcomes, times)
        return part

    def _outcome(self, line_no: int, attempts: int, model: str, result: Any, started: float, seconds: float) -> Outcome:
        """One result line as the item's outcome, in the same result format as the online path."""
        if not isinstance(result, dict):
            return self._malformed(line_no, model, "result is not an object", {}, attempts, started, seconds)
        kind = result.get("type")
        last_try = attempts + 1 >= self.job.max_attempts
        if kind == "succeeded":
            message = result.get("message")
            problem = _message_problem(message)
            if problem is not None:
                usage = message.get("usage") if isinstance(message, dict) else None
                return self._malformed(line_no, model, problem, usage, attempts, started, seconds)
            return self._answer(line_no, model, message, last_try, started, seconds)
        if kind == "errored":
            envelope = result.get("error")
            error = (envelope.get("error") or {}) if isinstance(envelope, dict) else None
            if not isinstance(error, dict):
                return self._malformed(line_no, model, "error is not an error object", {}, attempts, started, seconds)
            error_type = str(error.get("type") or "api_error")
            text = redact(str(error.get("message") or ""), self.api_key)
            request_id = envelope.get("request_id")
            request_id = request_id if isinstance(request_id, str) else None
            attempt = Attempt(started, seconds, error_type, request_id=request_id)
            if error_type == "not_found_error":  # an unknown model: its items wait, they are not burnt
                self.dead_models.setdefault(model, text)
                return Outcome(self.run_id, line_no, State.PENDING, attempts=[attempt])
            if error_type in RETRYABLE_RESULT_ERRORS and not last_try:
                return Outcome(self.run_id, line_no, State.PENDING, attempts=[attempt])
            body = {"type": "error", "error": {"type": error_type, "message": text}, "request_id": request_id}
            return Outcome(
                self.run_id,
                line_no,
                State.FAILED,
                via="batch",
                result=orjson.dumps({"type": "errored", "error": body}).decode(),
                error_type=error_type,
                error_message=text,
                request_id=request_id,
                attempts=[attempt],
            )
        if kind == "expired":
            attempt = Attempt(started, seconds, "expired")
            if not last_try:
                return Outcome(self.run_id, line_no, State.PENDING, attempts=[attempt])
            return Outcome(
                self.run_id,
                line_no,
                State.FAILED,
                via="batch",
                result=orjson.dumps({"type": "expired"}).decode(),
                error_type="expired",
                error_message=f"expired unprocessed in {attempts + 1} batch(es) (a batch expires after 24 hours)",
                attempts=[attempt],
            )
        # canceled (or a type this version does not know): not processed, so no attempt is counted
        return Outcome(self.run_id, line_no, State.PENDING)

    def _malformed(
        self, line_no: int, model: str, problem: str, usage: Any, attempts: int, started: float, seconds: float
    ) -> Outcome:
        """A result line of the wrong shape: the API's fault, like a 200 that is not a Message online. The item is
        sent again while attempts remain, else fails as an api_error. Tokens the line bills in a well-formed
        usage are counted (the API charged them)."""
        usage = usage if _usage_problem(usage) is None else {}
        text = f"the batch result is not a valid result: {problem}"
        outcome = Outcome(
            self.run_id,
            line_no,
            State.PENDING,
            via="batch",
            usage=usage,
            attempts=[Attempt(started, seconds, "api_error", error_class=MALFORMED)],
            cost_usd=item_cost(model, "batch", usage, self.job) if usage else 0.0,
        )
        if attempts + 1 >= self.job.max_attempts:
            outcome.state = State.FAILED
            body = {"type": "error", "error": {"type": "api_error", "message": text}, "request_id": None}
            outcome.result = orjson.dumps({"type": "errored", "error": body}).decode()
            outcome.error_type = "api_error"
            outcome.error_class = MALFORMED
            outcome.error_message = text
        return outcome

    def _answer(
        self, line_no: int, model: str, message: dict[str, Any], last_try: bool, started: float, seconds: float
    ) -> Outcome:
        """A succeeded result judged: an answer, a failure (refusal, cut reply), or invalid output that goes back
        to pending for a follow-up batch while attempts remain. Its cost is counted whatever it is."""
        verdict = self.judge(message)
        usage = message.get("usage") or {}
        outcome = Outcome(
            self.run_id,
            line_no,
            State.SUCCEEDED,
            via="batch",
            usage=usage,
            attempts=[Attempt(started, seconds, verdict.error_type or "succeeded")],
            model=message.get("model"),
            stop_reason=message.get("stop_reason"),
            cost_usd=item_cost(model, "batch", usage, self.job),
        )
        if verdict.ok:
            outcome.result = orjson.dumps({"type": "succeeded", "message": message}).decode()
            outcome.data = verdict.stored_data()
        elif verdict.worth_retrying and not last_try:
            outcome.state = State.PENDING
        else:
            outcome.state = State.FAILED
            outcome.result = failed_result(verdict, message, None)
            outcome.error_type = verdict.error_type
            outcome.error_message = verdict.message
        return outcome

    # cancel

    async def cancel_open(self, *, reconcile: bool) -> int:
        """Ask the API to cancel every open batch still in progress; with `reconcile`, a plan without an id is
        first looked for (and canceled if found) or dropped, its items pending again. Returns batches canceled."""
        canceled = 0
        for row in self.store.batches(self.run_id, open_only=True):
            if row["id"] is None:
                if not reconcile:
                    continue
                found = await self._call("list batches", lambda row=row: self._find_orphan(row))
                if found is None:
                    self.store.release_batch(self.run_id, row["seq"])
                    self.store.close_batch(self.run_id, row["seq"], status="not_created")
                    continue
                self.store.batch_created(self.run_id, row["seq"], found.to_dict(mode="json"), adopted=True)
                row = {**row, "id": found.id, "processing_status": found.processing_status}
            if row["processing_status"] not in ("in_progress", "planned"):
                continue
            try:
                batch = await self._call(
                    f"cancel batch {row['id']}",
                    lambda batch_id=row["id"]: self.client.messages.batches.cancel(batch_id),
                    stop_on_failure=False,
                )
            except APIFailure as failure:  # e.g. it ended meanwhile: the next retrieve says how
                self.emit("cancel_failed", id=row["id"], error=str(failure))
                continue
            self.store.update_batch(self.run_id, row["seq"], batch.to_dict(mode="json"))
            self.emit("batch_status", seq=row["seq"], id=row["id"], status=batch.processing_status)
            canceled += 1
        return canceled

    async def drain(self) -> Stop | None:
        """Wait until every open batch has ended and store what it finished."""
        interval = self.poll_min
        while True:
            await self._collect_ended()
            if not self.store.batches(self.run_id, open_only=True):
                return None
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return self._still_open(StopReason.CANCEL_TIMEOUT)
            self._report_poll(interval)
            await self._pause(interval / 2 + random.uniform(0, interval / 2))
            interval = min(self.poll_max, interval * POLL_GROWTH)

    # calling the API

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]], *, stop_on_failure: bool = True) -> T:
        """One API call with the run's retry policy (backoff with jitter, Retry-After honoured)."""
        try:
            async for attempt in retrying(self.job.max_attempts, self._pause):
                with attempt:
                    result = await self._translate(fn)
        except APIFailure as failure:
            if not stop_on_failure:
                raise
            raise self.stop_with(StopReason.API_CALL_FAILED, what=what, **_failure(failure)) from None
        return result

    async def _translate(self, fn: Callable[[], Awaitable[T]]) -> T:
        with api_errors(self.api_key):
            return await fn()

    # progress

    def _report_poll(self, interval: float) -> None:
        rows = [row for row in self.store.batches(self.run_id, open_only=True) if row["id"]]
        if rows:
            self.emit(
                "batches_waiting",
                batches=[(row["id"], row["processing_status"], row["request_counts"] or {}) for row in rows],
                next_check=interval,
            )


def _failure(failure: APIFailure) -> dict[str, Any]:
    return {"status": failure.status, "error_type": failure.error_type, "message": failure.message}
