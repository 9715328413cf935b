"""Planning: the pending items cut into batches within the API's limits, --limit and the budget."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from batchrun.budget import worst_cost

API_MAX_REQUESTS = 100_000
API_MAX_BYTES = 256_000_000
# Exact body size: the envelope, then each request's custom_id and params with the JSON around them and the
# comma before the next one (the last has none, hence the -1).
BODY_OVERHEAD = len(b'{"requests":[]}') - 1
REQUEST_OVERHEAD = len(b'{"custom_id":"","params":},')


def plan_cuts(sizes: Iterable[tuple[int, int]], max_items: int, max_bytes: int) -> list[tuple[int, int, int, int]]:
    """Cut (line_no, bytes) of pending items, in input order, into (first_line, last_line, n_items, n_bytes)."""
    plans: list[tuple[int, int, int, int]] = []
    first = last = 0
    n = 0
    n_bytes = BODY_OVERHEAD
    for line_no, size in sizes:
        size += REQUEST_OVERHEAD
        if n and (n >= max_items or n_bytes + size > max_bytes):
            plans.append((first, last, n, n_bytes))
            n, n_bytes = 0, BODY_OVERHEAD
        if not n:
            first = line_no
        last = line_no
        n += 1
        n_bytes += size
    if n:
        plans.append((first, last, n, n_bytes))
    return plans


class Capped:
    """The longest prefix of the pending items that --limit and the budget allow into new batches."""

    def __init__(self, limit: int | None, budget_left: float | None, ttl: str) -> None:
        self.limit = limit
        self.ttl = ttl
        self.left = budget_left
        self.over_budget = False

    def prefix(
        self, rows: Iterable[tuple[int, int, str, int]], prices: Mapping[str, Mapping[str, float]] | None
    ) -> Iterator[tuple[int, int]]:
        """(line_no, bytes) of pending items, in order, until one would go over the limit or the budget."""
        for n, (line_no, size, model, max_tokens) in enumerate(rows):
            if self.limit is not None and n >= self.limit:
                return
            if self.left is not None:
                worst = worst_cost(model, size, max_tokens, prices, batch=True, cached_chars=size, ttl=self.ttl)
                if worst is None or worst > self.left:
                    self.over_budget = True
                    return
                self.left -= worst
            yield line_no, size
