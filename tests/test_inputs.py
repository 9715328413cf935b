"""Bad input: exit 2, a message naming the file, the line and the fix, nothing sent, the store unchanged."""

from __future__ import annotations

import gzip
import io
import os
import threading
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from batchrun.cli import cli
from tests.conftest import TEST_KEY, db_dump, db_rows, prompts, read_jsonl, write_jsonl

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
    assert not (workdir / "batchrun.db.locks").exists()  # a database that bad input created leaves nothing behind
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
    for args in (["resume", "r"], ["results", "r"], ["status"], ["status", "r"], ["runs"], ["retry", "r"], ["doctor"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2 and "no batchrun database at batchrun.db" in result.stderr, args
    assert not (workdir / "batchrun.db").exists()


# issue 9: ids that end in a newline, results built by orjson, broken gzip, streams, every problem listed


def test_a_custom_id_ending_in_a_newline_is_refused(submit, workdir: Path, emulator) -> None:
    path = workdir / "items.jsonl"
    path.write_bytes(GOOD + b'{"custom_id": "a-2\\n", "prompt": "x"}\n')
    code, err = submit(path)
    assert code == 2 and f"{path}:2: custom_id 'a-2\\n' is not allowed" in err
    assert emulator.stats()["requests"] == 0


def test_a_run_id_ending_in_a_newline_is_refused(submit, workdir: Path) -> None:
    path = write_jsonl(workdir / "items.jsonl", prompts(1))
    code, err = submit(path, "--run-id", "nightly\n")
    assert code == 2 and "--run-id 'nightly\\n'" in err
    assert not (workdir / "batchrun.db").exists()


def test_results_lines_are_json_whatever_the_stored_custom_id(tmp_path: Path) -> None:
    """A custom_id stored before ids were checked with fullmatch still exports as valid JSON lines."""
    from batchrun.export import write_results
    from batchrun.inputs import Item
    from batchrun.store import Outcome, Store

    store = Store(tmp_path / "x.db")
    weird = ['a"b', "c\n", "d\\e"]
    ids = [*weird, 'e"\n']
    items = [Item(i + 1, cid, {"model": "m", "max_tokens": 5, "messages": []}) for i, cid in enumerate(ids)]
    run = {"id": "r", "input_path": "/x", "input_sha256": "s", "fingerprint": "f", "mode": "batch", "job": {}}
    store.create_run(run, items)
    result = '{"type": "succeeded", "message": {"content": []}}'
    store.record([Outcome("r", i, "succeeded", result=result) for i in (1, 2, 3)])
    out = io.BytesIO()
    assert write_results(store, "r", out) == 3
    lines = out.getvalue().splitlines()
    assert [orjson.loads(line)["custom_id"] for line in lines] == weird
    store.add_batch_plans("r", [(4, 4, 1, 10)], 0.0)
    ((token,),) = store.db.execute("SELECT token FROM batches").fetchall()
    assert [orjson.loads(line)["custom_id"] for line in store.batch_request_lines("r", 1)] == [f"{token}-4"]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: gzip.compress(GOOD * 500)[:-40], id="truncated"),
        pytest.param(lambda: b"\x1f\x8b" + b"not really gzip" * 20, id="fake"),
    ],
)
def test_a_broken_gzip_is_bad_input_and_nothing_is_stored(content, submit, workdir: Path, emulator) -> None:
    path = workdir / "items.jsonl.gz"
    path.write_bytes(content())
    code, err = submit(path)
    assert code == 2 and "not a complete gzip file" in err and "Aborted" not in err and "Traceback" not in err
    assert not (workdir / "batchrun.db").exists()
    assert emulator.stats()["requests"] == 0


def test_items_piped_into_standard_input(submit, workdir: Path, emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"".join(orjson.dumps(r) + b"\n" for r in prompts(3))
    runner = CliRunner()
    args = ["submit", "-", "--model", "claude-haiku-4-5", "-q", "-o", "out.jsonl"]
    first = runner.invoke(cli, args, input=data)
    assert first.exit_code == 0, first.stderr
    assert [r["custom_id"] for r in read_jsonl(workdir / "out.jsonl")] == ["item-0", "item-1", "item-2"]
    assert db_rows(workdir / "batchrun.db", "SELECT input_path FROM runs") == [("<stdin>",)]
    again = runner.invoke(cli, args, input=data)
    assert again.exit_code == 0 and "continuing run stdin-" in again.stderr
    assert emulator.stats()["requests"] == 3


def test_items_from_a_fifo(submit, workdir: Path, emulator) -> None:
    fifo = workdir / "items.fifo"
    os.mkfifo(fifo)
    data = b"".join(orjson.dumps(r) + b"\n" for r in prompts(2))
    writer = threading.Thread(target=fifo.write_bytes, args=(data,), daemon=True)
    writer.start()
    code, err = submit(fifo, "-o", "out.jsonl")
    writer.join(5)
    assert code == 0, err
    assert len(read_jsonl(workdir / "out.jsonl")) == 2
    assert db_rows(workdir / "batchrun.db", "SELECT input_path FROM runs") == [(str(fifo),)]


def test_the_readme_example_lists_both_problems(submit, workdir: Path) -> None:
    path = workdir / "items.jsonl"
    path.write_bytes(GOOD + b'{"prompt": "unclosed\n' + GOOD)
    code, err = submit(path)
    assert code == 2
    assert f"{path}:2: not valid JSON" in err
    assert f"{path}:3: duplicate custom_id 'a-1', first used on line 1" in err
    assert err.index(f"{path}:2:") < err.index(f"{path}:3:")


def test_problems_past_the_limit_are_counted(submit, workdir: Path) -> None:
    path = workdir / "items.jsonl"
    path.write_bytes(GOOD * 15 + b"nope\n" * 15)
    code, err = submit(path)
    assert code == 2
    assert err.count(f"{path}:") == 20 and "... and 9 more problem(s) in the file" in err
    assert f"{path}:2: duplicate custom_id" in err
