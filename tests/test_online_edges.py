"""Edges of the online path: an unknown model, the outage guard, a gateway that does not stream, the key's
redaction, and what the progress lines count."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchrun.api import redact
from tests.conftest import TEST_KEY, batchrun, cli_env, db_rows, prompts, read_jsonl, write_jsonl

MODEL = "claude-haiku-4-5"


# a streaming gateway that answers with a plain JSON body


def test_a_streamed_request_answered_with_plain_json_is_the_apis_fault_and_sent_again(workdir: Path, emulator) -> None:
    emulator.configure(p_stream_as_json=1.0, max_faults_per_request=1)
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "--max-tokens", "64000", "-o", "out.jsonl"],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 0, proc.stderr
    assert "unexpected" not in proc.stderr
    stats = emulator.stats()
    assert stats["injected"]["stream_as_json"] == 3 and stats["streamed"] == 3
    assert [r["result"]["type"] for r in read_jsonl(workdir / "out.jsonl")] == ["succeeded"] * 3
    attempts = db_rows(workdir / "batchrun.db", "SELECT outcome, error_class FROM attempts ORDER BY rowid")
    assert attempts.count(("api_error", "MalformedReply")) == 3


def test_a_gateway_that_never_streams_stops_the_run_with_a_message_not_a_traceback(workdir: Path, emulator) -> None:
    emulator.configure(p_stream_as_json=1.0, max_faults_per_request=100)
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "--max-tokens", "64000", "--max-attempts", "2"],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 3, proc.stderr
    assert "answered with application/json, not an event stream" in proc.stderr
    assert "unexpected" not in proc.stderr and "AssertionError" not in proc.stderr
    assert db_rows(workdir / "batchrun.db", "SELECT state, count(*) FROM items GROUP BY state") == [("pending", 2)]


# the key's redaction


@pytest.mark.parametrize(
    "shown",
    [
        TEST_KEY,
        TEST_KEY.upper(),
        TEST_KEY.lower(),
        TEST_KEY[5:17],  # a 12-character piece
        TEST_KEY[-20:].swapcase(),
        "x-api-key: " + TEST_KEY[:-3] + "...",
    ],
)
def test_the_key_is_redacted_in_any_case_and_by_any_piece_of_12_characters(shown: str) -> None:
    text = f"gateway said: invalid key {shown} (check it)"
    out = redact(text, TEST_KEY)
    assert "[redacted]" in out
    low = out.lower()
    key = TEST_KEY.lower()
    assert not any(key[i : i + 12] in low for i in range(len(key) - 11))
    assert out.startswith("gateway said: invalid key ") and out.endswith("(check it)")


def test_a_short_piece_of_the_key_and_other_text_are_left_alone() -> None:
    text = "model claude-haiku-4-5 said ok; " + TEST_KEY[:11]
    assert redact(text, TEST_KEY) == text


def test_the_key_redacted_from_an_error_the_api_echoes_in_another_case(workdir: Path) -> None:
    from tests.fakeapi import FakeAPI, json_response

    async def handler(request, n, params):
        text = f"invalid x-api-key {TEST_KEY.upper()[:30]}"
        return json_response({"type": "error", "error": {"type": "invalid_request_error", "message": text}}, 400)

    items = write_jsonl(workdir / "items.jsonl", prompts(1))
    with FakeAPI(handler) as api:
        proc = batchrun(
            ["submit", str(items), "--model", MODEL, "-o", "out.jsonl"], cwd=workdir, env=cli_env(api.base_url)
        )
    assert proc.returncode == 1, proc.stderr
    stored = orjson.dumps(db_rows(workdir / "batchrun.db", "SELECT error_message, result FROM items")).decode()
    for text in (stored, (workdir / "out.jsonl").read_text(), proc.stderr):
        assert TEST_KEY.upper()[:30] not in text.upper() and TEST_KEY[8:20].upper() not in text.upper()
    assert "[redacted]" in stored


# an unknown model


def test_an_unknown_model_is_bad_usage_online_and_in_the_dry_run(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(30))
    env = cli_env(emulator.base_url)
    args = ["submit", str(items), "--model", "claude-made-up", "--run-id", "r"]
    dry = batchrun([*args, "--dry-run"], cwd=workdir, env=env)
    assert dry.returncode == 2, dry.stderr
    assert "model claude-made-up does not exist (check the model name)" in dry.stderr
    assert not (workdir / "batchrun.db").exists()
    for _ in range(2):  # what cron does: the same command again, and it says the same, exit 2, nothing burnt
        proc = batchrun([*args, "-o", "out.jsonl"], cwd=workdir, env=env)
        assert proc.returncode == 2, proc.stderr
        assert "model claude-made-up does not exist (check the model name)" in proc.stderr
        assert "unexpected" not in proc.stderr
        assert db_rows(workdir / "batchrun.db", "SELECT state, count(*) FROM items GROUP BY state") == [("pending", 30)]
        assert not (workdir / "out.jsonl").exists()
    assert emulator.stats()["by_status"].get("200", 0) == 0


def test_an_unknown_model_raises_a_usage_error_from_the_python_api(workdir: Path, emulator, monkeypatch) -> None:
    import batchrun as api
    from batchrun.errors import UsageError

    for key, value in cli_env(emulator.base_url).items():
        monkeypatch.setenv(key, value)
    result = api.submit(prompts(3), model="claude-made-up", db=str(workdir / "b.db"))
    assert result.exit_code == 2 and result.pending == 3
    with pytest.raises(UsageError, match="model claude-made-up does not exist"):
        result.check()
