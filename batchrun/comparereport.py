"""A comparison as the user reads it: the terminal table, and a one-file HTML report (every value escaped, no
script at all) with the confusion of enum and boolean fields and examples of disagreements with their inputs."""

from __future__ import annotations

import html
import os
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from batchrun.comparison import Comparison, ModelResult


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}" if round(value * 100, 6) == round(value * 100) else f"{value:.1%}"


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def confusion_lines(result: ModelResult) -> list[str]:
    """`field: reference value -> model value N, ...` for each enum or boolean field with disagreements."""
    lines = []
    for name, pairs in result.confusion.items():
        wrong = sorted(((n, ref, got) for (ref, got), n in pairs.items() if ref != got), key=lambda t: (-t[0], t[1:]))
        if wrong:
            lines.append(f"{name}: " + ", ".join(f"{ref} -> {got} {n}" for n, ref, got in wrong))
    return lines


def format_table(c: Comparison, job_path: str | None = None) -> str:
    """The comparison's table, its confusions, and the recommendation with the job-file line that applies it."""
    head = f"compare: {c.items:,} item(s), reference {c.reference} (run {c.reference_run_id}"
    head += f", {_usd(c.reference_cost_usd)})" + (f", judge {c.judge}" if c.judge else "")
    if not c.finished:
        return head + f"\nnot finished: {c.stop_message}"
    columns = ["model", "items", "failed", *c.fields, "all", "cost", "per 1,000"]
    rows = []
    for r in c.results:
        d = r.to_dict(c.fields)
        rows.append(
            [
                r.model,
                str(d["items"]),
                str(d["failed"]),
                *(_pct(d["agreement"][f]) for f in c.fields),
                _pct(d["agreement_all"]),
                _usd(d["cost_usd"]),
                _usd(d["cost_per_1000"]),
            ]
        )
    widths = [max(len(columns[i]), *(len(row[i]) for row in rows)) for i in range(len(columns))]
    fmt = lambda cells: "  ".join(  # noqa: E731
        cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(cells)
    )
    lines = [head, "agreement with the reference, by field (all: every field of the item agrees):", fmt(columns)]
    lines += [fmt(row) for row in rows]
    for r in c.results:
        confusions = confusion_lines(r)
        if confusions:
            lines.append(f"{r.model} vs {c.reference} (reference -> {r.model}):")
            lines += [f"  {line}" for line in confusions]
    lines.append(recommendation(c, job_path))
    return "\n".join(lines)


def recommendation(c: Comparison, job_path: str | None = None) -> str:
    if c.recommended is None:
        return (
            f"recommended: none: no model agrees with {c.reference} on every field of at least {_pct(c.target)} "
            f"of the items (keep {c.reference}, or lower --target)"
        )
    where = f"in {job_path}" if job_path else "in the job file"
    return (
        f"recommended: {c.recommended} (the cheapest model that agrees with {c.reference} on every field of at "
        f"least {_pct(c.target)} of the items)\n  {where}: model = {orjson.dumps(c.recommended).decode()}"
    )


# HTML

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
    ".bad{background:#fde2e2}pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em;margin:0}"
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _confusion_table(name: str, pairs: Counter, model: str, reference: str) -> str:
    refs = sorted({ref for ref, _ in pairs})
    gots = sorted({got for _, got in pairs})
    head = "".join(f"<th>{_e(g)}</th>" for g in gots)
    out = [f"<h4>{_e(name)}</h4><table><tr><th>{_e(reference)} \u2193 / {_e(model)} \u2192</th>{head}</tr>"]
    for ref in refs:
        cells = "".join(
            f"<td{' class=bad' if ref != got and pairs.get((ref, got)) else ''}>{pairs.get((ref, got), 0)}</td>"
            for got in gots
        )
        out.append(f"<tr><th>{_e(ref)}</th>{cells}</tr>")
    return "".join(out) + "</table>"


def render_html(c: Comparison) -> str:
    parts = [
        "<!doctype html><html><head><meta charset=utf-8>",
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>batchrun compare: {_e(c.reference)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Comparison with {_e(c.reference)}</h1>",
        f"<p>{c.items:,} item(s); reference run {_e(c.reference_run_id)} ({_e(_usd(c.reference_cost_usd))})"
        + (f"; judge {_e(c.judge)}" if c.judge else "")
        + "</p>",
    ]
    if not c.finished:
        parts.append(f"<p>Not finished: {_e(c.stop_message)}</p></body></html>")
        return "".join(parts)
    head = "".join(f"<th>{_e(h)}</th>" for h in ["model", "items", "failed", *c.fields, "all", "cost", "per 1,000"])
    rows = []
    for r in c.results:
        d = r.to_dict(c.fields)
        cells = [r.model, d["items"], d["failed"], *(_pct(d["agreement"][f]) for f in c.fields)]
        cells += [_pct(d["agreement_all"]), _usd(d["cost_usd"]), _usd(d["cost_per_1000"])]
        rows.append("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in cells) + "</tr>")
    parts.append(f"<h2>Agreement by field</h2><table><tr>{head}</tr>{''.join(rows)}</table>")
    parts.append(f"<p>{_e(recommendation(c))}</p>")
    for r in c.results:
        parts.append(f"<h2>{_e(r.model)}</h2><p>run {_e(r.run_id)}</p>")
        for name, pairs in r.confusion.items():
            if pairs:
                parts.append(_confusion_table(name, pairs, r.model, c.reference))
        if r.examples:
            parts.append("<h3>Disagreements (examples)</h3>")
        for example in r.examples:
            reason = f"<p>judge: {_e(example['reason'])}</p>" if example.get("reason") else ""
            parts.append(
                f"<h4>{_e(example['custom_id'])}: {_e(', '.join(example['fields']))}</h4>"
                f"<table><tr><th>input</th><td><pre>{_e(c.inputs.get(example['custom_id'], ''))}</pre></td></tr>"
                f"<tr><th>{_e(c.reference)}</th><td><pre>{_e(_shown(example['reference']))}</pre></td></tr>"
                f"<tr><th>{_e(r.model)}</th><td><pre>{_e(_shown(example['answer']))}</pre></td></tr></table>{reason}"
            )
    parts.append("</body></html>")
    return "".join(parts)


def write_compare_report(c: Comparison, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(render_html(c), encoding="utf-8")
    os.replace(tmp, out)
    return out
