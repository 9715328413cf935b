"""`batchrun report RUN -o report.html`: one self-contained HTML file (inline SVG, no script, no network) showing
how a run went, from the store alone, so any run can be reported on, old ones too.

The headline numbers come from `report.run_status` (what `status --json` prints), never recomputed. Each section
is a function from the gathered data to HTML; sections for schema jobs (field distributions) slot into SECTIONS.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

import batchrun.store as store_queries
from batchrun.pricing import cost
from batchrun.report import run_status
from batchrun.store import Store
from batchrun.stored import load_run

SAMPLE_RESULTS = 10
WIDTH, HEIGHT = 760, 220
PAD_L, PAD_R, PAD_T, PAD_B = 56, 16, 14, 34
COLORS = {"ok": "#2b7bb9", "429": "#e8590c", "529": "#c92a2a", "grid": "#e5e5e5", "axis": "#555", "bar": "#5c7cfa"}


@dataclass
class ReportData:
    """Everything a report shows, read from the store once."""

    status: dict[str, Any]
    job: Any
    attempts: list[tuple[float, float, int | None, str]]
    finished: list[float]
    attempts_per_item: list[tuple[int, int]]
    failures: list[dict[str, Any]]
    sample: list[dict[str, Any]]
    previous_run: str | None = None
    fields: dict[str, tuple[dict[Any, int], dict[Any, int]]] = field(default_factory=dict)
    generated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def gather(store: Store, run_id: str) -> ReportData:
    status = run_status(store, run_id)
    _, job = load_run(store, run_id)
    sample = [
        {"custom_id": cid, "state": state, "result": orjson.loads(result)}
        for cid, state, result in itertools.islice(store.iter_results(run_id), SAMPLE_RESULTS)
    ]
    previous = store_queries.report_previous_run(store, run_id)
    fields = {
        name: (
            dict(store_queries.report_field_counts(store, run_id, name)),
            dict(store_queries.report_field_counts(store, previous, name)) if previous else {},
        )
        for name in categorical_fields(getattr(job, "schema", None))
    }
    return ReportData(
        status=status,
        job=job,
        previous_run=previous,
        fields=fields,
        attempts=store_queries.report_attempts(store, run_id),
        finished=store_queries.report_finished_times(store, run_id),
        attempts_per_item=store_queries.report_attempts_per_item(store, run_id),
        failures=store_queries.report_failure_messages(store, run_id),
        sample=sample,
    )


def write_report(store: Store, run_id: str, path: str | Path) -> Path:
    """Write the report of `run_id` to `path` like the exports: whole or not at all, readable by its owner only
    (it holds the run's prompts and answers); returns the path."""
    from batchrun.export import private_file

    text = render(gather(store, run_id)).encode()
    with private_file(path) as out:
        out.write(text)
    return Path(path)


def render(data: ReportData) -> str:
    s = data.status
    body = "\n".join(section(data) for section in SECTIONS)
    title = f"batchrun report: {s['run_id']}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width'><title>{_e(title)}</title>"
        f"<style>{CSS}</style></head><body>\n<h1>{_e(title)}</h1>\n"
        f"<p class='meta'>{_e(s['mode'])} run, {_e(s['status'])}; input {_e(s['input_path'])}; "
        f"report made {_e(data.generated_at)}</p>\n{body}\n</body></html>\n"
    )


# sections


