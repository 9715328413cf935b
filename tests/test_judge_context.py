"""`batchrun compare --judge`: the judge sees the instructions the answers were written to (the job's system
prompt), read from the requests that reached the emulator."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.conftest import batchrun, cli_env, write_jsonl

HAIKU, OPUS, JUDGE = "claude-haiku-4-5", "claude-opus-4-6", "claude-sonnet-4-5"
SYSTEM = "You are the billing desk of Acme. Answer every ticket in exactly three French words."


def system_text(params: dict) -> str:
    system = params.get("system") or ""
    if isinstance(system, list):
        return "\n".join(b.get("text", "") for b in system)
    return system


def test_the_judge_gets_the_jobs_system_prompt(workdir: Path, emulator) -> None:
    emulator.configure(model_divergence={HAIKU: 0.5}, request_log=500)
    items = write_jsonl(workdir / "t.jsonl", [{"custom_id": f"t-{i}", "text": f"Ticket {i}"} for i in range(12)])
    job = workdir / "job.toml"
    job.write_text(
        f'model = "{OPUS}"\nmax_tokens = 100\ntemplate = "Triage: {{text}}"\nsystem = {orjson.dumps(SYSTEM).decode()}\n'
    )
    args = ["compare", str(items), "--job", str(job), "--models", HAIKU, "--reference", OPUS, "--judge", JUDGE, "-q"]
    done = batchrun([*args, "--json"], cwd=workdir, env=cli_env(emulator.base_url))
    assert done.returncode == 0, done.stderr
    sent = emulator.requests()
    answers = [p for p in sent if p["model"] in (HAIKU, OPUS)]
    judged = [p for p in sent if p["model"] == JUDGE]
    assert len(answers) == 24 and judged  # the texts that differ from the reference's are judged
    assert all(system_text(p) == SYSTEM for p in answers)
    for p in judged:
        assert SYSTEM in system_text(p), p
        assert "<candidate_answer>" in p["messages"][0]["content"]


def test_items_with_their_own_system_prompts_each_show_theirs_to_the_judge(workdir: Path, emulator) -> None:
    emulator.configure(model_divergence={HAIKU: 0.5}, request_log=500)
    rules = [f"Rule {k}: answer as the {name} desk." for k, name in enumerate(("billing", "bugs", "sales"))]
    rows = [
        {
            "custom_id": f"t-{i}",
            "params": {"max_tokens": 100, "system": rules[i % 3], "messages": [{"role": "user", "content": f"T {i}"}]},
        }
        for i in range(12)
    ]
    items = write_jsonl(workdir / "t.jsonl", rows)
    job = workdir / "job.toml"
    job.write_text(f'model = "{OPUS}"\nmax_tokens = 100\n')
    args = ["compare", str(items), "--job", str(job), "--models", HAIKU, "--reference", OPUS, "--judge", JUDGE, "-q"]
    done = batchrun([*args, "--json"], cwd=workdir, env=cli_env(emulator.base_url))
    assert done.returncode == 0, done.stderr
    judged = [p for p in emulator.requests() if p["model"] == JUDGE]
    seen = set()
    for p in judged:
        prompt = p["messages"][0]["content"]
        n = int(prompt.split("<request>\nT ", 1)[1].split("\n", 1)[0])
        assert f"<instructions>\n{rules[n % 3]}\n</instructions>" in prompt + system_text(p), p
        seen.add(rules[n % 3])
    assert len(seen) > 1  # requests with different system prompts were judged
