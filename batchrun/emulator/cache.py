"""Prompt caching: cache_control breakpoints, minimum cacheable lengths, 5 m / 1 h lifetimes."""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from .replies import input_units

TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
PRUNE_ABOVE = 100_000


def min_cacheable_tokens(model: str) -> int:
    if "haiku" in model:
        return 4096
    if model.startswith(("claude-sonnet", "claude-opus")):
        return 1024
    return 2048


class Breakpoint(NamedTuple):
    key: str
    tokens: int
    ttl: str


class CacheUse(NamedTuple):
    creation: int
    read: int
    ttl: str
    breakpoints: tuple[Breakpoint, ...]


NO_CACHE = CacheUse(0, 0, "5m", ())


def breakpoints(params: dict) -> tuple[Breakpoint, ...]:
    """Every marked prefix long enough to cache; shorter marks are silently ignored, as by the API."""
    model = params["model"]
    minimum = min_cacheable_tokens(model)
    digest = hashlib.sha256(model.encode())
    tokens = 0
    found = []
    for unit in input_units(params):
        digest.update(len(unit.data).to_bytes(8, "big") + unit.data)
        tokens += unit.tokens
        if unit.cache_control is not None and tokens >= minimum:
            ttl = "1h" if unit.cache_control.get("ttl") == "1h" else "5m"
            found.append(Breakpoint(digest.hexdigest()[:32], tokens, ttl))
    return tuple(found)


class PromptCache:
    def __init__(self) -> None:
        self.expires: dict[str, float] = {}

    def lookup(self, params: dict, now: float) -> CacheUse:
        """What a request would read and write; changes nothing until commit()."""
        marks = breakpoints(params)
        if not marks:
            return NO_CACHE
        read = max((b.tokens for b in marks if self.expires.get(b.key, 0.0) > now), default=0)
        longest = marks[-1]
        return CacheUse(longest.tokens - read, read, longest.ttl, marks)

    def commit(self, use: CacheUse, now: float) -> None:
        """Write new prefixes and refresh the lifetime of the ones read."""
        for mark in use.breakpoints:
            self.expires[mark.key] = max(self.expires.get(mark.key, 0.0), now + TTL_SECONDS[mark.ttl])
        if len(self.expires) > PRUNE_ABOVE:
            self.expires = {key: until for key, until in self.expires.items() if until > now}
