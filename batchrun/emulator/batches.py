"""Message Batches: validation on create, lazy lifecycle from timestamps, deterministic outcomes."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from .cache import NO_CACHE, PromptCache
from .clock import rfc3339
from .config import EmulatorConfig
from .faults import pick_reply_fault
from .files import FileStore
from .replies import build_message, request_key
from .stats import Stats
from .validation import check_messages

MAX_REQUESTS = 100_000
CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CANCEL_SECONDS = 0.2  # how long a batch stays "canceling"
EXPIRES_AFTER_S = 24 * 3600
SETTLE_CHUNK = 2000  # items decided between yields to the event loop
RETRYABLE_ERRORS = ("api_error", "overloaded_error")
OUTCOME_KINDS = ("succeeded", "errored", "canceled", "expired")


class BatchError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclass(eq=False)
class Outcome:
    kind: str  # succeeded | errored | expired | canceled
    error_type: str | None = None
    error_message: str | None = None
    cache_creation: int = 0
    cache_read: int = 0
    cache_ttl: str = "5m"
    fault: str | None = None


CANCELED = Outcome("canceled")
EXPIRED = Outcome("expired")
SUCCEEDED = Outcome("succeeded")


@dataclass(eq=False)
class Batch:
    id: str
    created_at: float
    items: list[tuple[str, Any]]  # (custom_id, params)
    finish_at: list[float]  # wall time at which each request finishes processing
    late: set[int]  # requests whose processing time passes 24 h: they expire
    progress_counts: bool = False
    cancel_initiated_at: float | None = None
    outcomes: list[Outcome] | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOME_KINDS, 0))
    decided: dict[int, Outcome] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # indices by finish time
    retryable_errors: int = 0
    task: asyncio.Task | None = None
    divergence: dict[str, float] = field(default_factory=dict)  # the config's model_divergence at create
    bad: dict[int, str] = field(default_factory=dict)  # index -> the BAD_LINES kind its result line gets

    def __post_init__(self) -> None:
        self.order = sorted(range(len(self.items)), key=self.finish_at.__getitem__)

    @property
    def ends_at(self) -> float:
        natural = max(self.finish_at, default=self.created_at)
        if self.cancel_initiated_at is None:
            return natural
        return min(natural, self.cancel_initiated_at + CANCEL_SECONDS)

    def status(self) -> str:
        if self.outcomes is not None:
            return "ended"
        return "in_progress" if self.cancel_initiated_at is None else "canceling"

    def to_json(self, base_url: str) -> dict[str, Any]:
        ended = self.outcomes is not None
        counts = {"processing": len(self.items), **dict.fromkeys(OUTCOME_KINDS, 0)}
        if ended or self.progress_counts:
            counts |= self.counts
            counts["processing"] = len(self.items) - sum(self.counts.values())
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status(),
            "request_counts": counts,
            "created_at": rfc3339(self.created_at, micros=True),
            "expires_at": rfc3339(self.created_at + EXPIRES_AFTER_S, micros=True),
            "ended_at": rfc3339(self.ends_at, micros=True) if ended else None,
            "cancel_initiated_at": (
                rfc3339(self.cancel_initiated_at, micros=True) if self.cancel_initiated_at else None
            ),
            "archived_at": None,
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if ended else None,
        }


def processing_times(config: EmulatorConfig, ordinal: int, n: int) -> tuple[list[float], set[int]]:
    """Each request's processing time in wall seconds after create, and the requests that expire.

    Without a distribution (batch_fast_s = batch_tail_s = 0) requests finish evenly over batch_seconds, so the
    batch ends batch_seconds after create and a cancel keeps the share processed by then.
    """
    c = config
    if not (c.batch_fast_s or c.batch_tail_s):
        return [c.batch_seconds * (i + 1) / n for i in range(n)], set()
    times: list[float] = []
    late: set[int] = set()
    for i in range(n):
        u = _draw(c.seed, ordinal, i, "time")
        if _draw(c.seed, ordinal, i, "tail") < c.batch_p_tail:
            api_s = c.batch_fast_s + max(0.0, c.batch_tail_s - c.batch_fast_s) * u
        else:
            api_s = -c.batch_fast_s * math.log1p(-u)
        if api_s > EXPIRES_AFTER_S:
            api_s = EXPIRES_AFTER_S
            late.add(i)
        times.append(api_s / c.batch_time_scale)
    return times, late


def _draw(*parts: object) -> float:
    """A deterministic number in [0, 1) from the given parts."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


