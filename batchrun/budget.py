"""A ceiling on what a run spends, across all its resumes (`--max-cost`): every request reserves its worst case
before it is sent, and is settled from the usage it reports, so the run never goes over."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from batchrun.pricing import BATCH_DISCOUNT, price_for

CHARS_PER_TOKEN_LOW = 3  # fewer characters a token than typical English: an estimate that leans high
CACHE_WRITE = {"5m": 1.25, "1h": 2.0}  # a cache write costs this much of the input price, by TTL


def worst_cost(
    model: str,
    input_chars: int,
    max_tokens: int,
    prices: Mapping[str, Mapping[str, float]] | None,
    *,
    batch: bool = False,
    cached_chars: int = 0,
    ttl: str = "5m",
) -> float | None:
    """The most a request can cost: its input (the cache-marked part as a cache write), and max_tokens of output.
    None when the model has no known price."""
    price = price_for(model, prices)
    if price is None:
        return None
    plain = (input_chars - cached_chars) // CHARS_PER_TOKEN_LOW + 16
    cached = cached_chars // CHARS_PER_TOKEN_LOW
    input_usd = (plain + cached * CACHE_WRITE.get(ttl, 2.0)) * price["input"]
    usd = (input_usd + max_tokens * price["output"]) / 1e6
    return usd * (BATCH_DISCOUNT if batch else 1.0)


def request_worst(
    params: Mapping[str, Any], prices: Mapping[str, Mapping[str, float]] | None, file_tokens: int = 0
) -> float | None:
    """`file_tokens`: what the files of a folder run's request add (its stored request holds placeholders)."""
    system = params.get("system")
    cached = 0
    ttl = "5m"
    if isinstance(system, list):
        for block in system:
            if isinstance(block, dict) and "cache_control" in block:
                cached += len(str(block.get("text") or ""))
                ttl = max(ttl, block["cache_control"].get("ttl", "5m"), key=CACHE_WRITE.get)
    chars = len(str(system or "")) + len(str(params.get("messages") or "")) + file_tokens * CHARS_PER_TOKEN_LOW
    return worst_cost(params["model"], chars, params["max_tokens"], prices, cached_chars=cached, ttl=ttl)


class Budget:
    def __init__(self, limit: float | None, spent: float, prices: Mapping[str, Mapping[str, float]] | None) -> None:
        self.limit = limit
        self.spent = spent
        self.reserved = 0.0
        self.holders = 0  # requests holding a reservation
        self.prices = prices
        self.settled = asyncio.Event()

    def reserve(self, params: Mapping[str, Any], file_tokens: int = 0) -> float | None:
        """Hold the request's worst case; None when it would take the run over its limit."""
        if self.limit is None:
            return 0.0
        worst = request_worst(params, self.prices, file_tokens)
        if worst is None or self.spent + self.reserved + worst > self.limit:
            return None
        self.reserved += worst
        self.holders += 1
        return worst

    def settle(self, reservation: float, usd: float | None) -> None:
        """The request is over: its reservation goes, what it cost (None or 0 when it failed unbilled) stays."""
        if self.limit is not None:
            self.holders -= 1
            self.reserved = max(0.0, self.reserved - reservation) if self.holders else 0.0
        self.spent += usd or 0.0
        self.settled.set()
