"""The second hardening round at the edges: a refused command stores nothing, a run never stays stuck behind a
dead process or emulator, bad values of every kind are one line and exit 2, and the hook gets no secret."""

from __future__ import annotations

import sqlite3
import subprocess as sp
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import batchrun, cli_env, db_rows, items_in_state, prompts, start_batchrun, wait_until, write_jsonl

MODEL = "claude-haiku-4-5"


def one_line_exit_2(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("batchrun: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# 1. a command refused after the run's items are read leaves no run behind


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--max-cost", "5", "--model", "claude-no-such-price"], "no price is known for claude-no-such-price"),
        (["--mode", "auto"], "mode auto and has no deadline"),
        (["--mode", "auto", "--deadline", "2020-01-01T00:00"], "cannot be met"),
    ],
)
def test_a_refused_submit_stores_no_run(workdir: Path, emulator, flags: list[str], words: str) -> None:
    env = cli_env(emulator.base_url)
    first = write_jsonl(workdir / "first.jsonl", prompts(2, "first"))
    ok = batchrun(["submit", first, "--model", MODEL, "-q"], cwd=workdir, env=env)
    assert ok.returncode == 0, ok.stderr
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    args = ["submit", items, "--model", MODEL, "-q", *flags]
    refused = batchrun(args, cwd=workdir, env=env)
    assert words in one_line_exit_2(refused)
    assert "batchrun resume" not in refused.stderr  # no run to resume
    assert db_rows(workdir / "batchrun.db", "SELECT count(*) FROM runs") == [(1,)]
    assert db_rows(workdir / "batchrun.db", "SELECT count(*) FROM items") == [(2,)]


def test_a_refused_submit_on_a_new_database_leaves_no_database(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    args = ["submit", items, "--model", "claude-no-such-price", "--max-cost", "5", "--db", "new.db"]
    one_line_exit_2(batchrun(args, cwd=workdir, env=cli_env(emulator.base_url)))
    assert not (workdir / "new.db").exists()


# 2. --emulate --no-wait would leave batches in an emulator that dies with the command


@pytest.mark.parametrize("command", ["submit", "resume"])
def test_emulate_with_no_wait_is_refused(workdir: Path, command: str) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    target = [items, "--model", MODEL, "--mode", "batch"] if command == "submit" else ["some-run"]
    env = {k: v for k, v in cli_env("http://127.0.0.1:9").items() if k != "ANTHROPIC_API_KEY"}
    proc = batchrun([command, *target, "--emulate", "--no-wait"], cwd=workdir, env=env)
    assert "--emulate with --no-wait" in one_line_exit_2(proc)
    assert not (workdir / "batchrun.db").exists()


# 7. values too large for the store, the model or the calendar


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (
            ["--rpm", "99999999999999999999999"],
            "rpm = 99999999999999999999999: must be a whole number from 1 up",
        ),
        (["--itpm", str(2**63)], "itpm = "),
        (["--max-tokens", "99999999999"], "claude-haiku-4-5 writes at most 64,000 output tokens"),
        (["--max-tokens", "64001"], "claude-haiku-4-5 writes at most 64,000 output tokens"),
        (["--mode", "auto", "--deadline", "99999999h"], "at most 366 days"),
    ],
)
def test_values_out_of_range_are_refused_before_anything_is_stored(
    workdir: Path, emulator, flags: list[str], words: str
) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    proc = batchrun(["submit", items, "--model", MODEL, *flags], cwd=workdir, env=cli_env(emulator.base_url))
    assert words in one_line_exit_2(proc)
    assert not (workdir / "batchrun.db").exists()


def test_a_line_asking_more_than_its_model_writes_is_named_by_its_line(workdir: Path, emulator) -> None:
    rows = [{"custom_id": "ok", "prompt": "hi"}, {"custom_id": "big", "prompt": "hi", "max_tokens": 10**15}]
    items = write_jsonl(workdir / "items.jsonl", rows)
    proc = batchrun(["submit", items, "--model", MODEL], cwd=workdir, env=cli_env(emulator.base_url))
    assert proc.returncode == 2, proc.stderr
    assert "items.jsonl:2:" in proc.stderr and "at most 64,000 output tokens" in proc.stderr
    assert emulator.stats()["requests"] == 0


