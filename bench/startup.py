"""Start-up time of the commands people type often, and what `import batchrun.cli` spends its time on.

    python bench/startup.py            # median of 10 runs each (about 1 minute)
    python bench/startup.py --runs 30
    python bench/startup.py --quick    # 3 runs each

A small database is made first: a 20-item run through `batchrun submit` against the local emulator.
Then `batchrun --help`, `batchrun status` and `batchrun results RUN` run as users run them (the
`batchrun` console script, and `python -m batchrun`), each in a fresh process, output discarded.
Target: median < 0.3 s each.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, Emulator, banner, batchrun_submit, child_env, machine, make_items, table

TARGET_S = 0.3


def timed(argv: list[str], env: dict[str, str], cwd: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        times.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return times


def importtime(code_or_args: list[str], env: dict[str, str], cwd: Path) -> list[tuple[int, int, str]]:
    """(self us, cumulative us, module) from `python -X importtime ...`."""
    proc = subprocess.run(
        [PYTHON, "-X", "importtime", *code_or_args],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), m.group(4), len(m.group(3))))
    return rows


def top_imports(rows: list, n: int) -> None:
    total = sum(r[0] for r in rows)
    print(f"  total {total / 1000:.0f} ms of imports, {len(rows)} modules")
    top_level = sorted((r for r in rows if r[3] == 1), key=lambda r: -r[1])[:n]
    print(f"  top {n} imported directly (cumulative, their own imports included):")
    for _self_us, cum_us, name, _ in top_level:
        print(f"    {cum_us / 1000:7.1f} ms  {name}")
    print(f"  top {n} by own time (self):")
    for self_us, cum_us, name, _ in sorted(rows, key=lambda r: -r[0])[:n]:
        print(f"    {self_us / 1000:7.1f} ms  {name}  (cumulative {cum_us / 1000:.1f} ms)")
    third = {}
    for self_us, _, name, _ in rows:
        root = name.split(".")[0]
        third[root] = third.get(root, 0) + self_us
    print(f"  top {n} packages (sum of own time of their modules):")
    for root, us in sorted(third.items(), key=lambda kv: -kv[1])[:n]:
        print(f"    {us / 1000:7.1f} ms  {root}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="runs of each command (median reported)")
    p.add_argument("--quick", action="store_true", help="3 runs of each command")
    p.add_argument("--top", type=int, default=12, help="how many import offenders to list")
    args = p.parse_args()
    runs = 3 if args.quick else args.runs
    print(f"batchrun start-up benchmark: {machine()}; {runs} runs each", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="batchrun-bench-startup-"))
    try:
        with Emulator() as emu:
            items = make_items(workdir / "small.jsonl", 20, min_chars=30, max_chars=80, max_tokens=32)
            db = workdir / "small.db"
            env = child_env(emu.base_url)
            proc = subprocess.run(
                batchrun_submit(items.path, db, max_tokens=32, concurrency=8, extra=["--run-id", "small"]),
                env=env,
                cwd=workdir,
                capture_output=True,
                timeout=120,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"making the small database failed: {proc.stderr.decode()[-2000:]}")
        env = child_env()  # the measured commands send nothing
        script = Path(PYTHON).with_name("batchrun")
        forms = {"python -m batchrun": [PYTHON, "-m", "batchrun"]}
        if script.exists():
            forms = {"batchrun (console script)": [str(script)], **forms}
        commands = {
            "--help": ["--help"],
            "status": ["status", "--db", str(db)],
            "results RUN": ["results", "small", "--db", str(db)],
        }
        banner("e) start-up: wall time of a fresh process, output discarded")
        baseline = timed([PYTHON, "-c", "pass"], env, workdir, runs)
        base_imports = timed([PYTHON, "-c", "import anthropic"], env, workdir, max(3, runs // 2))
        rows = []
        for form, prefix in forms.items():
            for name, cmd in commands.items():
                t = timed([*prefix, *cmd], env, workdir, runs)
                med = statistics.median(t)
                rows.append(
                    [
                        f"{form} {name}",
                        f"{med:.3f}",
                        f"{min(t):.3f}",
                        f"{max(t):.3f}",
                        "yes" if med < TARGET_S else "NO",
                    ]
                )
        print(table(["command", "median s", "min s", "max s", f"< {TARGET_S} s"], rows))
        print(
            f"  for scale: `python -c pass` {statistics.median(baseline):.3f} s; "
            f"`python -c 'import anthropic'` {statistics.median(base_imports):.3f} s"
        )
        banner('python -X importtime -c "import batchrun.cli"')
        top_imports(importtime(["-c", "import batchrun.cli"], env, workdir), args.top)
        for name, cmd in commands.items():
            banner(f"python -X importtime -m batchrun {name}")
            top_imports(importtime(["-m", "batchrun", *cmd], env, workdir), min(6, args.top))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
