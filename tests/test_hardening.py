"""Hardening of the engines: a stranger's batch is never adopted, nothing hangs, a store that fails stops the run
with one line, a storm never burns items, the API's garbage is retried, and the code keeps its architecture."""

from __future__ import annotations

import ast
import asyncio
import functools
import signal
import sqlite3
import time
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from batchrun.api import MAX_RETRY_AFTER_S, retry_after
from batchrun.emulator.replies import expected_text
from tests.conftest import batchrun, cli_env, db_rows, prompts, read_jsonl, start_batchrun, write_jsonl
from tests.fakeapi import FakeAPI, json_response, message

MODEL = "claude-haiku-4-5"
FAST = ["--poll-interval", "0.1"]


def stored_params(db: Path) -> dict[str, dict]:
    return {cid: orjson.loads(p) for cid, p in db_rows(db, "SELECT custom_id, params FROM requests")}


def texts(path: Path) -> dict[str, str]:
    return {r["custom_id"]: r["result"]["message"]["content"][0]["text"] for r in read_jsonl(path)}


def no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


# a stranger's batch


def test_a_batch_of_another_run_is_never_adopted(workdir: Path, emulator) -> None:
    """Run A's create fails (the API answers 529), then run B (another database, same size) creates its batch;
    A's resume finds B's batch as a candidate, proves from its results that it is not A's, leaves it alone and
    creates its own. Every answer A exports is the reply to A's own request, and B is untouched."""
    a_items = write_jsonl(workdir / "a.jsonl", [{"custom_id": f"a-{i}", "prompt": f"alpha {i}"} for i in range(30)])
    b_items = write_jsonl(workdir / "b.jsonl", [{"custom_id": f"b-{i}", "prompt": f"beta {i}"} for i in range(30)])
    batch = ["--mode", "batch", "--model", MODEL, "--max-tokens", "64", *FAST]
    refusing = True

    async def overloaded_creates(request: web.Request, n: int, params: dict) -> web.Response | None:
        if refusing and request.method == "POST" and request.path == "/v1/messages/batches":
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            return json_response(error, 529, **{"retry-after": "0"})
        return None

    api = FakeAPI(overloaded_creates, upstream=emulator.base_url)
    env = cli_env(api.base_url)

    down = batchrun(
        ["submit", str(a_items), *batch, "--run-id", "a", "--db", "a.db", "--max-attempts", "2"],
        cwd=workdir,
        env=env,
    )
    assert down.returncode == 3, down.stderr
    assert "could not create batch 1" in down.stderr
    assert db_rows(workdir / "a.db", "SELECT count(*) FROM batches WHERE id IS NULL") == [(1,)]
    refusing = False

    b = batchrun(["submit", str(b_items), *batch, "--run-id", "b", "--db", "b.db", "--no-wait"], cwd=workdir, env=env)
    assert b.returncode == 3, b.stderr
    (b_batch,) = db_rows(workdir / "b.db", "SELECT id FROM batches")[0]

    a = batchrun(["resume", "a", "--db", "a.db", *FAST, "-o", "a-out.jsonl"], cwd=workdir, env=env)
    assert a.returncode == 0, a.stderr
    assert f"adopted {b_batch}" in a.stderr and f"{b_batch} is not this run's" in a.stderr
    params = stored_params(workdir / "a.db")
    answers = texts(workdir / "a-out.jsonl")
    assert sorted(answers) == sorted(params)
    assert all(answers[cid] == expected_text(params[cid]) for cid in answers)
    assert db_rows(workdir / "a.db", "SELECT id FROM foreign_batches") == [(b_batch,)]
    assert b_batch not in {i for (i,) in db_rows(workdir / "a.db", "SELECT id FROM batches")}

    b_done = batchrun(["resume", "b", "--db", "b.db", *FAST, "-o", "b-out.jsonl"], cwd=workdir, env=env)
    api.close()
    assert b_done.returncode == 0, b_done.stderr
    b_params = stored_params(workdir / "b.db")
    assert all(text == expected_text(b_params[cid]) for cid, text in texts(workdir / "b-out.jsonl").items())


