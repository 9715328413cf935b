"""The edges of the Message Batches ingest and of the response cache (issue 21): a result file with malformed
lines never blocks a batch nor stores a wrong answer (the emulator's batch_bad_lines spoils chosen lines, once per
request, so the item sent again comes back whole), and the cache serves only a reply the current job accepts."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchrun.emulator.replies import expected_text
from tests.conftest import batchrun, cli_env, db_rows, read_jsonl, write_jsonl
from tests.test_scale import assert_tallies_exact

MODEL = "claude-haiku-4-5"
FAST = ["--poll-interval", "0.02"]


def items(n: int, prefix: str = "edge") -> list[dict]:
    return [{"custom_id": f"{prefix}-{i}", "prompt": f"{prefix} item {i}: name {i} colours"} for i in range(n)]


def run_spoiled(workdir: Path, emulator, kinds: list[str], n: int = 10, *extra: str):
    """A batch run whose first batch has one result line spoiled per kind (lines 0, 1, ... of the batch)."""
    emulator.configure(batch_bad_lines=",".join(kinds))
    source = write_jsonl(workdir / "items.jsonl", items(n))
    args = ["submit", str(source), "--mode", "batch", "--model", MODEL, "--max-tokens", "64", *FAST]
    return batchrun([*args, "--run-id", "r", "-o", "out.jsonl", *extra], cwd=workdir, env=cli_env(emulator.base_url))


def assert_each_item_answered_once(workdir: Path, n: int) -> None:
    """Every item succeeded, its exported answer is the reply to its own request, once; the tallies are exact."""
    db = workdir / "batchrun.db"
    params = {cid: orjson.loads(p) for cid, p in db_rows(db, "SELECT custom_id, params FROM requests")}
    rows = read_jsonl(workdir / "out.jsonl")
    assert sorted(r["custom_id"] for r in rows) == sorted(params) and len(params) == n
    for row in rows:
        assert row["result"]["type"] == "succeeded"
        assert row["result"]["message"]["content"][0]["text"] == expected_text(params[row["custom_id"]])
    assert db_rows(db, "SELECT state, count(*) FROM items GROUP BY state") == [("succeeded", n)]
    assert_tallies_exact(db)


def batch_sizes(workdir: Path) -> list[int]:
    return [n for (n,) in db_rows(workdir / "batchrun.db", "SELECT n_items FROM batches ORDER BY seq")]


def stored_tokens(workdir: Path) -> tuple[int, int]:
    ((i, o),) = db_rows(workdir / "batchrun.db", "SELECT sum(input_tokens), sum(output_tokens) FROM items")
    return i, o


def billed_tokens(emulator) -> tuple[int, int]:
    usage = emulator.stats()["usage"]["batches"][MODEL]
    return usage["input_tokens"], usage["output_tokens"]


BODY_KINDS = ["content_string", "block_number", "block_null", "text_without_text"]


def test_a_result_whose_message_is_not_a_message_is_sent_again_not_stored(workdir: Path, emulator) -> None:
    """content as a string, a block list holding 5 or null, a text block without text: not an answer. Each such
    item goes into a follow-up batch and ends with its real answer; the spoiled replies' tokens are counted once,
    as the API billed them, so what the store holds is exactly what the emulator billed."""
    proc = run_spoiled(workdir, emulator, BODY_KINDS)
    assert proc.returncode == 0, proc.stderr
    assert batch_sizes(workdir) == [10, 4]
    assert "4 result line(s) malformed (the API's fault): their items are sent again while attempts remain" in (
        proc.stderr
    )
    assert_each_item_answered_once(workdir, 10)
    assert stored_tokens(workdir) == billed_tokens(emulator)
    (attempts,) = db_rows(
        workdir / "batchrun.db", "SELECT count(*) FROM attempts WHERE error_class = ?", ["MalformedResult"]
    )
    assert attempts == (4,)


def test_one_unreadable_line_does_not_block_the_batch(workdir: Path, emulator) -> None:
    """A cut JSON line and a line without custom_id: the other results are stored, the two items whose lines
    could not be read are pending again and sent in a follow-up batch, and the run finishes."""
    proc = run_spoiled(workdir, emulator, ["cut_json", "no_custom_id"])
    assert proc.returncode == 0, proc.stderr
    assert batch_sizes(workdir) == [10, 2]
    assert "2 item(s) had no result: pending again" in proc.stderr
    assert "2 result line(s) malformed" in proc.stderr
    assert_each_item_answered_once(workdir, 10)


def test_result_lines_of_the_wrong_types_are_sent_again(workdir: Path, emulator) -> None:
    """ "result": "garbage", "error": "boom", usage.input_tokens "lots": no crash, no item left in flight; the
    items are sent again and answered."""
    proc = run_spoiled(workdir, emulator, ["result_string", "error_string", "tokens_string"])
    assert proc.returncode == 0, proc.stderr
    assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr
    assert batch_sizes(workdir) == [10, 3]
    assert "3 result line(s) malformed" in proc.stderr
    assert_each_item_answered_once(workdir, 10)


def test_malformed_results_on_the_last_attempt_fail_as_the_apis_error(workdir: Path, emulator) -> None:
    """With one attempt allowed, a malformed result fails its item (api_error, the line's problem named), exit 1;
    the other items succeed, nothing stays in flight, tallies exact."""
    proc = run_spoiled(workdir, emulator, ["block_null", "result_string"], 6, "--max-attempts", "1")
    assert proc.returncode == 1, proc.stderr
    assert "unexpected" not in proc.stderr
    db = workdir / "batchrun.db"
    failed = db_rows(db, "SELECT custom_id, error_type, error_message FROM items WHERE state = 'failed' ORDER BY 1")
    assert [(cid, kind) for cid, kind, _ in failed] == [("edge-0", "api_error"), ("edge-1", "api_error")]
    assert "a content block is not a block object" in failed[0][2]
    assert "result is not an object" in failed[1][2]
    assert db_rows(db, "SELECT state, count(*) FROM items GROUP BY state") == [("failed", 2), ("succeeded", 4)]
    assert_tallies_exact(db)


# the response cache


def truncating_job(path: Path, accept: bool) -> Path:
    path.write_text(f'model = "{MODEL}"\nmax_tokens = 4\naccept_truncated = {str(accept).lower()}\n')
    return path


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_the_cache_serves_no_cut_reply_to_a_job_that_does_not_accept_it(workdir: Path, emulator, mode: str) -> None:
    """A job with accept_truncated stores cut replies; the same items under a job without it get what a fresh
    database gives them (sent, cut, failed max_tokens, exit 1), not the cut replies as succeeded with exit 0.
    A third job that accepts cut replies is served them from the cache without a request."""
    env = cli_env(emulator.base_url)
    write_jsonl(workdir / "items.jsonl", items(6))
    common = ["items.jsonl", "--mode", mode, *FAST]
    accepting = truncating_job(workdir / "accepting.toml", True)
    strict = truncating_job(workdir / "strict.toml", False)
    first = batchrun(["submit", *common, "--job", str(accepting), "--run-id", "a"], cwd=workdir, env=env)
    assert first.returncode == 0, first.stderr
    db = workdir / "batchrun.db"
    assert db_rows(db, "SELECT stop_reason, count(*) FROM items GROUP BY 1") == [("max_tokens", 6)]

    second = batchrun(["submit", *common, "--job", str(strict), "--run-id", "b"], cwd=workdir, env=env)
    assert second.returncode == 1, second.stderr
    b_items = db_rows(db, "SELECT state, via, error_type FROM items WHERE run_id = 'b'")
    assert b_items == [("failed", mode, "max_tokens")] * 6

    requests = emulator.stats()["requests"]
    third = batchrun(["submit", *common, "--job", str(accepting), "--run-id", "c"], cwd=workdir, env=env)
    assert third.returncode == 0, third.stderr
    assert (
        db_rows(db, "SELECT state, via, answered_from FROM items WHERE run_id = 'c'")
        == [("succeeded", "cache", "a")] * 6
    )
    assert emulator.stats()["requests"] == requests
    assert_tallies_exact(db)


LOOSE = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
STRICT = {**LOOSE, "properties": {**LOOSE["properties"], "size": {"type": "integer"}}, "required": ["colour", "size"]}


def test_the_cache_serves_no_reply_that_fails_the_current_jobs_schema(workdir: Path, emulator) -> None:
    """Lines that bring their own output format are the same request under a job without a schema and under a
    job with one (the line's format is kept): the reply stored by the first is not an answer for the second,
    whose schema requires a property it lacks, so it is not served from the cache."""
    env = cli_env(emulator.base_url)
    fmt = {"format": {"type": "json_schema", "schema": LOOSE}}
    rows = [
        {
            "custom_id": f"s-{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 200,
                "messages": [{"role": "user", "content": f"describe thing {i}"}],
                "output_config": fmt,
            },
        }
        for i in range(4)
    ]
    write_jsonl(workdir / "items.jsonl", rows)
    (workdir / "strict.schema.json").write_bytes(orjson.dumps(STRICT))
    (workdir / "strict.toml").write_text('schema_file = "strict.schema.json"\nmax_attempts = 2\n')
    first = batchrun(["submit", "items.jsonl", "--run-id", "a"], cwd=workdir, env=env)
    assert first.returncode == 0, first.stderr
    second = batchrun(["submit", "items.jsonl", "--job", "strict.toml", "--run-id", "b"], cwd=workdir, env=env)
    db = workdir / "batchrun.db"
    hashes = db_rows(db, "SELECT count(DISTINCT request_hash), count(*) FROM items")
    assert hashes == [(4, 8)]  # the same requests
    assert second.returncode == 1, second.stderr
    assert db_rows(db, "SELECT DISTINCT state, via, error_type FROM items WHERE run_id = 'b'") == [
        ("failed", "online", "invalid_output")
    ]
    assert_tallies_exact(db)


def test_the_cache_still_serves_a_whole_reply_to_a_job_that_judges_otherwise(workdir: Path, emulator) -> None:
    """A reply that ended on its own is an answer for both jobs: the strict job is served it from the cache
    that the accepting job filled, without a request."""
    env = cli_env(emulator.base_url)
    write_jsonl(workdir / "items.jsonl", items(5))
    roomy = workdir / "accepting.toml"
    roomy.write_text(f'model = "{MODEL}"\nmax_tokens = 64\naccept_truncated = true\n')
    first = batchrun(["submit", "items.jsonl", "--job", str(roomy), "--run-id", "a"], cwd=workdir, env=env)
    assert first.returncode == 0, first.stderr
    requests = emulator.stats()["requests"]
    strict = ["submit", "items.jsonl", "--model", MODEL, "--max-tokens", "64", "--run-id", "b"]
    second = batchrun(strict, cwd=workdir, env=env)
    assert second.returncode == 0, second.stderr
    db = workdir / "batchrun.db"
    assert db_rows(db, "SELECT DISTINCT state, via, answered_from, stop_reason FROM items WHERE run_id = 'b'") == [
        ("succeeded", "cache", "a", "end_turn")
    ]
    assert emulator.stats()["requests"] == requests
    assert_tallies_exact(db)


def test_cancel_and_resume_get_past_an_unreadable_line(workdir: Path, emulator) -> None:
    """The batch ended with a cut line while no process waited: `cancel` stores the good results and leaves the
    unreadable line's item pending (none in flight), and `resume` sends it and finishes the run."""
    env = cli_env(emulator.base_url)
    proc = run_spoiled(workdir, emulator, ["cut_json"], 6, "--no-wait")
    assert proc.returncode == 3, proc.stderr
    (batch_id,) = [i for (i,) in db_rows(workdir / "batchrun.db", "SELECT id FROM batches")]
    emulator.advance_clock(3600)
    canceled = batchrun(["cancel", "r"], cwd=workdir, env=env)
    assert canceled.returncode == 3, canceled.stderr
    assert "unexpected" not in canceled.stderr and batch_id in canceled.stderr
    states = db_rows(workdir / "batchrun.db", "SELECT state, count(*) FROM items GROUP BY state ORDER BY 1")
    assert states == [("pending", 1), ("succeeded", 5)]
    resumed = batchrun(["resume", "r", *FAST, "-o", "out.jsonl"], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert_each_item_answered_once(workdir, 6)


def test_delete_force_gets_past_an_unreadable_line(workdir: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    proc = run_spoiled(workdir, emulator, ["no_custom_id"], 4, "--no-wait")
    assert proc.returncode == 3, proc.stderr
    emulator.advance_clock(3600)
    deleted = batchrun(["delete", "r", "--force"], cwd=workdir, env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert db_rows(workdir / "batchrun.db", "SELECT count(*) FROM items") == [(0,)]
