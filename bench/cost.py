"""What the 500-ticket triage job costs, paid four ways, priced from the emulator's own usage records.

    python bench/cost.py [--items 500]

1. the tutorial pattern: AsyncAnthropic + Semaphore(20) + gather, the policy sent as a plain system string;
2. batchrun online with prompt caching off (job `cache = false`);
3. batchrun online as shipped (the policy marked for caching, the first request alone);
4. batchrun in batch mode (half price) with caching.
Costs use batchrun's price table; every figure comes from the usage the emulator recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchrun.emulate import emulator  # noqa: E402
from batchrun.pricing import usage_cost  # noqa: E402

MODEL = "claude-sonnet-4-6"
MAX_TOKENS = 256  # the shipped job's


def control(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def stats_cost(stats: dict) -> float:
    total = 0.0
    for via, key in (("online", "messages"), ("batch", "batches")):
        for model, usage in stats["usage"].get(key, {}).items():
            usd = usage_cost(model, via, usage)
            if usd is None:
                raise SystemExit(f"{model} has no price in batchrun's table: its cost is unknown")
            total += usd
    return total


def tickets(n: int) -> list[dict]:
    return [
        {
            "custom_id": f"t-{i}",
            "customer": f"Customer {i % 17}",
            "plan": "Team",
            "text": f"Ticket {i}: the export of report {i * 7} is empty since the update.",
        }
        for i in range(n)
    ]


def tutorial(url: str, rows: list[dict], system: str, template: str) -> None:
    """The pattern most tutorials show; it pays full price for the policy on every request."""
    import anthropic
    from tenacity import retry, stop_after_attempt, wait_exponential

    async def main() -> None:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="bench", max_retries=0)
        sem = asyncio.Semaphore(20)

        @retry(wait=wait_exponential(multiplier=0.5, max=20), stop=stop_after_attempt(8))
        async def one(row: dict) -> None:
            async with sem:
                await client.messages.create(
                    model=MODEL,
                    max_tokens=MAX_TOKENS,
                    system=system,
                    messages=[{"role": "user", "content": template.format(**row)}],
                )

        await asyncio.gather(*(one(r) for r in rows))
        await client.close()

    asyncio.run(main())


def batchrun(url: str, work: Path, items: Path, job: Path, *extra: str) -> None:
    env = {**os.environ, "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "bench"}
    args = [
        sys.executable,
        "-m",
        "batchrun",
        "submit",
        str(items),
        "--job",
        str(job),
        "-q",
        "--no-cache",
        "--db",
        str(work / "cost.db"),
        "--new-run",
        *extra,
    ]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"batchrun failed ({proc.returncode}): {proc.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=500)
    args = parser.parse_args()
    import tomllib

    job_file = ROOT / "jobs" / "classify_tickets.toml"
    settings = tomllib.loads(job_file.read_text())
    system = (job_file.parent / settings["system_file"]).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "jobs" / "prompts", work / "prompts")
        cached_job = work / "cached.toml"
        shutil.copy(job_file, cached_job)
        uncached_job = work / "uncached.toml"
        uncached_job.write_text("cache = false\n" + job_file.read_text())  # before any [table] of the job
        rows = tickets(args.items)
        items = work / "items.jsonl"
        items.write_text("".join(json.dumps(r) + "\n" for r in rows))
        ways = {
            "tutorial (gather + Semaphore(20), no caching)": lambda url: tutorial(
                url, rows, system, settings["template"]
            ),
            "batchrun online, caching off": lambda url: batchrun(url, work, items, uncached_job),
            "batchrun online, caching on": lambda url: batchrun(url, work, items, cached_job, "--run-id", "on"),
            "batchrun batch, caching on": lambda url: batchrun(
                url, work, items, cached_job, "--mode", "batch", "--poll-interval", "0.2", "--run-id", "batch"
            ),
        }
        results = {}
        with emulator("--batch-seconds 1") as url:
            for name, run in ways.items():
                control(url, "/_emulator/reset", {})
                run(url)
                results[name] = stats_cost(control(url, "/_emulator/stats"))
    base = results["tutorial (gather + Semaphore(20), no caching)"]
    print(f"{args.items}-ticket triage job, {MODEL}, ~3,100-token shared policy, max_tokens {MAX_TOKENS}")
    for name, usd in results.items():
        print(f"  {name:48s} ${usd:8.4f}   {usd / base:6.3f} x tutorial")


if __name__ == "__main__":
    main()
