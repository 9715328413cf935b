"""Throughput of batchrun beside the plain loop from the tutorials, against the local API emulator.

    python bench/throughput.py                 # scenarios a, b, c once each (about 15 minutes)
    python bench/throughput.py --runs 3        # medians of 3 runs
    python bench/throughput.py --scenario c    # one scenario (a: limited, b: latency-bound, c: overhead)
    python bench/throughput.py --quick         # smoke run, about 2 minutes

The emulator runs in its own process (its own core); each client runs as a user would run it, in a
process of its own, so its wall time includes interpreter start-up and imports. Between runs the
emulator's counters and rate-limit buckets are reset. Only loopback traffic.

The baseline is `plain_loop` below: AsyncAnthropic + asyncio.Semaphore + gather, tenacity's
exponential backoff as the tutorials write it, the SDK's own retries off so tenacity owns them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    MODEL,
    PYTHON,
    Emulator,
    ItemSet,
    StatsPoller,
    banner,
    batchrun_submit,
    child_env,
    fmt,
    machine,
    make_items,
    median,
    pct,
    run_child,
    store_phase,
    store_window,
    table,
    versions,
)

THIS = Path(__file__).resolve()
STEADY_AFTER_S = 10.0  # the "after the first 10 s"
LATE_AFTER_S = 60.0  # by then even the slowest client has drained the full initial buckets

# ---- the baseline: the plain loop from the tutorials ----------------------------------------------


async def plain_loop(prompts: list[str], model: str, max_tokens: int, concurrency: int, backend: str) -> list[Any]:
    """The tutorials' pattern, unchanged but for the two timestamps the benchmark reads."""
    import anthropic
    from tenacity import retry, stop_after_attempt, wait_random_exponential

    http_client = anthropic.DefaultAioHttpClient() if backend == "aiohttp" else None
    client = anthropic.AsyncAnthropic(max_retries=0, http_client=http_client)  # tenacity owns retries
    semaphore = asyncio.Semaphore(concurrency)

    @retry(wait=wait_random_exponential(min=1, max=60), stop=stop_after_attempt(6))
    async def create_with_backoff(**kwargs: Any) -> Any:
        return await client.messages.create(**kwargs)

    async def process(prompt: str) -> Any:
        async with semaphore:
            return await create_with_backoff(
                model=model,
                max_tokens=max_tokens,
                messages=[{"role": "user", "content": prompt}],
            )

    async with client:
        return await asyncio.gather(*(process(p) for p in prompts), return_exceptions=True)


def plain_main(args: argparse.Namespace) -> None:
    """Child process: read the items, run the loop, write the results as JSONL, report on stdout."""
    with open(args.items) as f:
        lines = [json.loads(line) for line in f]
    if args.limit:
        lines = lines[: args.limit]
    prompts = [line["prompt"] for line in lines]
    import anthropic  # noqa: F401  (imported here so the send phase, like batchrun's, excludes imports)
    import tenacity  # noqa: F401

    send_start = time.time()
    results = asyncio.run(plain_loop(prompts, args.model, args.max_tokens, args.concurrency, args.backend))
    send_end = time.time()
    errors: dict[str, int] = {}
    with open(args.output, "w") as out:
        for line, result in zip(lines, results, strict=True):
            if isinstance(result, BaseException):
                errors[type(result).__name__] = errors.get(type(result).__name__, 0) + 1
                out.write(json.dumps({"custom_id": line["custom_id"], "error": repr(result)}) + "\n")
            else:
                out.write(
                    json.dumps({"custom_id": line["custom_id"], "message": result.model_dump(mode="json")}) + "\n"
                )
    ok = len(results) - sum(errors.values())
    print(
        json.dumps(
            {"ok": ok, "failed": len(results) - ok, "errors": errors, "send_start": send_start, "send_end": send_end}
        )
    )


def plain_argv(items: ItemSet, *, concurrency: int, backend: str, output: Path, limit: int | None = None) -> list[str]:
    argv = [
        PYTHON,
        str(THIS),
        "plain",
        "--items",
        str(items.path),
        "--model",
        MODEL,
        "--max-tokens",
        str(items.max_tokens),
        "--concurrency",
        str(concurrency),
        "--backend",
        backend,
        "--output",
        str(output),
    ]
    return argv + (["--limit", str(limit)] if limit else [])


# ---- one measured run ---------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    client: str  # "batchrun" or "plain"
    concurrency: int
    backend: str
    limit: int | None = None  # plain loop only: the first `limit` items


@dataclass
class Measure:
    variant: str
    n: int
    ok: int
    failed: int
    wall: float
    send: float
    cpu_s: float
    maxrss_mb: float
    share_429: float
    n_429: int
    requests: int
    max_in_flight: int
    steady: dict[str, float] | None = None
    steady_store: dict[str, float] | None = None
    late: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate_send(self) -> float:
        return self.ok / self.send if self.send else 0.0

    @property
    def rate_wall(self) -> float:
        return self.ok / self.wall if self.wall else 0.0


