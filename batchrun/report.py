"""What `status` shows: counts by state, tokens, cost, failures grouped by kind."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from batchrun.lock import lock_holder
from batchrun.pricing import PRICES_TAKEN, cost, total_cost
from batchrun.store import Store
from batchrun.stored import load_run


def run_status(store: Store, run_id: str) -> dict[str, Any]:
    run, job = load_run(store, run_id)
    usage = store.usage(run_id)
    usd, unpriced = total_cost(usage, job.prices, job.cache_ttl)
    kinds = ("input", "output", "cache_creation", "cache_creation_1h", "cache_read")
    tokens = {k: sum(row[k] or 0 for row in usage) for k in kinds}
    return {
        "run_id": run_id,
        "status": _live_status(store, run_id, run["status"], run.get("stop")),
        "stopped_by": _stop_reason(run),
        "mode": run["mode"],
        "endpoint": run.get("endpoint"),
        "input_path": run["input_path"],
        "total": run["total"],
        "counts": store.counts(run_id),
        "answered_by": store.answered_by(run_id),
        "stop_reasons": store.stop_reasons(run_id),
        "tokens": tokens,
        "cost_usd": None if unpriced else round(usd, 6),
        "unpriced_models": unpriced,
        "prices_taken": PRICES_TAKEN,
        "prices_source": prices_source(job.prices),
        "by_model": [{**row, "cost_usd": _rounded(cost(row, job.prices, job.cache_ttl))} for row in usage],
        "failures": store.failures(run_id),
        "batches": batch_status(store, run_id),
        "deadline": deadline_status(store, run_id, job) if job.mode == "auto" else None,
        "rate_limits": limit_share(run.get("limit_use")),
    }


def limit_share(stored: str | None) -> dict[str, Any] | None:
    """What the run's online sending took of each of the account's limits (a share of what the limit allows over
    the time it was sending), the one it used most, and the 429s it met."""
    import orjson

    try:
        use = orjson.loads(stored) if stored else None
        seconds = float(use["seconds"]) if use else 0.0
        shares = {
            name: float(use["used"].get(name, 0)) / (seconds * float(limit) / 60.0)
            for name, limit in use["limits"].items()
            if limit and seconds > 0
        }
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None  # an unreadable figure is no figure: status goes on
    if not use:
        return None
    binding = max(shares, key=shares.__getitem__) if shares else None
    return {
        "rate_limited": int(use.get("rate_limited") or 0),
        "seconds": round(seconds, 3),
        "limits": use["limits"],
        "shares": {name: round(share, 4) for name, share in shares.items()},
        "binding": binding,
    }


def format_limits(r: dict[str, Any]) -> str:
    """One line: the share of the account's limit the run had while it was sending online, and its 429s."""
    names = {"requests": "requests", "input_tokens": "input tokens", "output_tokens": "output tokens"}
    binding = r["binding"]
    share = (
        f"{r['shares'][binding]:.0%} of the account's {int(r['limits'][binding]):,} {names[binding]} per minute"
        if binding
        else "no limit told by the API"
    )
    return f"  rate limits: had {share} while sending online ({r['seconds']:,.0f} s); {r['rate_limited']:,} 429(s) met"


def prices_source(overrides: dict[str, Any] | None) -> str:
    """Where the run's prices come from, in the product's terms: the built-in table (and its date), and the
    models the job's [prices] set."""
    built_in = f"batchrun's built-in price table of {PRICES_TAKEN} (USD per million tokens, batch at half price)"
    if not overrides:
        return built_in
    return f"the job's [prices] for {', '.join(sorted(overrides))}; {built_in} for any other model"


def deadline_status(store: Store, run_id: str, job: Any) -> dict[str, Any] | None:
    """Mode auto: the plan made from what is left now, and where the run is in it."""
    import time

    from batchrun.auto import run_plan
    from batchrun.deadline import DeadlineError

    if not job.deadline:
        return None
    try:
        plan = run_plan(store, run_id, job, time.time())
    except DeadlineError:
        return None
    answered = store.answered_by(run_id)
    if not plan.items:
        phase = "done"
    elif store.batches(run_id, open_only=True):
        phase = "batches" if plan.feasible else "switching"
    elif answered["api"] or not plan.feasible:
        phase = "online"
    else:
        phase = "not started" if not store.batches(run_id) else "batches"
    return {**plan.to_dict(), "phase": phase, "batch_price": answered["batch"], "online": answered["api"]}


def _rounded(usd: float | None) -> float | None:
    return None if usd is None else round(usd, 6)


