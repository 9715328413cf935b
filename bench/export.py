"""Export speed: rows per second from the store to CSV and to Parquet (and the JSONL results, for comparison).

    python bench/export.py                 # 100,000 items, median of 3 exports each
    python bench/export.py --items 20000 --runs 1

The store is built directly (Store.create_run + Store.record, no requests): a schema job whose items have an
original id, three kept columns and a four-field validated answer, like the shipped ticket triage. Each export
is the one `batchrun results RUN -o FILE` writes (atomically), timed in this process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from batchrun.export import export_results  # noqa: E402
from batchrun.job import Job, load_job  # noqa: E402
from batchrun.store import Attempt, Outcome, State, Store  # noqa: E402

MODEL = "claude-sonnet-4-6"
CHUNK = 5000
CATEGORIES = ("billing", "bug", "account", "feature_request", "how_to", "other")


@dataclass(frozen=True, slots=True)
class Row:
    line_no: int
    custom_id: str
    params: dict
    source_id: str | None = None
    kept: dict = field(default_factory=dict)


def build(db: Path, n: int) -> tuple[Store, str]:
    schema = load_job(REPO / "jobs" / "classify_tickets.toml").schema
    job = Job(model=MODEL, max_tokens=256, schema=schema, id_field="ticket_id", keep=["ticket_id", "customer", "plan"])
    store = Store(db)
    rows = (
        Row(
            i,
            f"t-{i}",
            {
                "model": MODEL,
                "max_tokens": 256,
                "messages": [{"role": "user", "content": f"Ticket {i}: the export is empty since the update."}],
            },
            f"user{i}@example.com",
            {"ticket_id": f"user{i}@example.com", "customer": f"Customer {i % 97}", "plan": "Team"},
        )
        for i in range(1, n + 1)
    )
    run = {"id": "bench", "input_path": "tickets.csv", "input_sha256": "0" * 64, "fingerprint": job.fingerprint()}
    store.create_run({**run, "mode": "online", "job": job.to_dict()}, rows)
    now = time.time()
    for start in range(1, n + 1, CHUNK):
        store.record([outcome(i, now) for i in range(start, min(n + 1, start + CHUNK))])
    return store, "bench"


def outcome(i: int, now: float) -> Outcome:
    data = {
        "category": CATEGORIES[i % len(CATEGORIES)],
        "urgency": 1 + i % 5,
        "sentiment": "neutral",
        "summary": f"The customer of ticket {i} reports an empty export after the update.",
    }
    usage = {"input_tokens": 40, "output_tokens": 30, "cache_read_input_tokens": 3126}
    message = {
        "id": f"msg_{i}",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": orjson.dumps(data).decode()}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    return Outcome(
        "bench",
        i,
        State.SUCCEEDED,
        result=orjson.dumps({"type": "succeeded", "message": message}).decode(),
        usage=usage,
        attempts=[Attempt(now, 0.5, "succeeded", 200)],
        model=MODEL,
        stop_reason="end_turn",
        data=orjson.dumps(data).decode(),
        cost_usd=0.0013,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        store, run_id = build(work / "bench.db", args.items)
        print(f"store of {args.items:,} items built in {time.perf_counter() - started:.1f}s")
        print(f"{'format':8} {'median s':>9} {'rows/s':>10} {'MB':>7}")
        for fmt in ("csv", "parquet", "jsonl"):
            out = work / f"out.{fmt}"
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                count = export_results(store, run_id, out, fmt=fmt)
                times.append(time.perf_counter() - t0)
            assert count == args.items, (fmt, count)
            median = statistics.median(times)
            size = out.stat().st_size / 1e6
            print(f"{fmt:8} {median:9.2f} {args.items / median:10,.0f} {size:7.1f}")
        store.close()


if __name__ == "__main__":
    main()
