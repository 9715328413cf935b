"""What the user sees while a run goes (a tqdm bar on a terminal, a log line every few seconds otherwise), and the
words for every event and stop reason the engines report."""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from batchrun.deadline import describe_going_online, describe_plan
from batchrun.events import Event

if TYPE_CHECKING:
    from tqdm import tqdm

RATE_WINDOW_S = 60.0
LOG_FORMATS = ("text", "json")


class Progress:
    """An events listener: `process_run(..., events=progress.event)`. The bar starts at the run_started event.

    Off a terminal it writes a timestamped line every `interval` seconds, moving or not (engines emit `tick`
    events so a line comes while the run waits); `log_format="json"` writes each as one JSON object.
    `clock` (seconds, monotonic) and `wall` (epoch seconds, for the timestamps) are injected so tests run on a
    fake clock.
    """

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        interval: float = 10.0,
        enabled: bool = True,
        log_format: str = "text",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        tty: bool | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interval = interval
        self.log_format = log_format
        self.clock = clock
        self.wall = wall
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = 0
        self.succeeded = 0
        self.failed = 0
        self.usd = 0.0
        self.unpriced = False
        self.tokens = 0
        self.rate_limited = 0
        self.overloaded = 0
        self.retrying = 0
        self.waiting: str | None = None
        self.waiting_idle_only = False  # "waiting on requests in flight" is said only when nothing moves
        self.label = ""
        self.started = self.last_line = self.last_done_at = self.clock()
        self.start_done = self.done = 0
        self.samples: deque[tuple[float, int]] = deque()
        self.bar: tqdm | None = None
        self.closed = False

    def event(self, ev: Event) -> None:
        if ev.kind == "run_started":
            self._start(ev.run_id, ev.detail)
        elif ev.kind == "notice":
            self.write(ev.detail["text"])
        elif ev.kind == "items_done":
            d = ev.detail
            self.update(d["succeeded"], d["failed"], d["usd"], d.get("tokens", 0))
        elif ev.kind == "api_error":
            self._api_error(ev.detail)
        elif ev.kind == "tick":
            self._tick(ev.detail)
        elif ev.kind == "batches_waiting":
            self._batches_waiting(ev.detail)
        else:
            text = describe(ev)
            if text is not None:
                self.write(text, event=ev.kind)

    def _start(self, label: str, d: dict[str, Any]) -> None:
        """Every figure counts the whole run (what earlier commands did, then this one), as `status` does."""
        total, done = d["total"], d["done"]
        self.label = label
        self.total = total
        self.start_done = self.done = done
        self.succeeded = d.get("succeeded", 0)
        self.failed = d.get("failed", 0)
        self.tokens = d.get("tokens", 0)
        self.usd = d.get("usd") or 0.0
        self.unpriced = "usd" in d and d["usd"] is None
        self.started = self.last_line = self.last_done_at = self.clock()
        self.samples = deque([(self.started, done)])
        if self.enabled and self.tty:
            from tqdm import tqdm  # only on a terminal: 30-40 ms of a command's start-up otherwise

            self.bar = tqdm(
                total=total, initial=done, desc=label, unit="item", file=self.stream, dynamic_ncols=True, smoothing=0.1
            )

    def write(self, text: str, *, event: str = "message") -> None:
        """One line for the user: on a terminal above the bar; otherwise timestamped (or a JSON object)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"batchrun: {text}", file=self.stream)
        elif self.tty:
            print(f"batchrun: {text}", file=self.stream, flush=True)
        elif self.log_format == "json":
            record = {"ts": self._timestamp(), "run_id": self.label or None, "event": event, "message": text}
            self.stream.write(orjson.dumps(record).decode() + "\n")
            self.stream.flush()
        else:
            print(f"{self._timestamp()} batchrun: {text}", file=self.stream, flush=True)

    def update(self, succeeded: int = 0, failed: int = 0, usd: float | None = 0.0, tokens: int = 0) -> None:
        """`usd` is what these items cost, None when one of them is of a model that has no price."""
        self.succeeded += succeeded
        self.failed += failed
        self.done += succeeded + failed
        if usd is None:
            self.unpriced = True
        else:
            self.usd += usd
        self.tokens += tokens
        if succeeded or failed:
            self.last_done_at = self.clock()
        self._sample()
        if self.bar is not None:
            self.bar.set_postfix(ok=self.succeeded, failed=self.failed, cost=self.cost(), refresh=False)
            self.bar.update(succeeded + failed)
        else:
            self._maybe_line()

    def _api_error(self, d: dict[str, Any]) -> None:
        if d.get("status") == 429:
            self.rate_limited += 1
        elif d.get("status") == 529:
            self.overloaded += 1

    def _tick(self, d: dict[str, Any]) -> None:
        """An engine's periodic report of what it waits on: keeps lines coming while nothing moves."""
        if "retrying" in d:
            self.retrying = d["retrying"]
        if "in_flight" in d:
            self.waiting, self.waiting_idle_only = _online_wait(d)
        self._sample()
        if self.bar is not None:
            if self.waiting:
                self.bar.set_postfix_str(self.waiting, refresh=True)
        else:
            self._maybe_line()

    def _batches_waiting(self, d: dict[str, Any]) -> None:
        rows = d["batches"]
        self.waiting = _batches_wait(rows)
        if self.bar is not None:
            processing = sum(counts.get("processing", 0) for _, _, counts in rows)
            self.bar.set_postfix(batches=f"{len(rows)} open, {processing} processing", refresh=True)
        else:
            self._maybe_line()

    def _sample(self) -> None:
        now = self.clock()
        self.samples.append((now, self.done))
        while len(self.samples) > 2 and self.samples[1][0] <= now - RATE_WINDOW_S:
            self.samples.popleft()

    def _maybe_line(self) -> None:
        if self.enabled and self.label and self.clock() - self.last_line >= self.interval:
            self.last_line = self.clock()
            self.log_line()

    def cost(self) -> str:
        """What the run has spent so far (every billed reply, earlier commands included); unknown, never $0, once
        an item's model has no price."""
        if not self.unpriced:
            return f"${self.usd:.4f}"
        return f"unknown (${self.usd:.4f} + unpriced)" if self.usd else "unknown"

    def notice(self, text: str) -> None:
        """A one-off line (such as the prompt-cache notice) that does not break the bar."""
        self.write(text)

    def rate(self) -> float:
        """Items per second over the last minute (not since the start: a steady run shows a steady rate)."""
        now = self.clock()
        since = max(now - RATE_WINDOW_S, self.started)
        if now <= since:
            return 0.0
        return max(0.0, (self.done - self._done_at(since)) / (now - since))

    def _done_at(self, t: float) -> float:
        """Items done at time `t`, interpolated between the samples around it."""
        prev: tuple[float, int] | None = None
        for st, sd in self.samples:
            if st >= t:
                if prev is None:
                    return sd
                pt, pd = prev
                return pd + (sd - pd) * (t - pt) / max(st - pt, 1e-9)
            prev = (st, sd)
        return self.done

    def snapshot(self) -> dict[str, Any]:
        """The fields of a progress line (the JSON log's object)."""
        rate = self.rate()
        left = self.total - self.done
        eta = left / rate if rate > 0 and left > 0 else (0.0 if left <= 0 else None)
        return {
            "ts": self._timestamp(),
            "run_id": self.label,
            "done": self.done,
            "total": self.total,
            "ok": self.succeeded,
            "failed": self.failed,
            "retrying": self.retrying,
            "rate_per_s": round(rate, 3),
            "eta_s": None if eta is None else round(eta, 1),
            "http_429": self.rate_limited,
            "http_529": self.overloaded,
            "tokens": self.tokens,
            "cost_usd": None if self.unpriced else round(self.usd, 6),
            "waiting": self.waiting if self._idle() or not self.waiting_idle_only else None,
        }

    def _idle(self) -> bool:
        """Nothing finished within the last interval."""
        return self.clock() - self.last_done_at >= self.interval

    def log_line(self) -> None:
        s = self.snapshot()
        if self.log_format == "json":
            if self.enabled:
                self.stream.write(orjson.dumps({**s, "event": "progress"}).decode() + "\n")
                self.stream.flush()
            return
        self.write(format_line(s, self.cost()), event="progress")

    def close(self) -> None:
        """The last line (once): where the run stands as the command ends."""
        if self.closed:
            return
        self.closed = True
        if self.done >= self.total:
            self.retrying, self.waiting = 0, None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.label and (self.done > self.start_done or self.clock() > self.last_line):
            self.log_line()

    def _timestamp(self) -> str:
        return datetime.fromtimestamp(self.wall(), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def format_line(s: dict[str, Any], cost: str | None = None) -> str:
    """A progress line: where the run stands, how fast it goes now, when it ends, what it cost so far."""
    eta = "ETA --" if s["eta_s"] is None else f"ETA {_duration(s['eta_s'])}"
    line = (
        f"{s['run_id']}: {s['done']:,}/{s['total']:,} done, {s['ok']:,} ok, {s['failed']:,} failed, "
        f"{s['retrying']:,} retrying; {s['rate_per_s']:.1f} items/s (last min), {eta}; "
        f"429s {s['http_429']:,}, 529s {s['http_529']:,}; {s['tokens']:,} tokens, cost {cost or _usd(s['cost_usd'])}"
    )
    return line + (f"; {s['waiting']}" if s["waiting"] else "")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _online_wait(d: dict[str, Any]) -> tuple[str | None, bool]:
    """What an online run waits on, and whether to say it only when nothing moves (requests in flight)."""
    if d.get("paused", 0) > 0.5:
        return f"waiting {d['paused']:.0f} s on retry-after", False
    if d.get("retrying") and not d.get("in_flight"):
        return f"waiting {d.get('wait', 0):.0f} s on retry backoff ({d['retrying']} item(s))", False
    if d.get("in_flight"):
        return f"waiting on {d['in_flight']} request(s) in flight", True
    return None, False


def _batches_wait(rows: list[tuple[str, str, dict[str, int]]]) -> str | None:
    parts = []
    for batch_id, status, counts in rows[:3]:
        total = sum(counts.values())
        done = total - counts.get("processing", 0)
        parts.append(f"batch {batch_id} {status} {done:,}/{total:,}")
    if len(rows) > 3:
        parts.append(f"and {len(rows) - 3} more batch(es)")
    return ", ".join(parts) or None


def describe(ev: Event) -> str | None:
    """The line a user reads for an event, or None for events that only move the bar."""
    d = ev.detail
    run = ev.run_id
    match ev.kind:
        case "signal" if d.get("batches"):
            return (
                f"{d['name']}: stopping at the next safe point; batches are not canceled "
                f"({d['name']} again to stop at once)"
            )
        case "signal":
            return f"{d['name']}: finishing requests in flight (up to {d['grace']:g}s; again to stop now)"
        case "retrying_failed":
            if not d["items"]:  # nothing to send again: say so, rather than "0 failed item(s) ... pending again"
                kind = f" with error type {d['error_type']}" if d.get("error_type") else ""
                return f"run {run} has no failed item(s){kind}: nothing to retry (`batchrun status {run}` shows them)"
            return f"{d['items']} failed item(s) of run {run} are pending again"
        case "settings_changed":
            shown = ", ".join(f"{k} = {v}" for k, v in d["changed"].items())
            return f"{run}: from now on {shown}"
        case "signal_again":
            return f"{d['name']} again, stopping now"
        case "stray_released":
            return f"{run}: {d['items']} item(s) in flight outside any open batch are pending again"
        case "batches_planned":
            kind = "follow-up batch(es) for items to send again" if d["follow_up"] else "batch(es)"
            return f"{run}: {d['items']} item(s) planned in {d['batches']} {kind}"
        case "batch_adopted":
            return (
                f"{run}: batch {d['seq']}: adopted {d['id']} ({d['requests']} requests), created before the process "
                "that planned it stopped; nothing was sent again (its results are checked to be this run's)"
            )
        case "batch_foreign":
            return (
                f"{run}: batch {d['seq']}: {d['id']} is not this run's (its results carry another run's ids): "
                "left alone; this run's batch is looked for again, or created"
            )
        case "batch_created":
            return (
                f"{run}: batch {d['seq']}: created {d['id']} with {d['requests']} requests "
                f"({d['bytes']:,} bytes, items {d['first']} .. {d['last']})"
            )
        case "batch_ended":
            return _batch_ended(run, d)
        case "cancel_failed":
            return f"{run}: cancel {d['id']}: {d['error']}"
        case "batch_status":
            return f"{run}: batch {d['seq']} {d['id']}: {d['status']}"
        case "deadline_plan":
            return f"{run}: {describe_plan(d)}"
        case "switching_online":
            return (
                f"{run}: switch time reached with {d['items']} item(s) left: cancelling {len(d['open'])} open "
                "batch(es); what they finished is kept at batch price, the rest goes online"
            )
        case "going_online":
            return f"{run}: sending the {d['items']} item(s) left online: {describe_going_online(d['plan'])}"
        case "batches_waiting":
            rows = d["batches"]
            summary = ", ".join(f"{bid} {status}" for bid, status, _ in rows[:3])
            if len(rows) > 3:
                summary += f" and {len(rows) - 3} more"
            processing = sum(counts.get("processing", 0) for _, _, counts in rows)
            return f"{run}: {summary}; {processing} request(s) processing; next check in ~{d['next_check']:.3g}s"
    return None


def _batch_ended(run: str, d: dict[str, Any]) -> str:
    c = d["counts"]
    seconds = d["seconds"]
    text = (
        f"{run}: batch {d['seq']} {d['id']} ended: {c['succeeded']} succeeded, {c['errored']} errored, "
        f"{c['expired']} expired, {c['canceled']} canceled; {d['stored']} result(s) stored in {seconds:.2f}s "
        f"({d['stored'] / max(seconds, 1e-9):,.0f}/s): {d['succeeded']} succeeded, {d['failed']} failed "
        f"for good, {d['again']} to send again, {d['canceled']} canceled"
    )
    if d["missing"]:
        text += f"; {d['missing']} item(s) had no result: pending again"
    if d["stray"]:
        text += f"; {d['stray']} result(s) matched no item waiting in it: ignored"
    if d.get("unreadable"):
        text += (
            f"; {d['unreadable']} result line(s) malformed (the API's fault): their items are sent again while "
            "attempts remain"
        )
    return text
