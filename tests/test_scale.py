"""Issue 13, scale: shared request parts stored once (byte-identical requests and hashes, old databases
migrated), per-run tallies that stay exact, and the housekeeping commands (runs, prune, delete)."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
from sqlite_utils import Database

from batchrun.inputs import read_items
from batchrun.job import Job, load_job
from batchrun.store import (
    SENT_ID_OVERHEAD,
    Attempt,
    BatchTimes,
    Outcome,
    Store,
    _PartIds,
    migration_set,
    split_request,
)
from tests.conftest import batchrun, cli_env, db_rows, prompts, read_jsonl, write_jsonl

MODEL = "claude-haiku-4-5"
JOBS = Path(__file__).resolve().parent.parent / "jobs"
FAST = ["--poll-interval", "0.02"]


def ticket_lines(n: int, start: int = 0) -> list[dict]:
    return [
        {"custom_id": f"t-{i}", "customer": f"Customer {i % 7}", "plan": "Team", "text": f"Ticket {i}: it broke é✓"}
        for i in range(start, start + n)
    ]


def varied_lines() -> list[dict]:
    """Requests of every shape: full params with keys before and after "messages", tools, floats, unicode."""
    return [
        {"custom_id": "p-1", "prompt": "plain"},
        {"custom_id": "p-2", "messages": [{"role": "user", "content": 'ünïcødé \u2028 \\ "q"'}]},
        {
            "custom_id": "p-3",
            "params": {
                "model": MODEL,
                "max_tokens": 33,
                "temperature": 0.1,
                "top_p": 0.95,
                "metadata": {"user_id": "u-1"},
                "container": "c",
                "context_management": {"edits": []},
                "tools": [{"name": "t", "input_schema": {"type": "object", "properties": {"messages": {}}}}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "blocks"}]}],
            },
        },
        {
            "custom_id": "p-4",
            "params": {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        },
    ]


def old_request(params: dict) -> tuple[bytes, str]:
    """The request bytes and hash as the store made them before issue 13 (one copy of the whole request)."""
    raw = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
    return raw, hashlib.sha256(raw).hexdigest()


def new_run(store: Store, path: Path, job: Job, run_id: str) -> None:
    run = {"id": run_id, "input_path": str(path), "input_sha256": run_id, "fingerprint": job.fingerprint()}
    store.create_run({**run, "mode": "batch", "job": job.to_dict(), "endpoint": "e"}, read_items(path, job))


def test_requests_and_hashes_are_byte_identical_to_the_old_store(tmp_path: Path) -> None:
    job = load_job(JOBS / "classify_tickets.toml").with_overrides(model=MODEL, system=None)
    tickets = write_jsonl(tmp_path / "t.jsonl", ticket_lines(30) + varied_lines())
    ticket_job = load_job(JOBS / "classify_tickets.toml")
    store = Store(tmp_path / "s.db")
    new_run(store, tickets, ticket_job, "a")
    new_run(store, tickets, job, "b")  # no system prompt: another shared part
    for run_id, used in (("a", ticket_job), ("b", job)):
        expected = {i.custom_id: old_request(i.params) for i in read_items(tickets, used)}
        rows = db_rows(store.path, "SELECT custom_id, params, request_hash FROM requests WHERE run_id = ?", (run_id,))
        assert {cid: (bytes(p), h) for cid, p, h in rows} == expected
        # what a batch sends: the same bytes, the same byte counts as planned
        costs = {line: (size, model, max_tokens) for line, size, model, max_tokens in store.pending_costs(run_id)}
        sizes = {line: size for line, (size, _, _) in costs.items()}
        by_line = {i.line_no: i for i in read_items(tickets, used)}
        for line, (size, model, max_tokens) in costs.items():
            raw = expected[by_line[line].custom_id][0]
            assert size == SENT_ID_OVERHEAD + len(str(line)) + len(raw)
            assert (model, max_tokens) == (by_line[line].params["model"], by_line[line].params["max_tokens"])
        store.add_batch_plans(run_id, [(1, len(by_line), len(by_line), sum(sizes.values()))], time.time())
        token = store.batches(run_id)[-1]["token"]
        lines = list(store.batch_request_lines(run_id, 1))
        assert lines == [
            orjson.dumps(
                {"custom_id": f"{token}-{line}", "params": orjson.Fragment(expected[by_line[line].custom_id][0])}
            )
            for line in sorted(by_line)
        ]
        assert store.batch_content(run_id, 1) == (len(lines), sum(len(x) for x in lines) - len(lines) * 26)
    # the ticket job's 12 KB system prompt is stored once, not once per item
    parts = db_rows(store.path, "SELECT count(*), sum(length(head) + length(tail)) FROM request_parts")[0]
    assert parts[0] <= 6 and parts[1] < 5 * 13_000  # 68 items: 850 KB if copied into each
    own = db_rows(store.path, "SELECT max(length(own)) FROM items WHERE run_id = 'a' AND custom_id LIKE 't-%'")[0][0]
    assert own < 300
    store.close()


def old_database(path: Path, job: Job, lines: Path, done: int) -> dict[str, tuple[bytes, str]]:
    """A database in the format before m009, filled the way the old store did: the schema of m001-m007 and
    each item's whole request in `params`; the first `done` items answered."""
    conn = sqlite3.connect(path, isolation_level=None)
    db = Database(conn)
    names = [m.name for m in migration_set()._migrations]
    migration_set().apply(db, stop_before=names[names.index("m009_request_parts")])
    now = time.time()
    conn.execute(
        "INSERT INTO runs (id, created_at, updated_at, input_path, input_sha256, fingerprint, mode, job, status, "
        "total, endpoint) VALUES ('old', ?, ?, ?, 'sha', ?, 'online', ?, 'interrupted', 0, 'e')",
        [now, now, str(lines), job.fingerprint(), orjson.dumps(job.to_dict()).decode()],
    )
    requests = {}
    for item in read_items(lines, job):
        raw, digest = old_request(item.params)
        requests[item.custom_id] = (raw, digest)
        conn.execute(
            "INSERT INTO items (run_id, line_no, custom_id, model, params, request_hash, state) "
            "VALUES ('old', ?, ?, ?, ?, ?, 'pending')",
            [item.line_no, item.custom_id, item.params["model"], raw, digest],
        )
    conn.execute("UPDATE runs SET total = (SELECT count(*) FROM items)")
    conn.execute(
        "UPDATE items SET state = 'succeeded', via = 'online', input_tokens = 10, output_tokens = 2, "
        "cache_creation_tokens = 5, result = json_object('type', 'succeeded', 'n', line_no) WHERE line_no <= ?",
        [done],
    )
    conn.execute("UPDATE items SET state = 'in_flight' WHERE line_no = ?", [done + 1])
    conn.close()
    return requests