def summary(data: ReportData) -> str:
    s = data.status
    c, t = s["counts"], s["tokens"]
    cells = [
        ("total", "Items", s["total"]),
        ("counts.succeeded", "Succeeded", c["succeeded"]),
        ("counts.failed", "Failed", c["failed"]),
        ("counts.pending", "Pending", c["pending"]),
        ("counts.in_flight", "In flight", c["in_flight"]),
        ("tokens.input", "Input tokens", t["input"]),
        ("tokens.output", "Output tokens", t["output"]),
        ("tokens.cache_creation", "Cache-write tokens", t["cache_creation"]),
        ("tokens.cache_creation_1h", "of them with the 1-hour TTL", t.get("cache_creation_1h", 0)),
        ("tokens.cache_read", "Cache-read tokens", t["cache_read"]),
        ("cost_usd", "Cost (USD)", s["cost_usd"]),
    ]
    limits = s.get("rate_limits")
    if limits:
        binding = limits["binding"]
        cells.append(("rate_limits.rate_limited", "429s met", limits["rate_limited"]))
        if binding:
            label = f"Share of the {binding.replace('_', ' ')} limit while sending"
            cells.append((f"rate_limits.shares.{binding}", label, limits["shares"][binding]))
    rows = "".join(
        f"<tr><th>{_e(label)}</th><td data-key='{_e(key)}' data-value='{_e(value)}'>{_e(_num(value, key))}</td></tr>"
        for key, label, value in cells
    )
    unpriced = s["unpriced_models"]
    note = f"<p class='warn'>No price known for {_e(', '.join(unpriced))}: not in the cost.</p>" if unpriced else ""
    return f"<h2>Summary</h2><table class='summary'>{rows}</table>{note}"


def throughput(data: ReportData) -> str:
    if not data.finished:
        return "<h2>Throughput</h2><p class='empty'>No item has its outcome yet.</p>"
    t0 = _t0(data)
    span = max([data.finished[-1], *(a[0] + a[1] for a in data.attempts)]) - t0
    step = _bucket(span)
    span = max(span, step)  # all at once (answers from the response cache): one bucket wide
    counts = _histogram([t - t0 for t in data.finished], step, span)
    points = [(i * step, n / step) for i, n in enumerate(counts)]
    marks = [(a[0] + a[1] - t0, str(a[2])) for a in data.attempts if a[2] in (429, 529)]
    n429 = sum(1 for _, k in marks if k == "429")
    n529 = len(marks) - n429
    legend = (
        f"<p class='legend'><span style='color:{COLORS['ok']}'>&#9632;</span> items/s (per {step:g}s) "
        f"<span style='color:{COLORS['429']}'>&#9650;</span> 429 ({n429}) "
        f"<span style='color:{COLORS['529']}'>&#9650;</span> 529 ({n529})</p>"
    )
    svg = line_chart(points, span, "items/s", marks=marks, chart="throughput")
    return f"<h2>Throughput</h2>{legend}{svg}"


def concurrency(data: ReportData) -> str:
    if not data.attempts:
        return "<h2>Concurrency</h2><p class='empty'>No request on record.</p>"
    t0 = _t0(data)
    edges = sorted(
        [(a[0] - t0, 1) for a in data.attempts] + [(a[0] + a[1] - t0, -1) for a in data.attempts],
        key=lambda e: (e[0], e[1]),
    )
    span = max(edges[-1][0], 1e-3)
    step = _bucket(span)
    peaks = [0] * (int(span / step) + 1)
    level = 0
    for t, delta in edges:
        level += delta
        i = min(len(peaks) - 1, int(t / step))
        peaks[i] = max(peaks[i], level)
    points = [(i * step, p) for i, p in enumerate(peaks)]
    svg = line_chart(points, span, "in flight", chart="concurrency", step=True)
    return f"<h2>Concurrency</h2><p class='legend'>Most requests in flight in each {step:g}s.</p>{svg}"


def latency(data: ReportData) -> str:
    """Online requests by percentile; Message Batches by batch (every item of a batch is answered when the batch
    ends, so a percentile over its items would only repeat the batch's time)."""
    seconds = sorted(a[1] for a in data.attempts if a[3] == "succeeded" and a[2] is not None)
    parts = ["<h2>Request latency</h2>"]
    if seconds:
        bars = [(name, _percentile(seconds, q)) for name, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99))]
        bars.append(("max", seconds[-1]))
        parts.append(f"<p class='legend'>Online: {len(seconds):,} successful requests, first byte sent to last")
        parts.append(f" received.</p>{bar_chart(bars, unit='s', chart='latency')}")
    took = [(f"batch {b['seq']}", _batch_seconds(b)) for b in data.status["batches"]]
    took = [(label, t) for label, t in took if t is not None]
    if took:
        parts.append(
            "<p class='legend'>Message Batches: latency is per batch, from its creation to its end (each of its "
            f"items is answered when the batch ends). {len(took):,} batch(es).</p>"
            f"{bar_chart(took, unit='s', chart='batch-latency', seconds=True)}"
        )
    if len(parts) == 1:
        parts.append("<p class='empty'>No successful request on record.</p>")
    return "".join(parts)


