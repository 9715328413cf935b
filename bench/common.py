"""Shared helpers of the benchmarks: the emulator as a subprocess, child processes measured with wait4,
item files with known token counts, the store's timestamps, medians and tables.

Only the standard library at import time: a benchmark's own start-up must not weigh on what it measures.
Every request goes to the emulator on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # batchrun from this checkout, installed or not
PYTHON = sys.executable
MODEL = "claude-haiku-4-5"

from batchrun.emulator.process import EmulatorProcess  # noqa: E402 (after the path is set)

API_KEY = "sk-ant-bench-not-a-real-key-0000000000"

# Words for prompts: each word plus its space is about one emulator token (4 characters).
_TEXT = (
    "the ticket says the export button fails since the update and the customer asks for a refund "
    "of the last invoice because the team plan was charged twice while login with sso keeps failing "
    "for every user in the region and the dashboard loads slowly when many reports run at once"
)
WORDS = tuple(_TEXT.split())


def child_env(base_url: str | None = None) -> dict[str, str]:
    """The environment of a measured child: batchrun importable from this checkout, no stray API settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    if base_url is not None:
        env["ANTHROPIC_API_KEY"] = API_KEY
        env["ANTHROPIC_BASE_URL"] = base_url
    return env


# ---- the emulator -------------------------------------------------------------------------------


def Emulator(**config: Any) -> EmulatorProcess:
    """The emulator in its own process (so on 2 cores, its own core), keeping no per-request records. Unless a
    scenario sets limits, none are enforced (0 turns each off; the emulator's default is Tier-4-like)."""
    return EmulatorProcess(track_keys=False, **{"rpm": 0, "itpm": 0, "otpm": 0, **config})


class StatsPoller:
    """Samples the emulator's counters every `interval` seconds: (wall time, 200s, 429s, finished requests).

    The emulator counts a 200 when the reply is written (after its latency) and a 429 at once, so the
    series is the server's own view of throughput and refusals over time.
    """

    def __init__(self, emulator: Emulator, interval: float = 0.5) -> None:
        self.emulator = emulator
        self.interval = interval
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        s = self.emulator.stats()
        by = s["by_status"]
        self.samples.append((time.time(), by.get("200", 0), by.get("429", 0), sum(by.values())))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> StatsPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def window(self, start: float) -> dict[str, float] | None:
        """Throughput (200s per second) and share of 429s from `start` (wall time) to the last 200."""
        if not self.samples:
            return None
        final_ok = self.samples[-1][1]
        end = next(s for s in self.samples if s[1] >= final_ok)
        first = next((s for s in self.samples if s[0] >= start), None)
        if first is None or end[0] - first[0] < 1.0:
            return None
        ok = end[1] - first[1]
        r429 = end[2] - first[2]
        finished = end[3] - first[3]
        return {
            "seconds": end[0] - first[0],
            "items_per_s": ok / (end[0] - first[0]),
            "share_429": r429 / finished if finished else 0.0,
            "n_429": r429,
        }


# ---- child processes ----------------------------------------------------------------------------


@dataclass
class ChildResult:
    argv: list[str]
    returncode: int
    wall: float
    maxrss_mb: float
    cpu_s: float
    stdout: str
    stderr: str
    rss_samples: list[tuple[float, float]] = field(default_factory=list)


def run_child(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: str | Path,
    timeout: float,
    sample_rss: float | None = None,
) -> ChildResult:
    """Run a command to its end and measure it: wall time, peak RSS and CPU time of that process (wait4).

    Output goes to files, so a chatty child can never block on a full pipe. A child still running at
    `timeout` is killed and the benchmark fails: every run has a bounded time.
    """
    cwd = Path(cwd)
    out_path, err_path = cwd / f".child-{os.getpid()}-out", cwd / f".child-{os.getpid()}-err"
    samples: list[tuple[float, float]] = []
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        done: dict[str, Any] = {}

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            done["wall"] = time.perf_counter() - started
            done["status"], done["usage"] = status, usage

        reaper = threading.Thread(target=reap, daemon=True)
        reaper.start()
        deadline = started + timeout
        while reaper.is_alive():
            if sample_rss is not None:
                rss = _rss_mb(proc.pid)
                if rss is not None:
                    samples.append((time.perf_counter() - started, rss))
            reaper.join(sample_rss or 0.5)
            if time.perf_counter() > deadline and reaper.is_alive():
                proc.kill()
                reaper.join()
                raise TimeoutError(f"{' '.join(argv[:4])}... still running after {timeout:.0f}s: killed")
        proc.returncode = os.waitstatus_to_exitcode(done["status"])
    usage = done["usage"]
    result = ChildResult(
        list(argv),
        proc.returncode,
        done["wall"],
        usage.ru_maxrss / 1024.0,  # KiB on Linux
        usage.ru_utime + usage.ru_stime,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
        samples,
    )
    out_path.unlink()
    err_path.unlink()
    return result


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def batchrun_submit(
    items: Path,
    db: Path,
    *,
    max_tokens: int,
    concurrency: int,
    backend: str = "aiohttp",
    extra: Sequence[str] = (),
) -> list[str]:
    """`batchrun submit` exactly as a user types it (through `python -m batchrun`)."""
    return [
        PYTHON,
        "-m",
        "batchrun",
        "submit",
        str(items),
        "--model",
        MODEL,
        "--max-tokens",
        str(max_tokens),
        "--concurrency",
        str(concurrency),
        "--backend",
        backend,
        "-q",
        "--db",
        str(db),
        *extra,
    ]


