"""Several clients on one API key: batchrun processes side by side, and beside a foreign fixed-rate client.

    python bench/shared_limit.py                      # every scenario once (about 8 minutes)
    python bench/shared_limit.py --scenario rpm       # 1, 2 and 4 processes against an RPM limit
    python bench/shared_limit.py --scenario otpm      # the same against an OTPM limit with a token-bound job
    python bench/shared_limit.py --scenario foreign   # one batchrun beside a plain loop at 30% of the limit
    python bench/shared_limit.py --headers-only       # no shared folder: each process learns others from headers

One emulator (its own process) enforces the limit per second (bucket_seconds 1), as the API may. Every
client is a process of its own, started together. Figures come from each client's own record: batchrun's
attempts table (every request, its status and when it ended) and the foreign client's JSON. "Share of the
limit" is 200s per second over the window in which every client was sending, against the limit per
second; a process's fair share is 1/N of the combined throughput. By default the batchrun processes find each
other through their shared folder (BATCHRUN_LIMIT_DIR, as on one machine); --headers-only turns it off, as for
processes on different machines, which learn of each other only from the rate-limit headers. Only loopback traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import API_KEY, MODEL, PYTHON, Emulator, banner, batchrun_submit, child_env, machine, make_items, table

THIS = Path(__file__).resolve()
RPM = 1200
OTPM = 400_000
LATENCY_MS = 50.0
OTPM_ITEMS_FACTOR = 10
TARGETS = {"combined": 0.90, "share_429": 0.03, "fairness": 0.25, "foreign_kept": 0.95, "rest_taken": 0.80}


# ---- the foreign client: a plain loop at a fixed rate ----------------------------------------------


async def foreign_loop(rate: float, seconds: float, max_tokens: int) -> dict[str, Any]:
    """Sends `rate` requests per second for `seconds`, each retried after its retry-after on a 429."""
    import anthropic

    client = anthropic.AsyncAnthropic(max_retries=0, http_client=anthropic.DefaultAioHttpClient())
    events: list[tuple[float, int]] = []

    async def one(i: int) -> None:
        while True:
            try:
                await client.messages.create(
                    model=MODEL, max_tokens=max_tokens, messages=[{"role": "user", "content": f"foreign {i}"}]
                )
                events.append((time.time(), 200))
                return
            except anthropic.RateLimitError as e:
                events.append((time.time(), 429))
                await asyncio.sleep(float(e.response.headers.get("retry-after") or 1))
            except anthropic.APIError:
                events.append((time.time(), 0))
                await asyncio.sleep(1)

    async with client:
        tasks = []
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return {"events": events}


# ---- reading what each client did --------------------------------------------------------------------


def batchrun_events(db: Path) -> list[tuple[float, int]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT started_at + seconds, coalesce(status, 0) FROM attempts ORDER BY 1").fetchall()
    finally:
        conn.close()
    return [(float(t), int(s)) for t, s in rows]


def ok_rate(events: list[tuple[float, int]], start: float, end: float) -> float:
    return sum(1 for t, s in events if s == 200 and start <= t <= end) / max(end - start, 1e-9)


def share_429(events: list[tuple[float, int]]) -> float:
    return sum(1 for _, s in events if s == 429) / max(len(events), 1)


def window(all_events: list[list[tuple[float, int]]]) -> tuple[float, float]:
    """From the moment every client had its first answer to the moment the first client sent its last."""
    start = max(ev[0][0] for ev in all_events if ev)
    end = min(ev[-1][0] for ev in all_events if ev)
    return start, end


# ---- scenarios -----------------------------------------------------------------------------------------


HEADERS_ONLY = False


def run_processes(
    emu: Any, tmp: Path, n: int, items: int, *, max_tokens: int, extra: list[str], label: str, min_chars: int = 40
) -> list[Path]:
    env = child_env(emu.base_url)
    env["BATCHRUN_LIMIT_DIR"] = "off" if HEADERS_ONLY else str(tmp / f"limits-{label}")
    procs, dbs = [], []
    for p in range(n):
        path = tmp / f"{label}-{p}.jsonl"
        make_items(
            path,
            items,
            min_chars=min_chars,
            max_chars=min_chars * 2,
            max_tokens=max_tokens,
            seed=100 + p,
            count_tokens=False,
        )
        db = tmp / f"{label}-{p}.db"
        argv = batchrun_submit(path, db, max_tokens=max_tokens, concurrency=64, extra=extra)
        procs.append(subprocess.Popen(argv, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        dbs.append(db)
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"batchrun exited {proc.returncode}: {err.decode()[-400:]}")
    return dbs


def processes_row(emu: Any, tmp: Path, n: int, items: int, dimension: str) -> list[str]:
    emu.reset(**limits(dimension))
    max_tokens = 256 if dimension == "rpm" else 64  # token-bound: replies of 5-60 tokens against a tight max_tokens
    if dimension == "otpm":
        items *= OTPM_ITEMS_FACTOR  # about 200 replies a second fit this limit: a window long enough to tell
    dbs = run_processes(emu, tmp, n, items, max_tokens=max_tokens, extra=[], label=f"{dimension}{n}")
    events = [batchrun_events(db) for db in dbs]
    start, end = window(events)
    per_s = RPM / 60 if dimension == "rpm" else None
    rates = [ok_rate(ev, start, end) for ev in events]
    if per_s is None:  # token-bound: the output tokens per second the limit allows, in requests of this job
        per_s = OTPM / 60 / tokens_per_request(dbs[0])
    combined = sum(rates) / per_s
    fair = sum(rates) / n
    worst = max(abs(r - fair) / fair for r in rates) if fair else 0.0
    all_429 = share_429([e for ev in events for e in ev])
    return [
        dimension,
        str(n),
        f"{combined:.1%}",
        " ".join(f"{r / per_s:.0%}" for r in rates),
        f"{worst:.0%}",
        f"{all_429:.1%}",
        f"{end - start:.0f}s",
        verdict(n, combined, all_429, worst),
    ]


def verdict(n: int, combined: float, r429: float, worst: float) -> str:
    if n == 1:
        return "met" if combined >= 0.97 and r429 == 0 else "missed"
    ok = combined >= TARGETS["combined"] and r429 <= TARGETS["share_429"] and worst <= TARGETS["fairness"]
    return "met" if ok else "missed"


def tokens_per_request(db: Path) -> float:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (avg,) = conn.execute("SELECT avg(output_tokens) FROM items WHERE state = 'succeeded'").fetchone()
    finally:
        conn.close()
    return float(avg or 1)


def limits(dimension: str) -> dict[str, Any]:
    base = {"rpm": 0, "itpm": 0, "otpm": 0, "bucket_seconds": 1.0, "latency_ms": LATENCY_MS, "track_keys": False}
    return {**base, "rpm": RPM} if dimension == "rpm" else {**base, "otpm": OTPM}


def foreign_row(emu: Any, tmp: Path, items: int) -> list[str]:
    emu.reset(**limits("rpm"))
    per_s = RPM / 60
    foreign_rate = 0.3 * per_s
    seconds = items / (0.7 * per_s) + 5
    env = child_env(emu.base_url)
    out = tmp / "foreign.json"
    foreign = subprocess.Popen(
        [PYTHON, str(THIS), "--foreign-client", str(foreign_rate), str(seconds), str(out)], env=env, cwd=tmp
    )
    time.sleep(2.0)  # the foreign client is there first, as another service of the organisation would be
    dbs = run_processes(emu, tmp, 1, items, max_tokens=256, extra=[], label="fg")
    foreign.wait(timeout=900)
    mine = batchrun_events(dbs[0])
    theirs = json.loads(out.read_text())["events"]
    start, end = window([mine, theirs])
    kept = ok_rate(theirs, start, end) / foreign_rate
    taken = ok_rate(mine, start, end) / (per_s - foreign_rate)
    met = kept >= TARGETS["foreign_kept"] and taken >= TARGETS["rest_taken"]
    return [
        f"{foreign_rate:.0f}/s",
        f"{kept:.0%}",
        f"{share_429(theirs):.1%}",
        f"{taken:.0%}",
        f"{share_429(mine):.1%}",
        f"{end - start:.0f}s",
        "met" if met else "missed",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["rpm", "otpm", "foreign", "all"], default="all")
    parser.add_argument("--items", type=int, default=600, help="items per batchrun process (ten times that for OTPM)")
    parser.add_argument("--processes", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4])
    parser.add_argument("--headers-only", action="store_true", help="no shared folder: headers alone")
    parser.add_argument("--foreign-client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.foreign_client:
        rate, seconds, out = args.foreign_client
        Path(out).write_text(json.dumps(asyncio.run(foreign_loop(float(rate), float(seconds), 256))))
        return
    global HEADERS_ONLY
    HEADERS_ONLY = args.headers_only
    banner("Several clients on one key (per-second enforcement)")
    print(machine())
    print(
        f"limit: {RPM:,} RPM or {OTPM:,} OTPM, enforced per second; latency {LATENCY_MS:.0f} ms; "
        f"{args.items} items per process ({OTPM_ITEMS_FACTOR}x for OTPM); "
        + ("no shared folder: the headers alone" if args.headers_only else "batchrun processes share their folder")
    )
    os.environ.setdefault("ANTHROPIC_API_KEY", API_KEY)
    with tempfile.TemporaryDirectory() as d, Emulator() as emu:
        tmp = Path(d)
        scenarios = ["rpm", "otpm", "foreign"] if args.scenario == "all" else [args.scenario]
        for scenario in scenarios:
            if scenario == "foreign":
                row = foreign_row(emu, tmp, args.items)
                print(
                    table(
                        [
                            "foreign rate",
                            "foreign kept",
                            "foreign 429s",
                            "batchrun took of the rest",
                            "batchrun 429s",
                            "window",
                            "targets (>=95%, >=80%)",
                        ],
                        [row],
                    )
                )
                continue
            rows = [processes_row(emu, tmp, n, args.items, scenario) for n in args.processes]
            print(
                table(
                    [
                        "limit",
                        "processes",
                        "combined",
                        "each",
                        "worst vs fair",
                        "429s",
                        "window",
                        "targets (>=90%, <=3%, <=25%)",
                    ],
                    rows,
                )
            )


if __name__ == "__main__":
    main()