def _batch_seconds(batch: dict[str, Any]) -> float | None:
    start, end = _parse_time(batch["created_at"]), _parse_time(batch["ended_at"])
    return (end - start).total_seconds() if start and end else None


def tokens_and_cost(data: ReportData) -> str:
    s = data.status
    rows = []
    for row in s["by_model"]:
        rows.append(
            f"<tr><td>{_e(row['model'])}</td><td>{_e(row['via'])}</td><td>{row['items']:,}</td>"
            f"<td>{row['input']:,}</td><td>{row['output']:,}</td><td>{row['cache_creation']:,}</td>"
            f"<td>{row['cache_read']:,}</td><td>{_usd(row['cost_usd'])}</td></tr>"
        )
    table = (
        "<table><tr><th>Model</th><th>Via</th><th>Items</th><th>Input</th><th>Output</th><th>Cache write</th>"
        f"<th>Cache read</th><th>Cost</th></tr>{''.join(rows)}</table>"
        if rows
        else "<p class='empty'>No usage yet.</p>"
    )
    costs = bar_chart(
        [(name, usd) for name, usd in what_if(data) if usd is not None], unit="$", chart="cost", money=True
    )
    unknown = [name for name, usd in what_if(data) if usd is None]
    note = f"<p class='warn'>Unknown price: {_e(', '.join(unknown))}.</p>" if unknown else ""
    t = s["tokens"]
    cache = bar_chart(
        [("cache read", t["cache_read"]), ("cache write", t["cache_creation"]), ("uncached input", t["input"])],
        unit="tokens",
        chart="cache",
    )
    return (
        f"<h2>Tokens and cost by model</h2>{table}<h3>The same run, priced other ways</h3>{costs}{note}"
        f"<h3>Input tokens: cache reads, cache writes, uncached</h3>{cache}"
    )


def what_if(data: ReportData) -> list[tuple[str, float | None]]:
    """The run's cost as billed, without prompt caching, and all online or all in batch mode; None if unknown."""
    rows = [r for r in data.status["by_model"] if r["via"] != "cache"]
    prices = data.job.prices

    def total(transform: Callable[[dict[str, Any]], dict[str, Any]]) -> float | None:
        parts = [cost(transform(dict(r)), prices) for r in rows]
        return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)

    def uncached(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "input": r["input"] + r["cache_creation"] + r["cache_read"], "cache_creation": 0, "cache_read": 0}

    return [
        ("as billed", data.status["cost_usd"]),
        ("without caching", total(uncached)),
        ("all online", total(lambda r: {**r, "via": "online"})),
        ("all batch", total(lambda r: {**r, "via": "batch"})),
    ]


def failures(data: ReportData) -> str:
    if not data.failures:
        return "<h2>Failures</h2><p class='empty'>No item failed for good.</p>"
    rows = "".join(
        f"<tr><td>{f['items']:,}</td><td>{_e(f['error_type'])}</td><td>{_e(f['error_status'] or '')}</td>"
        f"<td>{_e(f['message'] or '')}</td><td>{_e(', '.join(f['ids']))}</td></tr>"
        for f in grouped_failures(data.failures)
    )
    return (
        "<h2>Failures</h2><table><tr><th>Items</th><th>Type</th><th>Status</th><th>Message</th>"
        f"<th>Examples</th></tr>{rows}</table>"
    )


GROUPED_BY_TYPE = ("refusal",)  # their message carries the reply's own text: one row per kind, not per reply


