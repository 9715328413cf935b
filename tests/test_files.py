"""The lock, the database and files on disk: one lock per database whatever the path, no crash when processes meet
on a fresh database, and every file problem as one line with its fix and exit code, never a traceback."""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from sqlite_utils import Database

from batchrun.cli import cli
from batchrun.errors import BatchrunError, RunLocked, StoreError
from batchrun.inputs import Item
from batchrun.lock import RunLock, lock_dir, lock_holder
from batchrun.store import Outcome, Store, migration_set
from tests.conftest import TEST_KEY, cli_env, prompts, read_jsonl, start_batchrun, write_jsonl

ROOT = os.geteuid() == 0


@pytest.fixture
def env(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """In-process commands in a clean directory, with a key but no reachable API (nothing may be sent)."""
    monkeypatch.setenv("BATCHRUN_DB", "unset")
    monkeypatch.delenv("BATCHRUN_DB")  # recorded, so a value a .env sets during the test is removed after it
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    return workdir


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


def one_error_line(err: str) -> str:
    """The whole of stderr is one `batchrun: error: ...` line (no traceback, no second line)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchrun: error: "), err
    return lines[0]


def make_db(path: Path, n: int = 4, run_id: str = "r1") -> Path:
    """A database with one run of `n` items, the first half succeeded."""
    store = Store(path)
    items = [Item(i, f"c-{i}", {"model": "m", "max_tokens": 5, "messages": []}) for i in range(1, n + 1)]
    run = {"id": run_id, "input_path": "/x", "input_sha256": "s", "fingerprint": "f", "mode": "online", "job": {}}
    store.create_run(run, items)
    result = orjson.dumps({"type": "succeeded", "message": {"content": [{"type": "text", "text": "ok " * 50}]}})
    store.record([Outcome(run_id, i, "succeeded", result=result.decode()) for i in range(1, n // 2 + 1)])
    store.close()
    return path


# the lock


def test_a_symlinked_database_is_the_same_lock(tmp_path: Path) -> None:
    db = make_db(tmp_path / "real.db")
    link = tmp_path / "link.db"
    link.symlink_to(db)
    with RunLock(db, "r1"):
        with pytest.raises(RunLocked, match="pid"):
            RunLock(link, "r1").__enter__()
        assert lock_holder(link, "r1") is not None
        assert lock_holder(Path(os.path.relpath(db)), "r1") is not None
    assert lock_holder(link, "r1") is None


def test_lock_directory_is_private_and_symlinks_in_it_are_not_followed(tmp_path: Path) -> None:
    db = make_db(tmp_path / "b.db")
    with RunLock(db, "r1"):
        pass
    assert stat.S_IMODE(lock_dir(db).stat().st_mode) == 0o700
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (lock_dir(db) / "r2.lock").symlink_to(victim)
    with pytest.raises(StoreError, match="symbolic link"):
        RunLock(db, "r2").__enter__()
    assert victim.read_text() == "precious"


def test_a_symlinked_lock_directory_is_refused(tmp_path: Path) -> None:
    db = make_db(tmp_path / "c.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(lock_dir(db), ignore_errors=True)
    lock_dir(db).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(StoreError, match="not a directory batchrun made"):
        RunLock(db, "r1").__enter__()
    assert list(elsewhere.iterdir()) == []


def test_a_lock_file_is_not_truncated_by_a_process_that_does_not_get_it(tmp_path: Path) -> None:
    db = make_db(tmp_path / "d.db")
    with RunLock(db, "r1") as held:
        content = held.path.read_bytes()
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            RunLock(db, "r1").__enter__()
        assert held.path.read_bytes() == content != b""


# processes meeting on a fresh database


def open_and_create(db: Path, start: float, out: Connection) -> None:
    """In a forked child: open the store at `start` (all children at once), create the same run, report back."""
    while time.time() < start:
        pass
    try:
        store = Store(db)
        items = [Item(i, f"c-{i}", {"model": "m", "max_tokens": 5, "messages": []}) for i in range(1, 200)]
        run = {"id": "same", "input_path": "/x", "input_sha256": "s", "fingerprint": "f", "mode": "online", "job": {}}
        out.send(f"{store.create_run(run, items)} {store.run_ids()}")
    except BatchrunError as e:
        out.send(f"error: {e}")
    except BaseException as e:
        out.send(f"Traceback: {e!r}")


@pytest.mark.parametrize("schema", ["fresh", "old"])
def test_six_processes_opening_a_fresh_or_old_database_at_once_all_succeed(schema: str, tmp_path: Path) -> None:
    """A new database is created once; an old one (first migration only) is upgraded once, under the migration lock."""
    db = tmp_path / "fresh.db"
    if schema == "old":
        conn = sqlite3.connect(db, isolation_level=None)
        migration_set().apply(Database(conn), stop_before="m002_batches")
        conn.close()
    start = time.time() + 0.3
    fork = multiprocessing.get_context("fork")
    pipes = [fork.Pipe(duplex=False) for _ in range(6)]
    procs = [fork.Process(target=open_and_create, args=(db, start, sender)) for _, sender in pipes]
    for p in procs:
        p.start()
    outputs = [receiver.recv() if receiver.poll(60) else "no answer" for receiver, _ in pipes]
    for p in procs:
        p.join(10)
    assert outputs == ["199 ['same']"] * 6
    assert [p.exitcode for p in procs] == [0] * 6


def test_concurrent_submits_on_a_fresh_database_succeed_or_exit_75(workdir: Path, emulator) -> None:
    files = [write_jsonl(workdir / f"items{k}.jsonl", prompts(5, prefix=f"f{k}")) for k in range(2)]
    env = cli_env(emulator.base_url)
    args = ["submit", "--model", "claude-haiku-4-5", "-q"]
    procs = [start_batchrun([*args, str(files[k % 2])], cwd=workdir, env=env) for k in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode in (0, 75) and "Traceback" not in err, err
    code, out, _ = invoke("status", "--json")
    assert code == 0
    runs = orjson.loads(out)["runs"]
    assert len(runs) == 2 and all(r["counts"]["succeeded"] + r["counts"]["pending"] == 5 for r in runs)


def test_a_run_another_process_created_meanwhile_is_the_same_run_not_a_changed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the concurrent submits meet: this process looked for the run before the other committed it."""
    from batchrun.job import Job
    from batchrun.runs import prepare_run

    items = write_jsonl(tmp_path / "items.jsonl", prompts(3))
    job = Job(model="claude-haiku-4-5", max_tokens=9)
    store = Store(tmp_path / "s.db")
    first, created = prepare_run(store, str(items), job, "https://api.anthropic.com")
    assert created
    monkeypatch.setattr(store, "find_run", lambda *args: None)
    assert prepare_run(store, str(items), job, "https://api.anthropic.com")[0] == first
    assert store.run_ids() == [first] and store.counts(first)["pending"] == 3
    store.close()


# -o


@pytest.mark.parametrize("target", ["items.jsonl", "batchrun.db", "batchrun.db-wal", "batchrun.db-shm", "link.jsonl"])
def test_output_over_the_input_or_the_database_is_refused(
    target: str, env: Path, emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = write_jsonl(env / "items.jsonl", prompts(3))
    (env / "link.jsonl").symlink_to(items)
    make_db(env / "batchrun.db")
    before = {p.name: p.read_bytes() for p in env.iterdir() if p.is_file() and not p.is_symlink()}
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.base_url)
    code, _, err = invoke("submit", "items.jsonl", "--model", "claude-haiku-4-5", "-q", "-o", target)
    assert code == 2 and "results would overwrite it" in one_error_line(err)
    assert emulator.stats()["requests"] == 0
    after = {p.name: p.read_bytes() for p in env.iterdir() if p.is_file() and not p.is_symlink()}
    assert after == before


def test_results_over_the_database_is_refused(env: Path) -> None:
    make_db(env / "batchrun.db")
    before = (env / "batchrun.db").read_bytes()
    code, _, err = invoke("results", "r1", "-o", "batchrun.db")
    assert code == 2 and "is the database" in one_error_line(err)
    assert (env / "batchrun.db").read_bytes() == before


def test_output_into_a_missing_directory_is_refused_before_anything_runs(env: Path) -> None:
    write_jsonl(env / "items.jsonl", prompts(2))
    code, _, err = invoke("submit", "items.jsonl", "--model", "m", "-q", "-o", "nodir/out.jsonl")
    assert code == 2 and "directory nodir does not exist" in one_error_line(err)
    assert not (env / "batchrun.db").exists()
    make_db(env / "batchrun.db")
    code, _, err = invoke("results", "r1", "-o", "nodir/out.jsonl")
    assert code == 2 and "does not exist" in one_error_line(err)


# the database file


def test_a_database_path_that_is_a_directory(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (env / "dir.db").mkdir()
    monkeypatch.setenv("BATCHRUN_DB", "dir.db")
    write_jsonl(env / "items.jsonl", prompts(2))
    for args in (["status"], ["status", "r"], ["doctor"], ["submit", "items.jsonl", "--model", "m", "-q"]):
        code, _, err = invoke(*args)
        assert code == 2 and "is a directory, not a database file" in one_error_line(err), args


def test_a_corrupted_database(env: Path) -> None:
    (env / "batchrun.db").write_bytes(b"this is not sqlite" * 500)
    for args in (["status"], ["results", "r1"], ["resume", "r1"]):
        code, _, err = invoke(*args)
        assert code == 2 and "damaged or not a batchrun database" in one_error_line(err), args
    code, out, err = invoke("doctor")
    assert code == 1 and "damaged" in out and "Traceback" not in out + err


def test_a_truncated_database(env: Path) -> None:
    db = make_db(env / "batchrun.db", n=400)
    Store(db).db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.truncate(size // 2)
    code, out, err = invoke("results", "r1")
    assert code == 2 and "damaged" in one_error_line(err)
    code, out, err = invoke("doctor")
    assert code == 1 and "damaged" in out and "Traceback" not in out + err


@pytest.mark.skipif(ROOT, reason="root writes through file permissions")
def test_a_read_only_directory_or_database(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(env / "items.jsonl", prompts(2))
    ro = env / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, _, err = invoke("submit", "items.jsonl", "--model", "m", "-q", "--db", "ro/new.db")
        assert code == 2 and "writable" in one_error_line(err)
    finally:
        ro.chmod(0o700)
    db = make_db(env / "batchrun.db")
    db.chmod(0o400)
    code, _, err = invoke("submit", "items.jsonl", "--model", "m", "-q")
    assert code == 2 and "writable" in one_error_line(err)


def test_disk_full_when_the_run_is_created(workdir: Path) -> None:
    """RLIMIT_FSIZE in the child: every write past the limit fails as it does on a full disk."""
    items = write_jsonl(workdir / "items.jsonl", [{"prompt": "x" * 2000} for _ in range(600)])

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "submit", str(items), "--model", "m", "-q"],
        cwd=workdir,
        env=cli_env("http://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=small_files,
    )
    assert proc.returncode == 3, proc.stderr
    assert "disk is full or a file size limit was reached" in one_error_line(proc.stderr)


# temporaries of a killed export


def test_an_export_removes_temporaries_a_killed_export_left(env: Path) -> None:
    make_db(env / "batchrun.db")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = env / f".old.jsonl.tmp-{dead.pid}"
    stale.write_bytes(b"x" * 1000)
    live = env / f".other.jsonl.tmp-{os.getppid()}"
    live.write_bytes(b"y")
    unrelated = env / "notes.tmp-1"
    unrelated.write_bytes(b"z")
    code, _, err = invoke("results", "r1", "-o", "out.jsonl")
    assert code == 0, err
    assert not stale.exists() and live.exists() and unrelated.exists()
    assert [r["custom_id"] for r in read_jsonl(env / "out.jsonl")] == ["c-1", "c-2"]
    assert stat.S_IMODE((env / "out.jsonl").stat().st_mode) == 0o600


# .env


def test_status_results_doctor_read_the_database_named_in_dotenv(env: Path) -> None:
    make_db(env / "elsewhere.db")
    (env / ".env").write_text("BATCHRUN_DB=elsewhere.db\n")
    code, out, _ = invoke("status", "--json")
    assert code == 0 and [r["run_id"] for r in orjson.loads(out)["runs"]] == ["r1"]
    code, out, _ = invoke("results", "r1")
    assert code == 0 and len(out.splitlines()) == 2
    code, out, _ = invoke("doctor")
    assert code == 0 and "elsewhere.db: ok" in out
    assert not (env / "batchrun.db").exists()
