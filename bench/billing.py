"""What `status` says a run cost against what the emulator billed, at each step of a run whose replies are billed
while their items go back to pending.

    python bench/billing.py [--items 300]

Online: 30% of the replies are cut (failed, billed); `retry --max-tokens` sends those into an API answering 500
(they go back to pending); a resume ends them. Batch: two result lines of every batch are malformed (billed, sent
again in a later batch); the first command stops with the follow-up batch still processing, a resume ends it.
After each step: the emulator's billed cost (its usage records, priced by batchrun's table) and `status --json`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchrun.emulator.process import EmulatorProcess  # noqa: E402
from batchrun.pricing import usage_cost  # noqa: E402

MODEL = "claude-sonnet-4-6"


def billed(stats: dict) -> float:
    return sum(
        usage_cost(model, via, usage) or 0.0
        for via, key in (("online", "messages"), ("batch", "batches"))
        for model, usage in stats["usage"].get(key, {}).items()
    )


def run(args: list[str], cwd: Path, env: dict[str, str]) -> int:
    return subprocess.run([sys.executable, "-m", "batchrun", *args], cwd=cwd, env=env, capture_output=True).returncode


def status_cost(run_id: str, cwd: Path, env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "batchrun", "status", run_id, "--json"], cwd=cwd, env=env, capture_output=True
    )
    return json.loads(out.stdout)["cost_usd"]


def show(step: str, code: int, emulator: EmulatorProcess, run_id: str, cwd: Path, env: dict[str, str]) -> None:
    emu, status = billed(emulator.stats()), status_cost(run_id, cwd, env)
    print(f"{step:<48} exit {code}  emulator billed ${emu:.4f}  status ${status:.4f}  gap ${emu - status:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=300)
    n = parser.parse_args().items
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(batch_seconds=0.2) as emulator:
        cwd = Path(tmp)
        items = cwd / "items.jsonl"
        items.write_text("".join(json.dumps({"custom_id": f"t-{i}", "prompt": f"Ticket {i}"}) + "\n" for i in range(n)))
        env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": emulator.base_url}
        print(f"online, {n} items, {MODEL}")
        emulator.configure(p_truncated=0.3)
        code = run(["submit", str(items), "--model", MODEL, "--max-tokens", "100", "--run-id", "o"], cwd, env)
        show("submit (30% of replies cut)", code, emulator, "o", cwd, env)
        emulator.configure(p_truncated=0.0, p500=1.0, max_faults_per_request=100)
        code = run(["retry", "o", "--max-tokens", "200", "--max-attempts", "2"], cwd, env)
        show("retry --max-tokens 200 into 500s (pending)", code, emulator, "o", cwd, env)
        emulator.configure(p500=0.0)
        show("resume", run(["resume", "o"], cwd, env), emulator, "o", cwd, env)

        emulator.reset(batch_seconds=0.2, batch_bad_lines="content_string,block_number")
        print(f"batch, {n} items in batches of {n // 4}, two malformed result lines a batch")
        submit = ["submit", str(items), "--model", MODEL, "--run-id", "b", "--mode", "batch", "--batch-size"]
        code = run([*submit, str(n // 4), "--no-wait", "--new-run"], cwd, env)
        time.sleep(0.5)
        emulator.configure(batch_bad_lines=None, batch_seconds=3600.0)
        code = run(["resume", "b", "--no-wait"], cwd, env)
        show("collect, send the malformed again (--no-wait)", code, emulator, "b", cwd, env)
        emulator.advance_clock(3600.0)
        show("resume", run(["resume", "b", "--poll-interval", "0.05"], cwd, env), emulator, "b", cwd, env)


if __name__ == "__main__":
    main()
