"""Peak memory of `batchrun submit` as the input grows: does it stream, or hold the run in memory?

    python bench/memory.py                 # 10,000 and 100,000 items (about 3 minutes)
    python bench/memory.py --million       # adds 1,000,000 items (about 20 more minutes on 2 cores)
    python bench/memory.py --quick         # 2,000 and 20,000 items
    python bench/memory.py --sizes 10000,1000000 --runs 1

Each size runs `batchrun submit ITEMS -q --db TMP.db` against a zero-latency, unlimited emulator
(--no-track-keys, so the emulator's own memory stays flat) in a process of its own. Peak RSS is that
process's ru_maxrss from wait4(); /proc/PID/status is also sampled to say when the peak happened
(while storing the items, or while sending). Target: peak at 1M <= 1.5x peak at 10k, and < 250 MB.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Emulator,
    banner,
    batchrun_submit,
    child_env,
    fmt,
    machine,
    make_items,
    median,
    run_child,
    store_phase,
    table,
    versions,
)

LIMIT_MB = 250.0
MAX_RATIO = 1.5


def one(emu: Emulator, items: Path, n: int, workdir: Path, concurrency: int) -> dict:
    emu.reset()
    run_dir = Path(tempfile.mkdtemp(prefix=f"mem-{n}-", dir=workdir))
    db = run_dir / "bench.db"
    argv = batchrun_submit(items, db, max_tokens=16, concurrency=concurrency)
    timeout = 600 + n / 200  # bounded: 1M items get 1h30
    child = run_child(argv, env=child_env(emu.base_url), cwd=run_dir, timeout=timeout, sample_rss=0.5)
    if child.returncode != 0:
        raise RuntimeError(f"batchrun exited {child.returncode}:\n{child.stderr[-3000:]}")
    phase = store_phase(db)
    peak_at = max(child.rss_samples, key=lambda s: s[1]) if child.rss_samples else (None, None)
    store_seconds = child.wall - (phase["send_end"] - phase["send_start"])
    db_mb = sum(p.stat().st_size for p in run_dir.glob("bench.db*")) / 2**20
    result = {
        "n": n,
        "ok": phase["ok"],
        "wall": child.wall,
        "send": phase["send_end"] - phase["send_start"],
        "maxrss_mb": child.maxrss_mb,
        "peak_sampled_at": peak_at[0],
        "rss_end_mb": child.rss_samples[-1][1] if child.rss_samples else None,
        "cpu_s": child.cpu_s,
        "db_mb": db_mb,
        "outside_send_s": store_seconds,
    }
    shutil.rmtree(run_dir, ignore_errors=True)
    print(
        f"  {n:>9,} items: peak RSS {child.maxrss_mb:6.1f} MB (highest sample at {fmt(peak_at[0])} s of "
        f"{child.wall:.0f} s; {store_seconds:.0f} s outside the send phase), {phase['ok']:,} ok, "
        f"{phase['ok'] / result['send']:.0f} items/s, db {db_mb:.0f} MB",
        flush=True,
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", help="comma-separated item counts (default 10000,100000)")
    p.add_argument("--million", action="store_true", help="add 1,000,000 items (about 20 minutes)")
    p.add_argument("--quick", action="store_true", help="2,000 and 20,000 items")
    p.add_argument("--runs", type=int, default=1, help="repetitions of every size; medians are reported")
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    default = [2000, 20_000] if args.quick else [10_000, 100_000]
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else default
    if args.million and 1_000_000 not in sizes:
        sizes.append(1_000_000)
    print(f"batchrun memory benchmark: {machine()}")
    print(f"{versions()}; runs per size: {args.runs}", flush=True)
    banner(f"d) memory: batchrun submit, zero latency, no limit, C={args.concurrency}, sizes {sizes}")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="batchrun-bench-mem-"))
    results: dict[int, list[dict]] = {}
    try:
        with Emulator() as emu:
            for n in sizes:
                items = make_items(
                    workdir / f"items-{n}.jsonl", n, min_chars=30, max_chars=60, max_tokens=16, count_tokens=False
                )
                results[n] = [one(emu, items.path, n, workdir, args.concurrency) for _ in range(args.runs)]
                items.path.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base_n = sizes[0]
    base = median([r["maxrss_mb"] for r in results[base_n]])
    rows = []
    for n in sizes:
        rs = results[n]
        peak = median([r["maxrss_mb"] for r in rs])
        rows.append(
            [
                f"{n:,}",
                fmt(median([r["wall"] for r in rs])),
                fmt(median([r["outside_send_s"] for r in rs])),
                fmt(median([r["ok"] / r["send"] for r in rs]), ".0f"),
                fmt(peak),
                f"{peak / base:.2f}x",
                fmt(median([r["rss_end_mb"] for r in rs])),
                fmt(median([r["db_mb"] for r in rs]), ".0f"),
            ]
        )
    print()
    print(
        table(
            [
                "items",
                "wall s",
                "outside send s",
                "items/s (send)",
                "peak RSS MB",
                f"vs {base_n:,}",
                "RSS at end MB",
                "db MB",
            ],
            rows,
        )
    )
    print(f"  target: peak at 1M <= {MAX_RATIO}x peak at 10k, and < {LIMIT_MB:.0f} MB")
    print(f"\ndone in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