def measure(emu: Emulator, items: ItemSet, variant: Variant, workdir: Path, timeout: float, poll: float) -> Measure:
    emu.reset()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{variant.client}-", dir=workdir))
    env = child_env(emu.base_url)
    with StatsPoller(emu, poll) as poller:
        if variant.client == "batchrun":
            db = run_dir / "bench.db"
            argv = batchrun_submit(
                items.path, db, max_tokens=items.max_tokens, concurrency=variant.concurrency, backend=variant.backend
            )
            child = run_child(argv, env=env, cwd=run_dir, timeout=timeout)
        else:
            argv = plain_argv(
                items,
                concurrency=variant.concurrency,
                backend=variant.backend,
                output=run_dir / "results.jsonl",
                limit=variant.limit,
            )
            child = run_child(argv, env=env, cwd=run_dir, timeout=timeout)
    if child.returncode not in (0, 1):
        raise RuntimeError(f"{variant.name} exited {child.returncode}:\n{child.stderr[-3000:]}")
    stats = emu.stats()
    by_status = stats["by_status"]
    finished = sum(by_status.values())
    n429 = by_status.get("429", 0)
    if variant.client == "batchrun":
        phase = store_phase(db)
        start, end, ok, failed = phase["send_start"], phase["send_end"], phase["ok"], phase["failed"]
        steady_store = store_window(db, start + STEADY_AFTER_S)
    else:
        report = json.loads(child.stdout.strip().splitlines()[-1])
        start, end, ok, failed = report["send_start"], report["send_end"], report["ok"], report["failed"]
        steady_store = None
    if by_status.get("200", 0) < ok:
        print(
            f"  WARNING: {variant.name}: {ok} items succeeded but the emulator answered only {by_status.get('200', 0)} "
            "requests with 200 (results not fetched from the API are not a throughput figure)"
        )
    return Measure(
        variant=variant.name,
        n=variant.limit or items.n,
        ok=ok,
        failed=failed,
        wall=child.wall,
        send=end - start,
        cpu_s=child.cpu_s,
        maxrss_mb=child.maxrss_mb,
        share_429=n429 / finished if finished else 0.0,
        n_429=n429,
        requests=finished,
        max_in_flight=stats["max_in_flight"],
        steady=poller.window(start + STEADY_AFTER_S),
        late=poller.window(start + LATE_AFTER_S),
        steady_store=steady_store,
    )


def run_variants(
    emu: Emulator, items: ItemSet, variants: list[Variant], runs: int, workdir: Path, timeout: float, poll: float
) -> dict[str, list[Measure]]:
    out: dict[str, list[Measure]] = {v.name: [] for v in variants}
    for r in range(runs):
        order = variants if r % 2 == 0 else list(reversed(variants))  # alternate who goes first
        for v in order:
            m = measure(emu, items, v, workdir, timeout, poll)
            out[v.name].append(m)
            print(
                f"  run {r + 1}/{runs} {v.name:<34} {m.ok}/{m.n} ok  wall {m.wall:6.1f}s  send {m.send:6.1f}s  "
                f"{m.rate_send:7.1f} items/s  429s {m.n_429} ({pct(m.share_429)})  cpu {m.cpu_s:5.1f}s  "
                f"rss {m.maxrss_mb:4.0f}MB",
                flush=True,
            )
    return out


def med(ms: list[Measure], attr: str) -> float | None:
    return median([getattr(m, attr) for m in ms])


def med_window(ms: list[Measure], source: str, key: str) -> float | None:
    return median([(getattr(m, source) or {}).get(key) for m in ms])


# ---- scenarios ----------------------------------------------------------------------------------