def _invalid(message: str) -> BatchError:
    return BatchError(400, "invalid_request_error", message)


def check_requests(body: Any) -> list[tuple[str, Any]]:
    """The (custom_id, params) list of a create body; raises BatchError naming the first problem.

    Params are not validated here: like the API, bad params come back as errored results.
    """
    if not isinstance(body, dict):
        raise _invalid("Input should be a valid dictionary")
    extra = sorted(set(body) - {"requests"})
    if extra:
        raise _invalid(f"{extra[0]}: Extra inputs are not permitted")
    requests = body.get("requests")
    if requests is None:
        raise _invalid("requests: Field required")
    if not isinstance(requests, list):
        raise _invalid("requests: Input should be a valid list")
    if not requests or len(requests) > MAX_REQUESTS:
        bound = "at least 1 item" if not requests else f"at most {MAX_REQUESTS} items"
        message = f"requests: List should have {bound} after validation, not {len(requests)}"
        raise _invalid(message)
    items: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for i, request in enumerate(requests):
        custom_id = _check_request(i, request)
        if custom_id in seen:
            raise _invalid(f"requests.{i}.custom_id: Duplicate custom_id '{custom_id}' (must be unique in a batch)")
        seen.add(custom_id)
        items.append((custom_id, request["params"]))
    return items


def _check_request(i: int, request: Any) -> str:
    if not isinstance(request, dict):
        raise _invalid(f"requests.{i}: Input should be a valid dictionary")
    for name in ("custom_id", "params"):
        if name not in request:
            raise _invalid(f"requests.{i}.{name}: Field required")
    extra = sorted(set(request) - {"custom_id", "params"})
    if extra:
        raise _invalid(f"requests.{i}.{extra[0]}: Extra inputs are not permitted")
    custom_id = request["custom_id"]
    if not isinstance(custom_id, str) or not CUSTOM_ID_RE.fullmatch(custom_id):
        message = f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        raise _invalid(message)
    if not isinstance(request["params"], dict):
        raise _invalid(f"requests.{i}.params: Input should be a valid dictionary")
    return custom_id


