"""What is retried, and how long to wait: exponential backoff with jitter, never shorter than Retry-After."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_random_exponential

from batchrun.api import APIFailure

FIRST_WAIT_S = 0.5  # the first retry waits up to this long, each later one up to twice the one before
MAX_WAIT_S = 30.0


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, APIFailure) and exc.retryable


class wait_backoff_or_retry_after(wait_base):
    """Full-jitter exponential backoff, raised to the server's Retry-After when it gave one."""

    def __init__(self, initial: float, cap: float) -> None:
        self.backoff = wait_random_exponential(multiplier=initial, max=cap)

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = self.backoff(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hint = getattr(exc, "retry_after", None)
        return max(wait, hint) if hint else wait


def retrying(max_attempts: int, sleep: Callable[[float], Awaitable[None]]) -> AsyncRetrying:
    """The retry policy of the online path. `sleep` lets a stopping run cut a backoff short."""
    return AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        wait=wait_backoff_or_retry_after(FIRST_WAIT_S, MAX_WAIT_S),
        stop=stop_after_attempt(max_attempts),
        sleep=sleep,
        reraise=True,
    )
