"""One 100,000-item Message Batch through the emulator: how fast batchrun stores the results, how much memory
it needs, and how many API calls a batch costs.

    python bench/batch_ingest.py                          # 100,000 items, one batch (about a minute)
    python bench/batch_ingest.py --items 20000 --batch-seconds 1

`batchrun submit --mode batch` runs as a user runs it, in a child process measured with wait4 (peak RSS,
CPU). Its HTTP calls are counted inside the child by a wrapper around httpx2.AsyncClient.send (the SDK's
transport entry point), installed before batchrun starts; it only counts. The emulator runs in its own
process with --no-track-keys. Printed:

- results/s: batchrun's own measure of storing the batch's results (download, parse, one transaction per
  2,000 results), from its log line; beside it, how fast the emulator serves the same results file to a bare
  HTTP reader, which bounds what any client can ingest;
- peak RSS of the batchrun process (and the RSS sampled over time, to tell the create step from the ingest);
- requests per batch: items per batch (the store, and the emulator's counters) and API calls per batch.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

THIS = Path(__file__).resolve()
STORED = re.compile(r"batch (\d+) (msgbatch_\w+) ended: .*?; (\d+) result\(s\) stored in ([\d.]+)s")


def child_main(counts_path: str, argv: list[str]) -> None:
    """In the measured child: count HTTP calls by method and path, then run the batchrun command."""
    import atexit

    import httpx2

    counts: Counter[str] = Counter()
    send = httpx2.AsyncClient.send

    async def counting_send(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        path = re.sub(r"msgbatch_[A-Za-z0-9]+", "{id}", request.url.path)
        counts[f"{request.method} {path}"] += 1
        return await send(self, request, *args, **kwargs)

    httpx2.AsyncClient.send = counting_send  # type: ignore[method-assign]
    atexit.register(lambda: Path(counts_path).write_text(json.dumps(counts)))
    sys.argv = ["batchrun", *argv]
    from batchrun.cli import main

    main()


def download_rate(base_url: str, batch_id: str) -> tuple[int, float]:
    """Lines and seconds for a bare reader of the batch's results file (no parsing, no store)."""
    request = urllib.request.Request(f"{base_url}/v1/messages/batches/{batch_id}/results")
    request.add_header("x-api-key", "bench")
    started = time.perf_counter()
    lines = 0
    with urllib.request.urlopen(request, timeout=600) as response:
        while chunk := response.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines, time.perf_counter() - started


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3:])
        return
    from common import MODEL, PYTHON, Emulator, banner, child_env, machine, make_items, run_child, table, versions

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=100_000)
    parser.add_argument("--batch-seconds", type=float, default=2.0, help="how long the emulator's batch lasts")
    parser.add_argument("--poll-interval", type=float, default=0.5)
    # the emulator's replies are 5-60 tokens: with room for 64 none is cut (a cut reply fails its item, type
    # max_tokens, and the run exits 1)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    banner(f"batch ingest: {args.items:,} items, batch size {args.batch_size:,}")
    print(machine())
    print(versions())
    with (
        tempfile.TemporaryDirectory(prefix="batchrun-bench-") as tmp,
        Emulator(batch_seconds=args.batch_seconds) as emu,
    ):
        work = Path(tmp)
        started = time.perf_counter()
        item_set = make_items(
            work / "items.jsonl",
            args.items,
            min_chars=80,
            max_chars=400,
            max_tokens=args.max_tokens,
            count_tokens=False,
        )
        size = item_set.path.stat().st_size
        print(f"input: {args.items:,} lines, {size / 1e6:.1f} MB, written in {time.perf_counter() - started:.1f}s")
        db = work / "bench.db"
        counts_path = work / "http-counts.json"
        argv = [
            PYTHON,
            str(THIS),
            "--child",
            str(counts_path),
            "submit",
            str(item_set.path),
            "--mode",
            "batch",
            "--model",
            MODEL,
            "--max-tokens",
            str(args.max_tokens),
            "--batch-size",
            str(args.batch_size),
            "--poll-interval",
            str(args.poll_interval),
            "--run-id",
            "bench",
            "--db",
            str(db),
        ]
        child = run_child(argv, env=child_env(emu.base_url), cwd=work, timeout=1800, sample_rss=0.1)
        if child.returncode != 0:
            print(child.stderr[-3000:])
            raise SystemExit(f"batchrun exited {child.returncode}")
        http = Counter(json.loads(counts_path.read_text()))
        stats = emu.stats()
        conn = sqlite3.connect(db)
        try:
            batches = conn.execute("SELECT seq, id, n_items, n_bytes FROM batches ORDER BY seq").fetchall()
            states = dict(conn.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())
        finally:
            conn.close()
        stored = {int(m[1]): (int(m[3]), float(m[4])) for m in STORED.finditer(child.stderr)}
        served = [download_rate(emu.base_url, batch_id) for _, batch_id, _, _ in batches]

    print(f"batchrun exit {child.returncode}: {states} in {child.wall:.1f}s wall, {child.cpu_s:.1f}s CPU")
    rows = []
    for (seq, batch_id, n_items, n_bytes), (lines, seconds) in zip(batches, served, strict=True):
        n_stored, ingest_s = stored[seq]
        rows.append(
            [
                f"{seq} {batch_id}",
                f"{n_items:,}",
                f"{n_bytes / 1e6:.1f} MB",
                f"{n_stored / ingest_s:,.0f}",
                f"{ingest_s:.2f}",
                f"{lines / seconds:,.0f}",
            ]
        )
    print(table(["batch", "requests", "body", "results/s stored", "ingest s", "results/s served (bare reader)"], rows))
    print(
        f"emulator: {stats['batches_created']} batch(es) created, {stats['batch_requests']:,} requests in them "
        f"({stats['batch_requests'] / max(1, stats['batches_created']):,.0f} per batch)"
    )
    n = max(1, len(batches))
    calls = ", ".join(f"{k}: {v} ({v / n:.1f}/batch)" for k, v in sorted(http.items()))
    print(f"API calls by batchrun: {sum(http.values())} in all for {len(batches)} batch(es); {calls}")
    peak_sampled = max((rss for _, rss in child.rss_samples), default=0.0)
    print(f"peak RSS of batchrun (wait4): {child.maxrss_mb:.0f} MB (sampled every 0.1s: {peak_sampled:.0f} MB)")
    trace = child.rss_samples[:: max(1, len(child.rss_samples) // 12)]
    print("RSS over time (s, MB): " + ", ".join(f"{t:.1f}:{rss:.0f}" for t, rss in trace))


if __name__ == "__main__":
    main()
