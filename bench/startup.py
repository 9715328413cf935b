"""Start-up time of every command, and what `import batchrun.cli` spends its time on.

    python bench/startup.py            # median of 10 runs each (about 2 minutes)
    python bench/startup.py --runs 30
    python bench/startup.py --quick    # 3 runs each

A small database is made first: a 20-item run through `batchrun submit` against the local emulator. Then every
command runs as users run it (the `batchrun` console script, and `python -m batchrun`), each in a fresh process,
output discarded: the read commands on that run (status, runs, results, report, doctor, prune), delete (on a fresh
copy of the database each time), submit --dry-run, and resume, retry and cancel of the finished run (nothing left to
send: what they cost before the first request). Measured with whatever the venv has installed: the dev extra brings
pandas, which sqlite-utils imports when it can (the reason this benchmark exists).
Target: median < 0.3 s each.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, Emulator, banner, batchrun_submit, child_env, machine, make_items, table

TARGET_S = 0.3
MAX_TOKENS = 512  # every reply ends by itself: the run succeeds, so every command exits 0


class Command(NamedTuple):
    """A measured command: its arguments, what to do before each run, its environment, the exit code it gives."""

    args: list[str]
    prepare: Callable[[], object] | None = None
    env: dict[str, str] | None = None
    exit_code: int = 0


def timed(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    runs: int,
    prepare: Callable[[], object] | None = None,
    exit_code: int = 0,
) -> list[tuple[float, float]]:
    """(wall s, CPU s) of each of `runs` runs, after one run not measured (it writes the bytecode caches, as a
    user's first run does)."""
    times = []
    for n in range(runs + 1):
        if prepare is not None:
            prepare()
        before = _children_cpu()
        started = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        wall = time.perf_counter() - started
        if proc.returncode != exit_code:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
        if n:
            times.append((wall, _children_cpu() - before))
    return times


def _writes_bytecode(env: dict[str, str]) -> dict[str, str]:
    """Without PYTHONDONTWRITEBYTECODE (set in some containers): every run would compile batchrun from source
    (0.1-0.4 s), which no installed copy does."""
    return {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's children that have ended: one child runs at a time here."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
            items = make_items(workdir / "small.jsonl", 20, min_chars=30, max_chars=80, max_tokens=MAX_TOKENS)
            db = workdir / "small.db"
            env = child_env(emu.base_url)
            proc = subprocess.run(
                batchrun_submit(items.path, db, max_tokens=MAX_TOKENS, concurrency=8, extra=["--run-id", "small"]),
                env=env,
                cwd=workdir,
                capture_output=True,
                timeout=120,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"making the small database failed: {proc.stderr.decode()[-2000:]}")
        # the measured commands send nothing: the run is finished (resume, retry and cancel find nothing to do);
        # submit --dry-run runs without a key, so it estimates tokens instead of counting them through the API
        env = _writes_bytecode(child_env(emu.base_url))
        keyless = _writes_bytecode(child_env())
        script = Path(PYTHON).with_name("batchrun")
        forms = {"python -m batchrun": [PYTHON, "-m", "batchrun"]}
        if script.exists():
            forms = {"batchrun (console script)": [str(script)], **forms}
        spare = workdir / "spare.db"
        commands = {
            "--help": Command(["--help"]),
            "status": Command(["status", "--db", str(db)]),
            "status RUN --json": Command(["status", "small", "--json", "--db", str(db)]),
            "runs": Command(["runs", "--db", str(db)]),
            "results RUN": Command(["results", "small", "--db", str(db)]),
            "results RUN -o out.csv": Command(["results", "small", "-o", "out.csv", "--db", str(db)]),
            "report RUN": Command(["report", "small", "-o", "report.html", "--db", str(db)]),
            "doctor": Command(["doctor", "--db", str(db)]),
            "prune --older-than 3650d": Command(["prune", "--older-than", "3650d", "--db", str(db)]),
            "delete RUN": Command(["delete", "small", "--db", str(spare)], lambda: shutil.copy(db, spare)),
            "submit --dry-run": Command(
                ["submit", str(items.path), "--model", "claude-haiku-4-5", "--dry-run", "--db", str(db)], env=keyless
            ),
            "resume RUN (finished)": Command(["resume", "small", "-q", "--db", str(db)]),
            "retry RUN (nothing failed)": Command(["retry", "small", "-q", "--db", str(db)]),
            # an online run has no batches to cancel: refused with exit 2, after the same start-up
            "cancel RUN (online: refused)": Command(["cancel", "small", "-q", "--db", str(db)], exit_code=2),
        }
        banner("e) start-up: wall time of a fresh process, output discarded")
        print(f"  pandas {'installed' if importlib.util.find_spec('pandas') else 'NOT installed'} in this venv")
        baseline = [w for w, _ in timed([PYTHON, "-c", "pass"], env, workdir, runs)]
        base_imports = [w for w, _ in timed([PYTHON, "-c", "import anthropic"], env, workdir, max(3, runs // 2))]
        rows = []
        for form, prefix in forms.items():
            for name, c in commands.items():
                t = timed([*prefix, *c.args], c.env or env, workdir, runs, c.prepare, c.exit_code)
                wall = [w for w, _ in t]
                med = statistics.median(wall)
                rows.append(
                    [
                        f"{form} {name}",
                        f"{med:.3f}",
                        f"{min(wall):.3f}",
                        f"{max(wall):.3f}",
                        f"{statistics.median(cpu for _, cpu in t):.3f}",
                        "yes" if med < TARGET_S else "NO",
                    ]
                )
        print(table(["command", "median s", "min s", "max s", "median CPU s", f"< {TARGET_S} s"], rows))
        slow = sum(r[-1] != "yes" for r in rows)
        print(f"  {len(rows) - slow} of {len(rows)} commands under {TARGET_S} s (median wall time)")
        print(
            f"  for scale: `python -c pass` {statistics.median(baseline):.3f} s; "
            f"`python -c 'import anthropic'` {statistics.median(base_imports):.3f} s (paid by a command that sends); "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        banner('python -X importtime -c "import batchrun.cli"')
        top_imports(importtime(["-c", "import batchrun.cli"], env, workdir), args.top)
        for name, c in commands.items():
            if c.prepare is not None:
                c.prepare()
            banner(f"python -X importtime -m batchrun {name}")
            top_imports(importtime(["-m", "batchrun", *c.args], c.env or env, workdir), min(6, args.top))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
