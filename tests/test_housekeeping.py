"""`delete` and `prune` give the space of what they removed back to the file system: on a database made with
incremental vacuum, on one made before it, and while another connection is reading."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from batchrun.store import housekeeping as store_housekeeping
from tests.conftest import batchrun, cli_env, db_rows, write_jsonl

MODEL = "claude-haiku-4-5"


def on_disk(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def big_run(workdir: Path, env: dict, db: Path, run_id: str, n: int = 40) -> None:
    """A run whose prompts take about 1 MB."""
    rows = [{"custom_id": f"{run_id}-{i}", "prompt": f"{i} " + "lorem ipsum " * 2000} for i in range(n)]
    items = write_jsonl(workdir / f"{run_id}.jsonl", rows)
    args = ["submit", str(items), "--model", MODEL, "--max-tokens", "64", "--run-id", run_id, "--db", str(db), "-q"]
    proc = batchrun(args, cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr


def reclaimed(stderr: str) -> tuple[str, str, str]:
    match = re.search(r"reclaimed space with (.+): (\S+ \S+) -> (\S+ \S+) on disk", stderr)
    assert match, stderr
    return match.groups()


def test_deleting_every_run_gives_the_space_back(workdir: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    db = workdir / "b.db"
    big_run(workdir, env, db, "one")
    big_run(workdir, env, db, "two")
    before = on_disk(db)
    assert before > 1_000_000
    for run_id in ("one", "two"):
        proc = batchrun(["delete", run_id, "--db", str(db)], cwd=workdir, env=env)
        assert proc.returncode == 0, proc.stderr
        how, _, _ = reclaimed(proc.stderr)
        assert how == "incremental vacuum"
    assert on_disk(db) < before / 4
    assert db_rows(db, "PRAGMA freelist_count")[0][0] == 0


def test_a_database_made_without_auto_vacuum_shrinks_too(workdir: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    db = workdir / "old.db"
    big_run(workdir, env, db, "one")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=NONE")
    conn.execute("VACUUM")  # as a database made before incremental vacuum was
    conn.close()
    assert db_rows(db, "PRAGMA auto_vacuum")[0][0] == 0
    big_run(workdir, env, db, "two")
    before = on_disk(db)
    proc = batchrun(["delete", "one", "--db", str(db)], cwd=workdir, env=env)
    assert proc.returncode == 0 and reclaimed(proc.stderr)[0] == "VACUUM"
    proc = batchrun(["delete", "two", "--db", str(db)], cwd=workdir, env=env)
    assert proc.returncode == 0 and reclaimed(proc.stderr)[0] == "incremental vacuum"
    assert on_disk(db) < before / 4


def test_space_a_delete_freed_and_kept_is_given_back_by_the_next_prune(workdir: Path, emulator) -> None:
    """A database whose free pages an earlier version kept (its incremental vacuum freed nothing): the next
    prune gives them back even with nothing to remove."""
    env = cli_env(emulator.base_url)
    db = workdir / "kept.db"
    big_run(workdir, env, db, "one")
    big_run(workdir, env, db, "two", n=2)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM items WHERE run_id = 'one'")  # rows gone, their pages left on the free list
    conn.close()
    before = on_disk(db)
    assert db_rows(db, "PRAGMA freelist_count")[0][0] > 50
    proc = batchrun(["prune", "--older-than", "30d", "--db", str(db)], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert reclaimed(proc.stderr)[0] == "incremental vacuum"
    assert on_disk(db) < before / 4


def test_a_delete_while_another_connection_reads(workdir: Path, emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader on its snapshot keeps reading what it saw; the delete does not fail, and the file shrinks once
    the reader is done."""
    # the delete's checkpoint waits this long for the reader, which holds on until the delete is over (the forked
    # child inherits the setting)
    monkeypatch.setattr(store_housekeeping, "CHECKPOINT_WAIT_S", 0.05)
    env = cli_env(emulator.base_url)
    db = workdir / "r.db"
    big_run(workdir, env, db, "one")
    before = on_disk(db)
    reader = sqlite3.connect(db, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM items WHERE run_id = 'one'").fetchone()[0] == 40
        # in a process of its own, as it would be (in this one SQLite keeps its file open for the reader's locks)
        proc = batchrun(["delete", "one", "--db", str(db)], cwd=workdir, env=env, subprocess=True)
        assert proc.returncode == 0, proc.stderr
        assert reader.execute("SELECT count(*) FROM items WHERE run_id = 'one'").fetchone()[0] == 40
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert db_rows(db, "SELECT count(*) FROM items")[0][0] == 0
    assert on_disk(db) < before / 4
