"""Schemas and answer quality: replies are validated data, and a refused or cut reply is a failure, not a success."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import jsonschema
import orjson
import pytest

from batchrun.answers import Judge
from batchrun.emulator.replies import expected_output, expected_reply
from batchrun.job import Job
from tests.conftest import batchrun, cli_env, db_rows, prompts, write_jsonl

MODEL = "claude-haiku-4-5"
SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "account", "other"]},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string"},
    },
    "required": ["category", "urgency", "summary"],
    "additionalProperties": False,
}
SCHEMA_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)  # jsonschema.validate checks the schema itself each call


def schema_job(path: Path, max_attempts: int = 4, via: str = "json_schema", mode: str = "online") -> Path:
    (path.parent / "ticket.schema.json").write_bytes(orjson.dumps(SCHEMA))
    path.write_text(
        f'model = "{MODEL}"\nmax_tokens = 200\nmax_attempts = {max_attempts}\nmode = "{mode}"\n'
        f'schema_file = "ticket.schema.json"\nschema_via = "{via}"\nbatch_size = 25\npoll_interval = 0.05\n'
    )
    return path


def items_of(db: Path) -> list[tuple]:
    return db_rows(
        db,
        "SELECT i.custom_id, i.state, i.error_type, i.error_message, r.params, a.data, i.stop_reason, attempts, "
        "i.output_tokens, i.cost_usd FROM items i JOIN requests r USING (run_id, line_no) "
        "JOIN answers a USING (run_id, line_no) ORDER BY i.line_no",
    )


def check_valid_or_invalid_output(db: Path, max_attempts: int) -> Counter:
    """Every item is valid data equal to what the emulator generated for its request, or failed invalid_output
    after max_attempts; returns the count of each."""
    seen: Counter = Counter()
    for custom_id, state, error_type, message, params, data, _stop, attempts, _out, cost in items_of(db):
        if state == "succeeded":
            value = orjson.loads(data)
            SCHEMA_VALIDATOR.validate(value)
            assert value == expected_output(orjson.loads(params)), custom_id
            seen["valid"] += 1
        else:
            assert (state, error_type, attempts) == ("failed", "invalid_output", max_attempts), custom_id
            assert "JSON" in message or "schema" in message
            seen["invalid"] += 1
        assert cost is not None and cost > 0  # every reply is billed, the invalid ones too
    return seen


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_a_schema_job_with_ten_percent_invalid_replies_ends_valid_or_invalid_output(emulator, workdir, mode):
    emulator.configure(p_invalid_json=0.05, p_missing_required=0.05, batch_seconds=0.05, max_faults_per_request=9)
    write_jsonl(workdir / "items.jsonl", prompts(60))
    job = schema_job(workdir / "job.toml", max_attempts=2, mode=mode)
    r = batchrun(["submit", "items.jsonl", "--job", job], cwd=workdir, env=cli_env(emulator.base_url))
    seen = check_valid_or_invalid_output(workdir / "batchrun.db", max_attempts=2)
    assert seen["valid"] + seen["invalid"] == 60 and seen["valid"] >= 45
    assert r.returncode == (1 if seen["invalid"] else 0), r.stderr
    sent = db_rows(workdir / "batchrun.db", "SELECT outcome, count(*) FROM all_attempts GROUP BY outcome")
    outcomes = dict(sent)
    assert outcomes.get("invalid_output", 0) >= 3  # the invalid replies were recorded, and sent again
    assert outcomes["succeeded"] == seen["valid"]
    # the reply's text is the data's compact JSON: the answer is held once, in the result
    held = "SELECT count(*) FROM items WHERE state = 'succeeded' AND data = ''"
    assert db_rows(workdir / "batchrun.db", held) == [(seen["valid"],)]


def test_with_attempts_enough_every_item_ends_valid_and_equal_to_the_generated_data(emulator, workdir):
    emulator.configure(p_invalid_json=0.1, p_missing_required=0.1)
    write_jsonl(workdir / "items.jsonl", prompts(40))
    job = schema_job(workdir / "job.toml", max_attempts=8)
    r = batchrun(["submit", "items.jsonl", "--job", job], cwd=workdir, env=cli_env(emulator.base_url))
    assert r.returncode == 0, r.stderr
    assert check_valid_or_invalid_output(workdir / "batchrun.db", 8) == {"valid": 40}


def test_a_schema_given_as_a_forced_tool_is_validated_from_the_tool_input(emulator, workdir):
    emulator.configure(p_missing_required=0.2)
    write_jsonl(workdir / "items.jsonl", prompts(20))
    job = schema_job(workdir / "job.toml", max_attempts=8, via="tool")
    r = batchrun(["submit", "items.jsonl", "--job", job], cwd=workdir, env=cli_env(emulator.base_url))
    assert r.returncode == 0, r.stderr
    rows = items_of(workdir / "batchrun.db")
    assert {row[6] for row in rows} == {"tool_use"}
    # a tool's input is no text of the reply: its data is stored as it is
    assert db_rows(workdir / "batchrun.db", "SELECT count(*) FROM items WHERE data = ''") == [(0,)]
    for row in rows:
        params = orjson.loads(row[4])
        assert params["tool_choice"] == {"type": "tool", "name": "answer"}
        assert orjson.loads(row[5]) == expected_output(params)


def test_schema_flag_does_what_the_job_key_does(emulator, workdir):
    (workdir / "s.json").write_bytes(orjson.dumps(SCHEMA))
    write_jsonl(workdir / "items.jsonl", prompts(3))
    env = cli_env(emulator.base_url)
    r = batchrun(["submit", "items.jsonl", "--model", MODEL, "--schema", "s.json"], cwd=workdir, env=env)
    assert r.returncode == 0, r.stderr
    for *_, params, data, _stop, _a, _o, _c in items_of(workdir / "batchrun.db"):
        params = orjson.loads(params)
        assert params["output_config"]["format"] == {"type": "json_schema", "schema": SCHEMA}
        assert orjson.loads(data) == expected_output(params)


def test_a_schema_that_is_not_a_json_schema_is_refused_before_anything_is_sent(emulator, workdir):
    (workdir / "s.json").write_bytes(orjson.dumps({"type": "objekt"}))
    write_jsonl(workdir / "items.jsonl", prompts(3))
    r = batchrun(["submit", "items.jsonl", "--model", MODEL, "--schema", "s.json"], cwd=workdir, env=cli_env("x"))
    assert r.returncode == 2
    assert "s.json" in r.stderr and "not a valid JSON Schema" in r.stderr
    assert not (workdir / "batchrun.db").exists()


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_refused_and_truncated_replies_fail_with_their_own_error_type(emulator, workdir, mode):
    emulator.configure(p_refusal=0.15, p_truncated=0.15, batch_seconds=0.05)
    write_jsonl(workdir / "items.jsonl", prompts(60))
    env = cli_env(emulator.base_url)
    args = ["submit", "items.jsonl", "--model", MODEL, "--max-tokens", "64", "--mode", mode, "--poll-interval", "0.05"]
    r = batchrun(args, cwd=workdir, env=env)
    assert r.returncode == 1, r.stderr
    by_state = Counter(
        (state, error_type, stop) for _c, state, error_type, _m, _p, _d, stop, *_ in items_of(workdir / "batchrun.db")
    )
    assert by_state[("failed", "refusal", "refusal")] >= 3
    assert by_state[("failed", "max_tokens", "max_tokens")] >= 3
    assert set(by_state) == {
        ("succeeded", None, "end_turn"),
        ("failed", "refusal", "refusal"),
        ("failed", "max_tokens", "max_tokens"),
    }
    status = orjson.loads(batchrun(["status", "--json", _run(workdir)], cwd=workdir, env=env).stdout)
    assert status["stop_reasons"] == {"end_turn": by_state[("succeeded", None, "end_turn")]}
    kinds = {f["error_type"]: f["items"] for f in status["failures"]}
    assert kinds == {
        "refusal": by_state[("failed", "refusal", "refusal")],
        "max_tokens": by_state[("failed", "max_tokens", "max_tokens")],
    }
    text = batchrun(["status", _run(workdir)], cwd=workdir, env=env).stdout
    assert "succeeded by stop reason:" in text and "failed with max_tokens: the reply was cut at max_tokens" in text


def _run(workdir: Path) -> str:
    return db_rows(workdir / "batchrun.db", "SELECT id FROM runs")[0][0]


def test_accept_truncated_keeps_cut_text_replies_and_status_shows_them(emulator, workdir):
    write_jsonl(workdir / "items.jsonl", prompts(10))
    (workdir / "job.toml").write_text(f'model = "{MODEL}"\nmax_tokens = 4\naccept_truncated = true\n')
    env = cli_env(emulator.base_url)
    r = batchrun(["submit", "items.jsonl", "--job", "job.toml"], cwd=workdir, env=env)
    assert r.returncode == 0, r.stderr
    status = orjson.loads(batchrun(["status", "--json", _run(workdir)], cwd=workdir, env=env).stdout)
    assert status["stop_reasons"] == {"max_tokens": 10}
    assert "10 max_tokens" in batchrun(["status", _run(workdir)], cwd=workdir, env=env).stdout


def test_retry_max_tokens_sends_the_cut_items_again_with_more_room(emulator, workdir):
    write_jsonl(workdir / "items.jsonl", prompts(12))
    env = cli_env(emulator.base_url)
    r = batchrun(["submit", "items.jsonl", "--model", MODEL, "--max-tokens", "4"], cwd=workdir, env=env)
    assert r.returncode == 1
    db = workdir / "batchrun.db"
    before = dict(db_rows(db, "SELECT line_no, request_hash FROM items"))
    assert {row[2] for row in items_of(db)} == {"max_tokens"}
    attempts_before = db_rows(db, "SELECT count(*) FROM attempts")[0][0]
    r = batchrun(["retry", _run(workdir), "--error-type", "max_tokens", "--max-tokens", "64"], cwd=workdir, env=env)
    assert r.returncode == 0, r.stderr
    for line_no, params, request_hash, result in db_rows(
        db, "SELECT i.line_no, r.params, i.request_hash, i.result FROM items i JOIN requests r USING (run_id, line_no)"
    ):
        params = orjson.loads(params)
        assert params["max_tokens"] == 64 and request_hash != before[line_no]
        message = orjson.loads(result)["message"]
        assert message["content"][0]["text"] == expected_reply(params).text
        assert message["stop_reason"] == "end_turn"
    assert db_rows(db, "SELECT count(*) FROM attempts")[0][0] == attempts_before + 12  # the old ones stay
    rows = items_of(db)
    assert all(out > 4 for *_, out, _cost in rows)  # the cut replies' tokens are billed too


def test_judge_names_what_is_wrong_with_a_reply():
    judge = Judge(Job(schema=SCHEMA))
    good = {"category": "bug", "urgency": 2, "summary": "x"}
    ok = judge({"stop_reason": "end_turn", "content": [{"type": "text", "text": orjson.dumps(good).decode()}]})
    assert ok.ok and ok.data == good
    bad = judge({"stop_reason": "end_turn", "content": [{"type": "text", "text": '{"category": "bug"'}]})
    assert bad.error_type == "invalid_output" and "not valid JSON" in bad.message and bad.worth_retrying
    off = judge(
        {"stop_reason": "end_turn", "content": [{"type": "text", "text": '{"category": "spam", "urgency": 9}'}]}
    )
    assert off.error_type == "invalid_output" and "fails the schema" in off.message
    cut = Judge(Job())({"stop_reason": "max_tokens", "content": [{"type": "text", "text": "abc"}], "usage": {}})
    assert cut.error_type == "max_tokens" and not cut.worth_retrying
    assert Judge(Job(accept_truncated=True))({"stop_reason": "max_tokens", "content": []}).ok
    refused = Judge(Job())({"stop_reason": "refusal", "content": [{"type": "text", "text": "no"}]})
    assert refused.error_type == "refusal" and not refused.worth_retrying