def test_batch_requests_carry_the_plan_token_and_results_keep_the_users_ids(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(5))
    proc = batchrun(
        ["submit", str(items), "--mode", "batch", "--model", MODEL, *FAST, "--run-id", "r", "-o", "out.jsonl"],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 0, proc.stderr
    ((token,),) = db_rows(workdir / "batchrun.db", "SELECT token FROM batches")
    assert token.startswith("br") and len(token) == 10
    assert [r["custom_id"] for r in read_jsonl(workdir / "out.jsonl")] == [f"item-{i}" for i in range(5)]


# the store fails under the writer


def created_not_sent(args: list[str], workdir: Path, env: dict, emulator) -> None:
    """Create the run without processing it: a wrong key stops it at the first request, every item stays pending."""
    emulator.configure(api_key="the-right-key-1234")
    assert batchrun(args, cwd=workdir, env=env).returncode == 3
    emulator.configure(api_key=None)


def fill_the_disk(db: Path, from_line: int) -> None:
    """Every write of a result from this line on fails as on a full disk."""
    conn = sqlite3.connect(db)
    conn.execute(
        f"CREATE TRIGGER full_disk BEFORE UPDATE OF result ON items WHEN NEW.line_no >= {from_line} "
        "AND NEW.result IS NOT NULL BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    conn.commit()
    conn.close()


def free_the_disk_and_resume(workdir: Path, env: dict, n: int = 200) -> None:
    """The store is sound again: a resume finishes the run, every answer its own request's."""
    conn = sqlite3.connect(workdir / "batchrun.db")
    conn.execute("DROP TRIGGER full_disk")
    conn.commit()
    conn.close()
    resumed = batchrun(["resume", "r", "-o", "out.jsonl"], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    params = stored_params(workdir / "batchrun.db")
    answers = texts(workdir / "out.jsonl")
    assert len(answers) == n and all(answers[c] == expected_text(params[c]) for c in answers)


def test_a_store_that_cannot_be_written_stops_the_run_with_one_line(workdir: Path, emulator) -> None:
    """The writer's transaction fails (as on a full disk): the run stops at once instead of hanging, says why in one
    line, exits 3; results committed before stay, and a resume once the store is sound finishes the run."""
    items = write_jsonl(workdir / "items.jsonl", prompts(100))
    env = cli_env(emulator.base_url)
    created_not_sent(
        ["submit", str(items), "--model", MODEL, "--run-id", "r", "--concurrency", "4"], workdir, env, emulator
    )
    fill_the_disk(workdir / "batchrun.db", 61)
    started = time.monotonic()
    stopped = batchrun(["resume", "r"], cwd=workdir, env=env, timeout=60)
    assert time.monotonic() - started < 30
    assert stopped.returncode == 3, stopped.stderr
    no_traceback(stopped)
    assert "the store could not be written" in stopped.stderr and "database or disk is full" in stopped.stderr
    done_before = db_rows(workdir / "batchrun.db", "SELECT count(*) FROM items WHERE state = 'succeeded'")[0][0]
    assert 0 < done_before <= 60
    assert db_rows(workdir / "batchrun.db", "SELECT count(*) FROM items WHERE state = 'in_flight'") == [(0,)]
    free_the_disk_and_resume(workdir, env, 100)


@pytest.mark.parametrize("failing", [61, 200])  # a chunk in the middle; the last chunk, whose write is awaited last
def test_a_store_that_cannot_be_written_while_batch_results_are_stored_stops_with_one_line(
    workdir: Path, emulator, monkeypatch, failing
) -> None:
    """The same failure while a batch's results are judged and written chunk by chunk: exit 3 and one line, the
    chunks committed before stay, and resume collects the rest of the batch."""
    from tests.test_scale import assert_tallies_exact

    # several chunks: those before the failing line commit
    monkeypatch.setattr("batchrun.batches.engine.INGEST_CHUNK", 37)
    emulator.configure(batch_seconds=0.05)
    items = write_jsonl(workdir / "items.jsonl", prompts(200))
    env = cli_env(emulator.base_url)
    args = ["submit", str(items), "--mode", "batch", "--model", MODEL, "--run-id", "r", "--poll-interval", "0.02"]
    created_not_sent(args, workdir, env, emulator)
    fill_the_disk(workdir / "batchrun.db", failing)
    stopped = batchrun(["resume", "r"], cwd=workdir, env=env, timeout=60)
    assert stopped.returncode == 3, stopped.stderr
    no_traceback(stopped)
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("batchrun: error: ") and "disk is full" in last and "free some space" in last, last
    done_before = db_rows(workdir / "batchrun.db", "SELECT count(*) FROM items WHERE state = 'succeeded'")[0][0]
    assert 0 < done_before < failing  # whole chunks before the failing one (a chunk is at least 37 lines)
    free_the_disk_and_resume(workdir, env)
    assert emulator.stats()["batches_created"] == 1  # the batch's results were read again, not bought again
    assert_tallies_exact(workdir / "batchrun.db")


# the API misbehaves


def test_a_200_that_is_not_a_message_is_retried_and_recorded(workdir: Path) -> None:
    seen: dict[str, int] = {}

    async def handler(request: web.Request, n: int, params: dict) -> web.Response:
        key = orjson.dumps(params["messages"]).decode()
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 1:
            bad = {"type": "message", "content": [], "usage": {"input_tokens": "many", "output_tokens": 1}}
            return json_response(bad, **{"request-id": f"req_bad_{n}"})
        if seen[key] == 2:
            return web.Response(
                body=b"<html>gateway says hi</html>", status=200, headers={"request-id": f"req_html_{n}"}
            )
        return json_response(message(params, "fine"))

    items = write_jsonl(workdir / "items.jsonl", prompts(20))
    with FakeAPI(handler) as api:
        proc = batchrun(
            ["submit", str(items), "--model", MODEL, "--run-id", "r", "-o", "out.jsonl"],
            cwd=workdir,
            env=cli_env(api.base_url),
        )
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    assert set(texts(workdir / "out.jsonl").values()) == {"fine"}
    rows = db_rows(workdir / "batchrun.db", "SELECT outcome, status, request_id FROM attempts ORDER BY id")
    assert len(rows) == 60
    bad = [r for r in rows if r[0] != "succeeded"]
    assert len(bad) == 40 and all(r[0] == "api_error" and r[1] == 200 for r in bad)
    assert {r[2][:7] for r in bad} == {"req_bad", "req_htm"}


@pytest.mark.parametrize("value", ["inf", "1e400", "-5", "nan", "soon"])
def test_retry_after_garbage_is_treated_as_absent(value: str) -> None:
    assert retry_after({"retry-after": value}) is None
    assert retry_after({"retry-after-ms": value}) is None


def test_retry_after_is_capped() -> None:
    assert retry_after({"retry-after": "86400"}) == MAX_RETRY_AFTER_S
    assert retry_after({"retry-after": "Fri, 01 Jan 2100 00:00:00 GMT"}) == MAX_RETRY_AFTER_S
    assert retry_after({"retry-after-ms": "1500"}) == 1.5


def test_an_infinite_retry_after_does_not_stall_the_run(workdir: Path) -> None:
    seen: set[str] = set()

    async def handler(request: web.Request, n: int, params: dict) -> web.Response:
        key = orjson.dumps(params["messages"]).decode()
        if key not in seen:
            seen.add(key)
            error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
            return json_response(error, 429, **{"retry-after": "inf"})
        return json_response(message(params))

    items = write_jsonl(workdir / "items.jsonl", prompts(5))
    with FakeAPI(handler) as api:
        started = time.monotonic()
        proc = batchrun(["submit", str(items), "--model", MODEL], cwd=workdir, env=cli_env(api.base_url), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
def test_a_server_that_trickles_is_abandoned_at_the_request_deadline(workdir: Path, backend: str) -> None:
    """A reply that never ends (a byte every 0.3 s resets every read timeout) is cut at --request-timeout, recorded
    as a timeout, and sent again."""
    seen: set[str] = set()

    async def handler(request: web.Request, n: int, params: dict) -> web.StreamResponse:
        key = orjson.dumps(params["messages"]).decode()
        if key in seen:
            return json_response(message(params))
        seen.add(key)
        response = web.StreamResponse(headers={"content-type": "application/json", "request-id": "req_slow"})
        await response.prepare(request)
        try:
            for _ in range(200):
                await response.write(b" ")
                await asyncio.sleep(0.3)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    items = write_jsonl(workdir / "items.jsonl", prompts(1))
    with FakeAPI(handler) as api:
        started = time.monotonic()
        proc = batchrun(
            ["submit", str(items), "--model", MODEL, "--request-timeout", "1", "--backend", backend],
            cwd=workdir,
            env=cli_env(api.base_url),
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 20
    outcomes = [o for (o,) in db_rows(workdir / "batchrun.db", "SELECT outcome FROM attempts")]
    assert outcomes == ["timeout_error", "succeeded"]


def test_a_529_storm_that_starts_mid_run_burns_no_item(workdir: Path) -> None:
    """The first 30 requests succeed, then the API is overloaded for everyone: no item fails for good; the run
    stops with exit 3 and every unanswered item waits, pending, for a resume."""

    async def handler(request: web.Request, n: int, params: dict) -> web.Response:
        if n <= 30:
            return json_response(message(params))
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return json_response(error, 529, **{"retry-after": "0"})

    items = write_jsonl(workdir / "items.jsonl", prompts(80))  # 50 items meet the storm, each up to 3 times
    with FakeAPI(handler) as api:
        proc = batchrun(
            ["submit", str(items), "--model", MODEL, "--max-attempts", "3", "--concurrency", "8", "--run-id", "r"],
            cwd=workdir,
            env=cli_env(api.base_url),
            timeout=60,
        )
    assert proc.returncode == 3, proc.stderr
    no_traceback(proc)
    counts = dict(db_rows(workdir / "batchrun.db", "SELECT state, count(*) FROM items GROUP BY state"))
    assert counts.get("failed", 0) == 0
    assert counts["succeeded"] == 30 and counts["pending"] == 50
    assert "resume r" in proc.stderr


# signals


def test_sighup_is_handled_like_sigterm(workdir: Path, emulator) -> None:
    emulator.configure(latency_ms=100)
    items = write_jsonl(workdir / "items.jsonl", prompts(40))
    env = cli_env(emulator.base_url)
    proc = start_batchrun(
        ["submit", str(items), "--model", MODEL, "--run-id", "r", "--concurrency", "4"], cwd=workdir, env=env
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and emulator.stats()["requests"] < 8:
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 3, stderr
    assert "SIGHUP: finishing requests in flight" in stderr and "Traceback" not in stderr
    emulator.configure(latency_ms=0)
    resumed = batchrun(["resume", "r", "-o", "out.jsonl", "--concurrency", "16"], cwd=workdir, env=env)
    assert resumed.returncode == 0
    assert len(read_jsonl(workdir / "out.jsonl")) == 40


# the key


def test_without_a_key_nothing_is_stored(workdir: Path) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    env = cli_env("http://127.0.0.1:9")
    del env["ANTHROPIC_API_KEY"]
    proc = batchrun(["submit", str(items), "--model", MODEL], cwd=workdir, env=env)
    assert proc.returncode == 2
    assert "ANTHROPIC_API_KEY is not set" in proc.stderr
    assert not (workdir / "batchrun.db").exists()


# the architecture (shared/DESIGN.md, "Layout and the rules between its parts")

PACKAGE = Path(__file__).resolve().parents[1] / "batchrun"


def imports_of(module: Path, package: list[str]) -> set[str]:
    """batchrun modules imported anywhere in the file (also inside functions and TYPE_CHECKING blocks)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            names = [source] + [f"{source}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "batchrun" or n.startswith("batchrun."))
    return found


@functools.cache
def module_graph() -> dict[str, frozenset[str]]:
    """module -> the batchrun modules it imports (`from batchrun.store import State` names batchrun.store).
    Parsed once per session: the three tests that read it share it (the files do not change meanwhile)."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        files[name] = (path, parts[:-1])
    graph = {}
    for name, (path, package) in files.items():
        deps = imports_of(path, package)
        graph[name] = ({d for d in deps if d in files} | {d.rsplit(".", 1)[0] for d in deps if d not in files}) - {name}
        graph[name] &= set(files)
    return {name: frozenset(deps) for name, deps in graph.items()}


def part_of(module: str) -> str:
    """The part of batchrun a module is in: a package is one part (batchrun.batches.engine is batchrun.batches)."""
    return ".".join(module.split(".")[:2])


def part_graph() -> dict[str, set[str]]:
    """part -> the other parts its modules import."""
    parts: dict[str, set[str]] = {}
    for name, deps in module_graph().items():
        parts.setdefault(part_of(name), set()).update(part_of(d) for d in deps)
    return {part: deps - {part} for part, deps in parts.items()}


def test_the_architecture_rules_hold() -> None:
    graph = module_graph()
    parts = part_graph()
    screens_and_engines = {"batchrun.online", "batchrun.batches", "batchrun.runs", "batchrun.cli", "batchrun.progress"}
    assert not parts["batchrun.store"] & screens_and_engines, parts["batchrun.store"]
    assert "batchrun.batches" not in parts["batchrun.online"]
    assert "batchrun.online" not in parts["batchrun.batches"]
    for name, deps in graph.items():
        if name.startswith("batchrun.emulator"):
            outside = {d for d in deps if not d.startswith("batchrun.emulator") and d != "batchrun"}
            assert not outside, f"{name} imports {outside}"
        elif part_of(name) not in ("batchrun.emulate", "batchrun.cli"):
            assert not {d for d in deps if d.startswith("batchrun.emulator")}, f"{name} imports the emulator"


def test_there_are_no_import_cycles() -> None:
    graph = module_graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, dep]))
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_an_error_in_the_middle_of_a_streamed_reply_is_retried(workdir: Path, emulator) -> None:
    """Requests whose max_tokens need streaming; the API sends `event: error` (overloaded) after some deltas of half
    of them: each is retried like a 529 before the stream, and every item ends with its own answer."""
    emulator.configure(p_midstream_error=0.5)
    items = write_jsonl(workdir / "items.jsonl", prompts(12))
    proc = batchrun(
        ["submit", str(items), "--model", "claude-sonnet-4-6", "--max-tokens", "30000", "-o", "out.jsonl"],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 0, proc.stderr
    params = stored_params(workdir / "batchrun.db")
    answers = texts(workdir / "out.jsonl")
    assert len(answers) == 12 and all(answers[c] == expected_text(params[c]) for c in answers)
    outcomes = db_rows(workdir / "batchrun.db", "SELECT outcome, status FROM attempts WHERE outcome != 'succeeded'")
    assert outcomes and set(outcomes) == {("overloaded_error", 529)}