class BatchStore:
    def __init__(self, config: EmulatorConfig, cache: PromptCache, stats: Stats) -> None:
        self.config = config
        self.cache = cache
        self.stats = stats
        self.batches: dict[str, Batch] = {}  # insertion order = creation order
        self.attempts: dict[str, int] = {}  # request key -> retryable failures so far
        self.answers: dict[str, int] = {}  # request key -> replies built so far (for reply faults)
        self.created = 0  # batches created since reset: seeds each batch's processing times
        self.spoiled: set[str] = set()  # request keys whose result line was made malformed (batch_bad_lines)
        self.files: FileStore | None = None  # the Files API's uploads, for the requests' file_id references

    def create(self, items: list[tuple[str, Any]], now: float) -> Batch:
        times, late = processing_times(self.config, self.created, len(items))
        finish_at = [now + t for t in times]
        batch = Batch(
            "msgbatch_" + secrets.token_hex(12),
            now,
            items,
            finish_at,
            late,
            self.config.batch_progress_counts,
            divergence=dict(self.config.model_divergence),
        )
        batch.bad = self._spoiled(items)
        self.created += 1
        self.batches[batch.id] = batch
        self.stats.batches_created += 1
        self.stats.batch_requests += len(items)
        return batch

    def _spoiled(self, items: list[tuple[str, Any]]) -> dict[int, str]:
        """Which result lines of a new batch the batch_bad_lines kinds spoil: one each, in order, on requests
        never spoiled before."""
        kinds = [k.strip() for k in (self.config.batch_bad_lines or "").split(",") if k.strip()]
        bad: dict[int, str] = {}
        for index, (_, params) in enumerate(items):
            if len(bad) == len(kinds):
                break
            key = request_key(params)
            if key not in self.spoiled:
                self.spoiled.add(key)
                bad[index] = kinds[len(bad)]
        return bad

    async def get(self, batch_id: str, now: float) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise BatchError(404, "not_found_error", f"Message Batch {batch_id} not found")
        await self.settle(batch, now)
        return batch

    async def page(self, limit: int, after_id: str | None, before_id: str | None, now: float) -> dict:
        """One page of batches, newest first, in the API's {data, has_more, first_id, last_id} form."""
        ids = list(reversed(self.batches))
        cursor = before_id or after_id
        at = ids.index(cursor) if cursor in ids else None
        if cursor is not None and at is None:
            chosen, has_more = [], False
        elif before_id is not None:
            start = max(0, at - limit)
            chosen, has_more = ids[start:at], start > 0
        else:
            start = 0 if at is None else at + 1
            chosen, has_more = ids[start : start + limit], start + limit < len(ids)
        data = [await self.get(batch_id, now) for batch_id in chosen]
        return {
            "data": data,
            "has_more": has_more,
            "first_id": chosen[0] if chosen else None,
            "last_id": chosen[-1] if chosen else None,
        }

    async def cancel(self, batch_id: str, now: float) -> Batch:
        batch = await self.get(batch_id, now)
        if batch.outcomes is None and batch.cancel_initiated_at is None:
            batch.cancel_initiated_at = now
        return batch

    async def delete(self, batch_id: str, now: float) -> None:
        batch = await self.get(batch_id, now)
        if batch.outcomes is None:
            message = (
                f"Message Batch {batch_id} cannot be deleted while it is {batch.status()}; "
                "cancel it and wait for it to end first."
            )
            raise _invalid(message)
        del self.batches[batch_id]

    async def settle(self, batch: Batch, now: float) -> None:
        """Decide the outcome of every request whose time has come (before a cancel took effect), each exactly
        once, and end the batch when its last request is done. Runs shielded, one pass at a time per batch:
        a client hanging up must not leave a batch half-decided."""
        while batch.task is not None:
            await asyncio.shield(batch.task)
        if batch.outcomes is not None:
            return
        batch.task = asyncio.ensure_future(self._advance(batch, now))
        batch.task.add_done_callback(lambda _: setattr(batch, "task", None))
        await asyncio.shield(batch.task)

    async def _advance(self, batch: Batch, now: float) -> None:
        limit = now if batch.cancel_initiated_at is None else min(now, batch.cancel_initiated_at)
        steps = 0
        while len(batch.decided) < len(batch.items):
            index = batch.order[len(batch.decided)]
            if batch.finish_at[index] > limit:
                break
            outcome = EXPIRED if index in batch.late else self._decide(batch.items[index][1], batch.retryable_errors)
            batch.retryable_errors += outcome.kind == "errored" and outcome.error_type in RETRYABLE_ERRORS
            batch.decided[index] = outcome
            batch.counts[outcome.kind] += 1
            steps += 1
            if steps % SETTLE_CHUNK == 0:
                await asyncio.sleep(0)
        if now < batch.ends_at:
            return
        outcomes = [batch.decided.get(i, CANCELED) for i in range(len(batch.items))]
        batch.counts["canceled"] = len(batch.items) - len(batch.decided)
        batch.decided = {}
        batch.outcomes = outcomes

    def _decide(self, params: dict, errored_so_far: int) -> Outcome:
        error = check_messages(params, in_batch=True)
        if error is not None:
            return Outcome("errored", error.type, error.message)
        file_problem = self.files.check(params, beta=True) if self.files is not None else None
        if file_problem is not None:  # the create call carried the beta header (checked there)
            return Outcome("errored", "invalid_request_error", file_problem)
        key = request_key(params)
        kind = self._draw_outcome(key)
        if kind == "errored":
            error_type = RETRYABLE_ERRORS[errored_so_far % 2]
            message = "Internal server error" if error_type == "api_error" else "Overloaded"
            return Outcome("errored", error_type, message)
        if kind == "expired":
            return EXPIRED
        return self._succeed(params)

    def _draw_outcome(self, key: str) -> str:
        """errored / expired / succeeded from (seed, key, attempt); a key fails at most
        max_faults_per_request times across batches, then succeeds."""
        c = self.config
        attempt = self.attempts.get(key, 0)
        if attempt < c.max_faults_per_request:
            draw = _draw(c.seed, key, attempt)
            kind = "errored" if draw < c.batch_p_errored else None
            if kind is None and draw < c.batch_p_errored + c.batch_p_expired:
                kind = "expired"
            if kind is not None:
                self.attempts[key] = attempt + 1
                return kind
        self.attempts.pop(key, None)
        return "succeeded"

    def _reply_fault(self, key: str, params: dict) -> str | None:
        c = self.config
        if not (c.p_invalid_json or c.p_missing_required or c.p_truncated or c.p_refusal):
            return None
        attempt = self.answers.get(key, 0)
        self.answers[key] = attempt + 1
        fault = pick_reply_fault(c, key, attempt, params)
        if fault is not None:
            self.stats.injected[fault] += 1
        return fault

    def _succeed(self, params: dict) -> Outcome:
        use = self.cache.lookup(params, time.monotonic())
        self.cache.commit(use, time.monotonic())
        fault = self._reply_fault(request_key(params), params)
        message = build_message(
            params,
            msg_id="",
            cache_creation=use.creation,
            cache_read=use.read,
            service_tier="batch",
            fault=fault,
            divergence=self.config.model_divergence,
        )
        self.stats.batch_usage(params["model"], message["usage"])
        if use is NO_CACHE and fault is None:
            return SUCCEEDED
        return Outcome("succeeded", cache_creation=use.creation, cache_read=use.read, cache_ttl=use.ttl, fault=fault)


