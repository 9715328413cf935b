"""One signal policy for both paths: the first SIGINT, SIGTERM or SIGHUP stops the run at its next safe point,
a second one stops it at once. Committed results always stay."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def on_signals(first: Callable[[str], None], again: Callable[[str], None]) -> Iterator[None]:
    """Call `first(name)` on the first signal and `again(name)` on every later one, while the block runs.

    Outside the main thread (the Python API run from a thread or a notebook) signals cannot be caught there:
    the block runs without handlers, and the caller's own handling applies."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    seen = False

    def handler(name: str) -> None:
        nonlocal seen
        if seen:
            again(name)
        else:
            seen = True
            first(name)

    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        loop.add_signal_handler(sig, handler, sig.name)
    try:
        yield
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, before[sig])  # the caller's own handlers (an embedding program's) come back