def cost_text(s: dict[str, Any]) -> str:
    """`$0.1234`, or why the cost is unknown: a model with no price is never shown as costing $0."""
    if not s["unpriced_models"]:
        return f"${s['cost_usd']:.4f}"
    priced = sum(row["cost_usd"] or 0 for row in s["by_model"])
    known = f"; ${priced:.4f} for the priced models" if priced else ""
    return f"unknown (no price for {', '.join(s['unpriced_models'])}: give it under [prices] in the job file){known}"


def batch_status(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The run's Message Batches: API id, status and counts as last seen, timestamps, and whether the results
    are stored. Our own times (planned, collected) are UTC like the API's."""
    return [
        {
            "seq": b["seq"],
            "id": b["id"],
            "processing_status": b["processing_status"],
            "request_counts": b["request_counts"],
            "requests": b["n_items"],
            "bytes": b["n_bytes"],
            "first_custom_id": b["first_custom_id"],
            "last_custom_id": b["last_custom_id"],
            "planned_at": _utc(b["planned_at"]),
            "created_at": b["created_at"],
            "ended_at": b["ended_at"],
            "expires_at": b["expires_at"],
            "cancel_initiated_at": b["cancel_initiated_at"],
            "results_stored_at": _utc(b["collected_at"]) if b["id"] else None,
            "adopted": bool(b["adopted"]),
            "error": b["error"],
        }
        for b in store.batches(run_id)
    ]


def _utc(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def format_status(s: dict[str, Any]) -> str:
    c = s["counts"]
    t = s["tokens"]
    lines = [
        f"run {s['run_id']} ({s['mode']}, {s['status']}, on {s['endpoint'] or 'an unrecorded endpoint'}): "
        f"{s['input_path']}",
        f"  {c['succeeded']} succeeded, {c['failed']} failed, {c['pending']} pending, {c['in_flight']} in flight"
        f" of {s['total']}",
        f"  tokens: {t['input']:,} in, {t['output']:,} out, {t['cache_creation']:,} cache write"
        + (f" ({t['cache_creation_1h']:,} of them 1-hour)" if t["cache_creation_1h"] else "")
        + f", {t['cache_read']:,} cache read; cost {cost_text(s)}",
    ]
    if s.get("stop_reasons"):
        reasons = ", ".join(f"{n} {reason}" for reason, n in s["stop_reasons"].items())
        lines.append(f"  succeeded by stop reason: {reasons}")
    for f in s["failures"]:
        status = f" {f['error_status']}" if f["error_status"] else ""
        lines.append(f"  {f['items']} failed with{status} {f['error_type']}: {f['example']}")
    if s.get("rate_limits"):
        lines.append(format_limits(s["rate_limits"]))
    if s.get("deadline"):
        lines.append("  " + format_deadline(s["deadline"]))
    lines.extend(format_batch(b) for b in s.get("batches") or [])
    return "\n".join(lines)


def format_deadline(d: dict[str, Any]) -> str:
    from batchrun.deadline import describe_plan

    answered = f"{d['batch_price']} at batch price, {d['online']} online"
    if d["phase"] == "done":
        return f"deadline {d['deadline']}: done; {answered}"
    return f"{describe_plan(d)}; now: {d['phase']}; so far {answered}"


def format_batch(b: dict[str, Any]) -> str:
    if b["id"] is None:
        what = "never created" if b["processing_status"] == "not_created" else "planned, not created yet"
        line = f"  batch {b['seq']} ({what}): {b['requests']} requests, planned {b['planned_at']}"
        return line + (f"; {b['error']}" if b["error"] else "")
    counts = b["request_counts"] or {}
    kinds = ("processing", "succeeded", "errored", "expired", "canceled")
    shown = ", ".join(f"{counts[k]} {k}" for k in kinds if counts.get(k))
    stored = "results stored" if b["results_stored_at"] else "results not stored yet"
    line = f"  batch {b['seq']} {b['id']}: {b['processing_status']}, {stored}; {b['requests']} requests"
    line += f" ({shown})" if shown else ""
    line += f"; created {b['created_at']}"
    line += f", ended {b['ended_at']}" if b["ended_at"] else f", expires {b['expires_at']}"
    return line + (" (adopted after a crash)" if b["adopted"] else "")


def _stop_reason(run: dict[str, Any]) -> str | None:
    """The reason code of the stop kept with a run (unknown_model, fatal_api, budget, outage, interrupted, ...)."""
    from batchrun.stops import stop_reason

    return stop_reason(run.get("stop"))  # a command that takes the run up clears it


def _live_status(store: Store, run_id: str, recorded: str, stop: str | None = None) -> str:
    """A run recorded as running whose lock nobody holds was left by a process that died; one that stopped says
    why, and what to do."""
    if recorded != "running":
        from batchrun.stops import run_status_text

        return run_status_text(run_id, recorded, stop)
    holder = lock_holder(store.path, run_id)
    return f"running ({holder})" if holder else "interrupted (its process died; `batchrun resume` continues it)"
