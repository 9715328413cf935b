"""What `status` shows: counts by state, tokens, cost, failures grouped by kind."""

from __future__ import annotations

from typing import Any

from batchrun.pricing import PRICES_TAKEN, cost, total_cost
from batchrun.runs import load_run
from batchrun.store import Store


def run_status(store: Store, run_id: str) -> dict[str, Any]:
    run, job = load_run(store, run_id)
    usage = store.usage(run_id)
    usd, unpriced = total_cost(usage, job.prices)
    tokens = {k: sum(row[k] or 0 for row in usage) for k in ("input", "output", "cache_creation", "cache_read")}
    return {
        "run_id": run_id,
        "status": run["status"],
        "mode": run["mode"],
        "input_path": run["input_path"],
        "total": run["total"],
        "counts": store.counts(run_id),
        "tokens": tokens,
        "cost_usd": round(usd, 6),
        "unpriced_models": unpriced,
        "prices_taken": PRICES_TAKEN,
        "by_model": [{**row, "cost_usd": cost(row, job.prices)} for row in usage],
        "failures": store.failures(run_id),
    }


def format_status(s: dict[str, Any]) -> str:
    c = s["counts"]
    t = s["tokens"]
    lines = [
        f"run {s['run_id']} ({s['mode']}, {s['status']}): {s['input_path']}",
        f"  {c['succeeded']} succeeded, {c['failed']} failed, {c['pending']} pending, {c['in_flight']} in flight"
        f" of {s['total']}",
        f"  tokens: {t['input']:,} in, {t['output']:,} out, {t['cache_creation']:,} cache write, "
        f"{t['cache_read']:,} cache read; cost ${s['cost_usd']:.4f}"
        + (f" (no price for {', '.join(s['unpriced_models'])})" if s["unpriced_models"] else ""),
    ]
    for f in s["failures"]:
        status = f" {f['error_status']}" if f["error_status"] else ""
        lines.append(f"  {f['items']} failed with{status} {f['error_type']}: {f['example']}")
    return "\n".join(lines)
