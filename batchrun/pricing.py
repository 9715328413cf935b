"""Prices and the cost of a run, from the usage the API returned (never from re-tokenising text).

A model is priced only when the table (or the job's `[prices]`) names it: an id that is not listed has an unknown
cost, shown as unknown, never as $0 and never at the price of a model whose id it happens to start with.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from batchrun.errors import UsageError

PRICES_TAKEN = "2026-11-23"
PRICES_SOURCE = f"checked against shared/ANTHROPIC_API.md on {PRICES_TAKEN}"

_OPUS_NEW = {"input": 5.0, "output": 25.0}
_OPUS_OLD = {"input": 15.0, "output": 75.0}
_SONNET = {"input": 3.0, "output": 15.0}
_HAIKU_4 = {"input": 1.0, "output": 5.0}
_HAIKU_3 = {"input": 0.80, "output": 4.0}

# USD per million tokens, standard (online) price; the Message Batches API bills half of each.
# Every id and alias is named; dated ids whose base id is listed need no row of their own (see base_model_id).
PRICES: dict[str, dict[str, float]] = {
    "claude-opus-4-6": _OPUS_NEW,
    "claude-opus-4-5": _OPUS_NEW,
    "claude-opus-4-5-20251101": _OPUS_NEW,
    "claude-opus-4-1": _OPUS_OLD,
    "claude-opus-4-1-20250805": _OPUS_OLD,
    "claude-opus-4-0": _OPUS_OLD,
    "claude-opus-4-20250514": _OPUS_OLD,
    "claude-4-opus-20250514": _OPUS_OLD,
    "claude-sonnet-4-6": _SONNET,
    "claude-sonnet-4-5": _SONNET,
    "claude-sonnet-4-5-20250929": _SONNET,
    "claude-sonnet-4-0": _SONNET,
    "claude-sonnet-4-20250514": _SONNET,
    "claude-4-sonnet-20250514": _SONNET,
    "claude-haiku-4-5": _HAIKU_4,
    "claude-haiku-4-5-20251001": _HAIKU_4,
    "claude-3-5-haiku-latest": _HAIKU_3,
    "claude-3-5-haiku-20241022": _HAIKU_3,
}
CACHE_WRITE = {"5m": 1.25, "1h": 2.0}
CACHE_READ = 0.10
BATCH_DISCOUNT = 0.5

_DATE_SUFFIX = re.compile(r"-\d{8}$")

Prices = Mapping[str, Mapping[str, float]]


def base_model_id(model: str) -> str:
    """`claude-sonnet-4-5-20250929` -> `claude-sonnet-4-5`: only a trailing -YYYYMMDD is taken off."""
    return _DATE_SUFFIX.sub("", model)


def price_for(model: str, overrides: Prices | None = None) -> dict[str, float] | None:
    """The model's price per million tokens: the job's `[prices]` first, then the table; the id itself, then the id
    without its date. None when neither names it."""
    for name in dict.fromkeys((model, base_model_id(model))) if overrides else ():
        if name in overrides:
            return {"input": float(overrides[name]["input"]), "output": float(overrides[name]["output"])}
    listed = _listed_price(model)
    return None if listed is None else {"input": listed[0], "output": listed[1]}


@functools.lru_cache(maxsize=256)
def _listed_price(model: str) -> tuple[float, float] | None:
    """(input, output) from the table, by the id itself, then without its date (looked up once per model)."""
    for name in dict.fromkeys((model, base_model_id(model))):
        if name in PRICES:
            return float(PRICES[name]["input"]), float(PRICES[name]["output"])
    return None


def check_prices(prices: Any, where: str = "[prices]") -> None:
    """A job's `[prices]` table: `"model-id" = { input = USD, output = USD }` per million tokens."""
    if not isinstance(prices, Mapping):
        raise UsageError(f'{where} must be a table of models, e.g. [prices."claude-x"] with input and output')
    for model, price in prices.items():
        fix = f'(write [prices."{model}"] with input = USD and output = USD per million tokens)'
        if not isinstance(price, Mapping) or set(price) != {"input", "output"}:
            raise UsageError(f"{where}: {model!r} needs exactly input and output {fix}")
        for side in ("input", "output"):
            value = price[side]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise UsageError(f"{where}: {model!r} {side} must be a number >= 0, not {value!r} {fix}")


def cost(row: Mapping[str, Any], overrides: Prices | None = None, ttl: str = "5m") -> float | None:
    """Cost in USD of one usage row (model, via, input, output, cache_creation, cache_read, and optionally
    cache_creation_1h, the part of cache_creation written with the 1-hour TTL); None if the model has no price.

    Without cache_creation_1h, every cache write is priced at `ttl`, the TTL the request asked for.
    """
    return _usd(
        row["model"],
        row["via"],
        row["input"] or 0,
        row["output"] or 0,
        row["cache_creation"] or 0,
        row.get("cache_creation_1h"),
        row["cache_read"] or 0,
        overrides,
        ttl,
    )


def _usd(
    model: str,
    via: str,
    tokens_in: int,
    tokens_out: int,
    writes: int,
    long_writes: int | None,
    cache_read: int,
    overrides: Prices | None,
    ttl: str,
) -> float | None:
    """The cost of one usage given as plain numbers, shared by `cost` and `usage_cost` (no row built per reply)."""
    if via == "cache":
        return 0.0
    price = price_for(model, overrides)
    if price is None:
        return None
    if long_writes is None:
        long_writes = writes if ttl == "1h" else 0
    per_token_in = price["input"] / 1e6
    usd = (
        tokens_in * per_token_in
        + tokens_out * price["output"] / 1e6
        + (writes - long_writes) * per_token_in * CACHE_WRITE["5m"]
        + long_writes * per_token_in * CACHE_WRITE["1h"]
        + cache_read * per_token_in * CACHE_READ
    )
    return usd * (BATCH_DISCOUNT if via == "batch" else 1.0)


def cache_writes_1h(usage: Mapping[str, Any]) -> int | None:
    """Tokens the reply says it wrote to the 1-hour cache, or None when the reply has no per-TTL breakdown."""
    breakdown = usage.get("cache_creation")
    if not isinstance(breakdown, Mapping) or "ephemeral_1h_input_tokens" not in breakdown:
        return None
    return breakdown.get("ephemeral_1h_input_tokens") or 0


def usage_cost(
    model: str, via: str, usage: Mapping[str, Any], overrides: Prices | None = None, ttl: str = "5m"
) -> float | None:
    """Cost in USD of one API `usage` object: priced from its per-TTL cache-write breakdown when it has one,
    else with every write at `ttl` (the TTL the request asked for). None if the model has no price."""
    return _usd(
        model,
        via,
        usage.get("input_tokens") or 0,
        usage.get("output_tokens") or 0,
        usage.get("cache_creation_input_tokens") or 0,
        cache_writes_1h(usage),
        usage.get("cache_read_input_tokens") or 0,
        overrides,
        ttl,
    )


def add_cost(total: float | None, usd: float | None) -> float | None:
    """A running total that becomes unknown (None) as soon as one part is unknown."""
    return None if total is None or usd is None else total + usd


def total_cost(
    rows: Iterable[Mapping[str, Any]], overrides: Prices | None = None, ttl: str = "5m"
) -> tuple[float, list[str]]:
    """USD of the priced rows, and the models that have no price (their usage is not in that sum: when the list
    is not empty, the run's cost is unknown)."""
    total = 0.0
    unpriced: list[str] = []
    for row in rows:
        usd = cost(row, overrides, ttl)
        if usd is None:
            unpriced.append(row["model"])
        else:
            total += usd
    return total, sorted(set(unpriced))