def grouped_failures(rows: list[dict[str, Any]], examples: int = 3) -> list[dict[str, Any]]:
    """The failure groups, refusals made one group (with the part of the message all of them share)."""
    kept = [f for f in rows if f["error_type"] not in GROUPED_BY_TYPE]
    for kind in GROUPED_BY_TYPE:
        for status in dict.fromkeys(f["error_status"] for f in rows if f["error_type"] == kind):
            same = [f for f in rows if f["error_type"] == kind and f["error_status"] == status]
            heads = {(f["message"] or "").split(":", 1)[0] for f in same}
            kept.append(
                {
                    "error_type": kind,
                    "error_status": status,
                    "message": heads.pop() if len(heads) == 1 else "",
                    "items": sum(f["items"] for f in same),
                    "ids": [i for f in same for i in f["ids"]][:examples],
                }
            )
    return sorted(kept, key=lambda f: (-f["items"], f["error_type"] or ""))


def retries(data: ReportData) -> str:
    if not data.attempts_per_item:
        return "<h2>Attempts per item</h2><p class='empty'>No item has its outcome yet.</p>"
    bars = [(f"{n} attempt{'s' if n != 1 else ''}", items) for n, items in data.attempts_per_item]
    return f"<h2>Attempts per item</h2>{bar_chart(bars, unit='items', chart='retries')}"


def batches(data: ReportData) -> str:
    rows = data.status["batches"]
    if not rows:
        return "<h2>Batches</h2><p class='empty'>No Message Batches (an online run).</p>"
    spans = []
    for b in rows:
        start = _parse_time(b["created_at"])
        if start is None:
            continue
        end = _parse_time(b["ended_at"]) or _parse_time(b["results_stored_at"]) or start
        spans.append((f"batch {b['seq']}", start, end, b))
    table = "".join(
        f"<tr><td>{b['seq']}</td><td class='id'>{_e(b['id'] or '-')}</td><td>{_e(b['processing_status'])}</td>"
        f"<td>{b['requests']:,}</td><td>{_e(_counts(b['request_counts']))}</td>"
        f"<td>{_e(_clock(b['created_at']))}</td><td>{_e(_took(b))}</td></tr>"
        for b in rows
    )
    svg = timeline([(label, start, end) for label, start, end, _ in spans]) if spans else ""
    return (
        f"<h2>Batches</h2>{svg}<table class='batches'><tr><th>#</th><th>Id</th><th>Status</th><th>Requests</th>"
        f"<th>Counts</th><th>Created (UTC)</th><th>Took</th></tr>{table}</table>"
    )


def _clock(value: str | None) -> str:
    when = _parse_time(value)
    return when.strftime("%Y-%m-%d %H:%M:%S") if when else ""


def _took(batch: dict[str, Any]) -> str:
    seconds = _batch_seconds(batch)
    return "" if seconds is None else _duration(seconds)


def field_distributions(data: ReportData) -> str:
    """Schema jobs: each enum or boolean field's distribution, beside the previous run of the same job (a shift in
    labels from one night to the next is the first thing a data team asks about)."""
    if not data.fields:
        return ""
    if data.previous_run:
        parts = [f"<h2>Answers by field</h2><p>This run beside the previous run, {_e(data.previous_run)}.</p>"]
        head = "<tr><th>Value</th><th>This run</th><th>Share</th><th>Previous run</th><th>Share</th></tr>"
    else:
        parts = ["<h2>Answers by field</h2><p>The first run of this job: no previous run to compare with.</p>"]
        head = "<tr><th>Value</th><th>Items</th><th>Share</th></tr>"
    properties = (getattr(data.job, "schema", None) or {}).get("properties") or {}
    for name, (now, before) in data.fields.items():
        total_now, total_before = sum(now.values()) or 1, sum(before.values()) or 1
        values = field_order(properties.get(name), set(now) | set(before), now)
        rows = "".join(
            f"<tr><td>{_e(_label(v))}</td><td data-field='{_e(name)}' data-value='{_e(_label(v))}'>{now.get(v, 0):,}"
            f"</td><td>{now.get(v, 0) / total_now:.0%}</td>"
            + (
                f"<td>{before.get(v, 0):,}</td><td>{before.get(v, 0) / total_before:.0%}</td>"
                if data.previous_run
                else ""
            )
            + "</tr>"
            for v in values
        )
        bars = [(_label(v), 100 * now.get(v, 0) / total_now) for v in values]  # this run; the table has both
        chart = bar_chart(bars, unit="%", chart=f"field-{name}")
        parts.append(f"<h3>{_e(name)}</h3>{chart}<table>{head}{rows}</table>")
    return "".join(parts)


