"""How much of one account's limit this process takes when other clients use the same limit.

The `anthropic-ratelimit-*-remaining` headers describe the whole account, so a process can tell its own use
from everyone else's: between two replies (taken in the order their requests were sent) the bucket refilled at
limit/60 per second and lost what this process sent in between; whatever else it lost, others took. That
foreign rate is smoothed, and the process paces itself to what is left of the limit, less a small margin. Two
or more batchrun processes doing the same converge on about 1/N each: at the limit each one's target shrinks by
the margin (multiplicative decrease), below it each one grows by the same share of what is left (additive
increase), the way TCP flows share a link. A 429 cuts the pace at once; it grows back additively.

Alone, nothing foreign is seen and the pace stays at the whole limit: one process keeps all of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from batchrun.neighbours import Neighbours

WINDOW_S = 1.0  # foreign use is measured over about this much send time, then smoothed
SMOOTHING = 0.7  # weight of the newest window in the foreign-rate estimate
MARGIN = 0.15  # with others present, leave this share of what is left for them (and for fairness)
NOTICE = 0.03  # foreign use below this share of the limit is noise (remaining is a whole number): all of it is kept
CUT = 0.5  # a 429 multiplies the pace by this (at most once per second)
GROWTH_PER_S = 0.25  # the pace grows back by this share of the limit per second
FLOOR = 0.02  # never below this share of the limit: a process always makes some progress
NEW_S = 3.0  # a neighbour younger than this is taken at its word (it wants its share) whatever it sends yet
SLACK = 0.05  # a neighbour sending less than it may is given this much more of the limit than it uses


@dataclass
class Dimension:
    """One per-minute limit (requests, input tokens or output tokens) as this process shares it."""

    quantum: float = 1.0  # what `remaining` is rounded down to: the API rounds tokens to thousands
    limit: float | None = None
    factor: float = 1.0  # the share of the limit this process paces itself to
    foreign: float = 0.0  # others' use, per second (smoothed)
    _own: float = 0.0  # what this process has taken from the account's bucket, all told
    _sent: deque[tuple[float, float]] = field(default_factory=deque)  # (when, _own after it), the last few seconds
    _anchor: tuple[float, float, float] | None = None  # when, remaining, _own: the previous reply's view
    _window_deficit: float = 0.0
    _window_s: float = 0.0
    _largest: float = 0.0  # the most ever seen remaining: the bucket's size as far as this process knows
    _cut_at: float = float("-inf")
    _grown_at: float | None = None

    @property
    def used(self) -> float:
        """What this process has taken of the limit, all told (sent, less what was refunded or refused)."""
        return self._own

    @property
    def rate(self) -> float | None:
        return None if not self.limit else self.limit / 60.0

    def sent(self, at: float, amount: float) -> None:
        self._own += amount
        self._sent.append((at, self._own))
        while self._sent and self._sent[0][0] < at - 2.0:
            self._sent.popleft()

    def refunded(self, amount: float) -> None:
        """What this process reserved and did not use came back to the account's bucket."""
        self._own -= amount

    def observe(self, remaining: float, limit: float, now: float, target: float | None = None) -> None:
        """A reply just said how much of `limit` is left; `target` overrides the share to steer to (what the
        neighbours on this machine leave)."""
        self.limit = limit
        self._largest = max(self._largest, remaining)
        anchor, self._anchor = self._anchor, (now, remaining, self._own)
        if anchor is not None:
            self._learn(anchor, now, remaining, limit)
        self._steer(now, self.target() if target is None else target)

    def _learn(self, anchor: tuple[float, float, float], now: float, remaining: float, limit: float) -> None:
        """Since the previous reply the bucket refilled (up to its size) and lost what this process sent: what else
        it lost, others took. When it may have been full meanwhile, that is a lower bound, which is what counts."""
        then, was, own_then = anchor
        elapsed = now - then
        refilled = min(was + elapsed * limit / 60.0, max(self._largest, was))
        self._window_deficit += refilled - (self._own - own_then) - remaining
        self._window_s += elapsed
        if self._window_s >= WINDOW_S:
            measured = max(0.0, (self._window_deficit - self.quantum) / self._window_s)
            self.foreign += SMOOTHING * (measured - self.foreign)
            self._window_deficit, self._window_s = 0.0, 0.0

    def throttled(self, now: float) -> None:
        """A 429 for this limit: the account is over it, so this process cuts its pace (once per second)."""
        if now - self._cut_at >= 1.0:
            self._cut_at = now
            self.factor = max(FLOOR, self.factor * CUT)
            self._grown_at = now

    def target(self) -> float:
        """The share of the limit to pace to: all of it alone, what others leave (less the margin) otherwise."""
        return self.available(self.foreign)

    def available(self, foreign: float) -> float:
        rate = self.rate
        if rate is None or foreign < NOTICE * rate:
            return 1.0
        return max(FLOOR, (1.0 - foreign / rate) * (1.0 - MARGIN))

    def own_rate(self, now: float, over: float = 1.0) -> float:
        """What this process sent of this limit per second, over the last `over` seconds."""
        if not self._sent:
            return 0.0
        before = next((own for at, own in reversed(self._sent) if at <= now - over), self._sent[0][1])
        return max(0.0, (self._own - before) / over)

    def _steer(self, now: float, target: float) -> None:
        if self.factor > target:
            self.factor = target
        else:
            since = 0.0 if self._grown_at is None else now - self._grown_at
            self.factor = min(target, self.factor + GROWTH_PER_S * since)
        self._grown_at = now


