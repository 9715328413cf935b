"""What the engines report: events while a run goes, and the reason it stopped before its items were done.

Engines never write words for a user; they emit these, and `progress` turns them into lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class StopReason(StrEnum):
    FATAL_API = "fatal_api"  # 401/402/403: every item would fail the same way
    OUTAGE = "outage"  # retries ran out while nothing succeeded anywhere
    OVERLOADED = "overloaded"  # some items ran out of attempts on 429/529: they wait for a resume
    INTERRUPTED = "interrupted"  # a signal
    STORE_ERROR = "store_error"  # the store could not be written (disk full, I/O error, locked)
    BUG = "bug"  # an unexpected exception in batchrun itself
    CANCEL_REQUESTED = "cancel_requested"  # `batchrun cancel` was asked for this run
    BATCH_CANCELED = "batch_canceled"  # a batch was canceled: its unprocessed items are pending again
    NO_WAIT = "no_wait"  # --no-wait: batches still processing
    TIMEOUT = "timeout"  # --timeout reached: batches still processing
    CANCEL_TIMEOUT = "cancel_timeout"  # --timeout reached while canceled batches were ending
    CREATE_FAILED = "create_failed"  # a batch create failed in a way that leaves open whether it exists
    CREATE_REFUSED = "create_refused"  # the API refused a batch create
    API_CALL_FAILED = "api_call_failed"  # a batch API call (retrieve, list, results) kept failing
    BUDGET = "budget"  # the next request would take the run over --max-cost
    LIMIT = "limit"  # --limit items were processed
    UNKNOWN_MODEL = "unknown_model"  # the API does not know a model: its items stay pending
    INVALID_REQUESTS = "invalid_requests"  # the run's first requests all failed with one invalid-request message
    SWITCH_ONLINE = "switch_online"  # deadline mode: the rest must go online now (the auto driver goes on)


@dataclass(slots=True)
class Stop:
    """Why a run stopped before every item had its outcome; `detail` holds what the words need."""

    reason: StopReason
    run_id: str
    detail: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None


class Stopped(Exception):
    """Raised inside an engine to stop the run at a safe point; carries the Stop."""

    def __init__(self, stop: Stop) -> None:
        super().__init__(stop.reason)
        self.stop = stop


@dataclass(slots=True)
class Event:
    kind: str
    run_id: str
    detail: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    """A listener for callers that want no reports."""