def field_order(spec: Any, values: set[Any], counts: dict[Any, int]) -> list[Any]:
    """An ordered field's values in their order (integers ascending, false before true), an enum's in the
    schema's order, anything else most frequent first; no value last."""
    spec = spec if isinstance(spec, dict) else {}
    present = [v for v in values if v is not None]
    if spec.get("type") == "boolean" or set(present) <= {"true", "false", True, False}:
        ordered = sorted(present, key=lambda v: v in ("true", True))
    elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        ordered = sorted(present)
    elif isinstance(spec.get("enum"), list):
        rank = {str(v): n for n, v in enumerate(spec["enum"])}
        ordered = sorted(present, key=lambda v: (rank.get(str(v), len(rank)), str(v)))
    else:
        ordered = sorted(present, key=lambda v: (-counts.get(v, 0), str(v)))
    return ordered + ([None] if None in values else [])


def _label(value: Any) -> str:
    return "(none)" if value is None else str(value)


def categorical_fields(schema: dict[str, Any] | None) -> list[str]:
    """The schema's top-level properties with a small fixed set of values: enums, booleans, and integers of a range
    of at most 10 (a 1-5 urgency)."""
    properties = (schema or {}).get("properties") or {}
    return [name for name, spec in properties.items() if isinstance(spec, dict) and _categorical(spec)]


def _categorical(spec: dict[str, Any]) -> bool:
    if "enum" in spec or spec.get("type") == "boolean":
        return True
    low, high = spec.get("minimum"), spec.get("maximum")
    return spec.get("type") == "integer" and isinstance(low, int) and isinstance(high, int) and high - low <= 10


def sample(data: ReportData) -> str:
    if not data.sample:
        return "<h2>Sample of results</h2><p class='empty'>No result yet.</p>"
    rows = "".join(
        f"<tr><td>{_e(r['custom_id'])}</td><td>{_e(r['state'])}</td><td><pre>{_e(_result_text(r['result']))}</pre>"
        "</td></tr>"
        for r in data.sample
    )
    return (
        f"<h2>Sample of results</h2><p class='legend'>The first {len(data.sample)} in input order.</p>"
        f"<table><tr><th>custom_id</th><th>State</th><th>Result</th></tr>{rows}</table>"
    )


SECTIONS: list[Callable[[ReportData], str]] = [
    summary,
    throughput,
    concurrency,
    latency,
    tokens_and_cost,
    failures,
    retries,
    batches,
    field_distributions,
    sample,
]


# charts (inline SVG)


def line_chart(
    points: Sequence[tuple[float, float]],
    span: float,
    y_label: str,
    *,
    marks: Iterable[tuple[float, str]] = (),
    chart: str,
    step: bool = False,
) -> str:
    y_ticks = ticks(max((y for _, y in points), default=1.0))
    top = y_ticks[-1]
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    span = max(span, 1e-9)

    def xy(x: float, y: float) -> str:
        return f"{PAD_L + x / span * plot_w:.1f},{PAD_T + plot_h - y / top * plot_h:.1f}"

    if step:
        coords = []
        for (x, y), (x2, _) in itertools.pairwise([*points, (span, 0)]):
            coords += [xy(x, y), xy(x2, y)]
    else:
        coords = [xy(x, y) for x, y in points]
    parts = [_axes(span, y_ticks, y_label)]
    parts.append(f"<polyline fill='none' stroke='{COLORS['ok']}' stroke-width='1.8' points='{' '.join(coords)}'/>")
    for x, kind in marks:
        px = PAD_L + min(x, span) / span * plot_w
        y = PAD_T + plot_h
        parts.append(
            f"<path class='mark-{_e(kind)}' d='M{px:.1f},{y - 9:.1f} l-4,8 h8 z' fill='{COLORS.get(kind, '#000')}' "
            "opacity='0.75'/>"
        )
    return _svg(chart, WIDTH, HEIGHT, "".join(parts))