class FairShare:
    """The three limits of one account, each shared with whoever else uses it: neighbours on this machine (when
    `neighbours` is given) by what they say, everyone else by what the headers show."""

    def __init__(self, clock: Callable[[], float], neighbours: Neighbours | None = None) -> None:
        self.clock = clock
        self.neighbours = neighbours
        self.dimensions = {
            "requests": Dimension(quantum=1.0),
            "input_tokens": Dimension(quantum=1000.0),
            "output_tokens": Dimension(quantum=1000.0),
        }

    def sent(self, amounts: dict[str, float]) -> None:
        """Account a request about to go out."""
        at = self.clock()
        for name, amount in amounts.items():
            self.dimensions[name].sent(at, amount)

    def observe(self, name: str, remaining: float, limit: float) -> float:
        """Learn from one reply's headers for one limit; returns the share of that limit to pace to now."""
        now = self.clock()
        dimension = self.dimensions[name]
        local = self._local_target(name, now)
        dimension.observe(remaining, limit, now, local)
        self._publish(now)
        return dimension.factor

    def _local_target(self, name: str, now: float) -> float | None:
        """With neighbours here: a fair part of what clients elsewhere leave, more when a neighbour uses less."""
        if self.neighbours is None:
            return None
        peers = self.neighbours.peers(now)
        dimension = self.dimensions[name]
        if not peers or dimension.rate is None:
            return None
        used_here = sum(p.get(f"rate:{name}", 0.0) for p in peers) * dimension.rate
        available = dimension.available(max(0.0, dimension.foreign - used_here))
        claimed = sum(_claim(p, name) for p in peers)
        return max(FLOOR, available / (1 + len(peers)), available - claimed)

    def _publish(self, now: float) -> None:
        if self.neighbours is None:
            return
        shares: dict[str, float] = {}
        for name, dimension in self.dimensions.items():
            if dimension.rate:
                shares[f"rate:{name}"] = dimension.own_rate(now) / dimension.rate
                shares[f"want:{name}"] = dimension.factor
        self.neighbours.publish(shares, now)

    def close(self) -> None:
        if self.neighbours is not None:
            self.neighbours.leave()


def _claim(peer: dict[str, float], name: str) -> float:
    """The share of a limit a neighbour is counted for: what it wants while it is new or uses it all, a little
    more than it uses when it uses less (it is finishing, or waiting)."""
    want = peer.get(f"want:{name}")
    if want is None:
        return 0.0 if peer.get("age", 0.0) >= NEW_S else 1.0
    uses = peer.get(f"rate:{name}", 0.0)
    if peer.get("age", 0.0) < NEW_S:
        return want
    return min(want, uses * 1.25 + SLACK)
