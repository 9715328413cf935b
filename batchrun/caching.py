"""Prompt caching: the job's shared system prompt is marked for caching when it may be long enough to be cached,
so every request after the first reads it at a tenth of the input price instead of paying for it again.

The published minimum lengths differ between sources, so the table only decides what to mark; the API decides
what is cached, and CacheWatch listens to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from batchrun.pricing import base_model_id

_OLD_SONNET_OPUS = (
    "claude-sonnet-4-5",
    "claude-sonnet-4-5-20250929",
    "claude-sonnet-4-0",
    "claude-sonnet-4-20250514",
    "claude-4-sonnet-20250514",
    "claude-opus-4-1",
    "claude-opus-4-1-20250805",
    "claude-opus-4-0",
    "claude-opus-4-20250514",
    "claude-4-opus-20250514",
)
_FROM_4096 = (
    "claude-opus-4-6",
    "claude-opus-4-5",
    "claude-opus-4-5-20251101",
    "claude-haiku-4-5",
    "claude-haiku-4-5-20251001",
)
# Minimum cacheable prefix in tokens, (lowest, highest) published figure; below it a cache mark is silently ignored.
# Checked against shared/ANTHROPIC_API.md on 2026-11-23 (it gives 1,024 or 2,048 for Sonnet 4.6).
CACHE_MINIMUMS: dict[str, tuple[int, int]] = {
    **dict.fromkeys(_FROM_4096, (4096, 4096)),
    "claude-sonnet-4-6": (1024, 2048),
    **dict.fromkeys(_OLD_SONNET_OPUS, (1024, 1024)),
    **dict.fromkeys(("claude-3-5-haiku-latest", "claude-3-5-haiku-20241022"), (2048, 2048)),
}
# A model the table does not name: marked from the smallest minimum any model has, expected cached from the largest.
UNKNOWN_MINIMUM = (1024, 4096)
# Lean towards marking: a mark on a prompt that is too short costs nothing, a missing one costs 10x on every read.
CHARS_PER_TOKEN_LOW = 3


def cache_minimum(model: str) -> tuple[int, int] | None:
    """(lowest, highest) published minimum cacheable length of the model, or None if the table does not name it."""
    return CACHE_MINIMUMS.get(model) or CACHE_MINIMUMS.get(base_model_id(model))


def min_cacheable_tokens(model: str) -> int:
    """The length above which a prefix is surely cached: what the dry run counts on."""
    return (cache_minimum(model) or UNKNOWN_MINIMUM)[1]


def cached_system(system: str, model: str, ttl: str = "5m") -> str | list[dict[str, Any]]:
    """The system prompt as a cache-marked text block when it may be long enough to cache, else as it is."""
    if len(system) / CHARS_PER_TOKEN_LOW < (cache_minimum(model) or UNKNOWN_MINIMUM)[0]:
        return system
    control: dict[str, str] = {"type": "ephemeral"}
    if ttl != "5m":
        control["ttl"] = ttl
    return [{"type": "text", "text": system, "cache_control": control}]


def prefix_key(params: Mapping[str, Any]) -> str | None:
    """Identifies the cached prefix a request shares with others (model + marked system), or None."""
    system = params.get("system")
    if not isinstance(system, list) or not any(isinstance(b, dict) and "cache_control" in b for b in system):
        return None
    return hashlib.sha256(orjson.dumps([params["model"], system], option=orjson.OPT_SORT_KEYS)).hexdigest()


class CacheWatch:
    """Trusts the API over the table: the first reply of each cached prefix says whether the prefix was cached.

    A reply with neither cache-creation nor cache-read tokens means the mark was ignored (the prefix is below the
    model's minimum): the prefix is then recorded as uncached, so its first request need no longer go alone, and
    the user is told once, with the probable reason.
    """

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.uncached: set[str] = set()

    def serialise(self, key: str | None) -> bool:
        """Whether the first request with this prefix should go alone, to write the cache the others read."""
        return key is not None and key not in self.uncached

    def first_reply(self, key: str, params: Mapping[str, Any], usage: Mapping[str, Any]) -> str | None:
        """Note the first reply for `key` (later calls for the same key are ignored); a one-line notice when the
        prefix was not cached, else None."""
        if key in self.seen:
            return None
        self.seen.add(key)
        if usage.get("cache_creation_input_tokens") or usage.get("cache_read_input_tokens"):
            return None
        self.uncached.add(key)
        return not_cached_notice(params, usage)


def not_cached_notice(params: Mapping[str, Any], usage: Mapping[str, Any]) -> str:
    model = str(params.get("model"))
    about = _prefix_tokens(params, usage)
    minimum = cache_minimum(model)
    after = "it is sent uncached, and requests no longer wait for a first one to warm the cache"
    if minimum is None:
        why = f"batchrun does not know the minimum cacheable length of {model}, and this one is about {about:,} tokens"
    elif about < minimum[1]:
        why = f"{model} caches prompts of at least {_figure(minimum)}, this one is about {about:,}"
    else:
        why = (
            f"it is about {about:,} tokens and {model} should cache prompts of at least {_figure(minimum)}; "
            "the API decides, and its minimum may have changed"
        )
    return f"the system prompt was not cached: {why}; {after}"


def _figure(minimum: tuple[int, int]) -> str:
    low, high = minimum
    return f"{high:,} tokens" if low == high else f"{high:,} tokens (some sources say {low:,})"


def _prefix_tokens(params: Mapping[str, Any], usage: Mapping[str, Any]) -> int:
    """The system prompt's share of the reply's input tokens (counted by the API), split by characters."""
    system = _chars(params.get("system"))
    rest = _chars(params.get("messages"))
    counted = usage.get("input_tokens") or 0
    return round(counted * system / max(1, system + rest))


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    if isinstance(value, Mapping):
        return _chars(value.get("text")) + _chars(value.get("content"))
    return 0
