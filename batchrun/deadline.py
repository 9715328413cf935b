"""Deadline mode's plan: how long the items left would take online, and so the latest moment to stop waiting
for batches and send the rest online.

    switch at = deadline - online time of the items left - safety margin
    safety margin = SAFETY_SHARE x online time + the job's deadline_margin seconds (default 60)

The online time is the slowest of five bounds, each a worst case: requests per minute, input tokens per minute
(estimated from the requests' size, like the limiter does), output tokens per minute (reserved at max_tokens,
as the limiter does), and the concurrency ceiling with every request producing max_tokens at
OUTPUT_TOKENS_PER_S after FIRST_TOKEN_S. Limits come from the job (--rpm/--itpm/--otpm), or, where it gives
none, the published Start tier (DEFAULT_LIMITS): a plan never counts on more capacity than the account has
been said to have. Progress counts of batches are not used: the API keeps them at "processing" until a batch
ends, so the plan moves only when a batch ends and its items are done.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

SAFETY_SHARE = 0.2  # of the online time, added to it
DEFAULT_MARGIN_S = 60.0  # seconds added on top (cancelling batches, collecting their results, a slow start)
# Used when neither the job nor the flags give limits: the published Start tier.
DEFAULT_LIMITS = {"rpm": 1000, "itpm": 2_000_000, "otpm": 400_000}
FIRST_TOKEN_S = 1.0  # a request's time before its first output token, at worst
OUTPUT_TOKENS_PER_S = 50.0  # a slow model's output speed: a request's max_tokens take max_tokens / this
TYPICAL_BATCH_S = 3600.0  # most batches end within an hour (the API's documentation): the expected-share model
DURATION = re.compile(r"^(?:\d+(?:\.\d+)?[smhd])+$")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 366 * 86400  # a deadline further off than this is a typo: batches end within a day anyway
DEADLINE_HELP = "an ISO time (2025-06-01T06:00, 06:00) or a duration from the run's start (6h, 90m, 90s, 1h30m)"


class DeadlineError(ValueError):
    """A deadline that is neither an ISO time nor a duration."""


def parse_deadline(text: str, start: float) -> float:
    """The deadline as a Unix time. A duration counts from `start` (the run's creation); an ISO date-time without
    a zone is local time; a time of day alone is its next occurrence after `start`."""
    text = text.strip()
    if DURATION.fullmatch(text):
        seconds = sum(float(n) * UNIT_S[unit] for n, unit in DURATION_PART.findall(text))
        if seconds > MAX_DURATION_S:
            raise DeadlineError(f"{text!r} is more than {MAX_DURATION_S // 86400} days away (give a nearer deadline)")
        return start + seconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None:
        try:
            clock = time.fromisoformat(text)
        except ValueError:
            raise DeadlineError(f"{text!r} is not {DEADLINE_HELP}") from None
        began = datetime.fromtimestamp(start, clock.tzinfo) if clock.tzinfo else datetime.fromtimestamp(start)
        moment = datetime.combine(began.date(), clock)
        if moment <= began:
            moment = datetime.combine(began.date() + timedelta(days=1), clock)
    elif len(text) == 10:  # a date alone: midnight at its start would surprise; read it as the day's end
        moment = datetime.combine(date.fromisoformat(text), time()) + timedelta(days=1)
    return moment.timestamp()


def deadline_problem(value: Any) -> str | None:
    """The job check for `deadline`."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"must be {DEADLINE_HELP}, in quotes"
    try:
        parse_deadline(value, 0.0)
    except DeadlineError:
        return f"must be {DEADLINE_HELP}, at most {MAX_DURATION_S // 86400} days after the run's start"
    return None


@dataclass(frozen=True, slots=True)
class Work:
    """What is left to send: items, estimated input tokens, output tokens at max_tokens."""

    items: int
    input_tokens: int
    output_tokens: int


def work_of(unfinished: tuple[int, int, int]) -> Work:
    """Work from the store's (items, characters of params, sum of max_tokens): input tokens estimated at four
    characters a token, like batchrun.estimate.estimate_input_tokens (params hold a little more than system and
    messages, so this leans high, as a worst case should)."""
    items, chars, max_tokens = unfinished
    return Work(items, chars // 4 + 8 * items, max_tokens)


def less(work: Work, items: int) -> Work:
    """`work` without `items` of its items (of average size)."""
    if items <= 0 or not work.items:
        return work
    keep = max(0, work.items - items) / work.items
    return Work(work.items - min(items, work.items), round(work.input_tokens * keep), round(work.output_tokens * keep))


@dataclass(frozen=True, slots=True)
class Capacity:
    rpm: int
    itpm: int
    otpm: int
    concurrency: int
    assumed: tuple[str, ...] = ()  # limits the job did not give: the Start tier's were taken


def capacity_of(job: Any) -> Capacity:
    """The online capacity a batchrun.job.Job gives (job imports this module, so it is not named here)."""
    given = {k: getattr(job, k) for k in DEFAULT_LIMITS}
    assumed = tuple(k for k, v in given.items() if not v)
    limits = {k: v or DEFAULT_LIMITS[k] for k, v in given.items()}
    return Capacity(concurrency=job.concurrency, assumed=assumed, **limits)


def online_seconds(work: Work, capacity: Capacity) -> float:
    """Seconds the online path needs for `work` at `capacity`, at worst."""
    if work.items <= 0:
        return 0.0
    per_request = FIRST_TOKEN_S + work.output_tokens / work.items / OUTPUT_TOKENS_PER_S
    return max(
        60.0 * work.items / capacity.rpm,
        60.0 * work.input_tokens / capacity.itpm,
        60.0 * work.output_tokens / capacity.otpm,
        per_request * math.ceil(work.items / capacity.concurrency),
    )


@dataclass(frozen=True, slots=True)
class Plan:
    deadline_at: float  # Unix time
    now: float
    items: int  # left to do
    online_s: float  # to finish them online
    margin_s: float
    capacity: Capacity

    @property
    def switch_at(self) -> float:
        """The latest moment to stop waiting for batches and send the rest online."""
        return self.deadline_at - self.online_s - self.margin_s

    @property
    def feasible(self) -> bool:
        """Whether the items left, sent online from now, still finish before the deadline (with the margin)."""
        return self.items == 0 or self.now <= self.switch_at

    @property
    def batch_window_s(self) -> float:
        return max(0.0, self.switch_at - self.now)

    @property
    def expected_batch_share(self) -> float:
        """The share of the items left expected at batch price: batches are cancelled at the switch, and a
        cancelled batch keeps what it finished; requests are taken as ending evenly over TYPICAL_BATCH_S."""
        return round(min(1.0, self.batch_window_s / TYPICAL_BATCH_S), 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "deadline": _iso(self.deadline_at),
            "switch_at": _iso(self.switch_at),
            "items_left": self.items,
            "online_seconds": round(self.online_s, 1),
            "margin_seconds": round(self.margin_s, 1),
            "seconds_to_switch": round(self.switch_at - self.now, 1),
            "seconds_to_deadline": round(self.deadline_at - self.now, 1),
            "feasible": self.feasible,
            "online_done_at": _iso(self.now + self.online_s),
            "expected_batch_share": self.expected_batch_share,
            "limits": {k: v for k, v in asdict(self.capacity).items() if k != "assumed"},
            "limits_assumed": list(self.capacity.assumed),
        }


def make_plan(deadline_at: float, now: float, work: Work, capacity: Capacity, margin_s: float) -> Plan:
    online = online_seconds(work, capacity)
    return Plan(deadline_at, now, work.items, online, SAFETY_SHARE * online + margin_s, capacity)


def refusal(plan: Plan, run_id: str | None = None) -> str:
    """The words for a deadline the items cannot meet even online from now."""
    assumed = (
        f" (assumed for {', '.join(plan.capacity.assumed)}: pass the account's --rpm/--itpm/--otpm)"
        if plan.capacity.assumed
        else ""
    )
    c = plan.capacity
    fix = f"`batchrun resume {run_id} --force`" if run_id else "--force"
    return (
        f"deadline {_iso(plan.deadline_at)} cannot be met: {plan.items:,} item(s) need about "
        f"{duration(plan.online_s)} online at RPM {c.rpm:,}, ITPM {c.itpm:,}, OTPM {c.otpm:,}, "
        f"concurrency {c.concurrency}{assumed}, plus a safety margin of {duration(plan.margin_s)}, and only "
        f"{duration(max(0.0, plan.deadline_at - plan.now))} are left (give a later --deadline or higher limits; "
        f"or {fix} to send everything online now and finish as early as the limits allow)"
    )


def describe_going_online(p: dict[str, Any]) -> str:
    """The words when the rest goes online: when it should be done, against the deadline."""
    return (
        f"about {duration(p['online_seconds'])} at the limits, done by about {p['online_done_at']} "
        f"(deadline {p['deadline']})"
    )


def describe_plan(p: dict[str, Any]) -> str:
    """One line for a plan's dict (status, dry run, progress)."""
    if not p["feasible"]:
        return (
            f"deadline {p['deadline']}: cannot be met online ({p['items_left']:,} item(s) left need about "
            f"{duration(p['online_seconds'])} plus a {duration(p['margin_seconds'])} margin); sending online at once"
        )
    return (
        f"deadline {p['deadline']}: batches until {p['switch_at']} (in {duration(p['seconds_to_switch'])}), "
        f"then the rest online ({p['items_left']:,} item(s) left would take about {duration(p['online_seconds'])} "
        f"+ {duration(p['margin_seconds'])} margin); expected at batch price: {p['expected_batch_share']:.0%}"
    )


def _iso(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):  # a value no deadline check would let in, read from an old store
        return "(out of range)"


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.1f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
