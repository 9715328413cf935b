"""A smoke test against the real API: runs only when ANTHROPIC_API_KEY is set (never in CI, which has no key)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import batchrun, read_jsonl, write_jsonl

pytestmark = pytest.mark.skipif(
    not os.environ.get("ANTHROPIC_API_KEY"), reason="live API test: set ANTHROPIC_API_KEY to run it"
)


def test_two_prompts_through_the_real_api(workdir: Path) -> None:
    items = write_jsonl(workdir / "items.jsonl", [{"custom_id": f"live-{i}", "prompt": "Say OK."} for i in range(2)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHRUN_")}
    proc = batchrun(
        ["submit", str(items), "--model", "claude-haiku-4-5", "--max-tokens", "5", "-o", "out.jsonl"],
        cwd=workdir,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results = read_jsonl(workdir / "out.jsonl")
    assert [r["custom_id"] for r in results] == ["live-0", "live-1"]
    assert all(r["result"]["message"]["content"][0]["text"] for r in results)
