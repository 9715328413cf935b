"""A run's life: create it from an input file (or find the one that already exists), process it, say how it ended."""

from __future__ import annotations

import hashlib
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchrun.errors import EXIT_FAILED_ITEMS, EXIT_NOT_FINISHED, EXIT_OK, UsageError
from batchrun.inputs import file_sha256, input_label, read_items
from batchrun.job import Job
from batchrun.lock import RunLock
from batchrun.store import FAILED, IN_FLIGHT, PENDING, SUCCEEDED, Store

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(slots=True)
class Ending:
    run_id: str
    counts: dict[str, int]
    exit_code: int
    seconds: float
    sent: int
    message: str | None = None
    reused: int = 0


def prepare_run(
    store: Store, input_path: str, job: Job, run_id: str | None = None, new_run: bool = False
) -> tuple[str, bool]:
    """The run for this input and these settings: the existing one, or a new one with every item stored.

    Returns (run id, created). A new run is written in one transaction, so bad input leaves the store as it was.
    A file that changed under an unfinished run is refused unless `new_run`: sending it as a new run would
    pay again for every line the old run already has.
    """
    sha = file_sha256(input_path)
    fingerprint = job.fingerprint()
    input_path = input_label(input_path)
    if run_id is not None:
        if not RUN_ID.fullmatch(run_id):
            raise UsageError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' (at most 64)")
        existing = store.get_run(run_id)
        if existing is not None:
            if (existing["input_sha256"], existing["fingerprint"]) != (sha, fingerprint):
                raise UsageError(
                    f"run {run_id} already exists with a different input file or settings "
                    f"(use `batchrun resume {run_id}` to continue it, or choose another --run-id)"
                )
            return run_id, False
    else:
        found = store.find_run(sha, fingerprint)
        if found is not None:
            return found, False
        unfinished = store.unfinished_run_from(input_path, fingerprint)
        if unfinished is not None and not new_run:
            raise UsageError(
                f"{input_path} changed since run {unfinished} was created from it, and that run is not finished "
                f"(`batchrun resume {unfinished}` finishes it from the stored items; "
                "or pass --new-run to start a new run from the changed file)"
            )
        run_id = default_run_id(input_path, sha, fingerprint)
    run = {
        "id": run_id,
        "input_path": str(input_path),
        "input_sha256": sha,
        "fingerprint": fingerprint,
        "mode": job.mode,
        "job": job.to_dict(),
    }
    store.create_run(run, read_items(input_path, job))
    return run_id, True


def default_run_id(input_path: str, sha: str, fingerprint: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(input_path).name.split(".")[0])[:40].strip("-") or "run"
    return f"{stem}-{hashlib.sha256((sha + fingerprint).encode()).hexdigest()[:8]}"


def load_run(store: Store, run_id: str) -> tuple[dict[str, Any], Job]:
    run = store.get_run(run_id)
    if run is None:
        known = store.run_ids()
        hint = f"known runs: {', '.join(known[-5:])}" if known else "this database has no runs yet"
        raise UsageError(f"no run {run_id!r} in {store.path} ({hint}; `batchrun status` lists them)")
    return run, Job.from_dict(run["job"])


def process_run(
    store: Store,
    run_id: str,
    *,
    make_client: Callable[[], Any],
    progress: bool = True,
    grace: float = 5.0,
    use_cache: bool = True,
    no_wait: bool = False,
    timeout: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> Ending:
    """Send what has no result yet, holding the run's lock, and say how the run stands at the end.

    Batch mode: `no_wait` returns once the batches are created (or collected), `timeout` bounds the wait for
    them; `overrides` (batch_size, poll_interval) apply to this process only.
    """
    _, job = load_run(store, run_id)
    if overrides:
        job = job.with_overrides(**overrides)
    started = time.monotonic()
    with RunLock(store.path, run_id):
        reused = store.reuse_results(run_id) if use_cache else 0
        counts = store.counts(run_id)
        todo = counts[PENDING] + counts[IN_FLIGHT]
        message = None
        attempts_before = store.attempt_count(run_id)
        if todo:
            store.set_run_status(run_id, "running")
            if job.mode == "batch":
                from batchrun.batches import run_batches

                message = run_batches(
                    store, run_id, job, make_client, progress=progress, no_wait=no_wait, timeout=timeout
                )
            else:
                import asyncio  # here, not at the top: status and results start faster without it

                message = asyncio.run(_run_online(store, run_id, job, make_client(), progress, grace))
        counts = store.counts(run_id)
        sent = store.attempt_count(run_id) - attempts_before
        ending = Ending(run_id, counts, exit_code_for(counts), time.monotonic() - started, sent, message, reused)
        unfinished = "batches processing" if job.mode == "batch" and store.batches(run_id, open_only=True) else None
        store.set_run_status(
            run_id,
            {EXIT_OK: "succeeded", EXIT_FAILED_ITEMS: "finished with failures"}.get(
                ending.exit_code, unfinished or "interrupted"
            ),
        )
    return ending


async def _run_online(store: Store, run_id: str, job: Job, client: Any, show: bool, grace: float) -> str | None:
    from batchrun.online import Engine
    from batchrun.progress import Progress

    counts = store.counts(run_id)
    total = sum(counts.values())
    bar = Progress(total, counts[SUCCEEDED] + counts[FAILED], label=run_id, enabled=show)
    engine = Engine(store, run_id, job, client, bar)
    _on_signals(engine, grace)
    try:
        report = await engine.run()
    finally:
        bar.close()
        await client.close()
    return stop_message(report, run_id, job)


def stop_message(report: Any, run_id: str, job: Job) -> str | None:
    """Why an online run ended before its items did, and what to do about it."""
    f = report.stopped_by
    if f is not None and f.fatal:
        return (
            f"stopped: the API answered {f.status} {f.error_type}: {f.message} -- every item would fail the "
            f"same way, so the rest stay pending (fix the key or account, then `batchrun resume {run_id}`)"
        )
    if f is not None:
        return (
            f"stopped: nothing succeeded while an item used up its {job.max_attempts} attempts (last: "
            f"{f.status or 'no response'} {f.error_type}: {f.message}); the API looks down or unreachable, so the "
            f"rest stay pending (`batchrun resume {run_id}` later)"
        )
    if report.interrupted:
        return f"interrupted: unfinished items are pending again (`batchrun resume {run_id}` continues)"
    return None


def _on_signals(engine: Any, grace: float) -> None:
    """First SIGINT/SIGTERM: stop feeding, give requests in flight `grace` seconds. Second: stop now."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()

    def handler(signame: str) -> None:
        if engine.interrupted:
            print(f"batchrun: {signame} again, stopping now", file=sys.stderr, flush=True)
            engine.abort()
            return
        print(
            f"batchrun: {signame}: finishing requests in flight (up to {grace:g}s; again to stop now)",
            file=sys.stderr,
            flush=True,
        )
        engine.interrupt()
        loop.call_later(grace, engine.abort)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler, sig.name)


def exit_code_for(counts: dict[str, int]) -> int:
    if counts[PENDING] or counts[IN_FLIGHT]:
        return EXIT_NOT_FINISHED
    return EXIT_FAILED_ITEMS if counts[FAILED] else EXIT_OK