def bar_chart(
    bars: Sequence[tuple[str, float]], *, unit: str, chart: str, money: bool = False, seconds: bool = False
) -> str:
    if not bars:
        return "<p class='empty'>Nothing to show.</p>"
    row_h, label_w = 26, 130
    height = PAD_T + row_h * len(bars) + 8
    top = 100.0 if unit == "%" else max((v for _, v in bars), default=0) or 1.0  # a share is drawn out of 100%
    plot_w = WIDTH - label_w - 120
    parts = []
    for i, (label, value) in enumerate(bars):
        y = PAD_T + i * row_h
        w = max(1.0, value / top * plot_w) if value > 0 else 0.5
        shown = _usd(value) if money else _duration(value) if seconds else _number(value) + _unit(unit)
        parts.append(
            f"<text x='{label_w - 6}' y='{y + 16}' text-anchor='end'>{_e(label)}</text>"
            f"<rect x='{label_w}' y='{y + 4}' width='{w:.1f}' height='{row_h - 8}' fill='{COLORS['bar']}'/>"
            f"<text x='{label_w + w + 6:.1f}' y='{y + 16}'>{_e(shown)}</text>"
        )
    return _svg(chart, WIDTH, height, "".join(parts))


def _unit(unit: str) -> str:
    return unit if unit == "%" else f" {unit}"


def timeline(spans: Sequence[tuple[str, datetime, datetime]]) -> str:
    t0 = min(s for _, s, _ in spans)
    t1 = max(e for _, _, e in spans)
    total = max((t1 - t0).total_seconds(), 1.0)
    row_h, label_w = 24, 90
    plot_w = WIDTH - label_w - PAD_R
    height = PAD_T + row_h * len(spans) + PAD_B
    parts = []
    for i, (label, start, end) in enumerate(spans):
        y = PAD_T + i * row_h
        x = label_w + (start - t0).total_seconds() / total * plot_w
        w = max(2.0, (end - start).total_seconds() / total * plot_w)
        parts.append(
            f"<text x='{label_w - 6}' y='{y + 15}' text-anchor='end'>{_e(label)}</text>"
            f"<rect x='{x:.1f}' y='{y + 3}' width='{w:.1f}' height='{row_h - 8}' fill='{COLORS['bar']}'/>"
        )
    base = PAD_T + row_h * len(spans)
    parts.append(f"<text x='{label_w}' y='{base + 18}'>{_e(t0.isoformat(timespec='seconds'))}</text>")
    parts.append(f"<text x='{WIDTH - PAD_R}' y='{base + 18}' text-anchor='end'>+{_duration(total)}</text>")
    return _svg("batches", WIDTH, height, "".join(parts))


def _axes(span: float, y_ticks: Sequence[float], y_label: str) -> str:
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    top = y_ticks[-1]
    parts = []
    for value in y_ticks:
        y = PAD_T + plot_h - value / top * plot_h
        parts.append(
            f"<line x1='{PAD_L}' x2='{WIDTH - PAD_R}' y1='{y:.1f}' y2='{y:.1f}' stroke='{COLORS['grid']}'/>"
            f"<text x='{PAD_L - 6}' y='{y + 4:.1f}' text-anchor='end' class='y-tick'>{_number(value)}</text>"
        )
    for t in time_ticks(span):
        x = PAD_L + plot_w * t / span
        parts.append(
            f"<text x='{x:.1f}' y='{HEIGHT - PAD_B + 16}' text-anchor='middle' class='x-tick'>{_duration(t)}</text>"
        )
    parts.append(
        f"<line x1='{PAD_L}' x2='{PAD_L}' y1='{PAD_T}' y2='{PAD_T + plot_h}' stroke='{COLORS['axis']}'/>"
        f"<line x1='{PAD_L}' x2='{WIDTH - PAD_R}' y1='{PAD_T + plot_h}' y2='{PAD_T + plot_h}' "
        f"stroke='{COLORS['axis']}'/>"
        f"<text x='12' y='{PAD_T + plot_h / 2:.0f}' transform='rotate(-90 12 {PAD_T + plot_h / 2:.0f})' "
        f"text-anchor='middle'>{_e(y_label)}</text>"
        f"<text x='{WIDTH - PAD_R}' y='{HEIGHT - 2}' text-anchor='end'>time since the first request</text>"
    )
    return "".join(parts)


