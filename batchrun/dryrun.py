"""`submit --dry-run`: validate the file, count its input tokens, and say what the run would cost and take.

Input tokens are counted by the API's count_tokens endpoint for a sample of items and estimated for the rest
(the sample's counted/estimated ratio corrects the estimate, model by model). Output is priced at max_tokens,
so the cost printed is an upper bound. No Messages request is sent.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from batchrun.caching import min_cacheable_tokens, prefix_key
from batchrun.deadline import (
    DEFAULT_LIMITS,
    OUTPUT_TOKENS_PER_S,
    DeadlineError,
    Work,
    capacity_of,
    duration,
    make_plan,
    online_seconds,
    parse_deadline,
)
from batchrun.errors import UsageError
from batchrun.estimate import estimate_input_tokens
from batchrun.inputs import read_items
from batchrun.job import Job
from batchrun.pricing import PRICES_TAKEN, add_cost, cost

SAMPLE = 20
# Used for the duration estimate when neither the job nor the flags give limits: the published Start tier.
ASSUMED_LIMITS = DEFAULT_LIMITS


@dataclass
class ModelTally:
    items: int = 0
    estimated_input: int = 0
    max_output: int = 0
    system_estimate: int = 0
    cached_items: int = 0
    sample: list[dict[str, Any]] = field(default_factory=list)
    seen: int = 0

    def add(self, params: dict[str, Any], rng: random.Random) -> None:
        self.items += 1
        self.estimated_input += estimate_input_tokens(params)
        self.max_output += params["max_tokens"]
        if prefix_key(params) is not None:
            self.cached_items += 1
            self.system_estimate = max(self.system_estimate, estimate_input_tokens({"system": params["system"]}))
        self.seen += 1
        if len(self.sample) < SAMPLE:
            self.sample.append(params)
        elif (j := rng.randrange(self.seen)) < SAMPLE:
            self.sample[j] = params


def tally(input_path: str, job: Job) -> dict[str, ModelTally]:
    """One streaming pass over the file (which also validates every line), in constant memory."""
    rng = random.Random(0)
    models: dict[str, ModelTally] = {}
    for item in read_items(input_path, job):
        models.setdefault(item.params["model"], ModelTally()).add(item.params, rng)
    return models


async def count_sample(client: Any, sample: list[dict[str, Any]]) -> list[int]:
    import asyncio

    from batchrun.api import api_errors
    from batchrun.retry import retrying

    async def one(params: dict[str, Any]) -> int:
        body = {k: params[k] for k in ("model", "messages", "system", "tools", "thinking") if k in params}
        async for attempt in retrying(4, asyncio.sleep):
            with attempt, api_errors(client.api_key):
                return (await client.messages.count_tokens(**body)).input_tokens
        raise AssertionError("unreachable")

    return list(await asyncio.gather(*(one(p) for p in sample)))


class UnknownModel(UsageError):
    """count_tokens answered 404 for a model: the run would stop at its first request the same way."""

    def __init__(self, model: str, message: str) -> None:
        from batchrun.stops import model_missing

        super().__init__(
            f"dry run: {model_missing(model)} (the API said: {message}); nothing was sent (fix the job's model or "
            "routes, or --model)"
        )


def plan(input_path: str, job: Job, make_client: Callable[[], Any] | None) -> dict[str, Any]:
    models = tally(input_path, job)
    counted: dict[str, float] = {}
    if make_client is not None:  # counted by the API; asyncio is not imported for an estimate
        import asyncio

        counted = asyncio.run(_count_all(models, make_client))
    rows = [_model_plan(model, t, counted.get(model), job) for model, t in sorted(models.items())]
    limits = {k: getattr(job, k) or ASSUMED_LIMITS[k] for k in ASSUMED_LIMITS}
    costs = {mode: _total(r[f"cost_{mode}_usd"] for r in rows) for mode in ("online", "batch")}
    return {
        "deadline": _deadline_plan(rows, job, costs),
        "items": sum(t.items for t in models.values()),
        "models": rows,
        "counted_with_api": bool(counted),
        "cost_usd": costs,
        "unpriced_models": [r["model"] for r in rows if r["cost_online_usd"] is None],
        "limits": limits,
        "limits_assumed": [k for k in ASSUMED_LIMITS if not getattr(job, k)],
        "concurrency": job.concurrency,
        "online_seconds": round(online_seconds(_work(rows), capacity_of(job)), 1),
        "prices_taken": PRICES_TAKEN,
    }


async def _count_all(models: dict[str, ModelTally], make_client: Callable[[], Any]) -> dict[str, float]:
    """Counted/estimated input tokens per model, from the sample."""
    from batchrun.api import APIFailure

    client = make_client()
    try:
        ratios = {}
        for model, t in models.items():
            try:
                counts = await count_sample(client, t.sample)
            except APIFailure as failure:
                if failure.status == 404 and failure.error_type == "not_found_error":
                    raise UnknownModel(model, failure.message) from None
                raise
            estimates = sum(estimate_input_tokens(p) for p in t.sample)
            ratios[model] = sum(counts) / max(1, estimates)
        return ratios
    finally:
        await client.close()


def _model_plan(model: str, t: ModelTally, ratio: float | None, job: Job) -> dict[str, Any]:
    ratio = ratio or 1.0
    total_in = round(t.estimated_input * ratio)
    system = round(t.system_estimate * ratio)
    cacheable = t.cached_items > 1 and system >= min_cacheable_tokens(model)
    writes = system if cacheable else 0
    reads = system * (t.cached_items - 1) if cacheable else 0
    usage = {
        "model": model,
        "input": total_in - writes - reads,
        "output": t.max_output,
        "cache_creation": writes,
        "cache_read": reads,
    }
    return {
        "model": model,
        "items": t.items,
        "input_tokens": total_in,
        "max_output_tokens": t.max_output,
        "cache_creation_tokens": writes,
        "cache_read_tokens": reads,
        "cost_online_usd": _rounded(cost({**usage, "via": "online"}, job.prices, job.cache_ttl)),
        "cost_batch_usd": _rounded(cost({**usage, "via": "batch"}, job.prices, job.cache_ttl)),
    }


def _total(costs: Iterable[float | None]) -> float | None:
    total: float | None = 0.0
    for usd in costs:
        total = add_cost(total, usd)
    return _rounded(total)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _work(rows: list[dict[str, Any]]) -> Work:
    """What the online path has to send: items, input tokens that count against the limit (not cache reads), and
    output tokens reserved at max_tokens."""
    return Work(
        sum(r["items"] for r in rows),
        sum(r["input_tokens"] - r["cache_read_tokens"] for r in rows),
        sum(r["max_output_tokens"] for r in rows),
    )


def _deadline_plan(rows: list[dict[str, Any]], job: Job, costs: dict[str, float | None]) -> dict[str, Any] | None:
    """Mode auto: the plan if the run started now -- latest switch time, expected share at batch price, and the
    cost: all online at worst, all batch at best."""
    if job.mode != "auto" or not job.deadline:
        return None
    now = time.time()
    try:
        deadline_at = parse_deadline(job.deadline, now)
    except DeadlineError:
        return None
    p = make_plan(deadline_at, now, _work(rows), capacity_of(job), job.deadline_margin)
    share = p.expected_batch_share if p.feasible else 0.0
    online, batch = costs["online"], costs["batch"]
    expected = None if online is None or batch is None else round(share * batch + (1 - share) * online, 6)
    return {
        **p.to_dict(),
        "expected_batch_share": share,
        "cost_usd": {"expected": expected, "worst_case": online, "best_case": batch},
    }


def format_deadline(d: dict[str, Any]) -> str:
    from batchrun.deadline import duration

    ahead = duration(d["seconds_to_deadline"])
    online = f"{d['items_left']:,} item(s) in about {duration(d['online_seconds'])}"
    if not d["feasible"]:
        return (
            f"  deadline in {ahead}: cannot be met even online from the start (online: {online}, plus a "
            f"{duration(d['margin_seconds'])} margin); submit refuses it unless --force"
        )
    c = d["cost_usd"]
    usd = lambda v: "unknown" if v is None else f"${v:,.4f}"  # noqa: E731
    return (
        f"  deadline in {ahead}: batches until {d['switch_at']} at the latest (in {duration(d['seconds_to_switch'])})"
        f", then the rest online: {online} + {duration(d['margin_seconds'])} margin; expected at batch price: "
        f"{d['expected_batch_share']:.0%}; cost: expected {usd(c['expected'])}, worst case {usd(c['worst_case'])} "
        f"(all online), at best {usd(c['best_case'])} (all batch)"
    )


def format_plan(p: dict[str, Any]) -> str:
    how = "counted with count_tokens on a sample" if p["counted_with_api"] else "estimated (no API access)"
    lines = [f"dry run: {p['items']:,} items, nothing sent; input tokens {how}; prices of {p['prices_taken']}"]
    for r in p["models"]:
        price = lambda v: "cost unknown (no price)" if v is None else f"${v:,.4f}"  # noqa: E731
        lines.append(
            f"  {r['model']}: {r['items']:,} items, {r['input_tokens']:,} input tokens "
            f"({r['cache_read_tokens']:,} as cache reads, {r['cache_creation_tokens']:,} as cache writes), "
            f"at most {r['max_output_tokens']:,} output tokens: online {price(r['cost_online_usd'])}, "
            f"batch {price(r['cost_batch_usd'])}"
        )
    if p["unpriced_models"]:
        lines.append(
            f"  expected cost: unknown (no price for {', '.join(p['unpriced_models'])}: "
            "give it under [prices] in the job file)"
        )
    else:
        lines.append(
            f"  expected cost at most: online ${p['cost_usd']['online']:,.4f}, batch ${p['cost_usd']['batch']:,.4f} "
            "(output priced at max_tokens)"
        )
    limits = ", ".join(f"{k.upper()} {v:,}" for k, v in p["limits"].items())
    assumed = (
        f" (assumed for {', '.join(p['limits_assumed'])}: pass --rpm/--itpm/--otpm)" if p["limits_assumed"] else ""
    )
    lines.append(
        f"  online path at {limits}{assumed}, {p['concurrency']:,} in flight: about {duration(p['online_seconds'])} "
        f"at worst (replies of max_tokens at {OUTPUT_TOKENS_PER_S:g} tokens/s)"
    )
    if p.get("deadline"):
        lines.append(format_deadline(p["deadline"]))
    return "\n".join(lines)
