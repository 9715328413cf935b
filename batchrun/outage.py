"""When the API looks down: no success anywhere in the worker pool for a while, not one item using up its attempts.

An item whose retries ran out on an error of the API (5xx, 429/529, no connection) while nothing succeeded
anywhere since its last attempt was sent is not burnt: it waits for a resume. The run stops as an outage only when, on
top of that, the whole pool has gone without a success for QUIET_S seconds (or for QUIET_GAPS times the usual gap
between successes, in a slow run), or has not had one at all yet. A healthy run with a few unlucky items goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

QUIET_S = 10.0  # a pool without a success this long (at least) looks down
QUIET_GAPS = 5.0  # ... or this many times its usual gap between two successes, when that is longer
GAP_WEIGHT = 0.1  # how fast the usual gap follows the latest ones (exponential moving average)


class OutageWatch:
    """Successes across the pool, on an injected monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last_success: float | None = None
        self.gap: float | None = None

    def succeeded(self) -> None:
        now = self.clock()
        if self.last_success is not None:
            gap = now - self.last_success
            self.gap = gap if self.gap is None else self.gap + GAP_WEIGHT * (gap - self.gap)
        self.last_success = now

    @property
    def any_success(self) -> bool:
        return self.last_success is not None

    def none_since(self, since: float) -> bool:
        """No success anywhere in the pool after `since` (a clock reading, e.g. when an item's last attempt was
        sent)."""
        return self.last_success is None or self.last_success <= since

    def looks_down(self, since: float) -> bool:
        """No success since `since`, and none for a while: no success yet at all, or a quiet spell of at least
        QUIET_S seconds and QUIET_GAPS usual gaps."""
        if not self.none_since(since):
            return False
        if self.last_success is None:
            return True
        quiet = max(QUIET_S, QUIET_GAPS * (self.gap or 0.0))
        return self.clock() - self.last_success >= quiet
