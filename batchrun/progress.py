"""Where a run stands while it runs: a tqdm bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class Progress:
    def __init__(
        self,
        total: int,
        done: int,
        *,
        label: str,
        stream: TextIO | None = None,
        interval: float = 10.0,
        enabled: bool = True,
    ) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.succeeded = 0
        self.failed = 0
        self.usd = 0.0
        self.unpriced = False
        self.interval = interval
        self.label = label
        self.started = time.monotonic()
        self.last_line = self.started
        self.start_done = done
        self.done = done
        self.enabled = enabled
        self.bar: tqdm | None = None
        if enabled and self.stream.isatty():
            self.bar = tqdm(
                total=total,
                initial=done,
                desc=label,
                unit="item",
                file=self.stream,
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def update(self, succeeded: int = 0, failed: int = 0, usd: float | None = 0.0, **extra: object) -> None:
        """`usd` is what these items cost, None when one of them is of a model that has no price."""
        self.succeeded += succeeded
        self.failed += failed
        self.done += succeeded + failed
        if usd is None:
            self.unpriced = True
        else:
            self.usd += usd
        if self.bar is not None:
            self.bar.set_postfix(ok=self.succeeded, failed=self.failed, cost=self.cost(), **extra, refresh=False)
            self.bar.update(succeeded + failed)
        elif self.enabled and time.monotonic() - self.last_line >= self.interval:
            self.last_line = time.monotonic()
            self.log_line()

    def cost(self) -> str:
        """What this session has spent; unknown, never $0, once an item's model has no price."""
        if not self.unpriced:
            return f"${self.usd:.4f}"
        return f"unknown (${self.usd:.4f} + unpriced)" if self.usd else "unknown"

    def notice(self, text: str) -> None:
        """A one-off line (such as the prompt-cache notice) that does not break the bar."""
        if self.bar is not None:
            self.bar.write(f"batchrun: {text}", file=self.stream)
        else:
            print(f"batchrun: {text}", file=self.stream, flush=True)

    def log_line(self) -> None:
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate = (self.done - self.start_done) / elapsed
        print(
            f"batchrun: {self.label}: {self.done}/{self.total} done ({self.succeeded} succeeded, "
            f"{self.failed} failed this session, cost {self.cost()}), {rate:.1f} items/s",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done > self.start_done:
            self.log_line()