def test_the_models_maximum_is_accepted(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(1))
    proc = batchrun(
        ["submit", items, "--model", MODEL, "--max-tokens", "64000"], cwd=workdir, env=cli_env(emulator.base_url)
    )
    assert proc.returncode == 0, proc.stderr


def test_status_survives_a_stored_deadline_out_of_range(workdir: Path, emulator) -> None:
    """A deadline an older batchrun let into the store (or a hand edit) is shown as no plan, never a crash."""
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    done = batchrun(
        ["submit", items, "--mode", "auto", "--deadline", "6h", "--model", MODEL, "-q", "--poll-interval", "0.02"],
        cwd=workdir,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    (job,) = db_rows(workdir / "batchrun.db", "SELECT job FROM runs")[0]
    for deadline in ("99999999h", 5):
        bad = job.replace('"deadline":"6h"', f'"deadline":{orjson.dumps(deadline).decode()}')
        assert bad != job
        set_job(workdir / "batchrun.db", bad)
        for args in (["status"], ["status", "--json"], ["runs"]):
            proc = batchrun(args, cwd=workdir, env=env)
            assert proc.returncode == 0, proc.stderr
            assert "2 succeeded" in proc.stdout or '"succeeded": 2' in proc.stdout or "2/2" in proc.stdout


def set_job(db: Path, job: str) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute("UPDATE runs SET job = ?", [job])
        conn.commit()
    finally:
        conn.close()


# 9. a setting not given keeps what the run has stored


def test_a_repeated_submit_keeps_the_stored_settings_it_is_not_given(workdir: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(4))
    base = ["submit", items, "--model", MODEL, "--limit", "1"]
    first = batchrun([*base, "--concurrency", "40", "--max-cost", "5"], cwd=workdir, env=env)
    assert first.returncode == 3, first.stderr
    again = batchrun(base, cwd=workdir, env=env)
    assert again.returncode == 3, again.stderr
    assert "from now on" not in again.stderr
    (job,) = db_rows(workdir / "batchrun.db", "SELECT job FROM runs")[0]
    stored = orjson.loads(job)
    assert (stored["concurrency"], stored["max_cost"]) == (40, 5)
    changed = batchrun([*base, "--concurrency", "12"], cwd=workdir, env=env)
    assert "from now on concurrency = 12" in changed.stderr and "max_cost" not in changed.stderr


# 5. a schema no reply could be checked against is refused when the job loads


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"$ref": "#"}, "refers to itself without end"),
        (
            {"$ref": "#/$defs/a", "$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"$ref": "#/$defs/a"}}},
            "refers to itself without end",
        ),
        ({"type": "object", "description": "x" * (33 * 1024 * 1024)}, "more than the API's 32 MB request limit"),
    ],
    ids=["self", "through-defs", "too-big"],
)
def test_a_schema_that_cannot_work_is_refused_before_anything_is_sent(
    workdir: Path, emulator, schema: dict, words: str
) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    (workdir / "s.json").write_bytes(orjson.dumps(schema))
    env = cli_env(emulator.base_url)
    proc = batchrun(["submit", items, "--model", MODEL, "--schema", "s.json"], cwd=workdir, env=env)
    assert words in one_line_exit_2(proc)
    assert emulator.stats()["requests"] == 0
    assert not (workdir / "batchrun.db").exists()