def scenario_a(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rpm, itpm, otpm = 600, 100_000, 20_000
    n = 300 if args.quick else 3000
    bucket_seconds = 5.0 if args.quick else 60.0  # quick: a 5 s bucket, so 300 items still meet the limit
    max_tokens = 64
    banner(f"a) limited: RPM {rpm}, ITPM {itpm:,}, OTPM {otpm:,}, latency 300-1,500 ms, {n:,} items")
    items = make_items(workdir / "a.jsonl", n, min_chars=500, max_chars=860, max_tokens=max_tokens)
    per_min = {
        "RPM": rpm,
        "ITPM / avg input tokens": itpm / items.avg_input_tokens,
        "OTPM / avg output tokens (refunded)": otpm / items.avg_output_tokens,
    }
    naive = otpm / max_tokens
    allowed_steady = min(per_min.values()) / 60.0
    # The buckets start full (bucket_seconds of each limit): the least time any client needs for all n items.
    caps = {"RPM": (rpm, 1.0), "ITPM": (itpm, items.avg_input_tokens), "OTPM": (otpm, items.avg_output_tokens)}
    t_min = max(max(0.0, n * cost - lim * bucket_seconds / 60) / (lim / 60) for lim, cost in caps.values())
    allowed_overall = n / t_min if t_min else float("inf")
    print(
        f"  items: avg input {items.avg_input_tokens:.1f} tokens, avg output {items.avg_output_tokens:.1f} tokens "
        f"(max_tokens {max_tokens}); exact, from batchrun.emulator.replies"
    )
    for k, v in per_min.items():
        print(f"  {k:<38} {v:8.1f} requests/min")
    print(f"  {'OTPM / max_tokens (never refunded)':<38} {naive:8.1f} requests/min (not binding: the API refunds)")
    print(
        f"  limits allow (steady): {allowed_steady:.2f} items/s; whole run from full buckets: "
        f"{t_min:.0f} s at best = {allowed_overall:.2f} items/s"
    )
    variants = [
        Variant("batchrun C=64 (aiohttp)", "batchrun", 64, "aiohttp"),
        Variant("plain Semaphore(20) (httpx)", "plain", 20, "httpx"),
    ]
    with Emulator(
        rpm=rpm, itpm=itpm, otpm=otpm, latency_ms=900, latency_jitter_ms=600, bucket_seconds=bucket_seconds
    ) as emu:
        res = run_variants(emu, items, variants, args.runs, workdir, timeout=1200, poll=0.5)
    rows = []
    for name, ms in res.items():
        row = [
            name,
            f"{med(ms, 'ok'):.0f}/{ms[0].n}",
            fmt(med(ms, "wall")),
            fmt(med(ms, "send")),
            fmt(med(ms, "rate_send"), ".2f"),
            pct(median([m.rate_send / allowed_overall for m in ms])),
            pct(med(ms, "share_429"), 2),
        ]
        for source in ("steady", "late"):
            row += [
                fmt(med_window(ms, source, "items_per_s"), ".2f"),
                pct(median([w["items_per_s"] / allowed_steady if (w := getattr(m, source)) else None for m in ms])),
                pct(med_window(ms, source, "share_429"), 2),
            ]
        rows.append(row)
    print()
    s10, s60 = f"{STEADY_AFTER_S:.0f}", f"{LATE_AFTER_S:.0f}"
    headers = ["client", "ok", "wall s", "send s", "items/s", "of allowed", "429s"]
    headers += [f">{s10}s items/s", "of allowed", f">{s10}s 429s", f">{s60}s items/s", "of allowed", f">{s60}s 429s"]
    print(table(headers, rows))
    for name, ms in res.items():
        if ms[0].steady_store is not None:
            rate = med_window(ms, "steady_store", "items_per_s")
            share = pct(med_window(ms, "steady_store", "share_429"), 2)
            print(f"  {name}, from its store's attempts table: >{s10}s {rate:.2f} items/s, {share} 429s")
    print(
        f"  (items/s: succeeded items over the send phase, against the {allowed_overall:.2f}/s the full buckets allow; "
        f">{s10}s and >{s60}s: the emulator's 200s per second from that point of the send phase to its end, against "
        f"the steady {allowed_steady:.2f}/s)"
    )
    print(
        f"  targets: batchrun steady >= 95% of allowed ({allowed_steady:.2f}/s), <= 1% 429s after the first "
        f"{STEADY_AFTER_S:.0f} s"
    )
    return {"results": res, "allowed_steady": allowed_steady, "allowed_overall": allowed_overall, "items": items}


def scenario_b(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n = 300 if args.quick else 3000
    c = 100
    latency_s = 2.0
    tutorial_n = n if (args.full or args.quick) else 1000
    banner(f"b) latency-bound: no limit, latency 1-3 s (mean {latency_s:g} s), {n:,} items, C={c}")
    items = make_items(workdir / "b.jsonl", n, min_chars=100, max_chars=300, max_tokens=64)
    little = c / latency_s
    print(
        f"  Little's law at the ceiling: C / mean latency = {c} / {latency_s:g} s = {little:.1f} items/s; "
        f"Semaphore(20): {20 / latency_s:.1f} items/s"
    )
    if tutorial_n < n:
        print(
            f"  (plain Semaphore(20) runs the first {tutorial_n:,} items: at 10 items/s all {n:,} would take "
            f"{n / 10:.0f} s; --full runs them all)"
        )
    variants = [
        Variant(f"batchrun C={c} (aiohttp)", "batchrun", c, "aiohttp"),
        Variant(f"plain Semaphore({c}) (httpx)", "plain", c, "httpx"),
        Variant("plain Semaphore(20) (httpx)", "plain", 20, "httpx", limit=tutorial_n),
    ]
    with Emulator(latency_ms=latency_s * 1000, latency_jitter_ms=1000) as emu:
        res = run_variants(emu, items, variants, args.runs, workdir, timeout=900, poll=1.0)
    rows = []
    for v in variants:
        ms = res[v.name]
        rows.append(
            [
                v.name,
                f"{med(ms, 'ok'):.0f}/{ms[0].n}",
                fmt(med(ms, "wall")),
                fmt(med(ms, "send")),
                fmt(med(ms, "rate_wall")),
                fmt(med(ms, "rate_send")),
                pct(median([m.rate_send / little for m in ms])),
                pct(median([m.rate_send / (v.concurrency / latency_s) for m in ms])),
                pct(med(ms, "share_429"), 2),
                fmt(med(ms, "max_in_flight"), ".0f"),
            ]
        )
    print()
    print(
        table(
            [
                "client",
                "ok",
                "wall s",
                "send s",
                "items/s (wall)",
                "items/s (send)",
                f"of C/L={little:g}",
                "of own C/L",
                "429s",
                "max in flight",
            ],
            rows,
        )
    )
    print(f"  target: batchrun >= 90% of Little's law ({little:.0f} items/s)")
    return {"results": res, "little": little}


def scenario_c(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n = 2000 if args.quick else 20_000
    c = 64
    banner(f"c) overhead: zero latency, no limit, {n:,} items, C={c} (batchrun's default) and the tutorial's 20")
    items = make_items(workdir / "c.jsonl", n, min_chars=100, max_chars=300, max_tokens=64)
    variants = []
    for backend in ("aiohttp", "httpx"):
        variants += [
            Variant(f"batchrun C={c} ({backend})", "batchrun", c, backend),
            Variant(f"plain Semaphore({c}) ({backend})", "plain", c, backend),
            Variant(f"plain Semaphore(20) ({backend})", "plain", 20, backend),
        ]
    with Emulator() as emu:
        res = run_variants(emu, items, variants, args.runs, workdir, timeout=900, poll=5.0)
    rows = []
    for v in variants:
        ms = res[v.name]
        base = res[f"plain Semaphore({c}) ({v.backend})"]
        rows.append(
            [
                v.name,
                f"{med(ms, 'ok'):.0f}/{ms[0].n}",
                fmt(med(ms, "wall")),
                fmt(med(ms, "send")),
                fmt(med(ms, "rate_wall"), ".0f"),
                fmt(med(ms, "rate_send"), ".0f"),
                pct(med(ms, "rate_send") / med(base, "rate_send")),
                pct(med(ms, "rate_wall") / med(base, "rate_wall")),
                fmt(1000 * med(ms, "cpu_s") / n, ".2f"),
                fmt(med(ms, "maxrss_mb"), ".0f"),
            ]
        )
    print()
    print(
        table(
            [
                "client",
                "ok",
                "wall s",
                "send s",
                "items/s (wall)",
                "items/s (send)",
                f"vs plain C={c} (send)",
                "(wall)",
                "client CPU ms/item",
                "peak RSS MB",
            ],
            rows,
        )
    )
    print(f"  target: batchrun >= 80% of the plain loop's items/s on the same backend (same C={c})")
    return {"results": res}


SCENARIOS = {"a": scenario_a, "b": scenario_b, "c": scenario_c}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plain"]:
        p = argparse.ArgumentParser(prog="throughput.py plain", description="The baseline loop, as a child process.")
        p.add_argument("--items", required=True)
        p.add_argument("--model", required=True)
        p.add_argument("--max-tokens", type=int, required=True)
        p.add_argument("--concurrency", type=int, default=20)
        p.add_argument("--backend", choices=["aiohttp", "httpx"], default="httpx")
        p.add_argument("--output", required=True)
        p.add_argument("--limit", type=int)
        plain_main(p.parse_args(argv[1:]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="abc", help="which scenarios, e.g. 'a', 'bc' (default: abc)")
    p.add_argument("--runs", type=int, default=1, help="repetitions of every variant; medians are reported")
    p.add_argument("--quick", action="store_true", help="smoke run: few items, about 2 minutes")
    p.add_argument("--full", action="store_true", help="b): run the Semaphore(20) loop on all 3,000 items too")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (databases, results)")
    args = p.parse_args(argv)
    unknown = set(args.scenario) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s) {''.join(sorted(unknown))}: choose from a, b, c")
    print(f"batchrun throughput benchmark: {machine()}")
    print(f"{versions()}; runs per variant: {args.runs}{' (quick)' if args.quick else ''}", flush=True)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="batchrun-bench-"))
    try:
        for key in sorted(set(args.scenario)):
            SCENARIOS[key](args, workdir)
    finally:
        if args.keep:
            print(f"\nkept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ndone in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
