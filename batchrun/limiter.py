"""Admission control for the online path, learned from the API's `anthropic-ratelimit-*` headers.

Three meters (requests, input tokens, output tokens per minute) are token buckets refilling at limit/60
per second, as the API enforces them. A request is admitted when all three have room: input tokens are
estimated before sending, output tokens are reserved at max_tokens and refunded from the usage that
comes back. Every response's headers tell the limits and what is left; a 429 pauses every worker until
its Retry-After, not just the one that got it. A concurrency gate adds AIMD on top: it backs off when
the API says it is overloaded and grows back with each success, never above the user's ceiling.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from batchrun.fairshare import FairShare
from batchrun.neighbours import Neighbours

HEADER_PREFIX = "anthropic-ratelimit-"
PAUSE_WITHOUT_RETRY_AFTER_S = 1.0  # how long a 429 that says nothing about when to come back pauses everyone
DIMENSIONS = {"requests": "requests", "input-tokens": "input_tokens", "output-tokens": "output_tokens"}


class Meter:
    """One per-minute limit as a token bucket. Unknown capacity means unlimited until a header says otherwise.

    It refills at `factor` times limit/60 per second (the share of the limit this process takes, from
    batchrun.fairshare); while that share is less than all, it also holds at most that share of the account's
    bucket as the headers have shown it (the most `remaining` ever seen), so it never bursts into others' room.
    """

    def __init__(
        self, cap: float | None = None, clock: Callable[[], float] = time.monotonic, in_hand: float = 0.0
    ) -> None:
        self.user_cap = cap
        self.in_hand = in_hand
        self.capacity: float | None = cap
        self.level: float = cap or 0.0
        self.clock = clock
        self.stamp = clock()
        self.factor = 1.0
        self.bucket: float | None = None

    def _top(self) -> float:
        assert self.capacity is not None
        if self.bucket is None or self.factor >= 1.0:
            return self.capacity
        return min(self.capacity, max(1.0, self.bucket * self.factor))

    def _refill(self) -> None:
        now = self.clock()
        if self.capacity is not None:
            self.level = min(self._top(), self.level + (now - self.stamp) * self.capacity * self.factor / 60.0)
        self.stamp = now

    def wait_time(self, amount: float) -> float:
        """Seconds until `amount` fits (0 when it fits now). A request larger than the bucket waits for a full one."""
        if self.capacity is None:
            return 0.0
        self._refill()
        needed = min(amount, self._top()) - self.level
        return 0.0 if needed <= 0 else needed * 60.0 / (self.capacity * self.factor)

    def take(self, amount: float) -> None:
        if self.capacity is not None:
            self._refill()
            self.level -= amount

    def give(self, amount: float) -> None:
        if self.capacity is not None and amount > 0:
            self._refill()
            self.level = min(self._top(), self.level + amount)

    def observe(self, limit: float | None, remaining: float | None) -> None:
        """Learn the account's limit (kept under the user's cap) and never believe in more room than the server has
        (nor, with others about, more than this process's share of it)."""
        if limit is None or limit <= 0:
            return
        self._refill()
        first = self.capacity is None
        capacity = min(limit, self.user_cap) if self.user_cap else limit
        if first:
            self.level = capacity
        self.capacity = capacity
        if remaining is not None:
            self.bucket = max(self.bucket or 0.0, remaining)
            # the first burst keeps `in_hand` back: the API's bucket refills no faster than this meter, so a burst
            # of all that remains leaves no slack for the next request to land a hair early
            self.level = min(self.level, max(0.0, remaining - (self.in_hand if first else 0.0)) * self.factor)
        self.level = min(self.level, self._top())


@dataclass(slots=True)
class Reservation:
    input_tokens: int
    output_tokens: int


class Limiter:
    def __init__(
        self,
        rpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        concurrency: int = 64,
        clock: Callable[[], float] = time.monotonic,
        neighbours: Neighbours | None = None,
    ) -> None:
        self.clock = clock
        self.meters = {
            "requests": Meter(rpm, clock, in_hand=1.0),
            "input_tokens": Meter(itpm, clock),
            "output_tokens": Meter(otpm, clock),
        }
        self.paused_until = 0.0
        self.ceiling = concurrency
        self.window = float(concurrency)
        self.in_flight = 0
        self._admit = asyncio.Lock()
        self._slot_freed = asyncio.Event()
        self.rate_limited = 0
        self.overloaded = 0
        self._last_narrowed = -math.inf
        self.share = FairShare(clock, neighbours)
        self._first_sent: float | None = None
        self._last_settled: float | None = None

    async def acquire(self, input_tokens: int, max_tokens: int) -> Reservation:
        """Wait until a request of this size may be sent under every limit; in order of arrival."""
        async with self._admit:
            while True:
                now = self.clock()
                if now < self.paused_until:
                    await asyncio.sleep(self.paused_until - now)
                elif self.in_flight >= max(1, int(self.window)):
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                elif (wait := self._meter_wait(input_tokens, max_tokens)) > 0:
                    await asyncio.sleep(wait)
                else:
                    break
            self.meters["requests"].take(1)
            self.meters["input_tokens"].take(input_tokens)
            self.meters["output_tokens"].take(max_tokens)
            self.in_flight += 1
            if self._first_sent is None:
                self._first_sent = self.clock()
            self.share.sent({"requests": 1, "input_tokens": input_tokens, "output_tokens": max_tokens})
        return Reservation(input_tokens, max_tokens)

    def _meter_wait(self, input_tokens: int, max_tokens: int) -> float:
        return max(
            self.meters["requests"].wait_time(1),
            self.meters["input_tokens"].wait_time(input_tokens),
            self.meters["output_tokens"].wait_time(max_tokens),
        )

    def release(self, reservation: Reservation, usage: Mapping[str, int] | None) -> None:
        """Settle a reservation: refund the output tokens not used (all of them when no reply came back)."""
        self.in_flight -= 1
        self._slot_freed.set()
        self._last_settled = self.clock()
        shared = self.share.dimensions
        if usage is None:
            self.meters["output_tokens"].give(reservation.output_tokens)
            shared["output_tokens"].refunded(reservation.output_tokens)
            return
        unused = reservation.output_tokens - (usage.get("output_tokens") or 0)
        self.meters["output_tokens"].give(unused)
        shared["output_tokens"].refunded(unused)
        used_in = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0)
        correction = reservation.input_tokens - used_in
        shared["input_tokens"].refunded(correction)
        if correction > 0:
            self.meters["input_tokens"].give(correction)
        else:
            self.meters["input_tokens"].take(-correction)

    def failed(
        self, reservation: Reservation, headers: Mapping[str, str], status: int | None, retry_after: float | None
    ) -> None:
        """Settle a request that got no reply; a 429 was not admitted, so it took nothing from the account."""
        self.release(reservation, None)
        if status == 429:
            for name in ("requests", "input_tokens"):
                self.share.dimensions[name].refunded(1 if name == "requests" else reservation.input_tokens)
        self.observe(headers, reservation)
        self.throttled(status, retry_after)

    def observe(self, headers: Mapping[str, str], reservation: Reservation | None = None) -> None:
        """Update every meter from a response's rate-limit headers; with the request they answer, also learn what
        other clients of the account take (batchrun.fairshare) and pace to the rest."""
        for header_name, meter_name in DIMENSIONS.items():
            limit = _number(headers.get(f"{HEADER_PREFIX}{header_name}-limit"))
            remaining = _number(headers.get(f"{HEADER_PREFIX}{header_name}-remaining"))
            meter = self.meters[meter_name]
            if reservation is not None and limit and remaining is not None:
                meter.factor = self.share.observe(meter_name, remaining, limit)
            meter.observe(limit, remaining)

    def close(self) -> None:
        """Leave the neighbours on this machine (their share grows back)."""
        self.share.close()

    def use(self) -> dict[str, Any] | None:
        """What this limiter's requests took of the account's limits while it was sending, and the 429s met;
        None when nothing was sent."""
        if self._first_sent is None or self._last_settled is None:
            return None
        dimensions = self.share.dimensions
        return {
            "seconds": max(0.0, self._last_settled - self._first_sent),
            "rate_limited": self.rate_limited,
            "used": {name: max(0.0, d.used) for name, d in dimensions.items()},
            "limits": {name: d.limit for name, d in dimensions.items() if d.limit},
        }

    def succeeded(self) -> None:
        """Each success widens the window by one slot: back to the ceiling within a few dozen replies."""
        self.window = min(self.ceiling, self.window + 1.0)

    def throttled(self, status: int | None, retry_after: float | None) -> None:
        """A 429 pauses all admissions for its Retry-After; a 429 or 529 also narrows the concurrency window."""
        if status == 429:
            self.rate_limited += 1
            self.paused_until = max(self.paused_until, self.clock() + (retry_after or PAUSE_WITHOUT_RETRY_AFTER_S))
            for name, shared in self.share.dimensions.items():
                if shared.limit:
                    shared.throttled(self.clock())
                    self.meters[name].factor = shared.factor
        elif status == 529:
            self.overloaded += 1
        else:
            return
        now = self.clock()
        if now - self._last_narrowed >= 1.0:
            self._last_narrowed = now
            self.window = max(1.0, self.window * 0.75)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