def test_an_old_database_is_migrated_with_identical_requests_hashes_and_results(tmp_path: Path) -> None:
    job = load_job(JOBS / "classify_tickets.toml").with_overrides(model=MODEL, cache_ttl="1h")
    lines = write_jsonl(tmp_path / "t.jsonl", ticket_lines(20) + varied_lines())
    db = tmp_path / "old.db"
    requests = old_database(db, job, lines, done=10)
    results_before = db_rows(db, "SELECT custom_id, state, result FROM items WHERE result IS NOT NULL")
    store = Store(db)  # migrates
    assert store.check() == []
    rows = db_rows(db, "SELECT custom_id, params, request_hash FROM requests")
    assert {cid: (bytes(p), h) for cid, p, h in rows} == requests
    assert db_rows(db, "SELECT custom_id, state, result FROM items WHERE result IS NOT NULL") == results_before
    assert store.counts("old") == {"pending": 13, "in_flight": 1, "succeeded": 10, "failed": 0}
    assert store.usage("old")[0]["input"] == 100 and store.usage("old")[0]["cache_creation"] == 50
    assert db_rows(db, "SELECT count(*) FROM request_parts")[0][0] <= 5
    store.release_in_flight("old")
    claimed = store.claim_pending("old", 0, 100)
    assert {c.custom_id: c.params for c in claimed} == {
        cid: orjson.loads(raw) for cid, (raw, _) in requests.items() if cid not in {r[0] for r in results_before}
    }
    # a 1-hour cache write is still known from the shared part (the system prompt's cache_control)
    store.record(
        [
            Outcome(
                "old",
                claimed[0].line_no,
                "succeeded",
                result='{"type":"succeeded"}',
                usage={"cache_creation_input_tokens": 7},
            )
        ]
    )
    assert store.usage("old")[0]["cache_creation_1h"] == 7
    assert store.counts("old") == store.counted_counts("old")
    store.close()