def test_a_job_files_schema_table_with_a_cycle_is_refused(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    (workdir / "job.toml").write_text(f'model = "{MODEL}"\n[schema]\n"$ref" = "#"\n')
    proc = batchrun(["submit", items, "--job", "job.toml"], cwd=workdir, env=cli_env(emulator.base_url))
    assert "refers to itself without end" in one_line_exit_2(proc)


def test_a_recursive_tree_schema_is_still_accepted(workdir: Path, emulator) -> None:
    """Recursion that goes into the instance (a tree's children) ends with the reply: it is a valid schema."""
    tree = {
        "$defs": {"node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}}},
        "$ref": "#/$defs/node",
    }
    from batchrun.job import _schema

    assert _schema(tree) is None


# 6. a line nested deeper than the store can write


def test_a_line_nested_600_deep_is_named_by_its_line(workdir: Path, emulator) -> None:
    deep = "[" * 600 + "]" * 600
    params = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "metadata": "X"}
    line = orjson.dumps({"custom_id": "deep", "params": params}).decode().replace('"X"', deep)
    deep_messages = orjson.dumps({"custom_id": "m", "messages": [{"role": "user", "content": "X"}]}).decode()
    deep_messages = deep_messages.replace('"X"', deep)
    (workdir / "items.jsonl").write_text('{"custom_id": "ok", "prompt": "hi"}\n' + line + "\n" + deep_messages + "\n")
    proc = batchrun(["submit", "items.jsonl", "--model", MODEL], cwd=workdir, env=cli_env(emulator.base_url))
    assert proc.returncode == 2, proc.stderr
    assert "items.jsonl:2: nested more than 200 levels deep" in proc.stderr
    assert "items.jsonl:3: nested more than 200 levels deep" in proc.stderr
    assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr
    assert emulator.stats()["requests"] == 0


# 11. the on-finish hook: at every end, and without what batchrun read from .env


def hook_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_the_hook_gets_no_variable_batchrun_read_from_dotenv(workdir: Path, emulator) -> None:
    secret = "sk-ant-api03-ONLY-IN-DOTENV-0123456789"
    (workdir / ".env").write_text(f"ANTHROPIC_API_KEY={secret}\nDOTENV_ONLY=from-the-file\nEXPORTED=from-the-file\n")
    env = {k: v for k, v in cli_env(emulator.base_url).items() if k != "ANTHROPIC_API_KEY"}
    env["EXPORTED"] = "exported"
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    proc = batchrun(["submit", items, "--model", MODEL, "-q", "--on-finish", "env > hook.env"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr  # the key from .env was used for the requests
    seen = hook_env(workdir / "hook.env")
    assert secret not in (workdir / "hook.env").read_text()
    assert "ANTHROPIC_API_KEY" not in seen and "DOTENV_ONLY" not in seen
    assert seen["EXPORTED"] == "exported" and seen["BATCHRUN_EXIT_CODE"] == "0"


def test_an_exported_key_is_the_users_own_environment(workdir: Path, emulator) -> None:
    (workdir / ".env").write_text("ANTHROPIC_API_KEY=sk-ant-from-dotenv\n")
    items = write_jsonl(workdir / "items.jsonl", prompts(1))
    env = cli_env(emulator.base_url)
    proc = batchrun(["submit", items, "--model", MODEL, "-q", "--on-finish", "env > hook.env"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert hook_env(workdir / "hook.env")["ANTHROPIC_API_KEY"] == env["ANTHROPIC_API_KEY"]


def test_the_hook_runs_when_the_run_ends_with_an_unexpected_error(
    workdir: Path, emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug cannot be made on purpose: one is injected where the store is read, after the run is created."""
    from batchrun.store import Store

    def broken(self, run_id: str, *rest: object) -> int:
        raise RuntimeError("injected bug")

    monkeypatch.setattr(Store, "reuse_results", broken)
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    hook = "env | grep ^BATCHRUN_ > hook.env"
    proc = batchrun(
        ["submit", items, "--model", MODEL, "--on-finish", hook], cwd=workdir, env=cli_env(emulator.base_url)
    )
    assert proc.returncode == 1 and "injected bug" in proc.stderr, proc.stderr
    seen = hook_env(workdir / "hook.env")
    assert seen["BATCHRUN_EXIT_CODE"] == "1" and seen["BATCHRUN_PENDING"] == "2"


def test_the_hook_runs_when_a_resume_is_refused_under_the_lock(workdir: Path, emulator) -> None:
    """A usage error met while processing (the mode cannot change under open batches) ends the run too: exit 2."""
    env = cli_env(emulator.base_url)
    emulator.configure(batch_seconds=30)
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    hook = "echo $BATCHRUN_EXIT_CODE > code"
    opened = batchrun(
        ["submit", items, "--model", MODEL, "--mode", "batch", "--timeout", "0", "-q"], cwd=workdir, env=env
    )
    assert opened.returncode == 3, opened.stderr
    (run_id,) = db_rows(workdir / "batchrun.db", "SELECT id FROM runs")[0]
    proc = batchrun(["resume", run_id, "--mode", "online", "--on-finish", hook], cwd=workdir, env=env)
    assert proc.returncode == 2, proc.stderr
    assert (workdir / "code").read_text().strip() == "2"


# 4. `runs` says what the lock says


def test_runs_shows_a_run_whose_process_died_as_interrupted(workdir: Path, emulator) -> None:
    from batchrun.lock import RunLock

    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    assert batchrun(["submit", items, "--model", MODEL, "--limit", "1", "-q"], cwd=workdir, env=env).returncode == 3
    (run_id,) = db_rows(workdir / "batchrun.db", "SELECT id FROM runs")[0]
    conn = sqlite3.connect(workdir / "batchrun.db")  # what a process killed while sending leaves behind
    try:
        conn.execute("UPDATE runs SET status = 'running'")
        conn.commit()
    finally:
        conn.close()
    listed = batchrun(["runs", "--json"], cwd=workdir, env=env)
    (run,) = orjson.loads(listed.stdout)["runs"]
    assert run["status"].startswith("interrupted"), run["status"]
    assert "interrupted" in batchrun(["runs"], cwd=workdir, env=env).stdout
    with RunLock(workdir / "batchrun.db", run_id):
        (run,) = orjson.loads(batchrun(["runs", "--json"], cwd=workdir, env=env).stdout)["runs"]
        assert run["status"].startswith("running (pid "), run["status"]


# 10. two threads of one process making the same new database


def test_two_threads_submitting_to_a_new_database_both_work(workdir: Path, emulator, monkeypatch) -> None:
    import threading

    import batchrun as api

    for k, v in cli_env(emulator.base_url).items():
        monkeypatch.setenv(k, v)
    files = [write_jsonl(workdir / f"{name}.jsonl", prompts(3, name)) for name in ("a", "b")]
    results: dict[str, object] = {}
    start = threading.Barrier(2)

    def submit(path: Path) -> None:
        start.wait()
        try:
            results[path.stem] = api.submit(path, db=workdir / "new.db", model=MODEL, log=None)
        except Exception as e:  # the test reports it
            results[path.stem] = e

    threads = [threading.Thread(target=submit, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {k: getattr(v, "exit_code", v) for k, v in results.items()} == {"a": 0, "b": 0}
    assert db_rows(workdir / "new.db", "SELECT count(*) FROM items WHERE state = 'succeeded'") == [(6,)]


# 8. a database a newer batchrun has migrated


def mark_newer(db: Path, version: str | None) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('batchrun', 'm999_future', 'x')"
        )
        if version:
            conn.execute("INSERT INTO batchrun_versions VALUES ('m999_future', ?)", [version])
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("version", ["7.3.1", None])
def test_a_database_of_a_newer_batchrun_is_refused_before_anything_is_written(
    workdir: Path, emulator, version: str | None
) -> None:
    import hashlib

    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    assert batchrun(["submit", items, "--model", MODEL, "--limit", "1", "-q"], cwd=workdir, env=env).returncode == 3
    (run_id,) = db_rows(workdir / "batchrun.db", "SELECT id FROM runs")[0]
    mark_newer(workdir / "batchrun.db", version)
    before = hashlib.sha256((workdir / "batchrun.db").read_bytes()).hexdigest()
    commands = [
        ["submit", items, "--model", MODEL],
        ["resume", run_id],
        ["retry", run_id],
        ["status"],
        ["status", run_id],
        ["runs"],
        ["results", run_id],
        ["report", run_id],
        ["doctor"],
        ["prune", "--older-than", "0s"],
        ["delete", run_id],
        ["cancel", run_id],
    ]
    for args in commands:
        proc = batchrun(args, cwd=workdir, env=env)
        line = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.stdout
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert "was upgraded by a newer batchrun" in proc.stderr + proc.stdout, (args, proc.stderr)
        assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr
        if version:
            assert "upgrade batchrun to 7.3.1 or later" in proc.stderr + proc.stdout, line
    after = hashlib.sha256((workdir / "batchrun.db").read_bytes()).hexdigest()
    assert after == before
    assert emulator.stats()["requests"] == 1  # the first submit's one item, nothing since


# 3. the emulator of `--emulate` stops when the command that started it is killed


def emulators_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"batchrun.emulator" in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the emulator through /proc")
def test_the_emulator_stops_when_the_command_is_killed(workdir: Path) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    env = {k: v for k, v in cli_env("http://127.0.0.1:9").items() if k != "ANTHROPIC_API_KEY"}
    env["BATCHRUN_EMULATOR_ARGS"] = "--latency-ms 60000"  # the command waits for replies until it is killed
    child = start_batchrun(["submit", items, "--model", MODEL, "--emulate", "-q"], cwd=workdir, env=env)
    found: list[int] = []
    wait_until(lambda: found.extend(emulators_of(child.pid)) or found, timeout=30)
    wait_until(lambda: items_in_state(workdir / "batchrun.db", "in_flight") == 2, timeout=30)
    child.kill()
    child.wait(10)
    wait_until(lambda: not alive(found[0]), timeout=15)


def test_the_lifeline_alone_stops_an_emulator_started_from_a_thread(workdir: Path) -> None:
    """Started from a thread, the emulator gets no PR_SET_PDEATHSIG (it would fire when that thread ends): the
    lifeline pipe is what stops it when its parent is killed."""
    script = (
        "import threading, time\n"
        "from batchrun.emulator.process import EmulatorProcess\n"
        "started = []\n"
        "t = threading.Thread(target=lambda: started.append(EmulatorProcess()))\n"
        "t.start(); t.join()\n"
        "print(started[0].proc.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = sp.Popen([sys.executable, "-c", script], cwd=workdir, stdout=sp.PIPE, text=True)
    try:
        emulator_pid = int(proc.stdout.readline())
        assert alive(emulator_pid)
        proc.kill()
        proc.wait(10)
        wait_until(lambda: not alive(emulator_pid), timeout=15)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_refused_resume_setting_is_not_kept_with_the_run(workdir: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    unpriced = "claude-opus-4-7"  # served by the emulator, not in batchrun's price table
    first = batchrun(["submit", items, "--model", unpriced, "--limit", "1", "-q"], cwd=workdir, env=env)
    assert first.returncode == 3, first.stderr
    (run_id,) = db_rows(workdir / "batchrun.db", "SELECT id FROM runs")[0]
    refused = batchrun(["resume", run_id, "--max-cost", "5"], cwd=workdir, env=env)
    assert f"no price is known for {unpriced}" in one_line_exit_2(refused)
    (job,) = db_rows(workdir / "batchrun.db", "SELECT job FROM runs")[0]
    assert orjson.loads(job)["max_cost"] is None
    again = batchrun(["resume", run_id, "-q"], cwd=workdir, env=env)
    assert again.returncode == 0, again.stderr


def test_retry_with_more_tokens_than_any_model_writes_is_refused(workdir: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(1))
    assert batchrun(["submit", items, "--model", MODEL, "-q"], cwd=workdir, env=env).returncode == 0
    (run_id,) = db_rows(workdir / "batchrun.db", "SELECT id FROM runs")[0]
    proc = batchrun(["retry", run_id, "--max-tokens", "99999999999999999999999"], cwd=workdir, env=env)
    assert "no model writes more than 1,000,000 output tokens" in one_line_exit_2(proc)
    proc = batchrun(["retry", run_id, "--max-tokens", "70000", "--model", MODEL], cwd=workdir, env=env)
    assert "writes at most 64,000 output tokens" in one_line_exit_2(proc)


def test_the_python_api_refuses_emulate_with_no_wait_too(workdir: Path) -> None:
    import batchrun as api
    from batchrun.errors import UsageError

    items = write_jsonl(workdir / "items.jsonl", prompts(1))
    with pytest.raises(UsageError, match="--emulate with --no-wait"):
        api.submit(items, db=workdir / "x.db", model=MODEL, mode="batch", emulate=True, no_wait=True, log=None)
    assert not (workdir / "x.db").exists()


def test_a_repeated_auto_submit_without_deadline_continues_with_the_stored_one(workdir: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    base = ["submit", items, "--model", MODEL, "--mode", "auto", "--limit", "1", "-q", "--poll-interval", "0.02"]
    assert batchrun([*base, "--deadline", "6h"], cwd=workdir, env=env).returncode == 3
    again = batchrun(base, cwd=workdir, env=env)
    assert again.returncode == 3, again.stderr
    assert db_rows(workdir / "batchrun.db", "SELECT count(*) FROM runs") == [(1,)]
