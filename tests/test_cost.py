"""Cost: prompt caching, cost accounting from usage, the response cache, routing, and the dry run."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import orjson
import pytest

from batchrun.caching import prefix_key
from tests.conftest import batchrun, cli_env, db_rows, read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
# The published prices (USD per million tokens), written out here independently of batchrun's table.
SONNET = {"input": 3.0, "output": 15.0}
HAIKU = {"input": 1.0, "output": 5.0}


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


def expected_cost(usage: dict, price: dict, batch: bool = False) -> float:
    per_in = price["input"] / 1e6
    usd = (
        usage["input_tokens"] * per_in
        + usage["output_tokens"] * price["output"] / 1e6
        + usage["cache_creation_input_tokens"] * per_in * 1.25
        + usage["cache_read_input_tokens"] * per_in * 0.1
    )
    return usd * (0.5 if batch else 1.0)


def status(workdir: Path, env: dict, run_id: str) -> dict:
    proc = batchrun(["status", run_id, "--json"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


@pytest.fixture
def ticket_job(workdir: Path) -> Path:
    """The shipped triage job (a ~3,000-token shared policy as its system prompt), copied with its prompt file."""
    shutil.copytree(ROOT / "jobs" / "prompts", workdir / "prompts")
    shutil.copy(ROOT / "jobs" / "classify_tickets.toml", workdir / "job.toml")
    return workdir / "job.toml"


@pytest.mark.slow
def test_cached_triage_job_costs_what_the_usage_says(workdir: Path, emulator, ticket_job: Path) -> None:
    n = 50
    items = write_jsonl(workdir / "items.jsonl", tickets(n))
    env = cli_env(emulator.base_url)
    proc = batchrun(
        ["submit", str(items), "--job", str(ticket_job), "--run-id", "t", "-o", "out.jsonl"], cwd=workdir, env=env
    )
    assert proc.returncode == 0, proc.stderr
    usage = emulator.stats()["usage"]["messages"]["claude-sonnet-4-6"]
    assert usage["requests"] == n
    # the policy is written to the cache once, by the first request, and read by the other 49
    policy_tokens = usage["cache_creation_input_tokens"]
    assert 2500 < policy_tokens < 4000
    assert usage["cache_read_input_tokens"] == (n - 1) * policy_tokens
    data = status(workdir, env, "t")
    assert data["cost_usd"] == pytest.approx(expected_cost(usage, SONNET), abs=1e-6)
    assert data["tokens"] == {
        "input": usage["input_tokens"],
        "output": usage["output_tokens"],
        "cache_creation": policy_tokens,
        "cache_creation_1h": 0,
        "cache_read": (n - 1) * policy_tokens,
    }
    first = db_rows(
        workdir / "batchrun.db",
        "SELECT cache_creation_tokens, cache_read_tokens FROM items "
        "WHERE run_id = 't' ORDER BY updated_at, line_no LIMIT 1",
    )
    assert first == [(policy_tokens, 0)]
    assert "$" in proc.stderr and "cache" in proc.stderr
    # without caching, the same job costs several times more
    uncached = expected_cost(
        {
            **usage,
            "input_tokens": usage["input_tokens"] + n * policy_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
        SONNET,
    )
    assert uncached > 3 * data["cost_usd"]


def test_the_same_requests_again_are_answered_from_the_store(workdir: Path, emulator, ticket_job: Path) -> None:
    items = write_jsonl(workdir / "items.jsonl", tickets(30))
    env = cli_env(emulator.base_url)
    assert (
        batchrun(["submit", str(items), "--job", str(ticket_job), "--run-id", "a"], cwd=workdir, env=env).returncode
        == 0
    )
    emulator.reset()
    again = batchrun(
        ["submit", str(items), "--job", str(ticket_job), "--run-id", "b", "-o", "b.jsonl"], cwd=workdir, env=env
    )
    assert again.returncode == 0, again.stderr
    assert emulator.stats()["requests"] == 0
    assert "30 item(s) from the response cache" in again.stderr
    data = status(workdir, env, "b")
    assert data["cost_usd"] == 0 and data["counts"]["succeeded"] == 30
    first = {r["custom_id"]: r["result"] for r in read_jsonl(workdir / "b.jsonl")}
    a = batchrun(["results", "a"], cwd=workdir, env=env).stdout
    assert {orjson.loads(x)["custom_id"]: orjson.loads(x)["result"] for x in a.splitlines()} == first
    fresh = batchrun(
        ["submit", str(items), "--job", str(ticket_job), "--run-id", "c", "--no-cache"], cwd=workdir, env=env
    )
    assert fresh.returncode == 0 and emulator.stats()["by_status"]["200"] == 30


def test_routing_sends_each_item_to_the_model_its_field_names(workdir: Path, emulator) -> None:
    shutil.copy(ROOT / "jobs" / "route_tasks.toml", workdir / "job.toml")
    rows = [orjson.loads(x) for x in (ROOT / "jobs" / "examples" / "tasks.jsonl").read_bytes().splitlines()]
    items = write_jsonl(workdir / "items.jsonl", rows)
    env = cli_env(emulator.base_url)
    proc = batchrun(["submit", str(items), "--job", "job.toml", "-o", "out.jsonl"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    routes = {"classify": "claude-haiku-4-5", "extract": "claude-haiku-4-5", "draft": "claude-sonnet-4-6"}
    by_id = {r["custom_id"]: r for r in rows}
    for result in read_jsonl(workdir / "out.jsonl"):
        task = by_id[result["custom_id"]]["task"]
        assert result["result"]["message"]["model"] == routes.get(task, "claude-sonnet-4-6")
    usage = emulator.stats()["usage"]["messages"]
    expected_haiku = sum(1 for r in rows if r["task"] in ("classify", "extract"))
    assert usage["claude-haiku-4-5"]["requests"] == expected_haiku
    assert usage["claude-sonnet-4-6"]["requests"] == len(rows) - expected_haiku
    data = status(workdir, env, db_rows(workdir / "batchrun.db", "SELECT id FROM runs")[0][0])
    expected = expected_cost(usage["claude-haiku-4-5"] | {"cache_creation_input_tokens": 0}, HAIKU) + expected_cost(
        usage["claude-sonnet-4-6"], SONNET
    )
    assert data["cost_usd"] == pytest.approx(expected, abs=1e-6)


def test_dry_run_counts_tokens_prices_both_paths_and_sends_nothing(workdir: Path, emulator, ticket_job) -> None:
    items = write_jsonl(workdir / "items.jsonl", tickets(100))
    env = cli_env(emulator.base_url)
    # a max_tokens near the emulator's short replies, so the worst case it prices is close to what is paid
    tight = ["--max-tokens", "64"]
    dry = batchrun(
        ["submit", str(items), "--job", str(ticket_job), *tight, "--dry-run", "--rpm", "25"], cwd=workdir, env=env
    )
    assert dry.returncode == 0, dry.stderr
    stats = emulator.stats()
    assert stats["requests"] == 0 and 0 < stats["count_tokens_requests"] <= 20
    assert not (workdir / "batchrun.db").exists()
    assert "counted with count_tokens" in dry.stdout
    online = float(dry.stdout.split("expected cost at most: online $")[1].split(",")[0])
    batch = float(dry.stdout.split(", batch $")[-1].split(" ")[0])
    assert batch == pytest.approx(online / 2, rel=0.01)
    assert "about 4.0 min at worst" in dry.stdout  # 100 items at 25 requests per minute
    # the estimate is an upper bound that is close: compare with what the run really costs
    assert (
        batchrun(
            ["submit", str(items), "--job", str(ticket_job), *tight, "--run-id", "r"], cwd=workdir, env=env
        ).returncode
        == 0
    )
    real = status(workdir, env, "r")["cost_usd"]
    assert real <= online <= real * 1.5


def test_short_system_prompts_are_not_marked_for_caching(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", tickets(3))
    job = workdir / "job.toml"
    job.write_text('model = "claude-sonnet-4-6"\nsystem = "Be brief."\ntemplate = "{text}"\n')
    assert (
        batchrun(["submit", str(items), "--job", str(job)], cwd=workdir, env=cli_env(emulator.base_url)).returncode == 0
    )
    params = [orjson.loads(p) for (p,) in db_rows(workdir / "batchrun.db", "SELECT params FROM requests")]
    assert all(p["system"] == "Be brief." and prefix_key(p) is None for p in params)


def test_the_dry_runs_online_time_is_the_deadline_plans(workdir: Path) -> None:
    """One estimate of the online path in one output: the line of limits and the deadline plan say the same time
    (the first counted only the limits, so 20 items at 64 in flight read 0.05 minutes beside the plan's 21.5 s)."""
    items = write_jsonl(workdir / "items.jsonl", [{"custom_id": f"q{i}", "prompt": f"What is {i}?"} for i in range(20)])
    keyless = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    args = ["submit", str(items), "--model", "claude-haiku-4-5", "--max-tokens", "1024", "--dry-run"]
    dry = batchrun([*args, "--mode", "auto", "--deadline", "2h"], cwd=workdir, env=keyless)
    assert dry.returncode == 0, dry.stderr
    online = re.search(r"in flight: about (\S+) at worst", dry.stdout)
    planned = re.search(r"then the rest online: 20 item\(s\) in about (\S+) \+", dry.stdout)
    assert online and planned, dry.stdout
    assert online[1] == planned[1] == "21.5s"  # one wave of 20: 1 s to the first token, 1,024 tokens at 50/s