def ticks(high: float, most: int = 5) -> list[float]:
    """Round tick values from 0 to at least `high`: steps of 1, 2 or 5 times a power of ten (0.5, 20, 2,000),
    at most `most` steps."""
    if not high > 0:
        return [0.0, 1.0]
    step = 10.0 ** math.floor(math.log10(high / most))
    for m in (1, 2, 5, 10):
        if math.ceil(high / (m * step) - 1e-9) <= most:
            step *= m
            break
    n = math.ceil(high / step - 1e-9)
    return [_round(i * step) for i in range(n + 1)]


TIME_STEPS = (
    *(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30),
    *(60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200),
)


def time_ticks(span: float, most: int = 6) -> list[float]:
    """Round times (1s, 30s, 5m, 1h...) from 0 to at most `span`, about `most` of them."""
    step = next((t for t in TIME_STEPS if span / t <= most), 86400 * math.ceil(span / 86400 / most))
    return [_round(i * step) for i in range(int(span / step + 1e-9) + 1)]


def _round(value: float) -> float:
    return round(value, 9)


def _number(value: float) -> str:
    """A number as people write it: 2,000 or 250k or 1.2M, 0.25 or 3.5; never 2e+03."""
    if value >= 10_000_000:
        return f"{value / 1e6:,.0f}M"
    if value >= 1_000_000:
        return f"{value / 1e6:.3g}M"
    if value >= 100_000:
        return f"{value / 1e3:,.0f}k"
    if value >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _svg(chart: str, width: int, height: int, inner: str) -> str:
    return (
        f"<svg class='chart' data-chart='{_e(chart)}' xmlns='http://www.w3.org/2000/svg' width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}' role='img' aria-label='{_e(chart)}'>{inner}</svg>"
    )


# helpers


def _t0(data: ReportData) -> float:
    starts = [a[0] for a in data.attempts[:1]] + data.finished[:1]
    return min(starts)


def _bucket(span: float) -> float:
    """A round bucket width giving about 60 points over `span` seconds."""
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
        if span / step <= 60:
            return float(step)
    return 3600.0 * math.ceil(span / 3600 / 60)


def _histogram(times: Iterable[float], step: float, span: float) -> list[int]:
    counts = [0] * (int(span / step) + 1)
    for t in times:
        counts[min(len(counts) - 1, max(0, int(t / step)))] += 1
    return counts


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    k = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _counts(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{v:,} {k}" for k, v in (counts or {}).items() if v)


def _result_text(result: dict[str, Any]) -> str:
    message = result.get("message")
    if message:
        text = "".join(b.get("text", "") for b in message.get("content") or [] if b.get("type") == "text")
        return text[:400] + ("..." if len(text) > 400 else "")
    error = (result.get("error") or {}).get("error") or {}
    return f"{error.get('type') or result.get('type')}: {error.get('message') or ''}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.3g}m"
    return f"{seconds / 3600:,.3g}h" if seconds < 360_000 else f"{seconds / 3600:,.0f}h"


def _num(value: Any, key: str) -> str:
    if key.startswith("rate_limits.shares."):
        return f"{value:.0%}"
    return _usd(value) if key == "cost_usd" else f"{value:,}"


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#222;max-width:800px;margin:24px auto;
padding:0 12px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:14px}
table{border-collapse:collapse;margin:8px 0;max-width:100%}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}
table.summary td{text-align:right}pre{margin:0;white-space:pre-wrap;max-width:520px}
table.batches td.id{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.meta,.legend{color:#555}.empty{color:#888;font-style:italic}.warn{color:#c92a2a}
svg.chart{display:block;font-size:11px;fill:#333}
"""
