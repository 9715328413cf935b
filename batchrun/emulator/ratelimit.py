"""Per-minute rate limits as continuous token buckets, with the API's headers and 429 wording."""

from __future__ import annotations

import math
import time
from typing import NamedTuple

from .clock import rfc3339
from .config import EmulatorConfig

# (header name, config field, unit in the 429 message)
DIMENSIONS = (
    ("requests", "rpm", "requests"),
    ("input-tokens", "itpm", "input tokens"),
    ("output-tokens", "otpm", "output tokens"),
)


class TokenBucket:
    """Holds limit*bucket_seconds/60 units and refills limit/60 per second.

    A request larger than the whole bucket is admitted once the bucket is full, driving the level
    negative, so it cannot be refused forever.
    """

    def __init__(self, per_minute: int, bucket_seconds: float, now: float) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute * bucket_seconds / 60.0)
        self.level = self.capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (0 if it can be taken now)."""
        self._refill(now)
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount

    def give(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)

    def remaining(self, now: float) -> float:
        self._refill(now)
        return max(0.0, self.level)

    def seconds_to_full(self, now: float) -> float:
        self._refill(now)
        return (self.capacity - self.level) / self.rate


class Refusal(NamedTuple):
    dimension: str
    retry_after: int
    message: str


def _message(limit: int, unit: str) -> str:
    return (
        f"This request would exceed the rate limit for your organization (emulator) of {limit:,} {unit} "
        "per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the "
        "response headers for current usage. Please reduce the prompt length or the maximum tokens "
        "requested, or try again later. You may also contact sales at "
        "https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase."
    )


class RateLimiter:
    """RPM, ITPM and OTPM buckets; an unlimited (0) dimension has no bucket and no headers."""

    def __init__(self, config: EmulatorConfig, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.buckets: dict[str, TokenBucket] = {}
        self.units: dict[str, str] = {}
        for name, field, unit in DIMENSIONS:
            limit = getattr(config, field)
            if limit:
                self.buckets[name] = TokenBucket(limit, config.bucket_seconds, now)
                self.units[name] = unit

    def admit(self, input_tokens: int, max_tokens: int, now: float) -> Refusal | None:
        """Take 1 request, the input tokens and max_tokens output tokens, or refuse and take nothing."""
        amounts = {"requests": 1, "input-tokens": input_tokens, "output-tokens": max_tokens}
        waits = {name: bucket.wait_for(amounts[name], now) for name, bucket in self.buckets.items()}
        worst = max(waits, key=waits.__getitem__, default=None)
        if worst is not None and waits[worst] > 0:
            bucket = self.buckets[worst]
            retry_after = max(1, math.ceil(waits[worst]))
            return Refusal(worst, retry_after, _message(bucket.limit, self.units[worst]))
        for name, bucket in self.buckets.items():
            bucket.take(amounts[name], now)
        return None

    def refund_output(self, unused: int, now: float) -> None:
        """Give back the part of the max_tokens reservation the reply did not use."""
        bucket = self.buckets.get("output-tokens")
        if bucket is not None and unused > 0:
            bucket.give(unused, now)

    def headers(self, now: float, wall: float) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, bucket in self.buckets.items():
            remaining = math.floor(bucket.remaining(now))
            if name != "requests":
                remaining = remaining // 1000 * 1000
            out[f"anthropic-ratelimit-{name}-limit"] = str(bucket.limit)
            out[f"anthropic-ratelimit-{name}-remaining"] = str(remaining)
            out[f"anthropic-ratelimit-{name}-reset"] = rfc3339(math.ceil(wall + bucket.seconds_to_full(now)))
        tightest = min(
            (name for name in ("input-tokens", "output-tokens") if name in self.buckets),
            key=lambda name: self.buckets[name].remaining(now),
            default=None,
        )
        if tightest is not None:
            for part in ("limit", "remaining", "reset"):
                out[f"anthropic-ratelimit-tokens-{part}"] = out[f"anthropic-ratelimit-{tightest}-{part}"]
        return out
