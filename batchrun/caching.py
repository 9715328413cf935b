"""Prompt caching: the job's shared system prompt is marked for caching when it is long enough to be cached,
so every request after the first reads it at a tenth of the input price instead of paying for it again."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

# Below these lengths the API silently ignores a cache mark (ANTHROPIC_API.md, prompt caching).
MIN_CACHEABLE_TOKENS = (("claude-haiku", 4096), ("claude-sonnet", 1024), ("claude-opus", 1024))
DEFAULT_MIN_CACHEABLE = 2048
# Lean towards marking: a mark on a prompt that is too short costs nothing, a missing one costs 10x on every read.
CHARS_PER_TOKEN_LOW = 3


def min_cacheable_tokens(model: str) -> int:
    for prefix, tokens in MIN_CACHEABLE_TOKENS:
        if model.startswith(prefix):
            return tokens
    return DEFAULT_MIN_CACHEABLE


def cached_system(system: str, model: str, ttl: str = "5m") -> str | list[dict[str, Any]]:
    """The system prompt as a cache-marked text block when it may be long enough to cache, else as it is."""
    if len(system) / CHARS_PER_TOKEN_LOW < min_cacheable_tokens(model):
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
