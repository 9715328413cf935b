"""Counters the tests and benchmarks read back from GET /_emulator/stats."""

from __future__ import annotations

from collections import Counter
from typing import Any

USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _add_usage(table: dict[str, dict[str, int]], model: str, usage: dict) -> None:
    row = table.setdefault(model, dict.fromkeys((*USAGE_FIELDS, "requests"), 0))
    for name in USAGE_FIELDS:
        row[name] += usage.get(name) or 0
    row["requests"] += 1


class Stats:
    def __init__(self, track_keys: bool = True) -> None:
        self.track_keys = track_keys
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.rate_limited = 0
        self.dropped = 0
        self.aborted = 0  # streams the client hung up on
        self.streamed = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.count_tokens_requests = 0
        self.batches_created = 0
        self.batch_requests = 0
        self.usage: dict[str, dict[str, dict[str, int]]] = {"messages": {}, "batches": {}}
        self.ok_by_key: Counter[str] = Counter()
        self.received_by_key: Counter[str] = Counter()

    def started(self) -> None:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def received(self, key: str) -> None:
        if self.track_keys:
            self.received_by_key[key] += 1

    def finished(self, status: int | None, key: str | None) -> None:
        """status None means the connection was dropped without a response, a negative one that the client
        hung up mid-stream."""
        self.in_flight -= 1
        if status is None:
            self.dropped += 1
            return
        if status < 0:
            self.aborted += 1
            return
        self.by_status[str(status)] += 1
        if status == 200 and key is not None and self.track_keys:
            self.ok_by_key[key] += 1

    def message_usage(self, model: str, usage: dict) -> None:
        _add_usage(self.usage["messages"], model, usage)

    def batch_usage(self, model: str, usage: dict) -> None:
        _add_usage(self.usage["batches"], model, usage)

    def to_json(self, early_retries: int, early_samples: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "dropped": self.dropped,
            "aborted": self.aborted,
            "injected": dict(self.injected),
            "rate_limited": self.rate_limited,
            "streamed": self.streamed,
            "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight,
            "early_retries": early_retries,
            "early_retry_samples": early_samples,
            "count_tokens_requests": self.count_tokens_requests,
            "batches_created": self.batches_created,
            "batch_requests": self.batch_requests,
            "usage": self.usage,
        }
        if self.track_keys:
            out["ok_by_key"] = dict(self.ok_by_key)
            out["received_by_key"] = dict(self.received_by_key)
        return out
