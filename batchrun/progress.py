"""What the user sees while a run goes (a tqdm bar on a terminal, a log line every few seconds otherwise), and the
words for every event and stop reason the engines report."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from batchrun.events import Event, Stop, StopReason


class Progress:
    """An events listener: `process_run(..., events=progress.event)`. The bar starts at the run_started event."""

    def __init__(self, *, stream: TextIO | None = None, interval: float = 10.0, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interval = interval
        self.total = 0
        self.succeeded = 0
        self.failed = 0
        self.usd = 0.0
        self.unpriced = False
        self.label = ""
        self.started = self.last_line = time.monotonic()
        self.start_done = self.done = 0
        self.bar: tqdm | None = None

    def event(self, ev: Event) -> None:
        if ev.kind == "run_started":
            self._start(ev.run_id, ev.detail["total"], ev.detail["done"])
        elif ev.kind == "notice":
            self.write(ev.detail["text"])
        elif ev.kind == "items_done":
            self.update(ev.detail["succeeded"], ev.detail["failed"], ev.detail["usd"])
        elif ev.kind == "batches_waiting" and self.bar is not None:
            rows = ev.detail["batches"]
            processing = sum(counts.get("processing", 0) for _, _, counts in rows)
            self.bar.set_postfix(batches=f"{len(rows)} open, {processing} processing", refresh=True)
        else:
            text = describe(ev)
            if text is not None:
                self.write(text)

    def _start(self, label: str, total: int, done: int) -> None:
        self.label = label
        self.total = total
        self.start_done = self.done = done
        self.started = self.last_line = time.monotonic()
        if self.enabled and self.stream.isatty():
            self.bar = tqdm(
                total=total, initial=done, desc=label, unit="item", file=self.stream, dynamic_ncols=True, smoothing=0.1
            )

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"batchrun: {text}", file=self.stream)
        else:
            print(f"batchrun: {text}", file=self.stream, flush=True)

    def update(self, succeeded: int = 0, failed: int = 0, usd: float | None = 0.0) -> None:
        """`usd` is what these items cost, None when one of them is of a model that has no price."""
        self.succeeded += succeeded
        self.failed += failed
        self.done += succeeded + failed
        if usd is None:
            self.unpriced = True
        else:
            self.usd += usd
        if self.bar is not None:
            self.bar.set_postfix(ok=self.succeeded, failed=self.failed, cost=self.cost(), refresh=False)
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
        self.write(text)

    def log_line(self) -> None:
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate = (self.done - self.start_done) / elapsed
        self.write(
            f"{self.label}: {self.done}/{self.total} done ({self.succeeded} succeeded, "
            f"{self.failed} failed this session, cost {self.cost()}), {rate:.1f} items/s"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.done > self.start_done:
            self.log_line()


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
    return text


def _api(d: dict[str, Any]) -> str:
    return f"{d.get('status') or 'no response'} {d.get('error_type')}: {d.get('message')}"


def describe_stop(stop: Stop) -> str:
    """Why a run stopped before its items were done, and what to do about it: one line."""
    d = stop.detail
    run = stop.run_id
    resume = f"`batchrun resume {run}`"
    match stop.reason:
        case StopReason.FATAL_API:
            return (
                f"stopped: the API answered {_api(d)} -- every item would fail the same way, so the rest stay "
                f"pending (fix the key or account, then {resume})"
            )
        case StopReason.OUTAGE:
            return (
                f"stopped: nothing succeeded while an item used up its {d['attempts']} attempts (last: {_api(d)}); "
                f"the API looks down, unreachable or overloaded, so the rest stay pending ({resume} later)"
            )
        case StopReason.OVERLOADED:
            return (
                f"{d['items']} item(s) used up their attempts while the API was rate limiting or overloaded: they "
                f"are pending, not failed ({resume} later)"
            )
        case StopReason.INTERRUPTED if d.get("batches"):
            return f"interrupted: no batch was canceled; they keep processing at Anthropic ({resume} collects them)"
        case StopReason.INTERRUPTED:
            return f"interrupted: unfinished items are pending again ({resume} continues)"
        case StopReason.STORE_ERROR:
            return (
                f"stopped: the store could not be written ({d['error']}); results committed before stay, the rest "
                f"are pending (free disk space or fix the database's permissions, then {resume})"
            )
        case StopReason.BUG:
            return (
                f"stopped by an error in batchrun ({d['error']}); results committed before stay, the rest are pending "
                f"(rerun with --debug for the traceback and report it; {resume} continues)"
            )
        case StopReason.CANCEL_REQUESTED:
            return (
                "stopped: `batchrun cancel` was asked for this run; it cancels the batches and stores what they "
                f"finished ({resume} sends the rest later)"
            )
        case StopReason.BATCH_CANCELED:
            return f"canceled: {d['items']} item(s) not processed are pending ({resume} sends them)"
        case StopReason.NO_WAIT | StopReason.TIMEOUT | StopReason.CANCEL_TIMEOUT:
            return _still_open(stop)
        case StopReason.CREATE_FAILED:
            return (
                f"stopped: could not create batch {d['seq']}: {_api(d)} ({resume} checks whether it was created, "
                "then creates it if not)"
            )
        case StopReason.CREATE_REFUSED:
            return (
                f"stopped: the API refused batch {d['seq']} ({d['requests']} requests, {d['bytes']:,} bytes): "
                f"{_api(d)} (its items are pending again; fix the cause, then {resume})"
            )
        case StopReason.BUDGET:
            return (
                f"budget reached: ${d['spent']:.4f} of ${d['limit']:.4f} spent, {d.get('left', '?')} item(s) left "
                f"(the next request's worst case would go over); resume with a larger --max-cost: "
                f"`batchrun resume {run} --max-cost USD`"
            )
        case StopReason.LIMIT:
            return f"--limit {d['limit']} reached: {d.get('left', '?')} item(s) left ({resume} sends the rest)"
        case StopReason.UNKNOWN_MODEL:
            models = "; ".join(f"{m} ({message})" for m, message in d["models"].items())
            return (
                f"stopped: the API does not know the model {models}: its items were not sent and stay pending "
                f"(fix the model id, e.g. in the job's model or routes, then submit with --new-run)"
            )
        case StopReason.INVALID_REQUESTS:
            return (
                f"stopped: the run's first {d['attempts']} requests all failed with {_api(d)} -- every item would; "
                "the rest were not sent (fix the job or the input, then submit with --new-run)"
            )
        case StopReason.API_CALL_FAILED:
            return f"stopped: could not {d['what']}: {_api(d)} (batches keep processing; {resume} tries again)"
    return f"stopped: {stop.reason}"


def _still_open(stop: Stop) -> str:
    d = stop.detail
    why = {
        StopReason.NO_WAIT: "--no-wait",
        StopReason.TIMEOUT: f"--timeout {d['timeout'] or 0:g}s reached",
        StopReason.CANCEL_TIMEOUT: f"--timeout {d['timeout'] or 0:g}s reached while batches were being canceled",
    }[stop.reason]
    ids = d["open"]
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    return (
        f"{why}: {len(ids)} batch(es) still processing at Anthropic ({shown}); "
        f"`batchrun resume {stop.run_id}` collects their results when they end"
    )