def result_line(batch: Batch, index: int) -> bytes:
    """One `\\n`-terminated JSONL line of the batch's results."""
    custom_id, params = batch.items[index]
    outcome = batch.outcomes[index]
    result: dict[str, Any] = {"type": outcome.kind}
    if outcome.kind == "succeeded":
        result["message"] = build_message(
            params,
            msg_id="msg_" + hashlib.sha256(f"{batch.id}:{index}".encode()).hexdigest()[:24],
            cache_creation=outcome.cache_creation,
            cache_read=outcome.cache_read,
            cache_ttl=outcome.cache_ttl,
            service_tier="batch",
            fault=outcome.fault,
            divergence=batch.divergence,
        )
    elif outcome.kind == "errored":
        error = {"type": outcome.error_type, "message": outcome.error_message}
        request_id = "req_" + hashlib.sha256(f"{batch.id}:{index}:error".encode()).hexdigest()[:24]
        result["error"] = {"type": "error", "error": error, "request_id": request_id}
    line = {"custom_id": custom_id, "result": result}
    if index in batch.bad:
        return spoil(batch.bad[index], line) + b"\n"
    return orjson.dumps(line) + b"\n"


# batch_bad_lines: what each kind does to a result line (those on the message apply to a succeeded result)
BAD_LINES = {
    "content_string": lambda line, m: m.update(content="just text"),
    "block_number": lambda line, m: m.update(content=[5]),
    "block_null": lambda line, m: m.update(content=[None]),
    "text_without_text": lambda line, m: m.update(content=[{"type": "text"}]),
    "tokens_string": lambda line, m: m["usage"].update(input_tokens="lots"),
    "result_string": lambda line, m: line.update(result="garbage"),
    "error_string": lambda line, m: line.update(result={"type": "errored", "error": "boom"}),
    "no_custom_id": lambda line, m: line.pop("custom_id"),
}


def spoil(kind: str, line: dict[str, Any]) -> bytes:
    """A result line made malformed the `kind` way; "cut_json" cuts its JSON in half."""
    if kind == "cut_json":
        data = orjson.dumps(line)
        return data[: len(data) // 2]
    message = line["result"].get("message")
    if kind in BAD_LINES and (message is not None or kind in ("result_string", "error_string", "no_custom_id")):
        BAD_LINES[kind](line, message)
    return orjson.dumps(line)


def result_chunks(batch: Batch, lines_per_chunk: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(batch.items), lines_per_chunk):
        stop = min(start + lines_per_chunk, len(batch.items))
        yield b"".join(result_line(batch, i) for i in range(start, stop))
