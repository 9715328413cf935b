"""Prices and the cost of a run, from the usage the API returned (never from re-tokenising text)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PRICES_TAKEN = "2026-11-01"
# USD per million tokens, standard (online) price; the Message Batches API bills half of each.
PRICES: dict[str, dict[str, float]] = {
    "claude-haiku-4-5": {"input": 1.0, "output": 5.0},
    "claude-sonnet-4": {"input": 3.0, "output": 15.0},
    "claude-opus-4-5": {"input": 5.0, "output": 25.0},
    "claude-opus-4": {"input": 15.0, "output": 75.0},
}
CACHE_WRITE = 1.25
CACHE_READ = 0.10
BATCH_DISCOUNT = 0.5


def price_for(model: str, overrides: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float] | None:
    """The longest matching model-id prefix wins, so dated ids (claude-sonnet-4-5-20250929) find their family."""
    table = {**PRICES, **(overrides or {})}
    matches = [prefix for prefix in table if model.startswith(prefix)]
    return dict(table[max(matches, key=len)]) if matches else None


def cost(row: Mapping[str, Any], overrides: Mapping[str, Mapping[str, float]] | None = None) -> float | None:
    """Cost in USD of one usage row (model, via, input, output, cache_creation, cache_read); None if unpriced."""
    if row["via"] == "cache":
        return 0.0
    price = price_for(row["model"], overrides)
    if price is None:
        return None
    per_token_in = price["input"] / 1e6
    usd = (
        row["input"] * per_token_in
        + row["output"] * price["output"] / 1e6
        + row["cache_creation"] * per_token_in * CACHE_WRITE
        + row["cache_read"] * per_token_in * CACHE_READ
    )
    return usd * (BATCH_DISCOUNT if row["via"] == "batch" else 1.0)


def usage_cost(
    model: str, via: str, usage: Mapping[str, Any], overrides: Mapping[str, Mapping[str, float]] | None = None
) -> float | None:
    """Cost in USD of one API `usage` object (input_tokens, output_tokens, cache_*_input_tokens)."""
    row = {
        "model": model,
        "via": via,
        "input": usage.get("input_tokens") or 0,
        "output": usage.get("output_tokens") or 0,
        "cache_creation": usage.get("cache_creation_input_tokens") or 0,
        "cache_read": usage.get("cache_read_input_tokens") or 0,
    }
    return cost(row, overrides)


def total_cost(
    rows: Iterable[Mapping[str, Any]],
    overrides: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[float, list[str]]:
    """Total USD, and the models that have no price (their usage is not in the total)."""
    total = 0.0
    unpriced: list[str] = []
    for row in rows:
        usd = cost(row, overrides)
        if usd is None:
            unpriced.append(row["model"])
        else:
            total += usd
    return total, sorted(set(unpriced))
