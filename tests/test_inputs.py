"""Bad input: exit 2, a message naming the file, the line and the fix, nothing sent, the store unchanged."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from batchrun.cli import cli
from tests.conftest import TEST_KEY, db_dump, prompts, read_jsonl, write_jsonl

GOOD = b'{"custom_id": "a-1", "prompt": "hello"}\n'


@pytest.fixture
def submit(workdir: Path, emulator, monkeypatch: pytest.MonkeyPatch):
    """`batchrun submit` in-process against the emulator; returns (exit code, stderr)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.base_url)
    monkeypatch.delenv("BATCHRUN_DB", raising=False)

    def run(path: Path, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, ["submit", str(path), "--model", "claude-haiku-4-5", "-q", *args])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result.exit_code, result.stderr

    return run


def bad_input_cases() -> dict[str, tuple[bytes, int, str]]:
    """name -> (file content, line named in the message, words the message must contain)."""
    return {
        "invalid json": (GOOD + b'{"prompt": "unclosed\n', 2, "not valid JSON"),
        "not an object": (GOOD + b'["a list"]\n', 2, "expected a JSON object"),
        "missing content": (GOOD + b'{"messages": [{"role": "user"}]}\n', 2, "has no content"),
        "empty prompt": (GOOD + b'{"prompt": ""}\n', 2, '"prompt" must be a non-empty string'),
        "bad custom_id": (GOOD + b'{"custom_id": "has space", "prompt": "x"}\n', 2, "custom_id 'has space'"),
        "long custom_id": (
            GOOD + b'{"custom_id": "' + b"x" * 65 + b'", "prompt": "x"}\n',
            2,
            "1-64 characters",
        ),
        "duplicate custom_id": (GOOD + b"\n" + GOOD, 3, "duplicate custom_id 'a-1', first used on line 1"),
        "not utf-8": (GOOD + b'{"prompt": "caf\xe9"}\n', 2, "not valid UTF-8"),
        "params not a dict": (GOOD + b'{"params": "model=x"}\n', 2, '"params" must be an object'),
        "messages not a list": (GOOD + b'{"messages": "hi"}\n', 2, '"messages" must be a non-empty list'),
        "no prompt at all": (GOOD + b'{"text": "hi"}\n', 2, 'no "params", "prompt" or "messages"'),
        "max_tokens zero": (
            GOOD + b'{"params": {"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}}\n',
            2,
            "max_tokens",
        ),
    }


@pytest.mark.parametrize("case", sorted(bad_input_cases()))
def test_bad_line_exits_2_names_line_and_sends_nothing(case: str, submit, workdir: Path, emulator) -> None:
    content, line, words = bad_input_cases()[case]
    path = workdir / "items.jsonl"
    path.write_bytes(content)
    before = db_dump(workdir / "batchrun.db")
    code, err = submit(path)
    assert code == 2
    assert f"{path}:{line}: " in err
    assert words in err
    assert "(" in err.split(f"{path}:{line}: ", 1)[1]  # every message says how to fix it
    assert "Traceback" not in err
    assert db_dump(workdir / "batchrun.db") == before
    assert emulator.stats()["requests"] == 0


def test_every_problem_in_the_file_is_listed_at_once(submit, workdir: Path) -> None:
    path = workdir / "items.jsonl"
    path.write_bytes(GOOD + b"nope\n" + GOOD.replace(b"a-1", b"a-2") + b"[]\n")
    code, err = submit(path)
    assert code == 2
    assert f"{path}:2: " in err and f"{path}:4: " in err


def test_store_keeps_earlier_runs_untouched_after_bad_input(submit, workdir: Path) -> None:
    good = write_jsonl(workdir / "good.jsonl", prompts(3))
    assert submit(good)[0] == 0
    before = db_dump(workdir / "batchrun.db")
    bad = workdir / "bad.jsonl"
    bad.write_bytes(GOOD * 2)
    assert submit(bad)[0] == 2
    assert db_dump(workdir / "batchrun.db") == before


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "no items"),
        (b"\n\n  \n", "no items"),
    ],
)
def test_empty_file(content: bytes, words: str, submit, workdir: Path, emulator) -> None:
    path = workdir / "items.jsonl"
    path.write_bytes(content)
    code, err = submit(path)
    assert code == 2 and words in err and str(path) in err
    assert emulator.stats()["requests"] == 0


def test_missing_file(submit, workdir: Path) -> None:
    code, err = submit(workdir / "nope.jsonl")
    assert code == 2
    assert "nope.jsonl: no such file" in err
    assert not (workdir / "batchrun.db").exists() or db_dump(workdir / "batchrun.db") == db_dump(workdir / "x.db")


def test_missing_template_field(submit, workdir: Path) -> None:
    job = workdir / "job.toml"
    job.write_text('model = "claude-haiku-4-5"\ntemplate = "Classify: {text} for {customer}"\n')
    path = workdir / "items.jsonl"
    path.write_bytes(b'{"text": "a", "customer": "b"}\n{"text": "only text"}\n')
    code, err = submit(path, "--job", str(job))
    assert code == 2
    assert f"{path}:2: template field(s) customer missing" in err


def test_line_over_the_request_size_limit(submit, workdir: Path) -> None:
    path = workdir / "items.jsonl"
    huge = orjson.dumps({"prompt": "x" * (33 * 1024 * 1024)}) + b"\n"
    path.write_bytes(GOOD + huge)
    code, err = submit(path)
    assert code == 2
    assert f"{path}:2: line is" in err and "32 MB" in err


def test_bom_crlf_and_gzip_inputs_are_read(submit, workdir: Path) -> None:
    rows = prompts(3)
    crlf = b"\xef\xbb\xbf" + b"".join(orjson.dumps(r) + b"\r\n" for r in rows)
    (workdir / "crlf.jsonl").write_bytes(crlf)
    assert submit(workdir / "crlf.jsonl", "-o", "a.jsonl")[0] == 0
    with gzip.open(workdir / "items.jsonl.gz", "wb") as f:
        f.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    assert submit(workdir / "items.jsonl.gz", "-o", "b.jsonl", "--run-id", "gz")[0] == 0
    for name in ("a.jsonl", "b.jsonl"):
        assert [r["custom_id"] for r in read_jsonl(workdir / name)] == ["item-0", "item-1", "item-2"]


def test_bad_job_file(submit, workdir: Path) -> None:
    path = write_jsonl(workdir / "items.jsonl", prompts(2))
    job = workdir / "job.toml"
    job.write_text('model = "claude-haiku-4-5"\nmax_tokenz = 5\n')
    code, err = submit(path, "--job", str(job))
    assert code == 2 and "unknown key max_tokenz (did you mean max_tokens?)" in err and str(job) in err


def test_only_submit_creates_a_database(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHRUN_DB", raising=False)
    runner = CliRunner()
    assert runner.invoke(cli, ["status"]).output.startswith("no runs yet")
    assert runner.invoke(cli, ["status", "--json"]).output.strip() == '{"runs": []}'
    for args in (["resume", "r"], ["results", "r"], ["status", "r"], ["retry", "r"], ["doctor"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2 and "no batchrun database at batchrun.db" in result.stderr, args
    assert not (workdir / "batchrun.db").exists()
