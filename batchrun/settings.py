"""How one invocation processes a run: the command line's options beyond the job's settings, in one object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RunOptions:
    grace: float = 5.0  # seconds requests in flight get after the first signal
    use_cache: bool = True  # answer items from identical earlier requests in this database
    no_wait: bool = False  # batch mode: return once batches are created or collected
    timeout: float | None = None  # batch mode: stop waiting for batches after this many seconds
    batch_size: int | None = None  # batch mode: overrides the job's batch_size for this process
    poll_interval: float | None = None  # batch mode: overrides the job's poll_interval for this process
    request_timeout: float = 600.0  # online: the most one request may take, start to last byte
    limit: int | None = None  # process at most this many more items in this invocation
    settings: dict[str, Any] = field(default_factory=dict)  # job settings that do not change requests, kept
    retry: str | bool = False  # put failed items (True: all; a string: of that error type) back to pending first
    retry_changes: dict[str, Any] | None = None  # params set in the retried items (max_tokens, model)