# ---- items --------------------------------------------------------------------------------------


@dataclass
class ItemSet:
    path: Path
    n: int
    max_tokens: int
    avg_input_tokens: float
    avg_output_tokens: float


def prompt_text(rng: random.Random, chars: int, i: int) -> str:
    head = f"Ticket {i}: "
    words = [head]
    size = len(head)
    while size < chars:
        w = rng.choice(WORDS)
        words.append(w + " ")
        size += len(w) + 1
    return "".join(words).strip()


def make_items(
    path: Path, n: int, *, min_chars: int, max_chars: int, max_tokens: int, seed: int = 6, count_tokens: bool = True
) -> ItemSet:
    """Write n short-form lines ({"custom_id", "prompt"}) and return their exact emulator token counts.

    Both clients turn a line into the same request body {model, max_tokens, messages:[user prompt]}, so the
    emulator's count_input_tokens / reply_tokens of that body are exactly what each request costs.
    """
    rng = random.Random(seed)
    total_in = total_out = 0
    if count_tokens:
        from batchrun.emulator.replies import count_input_tokens, reply_tokens
    with path.open("w") as f:
        for i in range(n):
            prompt = prompt_text(rng, rng.randint(min_chars, max_chars), i)
            f.write(json.dumps({"custom_id": f"i-{i}", "prompt": prompt}) + "\n")
            if count_tokens:
                params = {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]}
                total_in += count_input_tokens(params)
                total_out += min(max_tokens, reply_tokens(params))
    return ItemSet(path, n, max_tokens, total_in / n if count_tokens else 0.0, total_out / n if count_tokens else 0.0)


# ---- the store's view of a batchrun run ---------------------------------------------------------


def store_phase(db: Path) -> dict[str, float]:
    """Send phase from the store: first attempt's started_at to the last items.updated_at, and outcomes."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        first = conn.execute("SELECT min(started_at) FROM attempts").fetchone()[0]
        last = conn.execute("SELECT max(updated_at) FROM items").fetchone()[0]
        states = dict(conn.execute("SELECT state, count(*) FROM items GROUP BY state").fetchall())
        attempts = dict(conn.execute("SELECT coalesce(status, 0), count(*) FROM attempts GROUP BY 1").fetchall())
    finally:
        conn.close()
    return {
        "send_start": first or 0.0,
        "send_end": last or 0.0,
        "ok": states.get("succeeded", 0),
        "failed": states.get("failed", 0),
        "attempts": sum(attempts.values()),
        "attempts_429": attempts.get(429, 0),
    }


def store_window(db: Path, start: float) -> dict[str, float] | None:
    """Steady state from the store's attempts: 200s finished after `start` per second, and their 429 share."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT started_at + seconds, status FROM attempts WHERE started_at + seconds >= ? ORDER BY 1", [start]
        ).fetchall()
    finally:
        conn.close()
    if not rows:
        return None
    seconds = rows[-1][0] - start
    ok = sum(1 for _, status in rows if status == 200)
    n429 = sum(1 for _, status in rows if status == 429)
    return {"seconds": seconds, "items_per_s": ok / seconds, "share_429": n429 / len(rows), "n_429": n429}


# ---- reporting ----------------------------------------------------------------------------------


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows
    ]
    return "\n".join(out)


def machine() -> str:
    return (
        f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, {time.strftime('%Y-%m-%d')}"
    )


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("anthropic", "aiohttp", "httpx2", "tenacity"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{name} {version(name)}")
    return ", ".join(parts)


def banner(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)
