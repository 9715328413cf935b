"""Injected faults (429, 529, 500, dropped connection, slow reply) and early-retry detection."""

from __future__ import annotations

import hashlib
import random

from .config import EmulatorConfig
from .replies import INVALID_JSON, MISSING_REQUIRED, REFUSAL, TRUNCATED, output_schema, wants_structured

EARLY_TOLERANCE_S = 0.05
MAX_EARLY_SAMPLES = 20


class FaultInjector:
    """Draws a fault per request from a seeded RNG while that request key has had fewer than
    max_faults_per_request faults, so every request eventually succeeds deterministically."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.latency_rng = random.Random(config.seed + 1)
        self.faults: dict[str, int] = {}
        self.midstream: dict[str, int] = {}
        self.as_json: dict[str, int] = {}
        self.answers: dict[str, int] = {}  # request key -> replies built so far (the attempt number)

    def pick(self, key: str) -> str | None:
        """One of "429", "529", "500", "drop", "slow", or None."""
        c = self.config
        if self.faults.get(key, 0) >= c.max_faults_per_request:
            return None
        draw = self.rng.random()
        for kind, p in (("429", c.p429), ("529", c.p529), ("500", c.p500), ("drop", c.p_drop)):
            if draw < p:
                self.faults[key] = self.faults.get(key, 0) + 1
                return kind
            draw -= p
        return "slow" if c.p_slow and self.rng.random() < c.p_slow else None

    def midstream_error(self, key: str) -> bool:
        """Whether this streamed reply fails after its first deltas (at most max_faults_per_request times a key)."""
        c = self.config
        count = self.midstream.get(key, 0)
        if not c.p_midstream_error or count >= c.max_faults_per_request:
            return False
        if draw(c.seed, key, count, "midstream") >= c.p_midstream_error:
            self.midstream.pop(key, None)
            return False
        self.midstream[key] = count + 1
        return True

    def stream_as_json(self, key: str) -> bool:
        """Whether this streamed request is answered with a plain JSON body (at most max_faults_per_request times
        a key)."""
        c = self.config
        count = self.as_json.get(key, 0)
        if not c.p_stream_as_json or count >= c.max_faults_per_request:
            return False
        if draw(c.seed, key, count, "stream_as_json") >= c.p_stream_as_json:
            self.as_json.pop(key, None)
            return False
        self.as_json[key] = count + 1
        return True

    def reply_fault(self, key: str, params: dict) -> str | None:
        """The model-side fault of this attempt at `params` (INVALID_JSON, MISSING_REQUIRED, TRUNCATED or None),
        drawn from (seed, request key, attempt number) so a run replays the same faults in the same order."""
        c = self.config
        if not (c.p_invalid_json or c.p_missing_required or c.p_truncated or c.p_refusal):
            return None
        attempt = self.answers.get(key, 0)
        self.answers[key] = attempt + 1
        return pick_reply_fault(c, key, attempt, params)

    def succeeded(self, key: str) -> None:
        # Forget the key once it got through, so memory stays bounded by requests still failing.
        self.faults.pop(key, None)

    def latency_s(self) -> float:
        c = self.config
        jitter = c.latency_jitter_ms and self.latency_rng.uniform(-c.latency_jitter_ms, c.latency_jitter_ms)
        return max(0.0, c.latency_ms + jitter) / 1000.0


class RetryWatch:
    """Remembers, per request key, the earliest time a retry-after allows, and counts retries sent earlier."""

    def __init__(self) -> None:
        self.not_before: dict[str, float] = {}
        self.early = 0
        self.samples: list[dict] = []

    def told_to_wait(self, key: str, now: float, retry_after: float) -> None:
        self.not_before[key] = now + retry_after

    def arrived(self, key: str, now: float) -> None:
        deadline = self.not_before.pop(key, None)
        if deadline is None or now >= deadline - EARLY_TOLERANCE_S:
            return
        self.early += 1
        if len(self.samples) < MAX_EARLY_SAMPLES:
            self.samples.append({"key": key, "early_by_s": round(deadline - now, 3)})


def draw(*parts: object) -> float:
    """A deterministic number in [0, 1) from the given parts."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


def pick_reply_fault(config: EmulatorConfig, key: str, attempt: int, params: dict) -> str | None:
    if draw(config.seed, key, attempt, "refusal") < config.p_refusal:
        return REFUSAL
    if wants_structured(params):
        roll = draw(config.seed, key, attempt, "schema")
        if roll < config.p_invalid_json:
            # A tool's input is always an object: its broken form is a missing property.
            return MISSING_REQUIRED if output_schema(params) is None else INVALID_JSON
        if roll < config.p_invalid_json + config.p_missing_required:
            return MISSING_REQUIRED
    if draw(config.seed, key, attempt, "truncate") < config.p_truncated:
        return TRUNCATED
    return None
