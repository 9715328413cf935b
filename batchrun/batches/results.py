"""A batch's results file: read in chunks of lines, parsed, and what storing them did to its items."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

SWITCH_INTERVAL_S = 0.0002  # Python's thread switch interval while results are stored (see short_switches)

Members = dict[str, tuple[int, int, str]]  # custom_id as sent -> (line_no, attempts so far, model)
LookedUp = tuple[list[dict[str, Any]], int, Members]  # a chunk's good lines, its unreadable lines, its items


def parse_results(lines: list[bytes]) -> tuple[list[dict[str, Any]], int]:
    """The result lines that are objects with a custom_id, and how many lines are not (cut JSON, no custom_id:
    the API's fault). Their items get no result from this batch, so they go back to pending when it is closed
    and are sent again. A file that is all good lines costs what it did before: one comprehension, one check."""
    try:
        parsed = [orjson.loads(line) for line in lines]
    except orjson.JSONDecodeError:
        parsed = [_loads_or_none(line) for line in lines]
    if all(isinstance(p, dict) and isinstance(p.get("custom_id"), str) for p in parsed):
        return parsed, 0
    good = [p for p in parsed if isinstance(p, dict) and isinstance(p.get("custom_id"), str)]
    return good, len(parsed) - len(good)


def _loads_or_none(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


def first_time(seen: bytearray, line: int) -> bool:
    """True the first time `line` is seen: one byte per line number (a 100,000-line batch of a 1M-item run
    holds 1 MB, where a set of its lines would hold about 8 MB), grown as needed."""
    if line >= len(seen):
        seen.extend(bytes(line + 1 - len(seen)))
    if seen[line]:
        return False
    seen[line] = 1
    return True


class _Switches:
    """How many result downloads are being stored now, and the interval to give back when none is."""

    depth = 0
    before = 0.0


@contextlib.contextmanager
def short_switches() -> Iterator[None]:
    """Python's thread switch interval made short while results are stored: the store's thread takes the GIL
    back after each statement, and with the default 5 ms it could wait that long each time while the event
    loop's thread was judging (bench/scale.py's ingest phase at 100k: 3.53 s with 5 ms, 3.30-3.39 s with 0.2 ms).
    Nested or overlapping uses give the interval back once, when the last ends."""
    if _Switches.depth == 0:
        _Switches.before = sys.getswitchinterval()
        sys.setswitchinterval(min(_Switches.before, SWITCH_INTERVAL_S))
    _Switches.depth += 1
    try:
        yield
    finally:
        _Switches.depth -= 1
        if _Switches.depth == 0:
            sys.setswitchinterval(_Switches.before)


async def result_chunks(data: AsyncIterator[bytes], size: int) -> AsyncIterator[list[bytes]]:
    """The non-blank lines of a byte stream, `size` at a time."""
    lines: list[bytes] = []
    rest = b""
    async for piece in data:
        parts = (rest + piece).split(b"\n")
        rest = parts.pop()
        lines.extend(part for part in parts if part.strip())
        if len(lines) >= size:
            yield lines
            lines = []
    if rest.strip():
        lines.append(rest)
    if lines:
        yield lines


class ForeignBatch(Exception):
    """An adopted batch whose results carry none of its plan's custom_ids: another run's batch."""


@dataclass(slots=True)
class Tally:
    """What one batch's results did to its items."""

    succeeded: int = 0
    failed: int = 0
    again: int = 0  # retryable error or expired: pending for a follow-up
    canceled: int = 0
    stray: int = 0  # custom_ids this batch's plan does not hold (or already recorded)
    unreadable: int = 0  # lines that are not a result (the API's fault): their items are sent again
    lines: int = 0  # result lines read
    usd: float | None = 0.0  # cost of the results stored (batch price); None when a model has no price
    tokens: int = 0  # tokens of the results stored (input, output, cache writes and reads)

    @property
    def stored(self) -> int:
        return self.succeeded + self.failed + self.again + self.canceled