def test_a_migrated_old_run_resumes_and_its_answers_are_reused(tmp_path: Path, emulator) -> None:
    job = Job(model=MODEL, max_tokens=64)
    lines = write_jsonl(tmp_path / "p.jsonl", prompts(12))
    db = tmp_path / "old.db"
    old_database(db, job, lines, done=0)
    sqlite3.connect(db).execute("UPDATE items SET state = 'pending'").connection.commit()
    env = cli_env(emulator.base_url)
    sqlite3.connect(db).execute("UPDATE runs SET endpoint = NULL").connection.commit()
    proc = batchrun(["resume", "old", "--db", str(db), "-o", str(tmp_path / "out.jsonl")], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 12
    # the same lines again as a new run: every answer comes from the migrated run's results (same hashes)
    again = write_jsonl(tmp_path / "again.jsonl", prompts(12))
    sent = emulator.stats()["by_status"].get("200", 0)
    proc = batchrun(
        ["submit", str(again), "--db", str(db), "--model", MODEL, "--max-tokens", "64"], cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert emulator.stats()["by_status"].get("200", 0) == sent


def assert_tallies_exact(db: Path) -> None:
    store = Store(db)
    try:
        for run_id in store.run_ids():
            assert store.counts(run_id) == store.counted_counts(run_id)
            counted = db_rows(
                db,
                "SELECT coalesce(stop_reason, 'unknown'), count(*) FROM items WHERE run_id = ? AND state = 'succeeded' "
                "GROUP BY 1",
                [run_id],
            )
            assert store.stop_reasons(run_id) == dict(counted)
        assert store.check() == []
    finally:
        store.close()


def test_tallies_stay_exact_through_online_batch_crash_resume_and_retry(tmp_path: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    db = tmp_path / "t.db"
    base = ["--db", str(db), "--model", MODEL, "--max-tokens", "64"]
    online = write_jsonl(
        tmp_path / "o.jsonl",
        [
            *prompts(15, "o"),
            {
                "custom_id": "bad",
                "params": {"model": MODEL, "max_tokens": 9, "messages": [{"role": "user", "content": "x"}], "bogus": 1},
            },
        ],
    )
    assert batchrun(["submit", str(online), *base, "--run-id", "on"], cwd=tmp_path, env=env).returncode == 1
    assert_tallies_exact(db)
    batch = write_jsonl(tmp_path / "b.jsonl", prompts(9, "b"))
    proc = batchrun(["submit", str(batch), *base, "--mode", "batch", *FAST, "--run-id", "ba"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert_tallies_exact(db)
    # a crash: items left in flight by a dead process, then resumed
    crash = write_jsonl(tmp_path / "c.jsonl", prompts(8, "c"))
    store = Store(db)
    job = Job(model=MODEL, max_tokens=64)
    new_run(store, crash, job, "cr")
    assert len(store.claim_pending("cr", 0, 5)) == 5
    assert store.counts("cr") == {"pending": 3, "in_flight": 5, "succeeded": 0, "failed": 0}
    store.close()
    assert_tallies_exact(db)
    store = Store(db)
    assert store.release_in_flight("cr") == 5
    assert store.counts("cr") == {"pending": 8, "in_flight": 0, "succeeded": 0, "failed": 0}
    store.close()
    assert batchrun(["retry", "on", "--db", str(db)], cwd=tmp_path, env=env).returncode == 1
    assert_tallies_exact(db)
    assert db_rows(db, "SELECT sum(items) FROM run_tallies WHERE run_id = 'on' AND state = 'failed'")[0][0] == 1


def runs_json(workdir: Path, env: dict, db: Path) -> dict:
    proc = batchrun(["runs", "--json", "--db", str(db)], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def age_run(db: Path, run_id: str, days: float) -> None:
    then = time.time() - days * 86400
    conn = sqlite3.connect(db)
    conn.execute("UPDATE runs SET created_at = ?, updated_at = ? WHERE id = ?", [then, then, run_id])
    conn.commit()
    conn.close()


def test_runs_lists_and_prune_removes_old_runs_while_the_cache_keeps_what_is_kept(tmp_path: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    db = tmp_path / "n.db"
    base = ["--db", str(db), "--model", MODEL, "--max-tokens", "64"]
    items = write_jsonl(tmp_path / "i.jsonl", prompts(40))
    assert batchrun(["submit", str(items), *base, "--run-id", "night1"], cwd=tmp_path, env=env).returncode == 0
    sent = emulator.stats()["by_status"]["200"]
    assert batchrun(["submit", str(items), *base, "--run-id", "night2"], cwd=tmp_path, env=env).returncode == 0
    assert emulator.stats()["by_status"]["200"] == sent  # night2 answered from night1's results
    night2 = read_results(tmp_path, env, db, "night2")
    assert not (Path(f"{db}.locks") / "night1.lock").exists()  # finished runs leave no lock file
    listed = runs_json(tmp_path, env, db)["runs"]
    assert [r["run_id"] for r in listed] == ["night1", "night2"]
    assert listed[0]["counts"]["succeeded"] == 40 and listed[0]["cost_usd"] > 0 and listed[0]["bytes"] > 0
    assert listed[1]["cost_usd"] == 0  # cached answers cost nothing
    age_run(db, "night1", 31)
    before = db.stat().st_size
    proc = batchrun(["prune", "--older-than", "30d", "--db", str(db)], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "removed run night1" in proc.stderr and "incremental vacuum" in proc.stderr
    assert [r["run_id"] for r in runs_json(tmp_path, env, db)["runs"]] == ["night2"]
    assert db_rows(db, "SELECT count(*) FROM items WHERE run_id = 'night1'")[0][0] == 0
    assert db.stat().st_size < before
    assert read_results(tmp_path, env, db, "night2") == night2
    # a third night of the same input is answered from night2, which was kept
    proc = batchrun(["submit", str(items), *base, "--run-id", "night3"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert emulator.stats()["by_status"]["200"] == sent
    assert read_results(tmp_path, env, db, "night3") == night2
    assert_tallies_exact(db)


def read_results(workdir: Path, env: dict, db: Path, run_id: str) -> list[dict]:
    proc = batchrun(["results", run_id, "--db", str(db)], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    return [orjson.loads(line) for line in proc.stdout.splitlines()]


def test_prune_keep_results_keeps_results_and_the_cache_but_drops_requests(tmp_path: Path, emulator) -> None:
    env = cli_env(emulator.base_url)
    db = tmp_path / "k.db"
    base = ["--db", str(db), "--model", MODEL, "--max-tokens", "64"]
    items = write_jsonl(tmp_path / "i.jsonl", prompts(30))
    assert batchrun(["submit", str(items), *base, "--run-id", "old"], cwd=tmp_path, env=env).returncode == 0
    results = read_results(tmp_path, env, db, "old")
    age_run(db, "old", 40)
    proc = batchrun(["prune", "--older-than", "30d", "--keep-results", "--db", str(db)], cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "pruned run old" in proc.stderr
    assert read_results(tmp_path, env, db, "old") == results
    assert db_rows(db, "SELECT count(*), sum(length(own)) FROM items WHERE run_id = 'old'")[0] == (30, 0)
    assert db_rows(db, "SELECT count(*) FROM attempts")[0][0] == 0
    assert db_rows(db, "SELECT count(*) FROM request_parts")[0][0] == 0
    assert runs_json(tmp_path, env, db)["runs"][0]["pruned"]
    sent = emulator.stats()["by_status"]["200"]
    assert batchrun(["submit", str(items), *base, "--run-id", "new"], cwd=tmp_path, env=env).returncode == 0
    assert emulator.stats()["by_status"]["200"] == sent
    assert read_results(tmp_path, env, db, "new") == results
    assert_tallies_exact(db)


def test_delete_refuses_a_locked_run_and_open_batches_unless_forced(tmp_path: Path, emulator) -> None:
    from batchrun.lock import RunLock

    env = cli_env(emulator.base_url)
    db = tmp_path / "d.db"
    base = ["--db", str(db), "--model", MODEL, "--max-tokens", "64"]
    online = write_jsonl(tmp_path / "o.jsonl", prompts(5, "o"))
    assert batchrun(["submit", str(online), *base, "--run-id", "on"], cwd=tmp_path, env=env).returncode == 0
    with RunLock(db, "on"):
        proc = batchrun(["delete", "on", "--db", str(db)], cwd=tmp_path, env=env)
        assert proc.returncode == 2 and "another process is running it" in proc.stderr
        proc = batchrun(["delete", "on", "--force", "--db", str(db)], cwd=tmp_path, env=env)
        assert proc.returncode == 2
    batch = write_jsonl(tmp_path / "b.jsonl", [{"custom_id": f"b-{i}", "prompt": f"batch {i}"} for i in range(5)])
    emulator.configure(batch_seconds=20.0)
    (tmp_path / "poll.toml").write_text("poll_interval = 0.05\n")  # the run's own: `delete --force` polls with it
    proc = batchrun(
        ["submit", str(batch), *base, "--mode", "batch", "--no-wait", "--run-id", "ba", "--job", "poll.toml"],
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 3, proc.stderr
    proc = batchrun(["delete", "ba", "--db", str(db)], cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "open batch" in proc.stderr and "--force" in proc.stderr
    assert db_rows(db, "SELECT count(*) FROM items WHERE run_id = 'ba'")[0][0] == 5
    proc = batchrun(["delete", "ba", "--force", "--db", str(db)], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert db_rows(db, "SELECT count(*) FROM batches")[0][0] == 0
    assert batchrun(["delete", "on", "--db", str(db)], cwd=tmp_path, env=env).returncode == 0
    assert runs_json(tmp_path, env, db)["runs"] == []
    assert db_rows(db, "SELECT count(*) FROM items")[0][0] == 0
    assert db_rows(db, "SELECT count(*) FROM request_parts")[0][0] == 0
    proc = batchrun(["delete", "nope", "--db", str(db)], cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr


def test_prune_says_what_a_bad_age_is(tmp_path: Path) -> None:
    proc = batchrun(["prune", "--older-than", "30 days", "--db", str(tmp_path / "x.db")], cwd=tmp_path, env={})
    assert proc.returncode == 2 and "e.g. 30d" in proc.stderr


def test_the_first_prune_of_an_upgraded_database_gives_back_the_space_of_the_copied_prompts(tmp_path: Path) -> None:
    job = load_job(JOBS / "classify_tickets.toml").with_overrides(model=MODEL)
    lines = write_jsonl(tmp_path / "t.jsonl", ticket_lines(60))
    db = tmp_path / "old.db"
    old_database(db, job, lines, done=60)
    before = db.stat().st_size
    assert before > 60 * 12_500  # the 12.5 KB system prompt in every item
    proc = batchrun(["prune", "--older-than", "30d", "--db", str(db)], cwd=tmp_path, env={})
    assert proc.returncode == 0, proc.stderr
    assert "reclaimed space with VACUUM" in proc.stderr
    assert db.stat().st_size < before / 4
    proc = batchrun(["prune", "--older-than", "30d", "--db", str(db)], cwd=tmp_path, env={})
    assert proc.returncode == 0 and "nothing to prune" in proc.stderr  # incremental from now on
    assert db_rows(db, "PRAGMA auto_vacuum")[0][0] == 2
    assert len(read_results_direct(db)) == 60


def read_results_direct(db: Path) -> list[tuple]:
    return db_rows(db, "SELECT custom_id, result FROM items WHERE run_id = 'old' AND state = 'succeeded'")


def pre_m010_database(path: Path, job: Job, lines: Path) -> dict[str, tuple[bytes, str]]:
    """A database in the format before m010, filled the way that store did: hex request hashes, and an attempts
    row for every batch result. Items 1-8 are in batch 1: 1-6 succeeded, 7 errored (pending again), 8 in flight;
    item 9 succeeded online."""
    conn = sqlite3.connect(path, isolation_level=None)
    migration_set().apply(Database(conn), stop_before="m010_lean_items")
    conn.execute("BEGIN")
    now = time.time()
    conn.execute(
        "INSERT INTO runs (id, created_at, updated_at, input_path, input_sha256, fingerprint, mode, job, status, "
        "total, endpoint) VALUES ('old', ?, ?, ?, 'sha', ?, 'batch', ?, 'interrupted', 0, 'e')",
        [now, now, str(lines), job.fingerprint(), orjson.dumps(job.to_dict()).decode()],
    )
    parts = _PartIds(conn)
    requests = {}
    for item in read_items(lines, job):
        raw, digest = old_request(item.params)
        requests[item.custom_id] = (raw, digest)
        head, own, tail = split_request(raw, item.params)
        conn.execute(
            "INSERT INTO items (run_id, line_no, custom_id, model, own, parts, request_hash, state) "
            "VALUES ('old', ?, ?, ?, ?, ?, ?, 'pending')",
            [item.line_no, item.custom_id, item.params["model"], own, parts.get(head, tail), digest],
        )
    conn.execute("UPDATE runs SET total = (SELECT count(*) FROM items)")
    conn.execute(
        "INSERT INTO run_tallies SELECT run_id, model, '', state, count(*), 0, 0, 0, 0, 0, sum(length(own)) "
        "FROM items GROUP BY model, state"
    )
    conn.execute(
        "INSERT INTO batches (run_id, seq, id, planned_at, n_items, n_bytes, first_line, last_line, first_custom_id, "
        "last_custom_id, processing_status, token) VALUES ('old', 1, 'msgbatch_1', ?, 8, 0, 1, 8, 'a', 'b', 'ended', "
        "'br00000001')",
        [now],
    )
    conn.execute("UPDATE items SET state = 'in_flight', batch_seq = 1 WHERE line_no <= 8")
    conn.execute(
        "UPDATE items SET state = 'succeeded', via = 'batch', result = json_object('type', 'succeeded', 'n', "
        "line_no), input_tokens = 10, output_tokens = 2, attempts = 1, "
        "stop_reason = CASE line_no WHEN 6 THEN 'max_tokens' ELSE 'end_turn' END WHERE line_no <= 6"
    )
    conn.execute("UPDATE items SET state = 'pending', attempts = 1 WHERE line_no = 7")
    conn.execute(
        "UPDATE items SET state = 'succeeded', via = 'online', result = '{\"type\":\"succeeded\"}', attempts = 1 "
        "WHERE line_no = 9"
    )
    attempts = [(line, 1000.5, 86.25, None, "succeeded", None, None, None) for line in range(1, 7)]
    attempts += [(7, 1000.5, 86.25, None, "overloaded_error", None, None, "req_7")]
    attempts += [(9, 2000.0, 1.5, 200, "succeeded", None, None, "req_9")]
    conn.executemany(
        "INSERT INTO attempts (run_id, line_no, started_at, seconds, status, outcome, error_class, retry_after, "
        "request_id) VALUES ('old', ?, ?, ?, ?, ?, ?, ?, ?)",
        attempts,
    )
    conn.execute("COMMIT")
    conn.close()
    return requests


def test_m010_keeps_requests_hashes_results_and_every_attempt(tmp_path: Path) -> None:
    job = load_job(JOBS / "classify_tickets.toml").with_overrides(model=MODEL)
    lines = write_jsonl(tmp_path / "t.jsonl", ticket_lines(12) + varied_lines())
    db = tmp_path / "old.db"
    requests = pre_m010_database(db, job, lines)
    attempt_columns = "run_id, line_no, started_at, seconds, status, outcome, error_class, retry_after, request_id"
    attempts_before = sorted(db_rows(db, f"SELECT {attempt_columns} FROM attempts"), key=repr)
    results_before = db_rows(db, "SELECT line_no, state, via, result, input_tokens FROM items ORDER BY line_no")
    store = Store(db)  # migrates
    assert store.check() == []
    rows = db_rows(db, "SELECT custom_id, params, request_hash FROM requests")
    assert {cid: (bytes(p), h) for cid, p, h in rows} == requests
    hashes = db_rows(db, "SELECT custom_id, request_hash FROM items")
    assert {cid: bytes(h) for cid, h in hashes} == {cid: bytes.fromhex(h) for cid, (_, h) in requests.items()}
    assert db_rows(db, "SELECT line_no, state, via, result, input_tokens FROM items ORDER BY line_no") == results_before
    assert sorted(db_rows(db, f"SELECT {attempt_columns} FROM all_attempts"), key=repr) == attempts_before
    assert db_rows(db, "SELECT count(*) FROM attempts")[0][0] == 2  # the batch's successes are the batch row now
    assert store.attempt_count("old") == len(attempts_before)
    assert store.counts("old") == store.counted_counts("old")
    assert store.stop_reasons("old") == {"end_turn": 5, "max_tokens": 1, "unknown": 1}
    store.close()


def test_batch_results_are_recorded_without_attempts_rows_and_with_exact_tallies(tmp_path: Path) -> None:
    job = load_job(JOBS / "classify_tickets.toml").with_overrides(model=MODEL)
    store = Store(tmp_path / "s.db")
    new_run(store, write_jsonl(tmp_path / "t.jsonl", ticket_lines(10)), job, "r")
    store.add_batch_plans("r", [(1, 10, 10, 0)], time.time())
    usage = {"input_tokens": 5, "output_tokens": 1, "cache_creation_input_tokens": 3}
    outcomes = [
        Outcome(
            "r",
            1,
            "succeeded",
            via="batch",
            result="{}",
            usage=usage,
            attempts=[Attempt(7.0, 3.0, "succeeded")],
            stop_reason="end_turn",
        ),
        Outcome("r", 2, "failed", via="batch", result="{}", error_type="x", attempts=[Attempt(7.0, 3.0, "x")]),
        Outcome("r", 3, "pending", attempts=[Attempt(7.0, 3.0, "expired")]),
    ]
    store.record(outcomes, BatchTimes("r", 1, 7.0, 3.0))
    assert db_rows(store.path, "SELECT line_no, outcome FROM attempts ORDER BY line_no") == [(2, "x"), (3, "expired")]
    assert db_rows(store.path, "SELECT line_no, started_at, seconds, outcome FROM all_attempts ORDER BY line_no") == [
        (1, 7.0, 3.0, "succeeded"),
        (2, 7.0, 3.0, "x"),
        (3, 7.0, 3.0, "expired"),
    ]
    assert store.attempt_count("r") == 3
    assert store.counts("r") == {"pending": 1, "in_flight": 7, "succeeded": 1, "failed": 1}
    assert store.usage("r")[0]["cache_creation_1h"] == 0 and store.usage("r")[0]["input"] == 5
    assert db_rows(store.path, "SELECT count(*) FROM tally_paused")[0][0] == 0
    assert store.stop_reasons("r") == {"end_turn": 1}
    store.close()
    assert_tallies_exact(tmp_path / "s.db")


def test_result_lines_repeated_in_a_later_chunk_are_recorded_once(tmp_path: Path) -> None:
    """A chunk's items are looked up before the chunk ahead of it is written: a line the file repeats in a later
    chunk is stray, not recorded (or billed) twice."""
    import asyncio

    from batchrun.batches import BatchEngine, Tally, result_chunks

    job = load_job(JOBS / "classify_tickets.toml").with_overrides(model=MODEL)
    store = Store(tmp_path / "s.db")
    new_run(store, write_jsonl(tmp_path / "t.jsonl", ticket_lines(9)), job, "r")
    store.add_batch_plans("r", [(1, 9, 9, 0)], time.time())
    token = store.batches("r")[0]["token"]
    answer = '{"category":"bug","urgency":2,"sentiment":"neutral","summary":"x"}'

    def line(n: int) -> bytes:
        message = {
            "type": "message",
            "model": MODEL,
            "content": [{"type": "text", "text": answer}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": n, "output_tokens": 1},
        }
        return orjson.dumps({"custom_id": f"{token}-{n}", "result": {"type": "succeeded", "message": message}})

    async def stream():  # two chunks: line 2 comes twice in the first, line 5 again in the second
        yield b"\n".join(line(n) for n in (1, 2, 3, 4, 5, 2)) + b"\n"
        yield b"\n".join(line(n) for n in (6, 7, 5, 8)) + b"\n"

    engine = BatchEngine(store, "r", job, None)
    tally = Tally()
    asyncio.run(engine._store_results(1, result_chunks(stream(), 3), 7.0, 1.0, tally))
    engine.close()
    assert (tally.lines, tally.succeeded, tally.stray) == (10, 8, 2)
    assert store.counts("r") == {"pending": 0, "in_flight": 1, "succeeded": 8, "failed": 0}
    assert db_rows(store.path, "SELECT sum(input_tokens), max(attempts) FROM items") == [(36, 1)]
    store.close()
    assert_tallies_exact(tmp_path / "s.db")


def test_a_group_of_outcomes_is_stored_exactly_as_given(tmp_path: Path) -> None:
    """Outcomes go to SQLite as one JSON array (and their results as one BLOB): costs, tokens, text and missing
    values come back unchanged."""
    store = Store(tmp_path / "s.db")
    new_run(store, write_jsonl(tmp_path / "t.jsonl", prompts(6)), Job(model=MODEL, max_tokens=9), "r")
    costs = [0.1, 1e-07, 0.30000000000000004, 123.45678901234568, None]
    texts = ['é \\u00e9 \\" ✓', "line\\nbreak", "", "\\u0000", "x"]  # JSON escapes inside the result
    outcomes = [
        Outcome(
            "r",
            n,
            "succeeded" if n < 5 else "failed",
            result=f'{{"type":"{"succeeded" if n < 5 else "errored"}","text":"{text}"}}',
            cost_usd=cost,
            usage={"input_tokens": 2**40 + n, "output_tokens": n},
            error_type=None if n < 5 else "x",
            stop_reason="end_turn" if n % 2 else None,
        )
        for n, (cost, text) in enumerate(zip(costs, texts, strict=True), start=1)
    ]
    # an item that goes back to pending (a retryable error) has no result: NULL among the group's results
    outcomes.insert(2, Outcome("r", 6, "pending", usage={"input_tokens": 3, "output_tokens": 0}, cost_usd=0.5))
    store.record(outcomes)
    rows = db_rows(
        store.path,
        "SELECT line_no, cost_usd, result, typeof(result), input_tokens, output_tokens, stop_reason, error_type "
        "FROM items ORDER BY line_no",
    )
    assert rows == [
        (
            o.line_no,
            o.cost_usd,
            o.result,
            "null" if o.result is None else "text",
            o.usage["input_tokens"],
            o.usage["output_tokens"],
            o.stop_reason,
            o.error_type,
        )
        for o in sorted(outcomes, key=lambda o: o.line_no)
    ]
    store.close()
    assert_tallies_exact(tmp_path / "s.db")


def test_values_a_whole_group_shares_are_stored_exactly_too(tmp_path: Path) -> None:
    """A column with one value across the group is bound once instead of read from each row's JSON: the same
    costs, tokens, texts and NULLs come back, and a column whose values differ only in type (0 and 0.0, 1 and
    1.0) keeps each row's own value."""
    store = Store(tmp_path / "s.db")
    new_run(store, write_jsonl(tmp_path / "t.jsonl", prompts(6)), Job(model=MODEL, max_tokens=9), "r")
    shared = '{"type":"succeeded","text":"é \\u00e9 \\" ✓ line\\nbreak"}'

    def outcome(n: int, cost: float | None, error: Any) -> Outcome:
        return Outcome(
            "r", n, "succeeded", result=shared, cost_usd=cost, usage={"input_tokens": 2**40}, error_type=error
        )

    same = [outcome(n, 0.30000000000000004, None) for n in (1, 2, 3)]
    mixed = [outcome(4, 0, 1), outcome(5, 0.0, 1.0)]
    store.record(same)
    store.record(mixed)
    store.record([outcome(6, None, "x")])
    rows = db_rows(
        store.path,
        "SELECT line_no, cost_usd, typeof(cost_usd), result, input_tokens, error_type, stop_reason FROM items "
        "ORDER BY line_no",
    )
    assert rows == [
        (1, 0.30000000000000004, "real", shared, 2**40, None, None),
        (2, 0.30000000000000004, "real", shared, 2**40, None, None),
        (3, 0.30000000000000004, "real", shared, 2**40, None, None),
        (4, 0.0, "real", shared, 2**40, "1", None),
        (5, 0.0, "real", shared, 2**40, "1.0", None),
        (6, None, "null", shared, 2**40, "x", None),
    ]
    store.close()
    assert_tallies_exact(tmp_path / "s.db")


def test_data_that_is_exactly_the_reply_text_is_stored_once(tmp_path: Path) -> None:
    from batchrun.store import report_field_counts

    store = Store(tmp_path / "s.db")
    assert db_rows(store.path, "PRAGMA page_size")[0][0] == 8192
    new_run(store, write_jsonl(tmp_path / "t.jsonl", prompts(3)), Job(model=MODEL, max_tokens=9), "r")
    texts = ['{"category":"bug","n":1}', '{"category": "bug", "n": 1}', '{"category":"other"}']
    outcomes = [
        Outcome(
            "r",
            line,
            "succeeded",
            result=orjson.dumps(
                {"type": "succeeded", "message": {"content": [{"type": "text", "text": text}]}}
            ).decode(),
            data=orjson.dumps(orjson.loads(text)).decode(),
        )
        for line, text in enumerate(texts, start=1)
    ]
    store.record(outcomes)
    stored = db_rows(store.path, "SELECT data FROM items ORDER BY line_no")
    assert stored == [("",), ('{"category":"bug","n":1}',), ("",)]
    answers = db_rows(store.path, "SELECT data FROM answers ORDER BY line_no")
    assert answers == [(o.data,) for o in outcomes]
    assert report_field_counts(store, "r", "category") == [("bug", 2), ("other", 1)]
    store.close()
