"""Scale (issue 13): the ticket job at 10,000, 100,000 and 1,000,000 items; each target against its figure.

    python bench/scale.py                     # 10k and 100k (about 3 minutes on 2 cores)
    python bench/scale.py --sizes 1000000     # 1M alone (about 15 minutes, 12 GB of temporary disk)
    python bench/scale.py --sizes 10000 --status-runs 10 --keep

Every phase runs in a fresh child process, measured with wait4 (wall, peak RSS, CPU), on one database per size:

- create: `prepare_run` of the ticket job (jobs/classify_tickets.toml: a 12.5 KB system prompt, a template) over
  a generated JSONL file: read, validate, hash, store. The input is read twice (its SHA-256, then its lines).
- ingest: Message Batches results stored through `BatchEngine._store_results`, the path a download takes
  (split into lines, parse, match, judge, `store.record`, one transaction per 2,000 results), read from a file of
  generated result lines (the emulator's shape, a schema-valid answer, tokens that differ) written before the
  clock starts, for 99% of the items; the last 1% stay pending (they are what `resume` sends).
- bytes per item: database bytes (file + WAL, after a checkpoint) over the items, against the item's own input
  line plus its stored result.
- status: `batchrun status --json` with no RUN (every run) on a database holding `--status-runs` runs of this
  size (copies of the first run made with INSERT ... SELECT), as a user runs it (interpreter start-up included).
- results: `batchrun results RUN -o FILE`: lines/s over the wall time, and peak RSS.
- resume: `batchrun resume RUN --limit 200` against the emulator: seconds from the command's start to its first
  request (the first attempts.started_at).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, REPO, Emulator, child_env, machine, run_child, table, versions

JOB = REPO / "jobs" / "classify_tickets.toml"
CATEGORIES = ("billing", "bug", "account", "feature_request", "how_to", "other")
SENTIMENTS = ("negative", "neutral", "positive")
WORDS = [
    "the",
    "export",
    "button",
    "fails",
    "since",
    "the",
    "update",
    "and",
    "the",
    "customer",
    "asks",
    "for",
    "a",
    "refund",
    "of",
    "the",
    "last",
    "invoice",
    "because",
    "the",
    "team",
    "plan",
    "was",
    "charged",
    "twice",
    "while",
    "login",
    "with",
    "sso",
    "keeps",
    "failing",
    "for",
    "every",
    "user",
]
RUN = "scale"


def make_input(path: Path, n: int) -> int:
    rng = random.Random(13)
    import orjson

    with path.open("wb") as f:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40)))
            plan = rng.choice(("Free", "Team", "Enterprise"))
            line = {"custom_id": f"ticket-{i}", "customer": f"Customer {i % 997}", "plan": plan, "text": text}
            f.write(orjson.dumps(line) + b"\n")
    return path.stat().st_size


# ---- phases, each run in a child process: python bench/scale.py _phase NAME DB ARG ----------------------------


def phase_create(db: str, items: str) -> None:
    from batchrun.job import load_job
    from batchrun.runs import prepare_run
    from batchrun.store import Store

    store = Store(db)
    started = time.perf_counter()
    prepare_run(store, items, load_job(JOB), None, run_id=RUN)  # endpoint recorded by the first resume
    print(f"seconds {time.perf_counter() - started:.3f}")


def phase_ingest(db: str, done_share: str) -> None:
    import asyncio

    import orjson

    from batchrun.batches import INGEST_CHUNK, BatchEngine, Tally, result_chunks
    from batchrun.job import Job
    from batchrun.store import Store

    store = Store(db)
    run = store.get_run(RUN)
    total = run["total"]
    done = int(total * float(done_share))
    plans = [(first, min(first + 99_999, total), 0, 0) for first in range(1, total + 1, 100_000)]
    plans = [(a, b, b - a + 1, 0) for a, b, _, _ in plans]
    store.add_batch_plans(RUN, plans, time.time())
    engine = BatchEngine(store, RUN, Job.from_dict(run["job"]), None)
    rng = random.Random(7)
    results = Path(f"{db}.results.jsonl")
    seconds = 0.0
    stored = 0
    for batch in store.batches(RUN):
        token, first, last = batch["token"], batch["first_line"], batch["last_line"]
        with results.open("wb") as f:  # the batch's results file as the API serves it (written untimed)
            for n in range(first, min(last, done) + 1):
                f.write(result_line(orjson, token, n, rng) + b"\n")
        tally = Tally()
        began = time.perf_counter()
        chunks = result_chunks(file_pieces(results), INGEST_CHUNK)
        asyncio.run(engine._store_results(batch["seq"], chunks, time.time(), 1.0, tally))
        seconds += time.perf_counter() - began
        stored += tally.succeeded
        store.release_batch(RUN, batch["seq"])
        store.close_batch(RUN, batch["seq"], status="ended")
    results.unlink()
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    succeeded = store.counts(RUN)["succeeded"]
    if succeeded != stored:
        raise SystemExit(f"{stored} results given, {succeeded} stored as answers")
    print(f"seconds {seconds:.3f}\nstored {stored}")


async def file_pieces(path: Path):
    """A file's bytes a megabyte at a time, as a download's are."""
    with path.open("rb") as f:
        while piece := f.read(1 << 20):
            yield piece


def result_line(orjson, token: str, line: int, rng: random.Random) -> bytes:
    message = {
        "id": f"msg_{line:024d}",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": answer(orjson, rng)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        # tokens and so costs differ from reply to reply, as real ones do; the cached system prompt is the same
        "usage": {
            "input_tokens": rng.randint(40, 120),
            "output_tokens": rng.randint(15, 40),
            "cache_read_input_tokens": 3100,
        },
    }
    return orjson.dumps({"custom_id": f"{token}-{line}", "result": {"type": "succeeded", "message": message}})


def answer(orjson, rng: random.Random) -> str:
    """A reply that meets the ticket job's schema (structured output), the size the emulator's are."""
    summary = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
    fields = {
        "category": rng.choice(CATEGORIES),
        "urgency": rng.randint(1, 5),
        "sentiment": rng.choice(SENTIMENTS),
        "summary": summary,
    }
    return orjson.dumps(fields).decode()


def phase_copies(db: str, copies: str) -> None:
    """More runs of the same size, copied row by row in SQL (what `status` reads is per run)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    for n in range(1, int(copies)):
        copy = f"{RUN}-{n}"
        columns = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
        values = ", ".join({"id": "?", "input_sha256": "input_sha256 || ?"}.get(c, c) for c in columns)
        conn.execute(f"INSERT INTO runs ({', '.join(columns)}) SELECT {values} FROM runs WHERE id = ?", [copy, n, RUN])
        columns = [r[1] for r in conn.execute("PRAGMA table_info(items)") if r[1] != "run_id"]
        names = ", ".join(columns)
        conn.execute(f"INSERT INTO items (run_id, {names}) SELECT ?, {names} FROM items WHERE run_id = ?", [copy, RUN])
        tallies = [r[1] for r in conn.execute("PRAGMA table_info(run_tallies)") if r[1] != "run_id"]
        names = ", ".join(tallies)
        conn.execute(
            f"INSERT INTO run_tallies (run_id, {names}) SELECT ?, {names} FROM run_tallies WHERE run_id = ?",
            [copy, RUN],
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # not left for the first status to do
    conn.close()


PHASES = {"create": phase_create, "ingest": phase_ingest, "copies": phase_copies}


# ---- the driver ----------------------------------------------------------------------------------------------


def child(name: str, db: Path, arg: str, work: Path, timeout: float = 3600):
    result = run_child(
        [PYTHON, str(Path(__file__).resolve()), "_phase", name, str(db), arg],
        env=child_env(),
        cwd=work,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise SystemExit(f"phase {name} failed: {result.stderr[-2000:]}")
    values = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    return result, {k: float(v) for k, v in values.items()}


def cli(args: list[str], work: Path, env: dict[str, str], timeout: float = 3600):
    result = run_child([PYTHON, "-m", "batchrun", *args], env=env, cwd=work, timeout=timeout)
    if result.returncode not in (0, 3):
        raise SystemExit(f"batchrun {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def db_bytes(db: Path) -> int:
    return sum(Path(f"{db}{s}").stat().st_size for s in ("", "-wal") if Path(f"{db}{s}").exists())


def measure(n: int, work: Path, status_runs: int) -> dict[str, float]:
    items = work / f"tickets-{n}.jsonl"
    db = work / f"scale-{n}.db"
    input_bytes = make_input(items, n)
    created, c = child("create", db, str(items), work)
    ingest, g = child("ingest", db, "0.99", work)
    stored = g["stored"]
    conn = sqlite3.connect(db)
    result_bytes = conn.execute("SELECT sum(length(result)) FROM items WHERE result IS NOT NULL").fetchone()[0]
    conn.close()
    per_item = db_bytes(db) / n
    own = input_bytes / n + result_bytes / stored
    out = work / f"results-{n}.jsonl"
    results = cli(["results", RUN, "--db", str(db), "-o", str(out)], work, child_env())
    with Emulator(latency_ms=5.0) as emulator:
        env = child_env(emulator.base_url)
        started = time.time()
        cli(["resume", RUN, "--db", str(db), "--limit", "200", "-q"], work, env)
        conn = sqlite3.connect(db)
        first = conn.execute("SELECT min(started_at) FROM attempts WHERE started_at >= ?", [started]).fetchone()[0]
        conn.close()
    status_one = cli(["status", "--json", "--db", str(db)], work, child_env())
    if status_runs > 1:
        child("copies", db, str(status_runs), work)
    status_all = cli(["status", "--json", "--db", str(db)], work, child_env())
    runs = cli(["runs", "--db", str(db)], work, child_env())
    return {
        "items": n,
        "create_lps": n / c["seconds"],
        "create_wall": created.wall,
        "create_rss": created.maxrss_mb,
        "ingest_rps": stored / g["seconds"],
        "ingest_rss": ingest.maxrss_mb,
        "bytes_per_item": per_item,
        "own_bytes": own,
        "ratio": per_item / own,
        "results_lps": n * 0.99 / results.wall,
        "results_rss": results.maxrss_mb,
        "first_request_s": (first - started) if first else float("nan"),
        "status_1": status_one.wall,
        "status_all": status_all.wall,
        "status_runs": status_runs,
        "runs_s": runs.wall,
    }


def report(rows: list[dict[str, float]]) -> None:
    targets = [
        ("create (read, validate, hash, store)", "create_lps", ">= 100,000 lines/s", lambda v: v >= 100_000, ",.0f"),
        ("batch results ingested", "ingest_rps", ">= 25,000 results/s", lambda v: v >= 25_000, ",.0f"),
        ("database bytes / (input line + result)", "ratio", "<= 1.5x", lambda v: v <= 1.5, ".2f"),
        ("results export", "results_lps", ">= 100,000 lines/s", lambda v: v >= 100_000, ",.0f"),
        ("resume of a 99%-done run: first request", "first_request_s", "<= 3 s", lambda v: v <= 3, ".2f"),
        ("status, every run", "status_all", "< 0.5 s", lambda v: v < 0.5, ".2f"),
    ]
    header = ["target", "goal"] + [f"{int(r['items']):,} items" for r in rows] + ["met at largest?"]
    body = []
    for name, key, goal, ok, spec in targets:
        cells = [format(r[key], spec) for r in rows]
        body.append([name, goal, *cells, "yes" if ok(rows[-1][key]) else "NO"])
    print(table(header, body))
    print()
    details = [
        "create wall s",
        "create peak RSS MB",
        "ingest peak RSS MB",
        "results peak RSS MB",
        "bytes per item",
        "input line + result bytes",
        "status runs x items",
        "status, one run s",
        "runs s",
    ]
    keys = [
        "create_wall",
        "create_rss",
        "ingest_rss",
        "results_rss",
        "bytes_per_item",
        "own_bytes",
        None,
        "status_1",
        "runs_s",
    ]
    body = []
    for label, key in zip(details, keys, strict=True):
        if key is None:
            body.append([label] + [f"{int(r['status_runs'])} x {int(r['items']):,}" for r in rows])
        else:
            body.append([label] + [format(r[key], ",.2f") for r in rows])
    print(table(["detail"] + [f"{int(r['items']):,}" for r in rows], body))
    by_size = {int(r["items"]): r for r in rows}
    for small, big in ((100_000, 1_000_000), (10_000, 100_000)):
        if small in by_size and big in by_size:
            a, b = by_size[small], by_size[big]
            ratios = {
                "create time": b["create_wall"] / a["create_wall"],
                "ingest rate": b["ingest_rps"] / a["ingest_rps"],
                "bytes/item": b["bytes_per_item"] / a["bytes_per_item"],
                "results rate": b["results_lps"] / a["results_lps"],
                "first request": b["first_request_s"] / a["first_request_s"],
            }
            shown = ", ".join(f"{k} x{v:.2f}" for k, v in ratios.items())
            print(f"\ngrowth {small:,} -> {big:,} items (10x; linear = create time x10, rates x1): {shown}")
            break


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_phase":
        PHASES[sys.argv[2]](*sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated item counts (1000000 for 1M)")
    parser.add_argument("--status-runs", type=int, default=10, help="runs of each size in the status database")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    print(f"bench/scale.py: {machine()}; {versions()}")
    work = Path(tempfile.mkdtemp(prefix="batchrun-scale-"))
    try:
        rows = []
        for n in (int(s) for s in args.sizes.split(",")):
            rows.append(measure(n, work, args.status_runs))
            print(f"{n:,} items done", flush=True)
        report(rows)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    os.sync()


if __name__ == "__main__":
    main()
