"""Deadline mode (`--mode auto --deadline`) against batch-time distributions: how much goes at batch price, what
it costs beside all-online and all-batch, and when it finishes beside the deadline.

    python bench/deadline.py [--items 300] [--deadline 30] [--scale 1000] [--rpm 3000]

The emulator compresses batch time by --scale (1000: an API hour lasts 3.6 s); online requests take their real
time. The run's deadline is --deadline wall seconds (at 1000x, 30 s is 8.3 API hours), with the fixed margin
scaled down to 2 s. Each distribution gives every batch request its own processing time (API seconds):
exponential with mean `fast`, and a share `p_tail` uniform between `fast` and `tail`. Costs come from the
tokens the run recorded, priced with batchrun's table: all-online prices them online, all-batch at batch
price (the emulator's replies are the same on both paths). Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchrun.emulator.process import EmulatorProcess  # noqa: E402
from batchrun.pricing import cost  # noqa: E402
from bench.common import child_env  # noqa: E402

MODEL = "claude-haiku-4-5"
# name: (fast mean, tail share, tail end), API seconds
DISTRIBUTIONS = {
    "all fast (mean 5 min)": (300, 0.0, 0),
    "10% tail to 4 h": (300, 0.1, 4 * 3600),
    "50% tail to 12 h": (600, 0.5, 12 * 3600),
    "slow (mean 6 h)": (6 * 3600, 0.0, 0),
}


def run_one(emu: EmulatorProcess, name: str, fast: float, p_tail: float, tail: float, args: argparse.Namespace) -> dict:
    emu.reset()
    emu.configure(batch_fast_s=fast, batch_p_tail=p_tail, batch_tail_s=tail, batch_time_scale=args.scale)
    work = Path(tempfile.mkdtemp(prefix="bench-deadline-"))
    lines = [
        json.dumps({"custom_id": f"t-{i}", "prompt": f"{name} ticket {i}: the export fails, classify it"})
        for i in range(args.items)
    ]
    (work / "items.jsonl").write_text("\n".join(lines) + "\n")
    (work / "job.toml").write_text("poll_max_interval = 0.2\n")
    command = [
        sys.executable,
        "-m",
        "batchrun",
        "submit",
        "items.jsonl",
        "--job",
        "job.toml",
        "--mode",
        "auto",
        "--deadline",
        f"{args.deadline}s",
        "--deadline-margin",
        "2",
        "--model",
        MODEL,
        "--max-tokens",
        "60",
        "--rpm",
        str(args.rpm),
        "--poll-interval",
        "0.05",
        "--run-id",
        "r",
        "-q",
    ]
    proc = subprocess.run(command, cwd=work, env=child_env(emu.base_url), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr}")
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "batchrun", "status", "r", "--json"],
            cwd=work,
            env=child_env(emu.base_url),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    db = sqlite3.connect(work / "batchrun.db")
    created, finished = db.execute(
        "SELECT r.created_at, max(i.updated_at) FROM runs r JOIN items i ON i.run_id = r.id"
    ).fetchone()
    db.close()
    rows = status["by_model"]
    all_online = sum(cost({**row, "via": "online"}, {}, "5m") for row in rows)
    all_batch = sum(cost({**row, "via": "batch"}, {}, "5m") for row in rows)
    stats = emu.stats()
    batch_ok = sum(u["requests"] for u in stats["usage"]["batches"].values())
    online_ok = sum(u["requests"] for u in stats["usage"]["messages"].values())
    return {
        "distribution": name,
        "items": args.items,
        "batch_price": status["answered_by"]["batch"],
        "online": status["answered_by"]["api"],
        "paid_requests": batch_ok + online_ok,  # == items: nothing paid twice
        "cost": status["cost_usd"],
        "all_online": all_online,
        "all_batch": all_batch,
        "finished_s": finished - created,
        "deadline_s": float(args.deadline),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--deadline", type=float, default=30.0, help="wall seconds from the run's start")
    parser.add_argument("--scale", type=float, default=1000.0, help="API seconds per wall second in batches")
    parser.add_argument("--rpm", type=int, default=3000)
    args = parser.parse_args()
    print(
        f"{args.items} items, deadline {args.deadline:g} s wall ({args.deadline * args.scale / 3600:.1f} API hours "
        f"at {args.scale:g}x), RPM {args.rpm}, margin 20% + 2 s"
    )
    header = (
        f"{'distribution':<24} {'batch':>6} {'online':>6} {'paid':>5} {'cost $':>9} {'vs online':>9} "
        f"{'vs batch':>8} {'finished':>9} {'deadline':>8}"
    )
    print(header)
    with EmulatorProcess(track_keys=False) as emu:
        for name, (fast, p_tail, tail) in DISTRIBUTIONS.items():
            started = time.monotonic()
            r = run_one(emu, name, fast, p_tail, tail, args)
            print(
                f"{r['distribution']:<24} {r['batch_price'] / r['items']:>6.0%} {r['online'] / r['items']:>6.0%} "
                f"{r['paid_requests']:>5} {r['cost']:>9.5f} {r['cost'] / r['all_online']:>9.0%} "
                f"{r['cost'] / r['all_batch']:>8.0%} {r['finished_s']:>8.1f}s {r['deadline_s']:>7.0f}s"
                + ("" if r["finished_s"] <= r["deadline_s"] else "  MISSED")
                + f"   ({time.monotonic() - started:.0f} s)"
            )


if __name__ == "__main__":
    main()
