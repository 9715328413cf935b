"""Job files and flags are checked whole when loaded: every key's type and range, unknown keys with a did-you-mean,
before anything is stored or sent (exit 2, one line per problem naming the file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from batchrun.cli import cli
from batchrun.job import MAX_CONCURRENCY, Job, load_job
from tests.conftest import prompts, write_jsonl

REPO = Path(__file__).parent.parent


@pytest.fixture
def submit(workdir: Path, monkeypatch: pytest.MonkeyPatch):
    """`batchrun submit` with a job file, no key and no API: a job that passed its checks would store a run and
    then stop at the missing key; one that fails them must stop before the database exists."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("BATCHRUN_DB", raising=False)
    items = write_jsonl(workdir / "items.jsonl", [{"text": "hello", **p} for p in prompts(2)])

    def run(toml: str, *args: str) -> tuple[int, str]:
        job = workdir / "job.toml"
        job.write_text(toml)
        result = CliRunner().invoke(cli, ["submit", str(items), "--job", str(job), "-q", *args])
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        return result.exit_code, result.stderr

    return run


BAD = {
    "template list": ('template = ["x"]', "template = ['x']: must be a string"),
    "params string": ('params = "t"', "params = 't': must be a table"),
    "system number": ("system = 42", "system = 42: must be a string"),
    "routes list": ('routes = ["a"]', "routes = ['a']: must be a table"),
    "routes to number": ("routes = { a = 1 }", "routes = {'a': 1}: must be a table"),
    "template unclosed": ('template = "x {text"', "is not a valid template: expected '}'"),
    "template positional": ('template = "x {}"', "has a field without a name"),
    "template attribute": ('template = "x {text.__class__}"', "is not a plain field name"),
    "template conversion": ('template = "x {text!z}"', "unknown conversion"),
    "poll_interval word": ('poll_interval = "soon"', "poll_interval = 'soon': must be a number of seconds above 0"),
    "poll_interval inf": ("poll_interval = inf", "poll_interval = inf: must be a number"),
    "poll_interval zero": ("poll_interval = 0", "must be a number of seconds above 0"),
    "rpm word": ('rpm = "fast"', "rpm = 'fast': must be a whole number from 1 up"),
    "otpm zero": ("otpm = 0", "otpm = 0: must be a whole number from 1 up"),
    "itpm bool": ("itpm = true", "itpm = True: must be a whole number"),
    "prices number": ("prices = 5", "prices = 5: must be a table of model"),
    "prices no output": ('prices = { "m" = { input = 1.0 } }', "'m' must have exactly input and output"),
    "prices negative": ('prices = { "m" = { input = -1.0, output = 1.0 } }', "m.input must be a number >= 0"),
    "concurrency huge": ("concurrency = 100000000", f"must be a whole number from 1 to {MAX_CONCURRENCY:,}"),
    "max_attempts zero": ("max_attempts = 0", "max_attempts = 0: must be a whole number from 1"),
    "batch_size over limit": ("batch_size = 100001", "batch_size = 100001: must be a whole number from 1 to 100,000"),
    "mode": ('mode = "fast"', "mode = 'fast': must be one of 'online', 'batch'"),
    "cache_ttl": ('cache_ttl = "2h"', "cache_ttl = '2h': must be one of '5m', '1h'"),
    "cache": ('cache = "yes"', "cache = 'yes': must be true or false"),
    "model empty": ('model = ""', "model = '': must be a string that is not empty"),
    "route_field number": ("route_field = 3", "route_field = 3: must be a string"),
    "params stream": ("params = { stream = true }", '"stream" is chosen by batchrun'),
    "system_file number": ("system_file = 3", "system_file must be a path in quotes"),
    "typo": ("concurency = 5", "unknown key concurency (did you mean concurrency?)"),
    "unknown": ("colour = 5", "unknown key colour (known keys: accept_truncated, batch_max_bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_job_key_exits_2_before_anything_is_stored(case: str, submit, workdir: Path) -> None:
    line, words = BAD[case]
    model = "" if line.startswith("model") else 'model = "claude-haiku-4-5"\n'
    template = "" if line.startswith("template") else 'template = "Say {text}"\n'
    code, err = submit(f"{model}{template}{line}\n")
    assert code == 2, err
    assert f"{workdir / 'job.toml'}: " in err and words in err
    assert "Traceback" not in err
    assert not (workdir / "batchrun.db").exists()


def test_every_problem_of_a_job_file_is_listed(submit, workdir: Path) -> None:
    code, err = submit('model = 5\nrpm = "fast"\nprices = 5\nmax_tokenz = 3\n')
    assert code == 2
    for words in ("model = 5", "rpm = 'fast'", "prices = 5", "unknown key max_tokenz (did you mean max_tokens?)"):
        assert words in err
    assert not (workdir / "batchrun.db").exists()


@pytest.mark.parametrize(
    "flag, words",
    [
        (["--concurrency", "100000000"], "'--concurrency': 100000000 is not in the range 1<=x<=1000"),
        (["--rpm", "0"], "'--rpm': 0 is not in the range x>=1"),
        (["--mode", "batch", "--poll-interval", "1e400"], "poll_interval = inf"),
    ],
)
def test_bad_flags_exit_2_before_anything_is_stored(flag: list[str], words: str, submit, workdir: Path) -> None:
    code, err = submit('model = "claude-haiku-4-5"\n', *flag)
    assert code == 2 and words in err, err
    assert not (workdir / "batchrun.db").exists()


def test_a_good_job_file_reaches_the_key_check(submit, workdir: Path) -> None:
    code, err = submit(
        'model = "claude-haiku-4-5"\ntemplate = "Say {text!r:>10}, {{literal}}"\nconcurrency = 1000\n'
        'prices = { "claude-haiku-4-5" = { input = 1, output = 5.0 } }\nroutes = { a = "claude-sonnet-4" }\n'
        'route_field = "kind"\nparams = { temperature = 0.0 }\npoll_interval = 0.5\nrpm = 100\n'
    )
    assert code == 2 and "ANTHROPIC_API_KEY is not set" in err


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.toml")), ids=lambda p: p.name)
def test_the_shipped_job_files_load(path: Path) -> None:
    job = load_job(path)
    assert job.model or job.routes


def test_a_run_stored_before_the_cap_is_capped_when_read() -> None:
    assert Job.from_dict({"concurrency": 5000}).concurrency == MAX_CONCURRENCY


def test_a_template_value_that_cannot_be_formatted_is_a_bad_line(
    submit, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789")  # the key is checked before the input
    items = workdir / "items.jsonl"
    items.write_text('{"text": "abc"}\n')
    code, err = submit('model = "claude-haiku-4-5"\ntemplate = "Say {text:d}"\n')
    assert code == 2 and f"{items}:1: cannot fill the job's template" in err
