"""The response cache: pending items answered from identical requests that already succeeded on the same endpoint."""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson

from batchrun.store.connection import StoreBase
from batchrun.store.record import PENDING, SUCCEEDED
from batchrun.store.schema import NOT_DONE

# The response cache (Store.reuse_results): a pending item's identical requests that succeeded on its run's
# endpoint (items_by_request finds them by the hash's first 8 characters).
_REUSE_SOURCE = (
    "FROM items c JOIN runs cr ON cr.id = c.run_id WHERE substr(c.request_hash, 1, 8) = "
    "substr(i.request_hash, 1, 8) AND c.request_hash = i.request_hash AND c.state = 'succeeded' "
    "AND cr.endpoint = (SELECT endpoint FROM runs WHERE id = ?)"
)
# the runs on the endpoint and how each judges a reply
REUSE_JUDGING = (
    "SELECT id, json_extract(job, '$.schema'), json_extract(job, '$.schema_via'), "
    "json_extract(job, '$.accept_truncated') FROM runs WHERE endpoint = (SELECT endpoint FROM runs WHERE id = ?)"
)
# The cache's fast path: sources stored by a run that judges alike (:alike, a JSON list of run ids), not served from
# the cache themselves; items_by_request finds them (the unary + keeps the planner off the run_id index).
_ALIKE_SOURCE = (
    "FROM items c WHERE substr(c.request_hash, 1, 8) = substr(items.request_hash, 1, 8) "
    "AND c.request_hash = items.request_hash AND c.state = 'succeeded' AND c.via IS NOT 'cache' "
    "AND +c.run_id IN (SELECT value FROM json_each(:alike))"
)
REUSE_ALIKE = (
    f"UPDATE items SET state = :succeeded, via = 'cache', result = (SELECT c.result {_ALIKE_SOURCE} LIMIT 1), "
    f"answered_from = (SELECT c.run_id {_ALIKE_SOURCE} LIMIT 1), updated_at = :now, "
    f"stop_reason = (SELECT c.stop_reason {_ALIKE_SOURCE} LIMIT 1), data = (SELECT c.data {_ALIKE_SOURCE} LIMIT 1), "
    f"cost_usd = coalesce(cost_usd, 0) WHERE run_id = :run AND state = :pending AND {NOT_DONE} "
    f"AND EXISTS (SELECT 1 {_ALIKE_SOURCE})"
)
REUSE_MATCHED = (
    f"SELECT i.line_no FROM items i WHERE i.run_id = ? AND i.state = ? AND i.{NOT_DONE} "
    f"AND EXISTS (SELECT 1 {_REUSE_SOURCE}) ORDER BY i.line_no"
)
REUSE_CANDIDATES = (
    "SELECT i.line_no, c.run_id, c.result, c.stop_reason FROM items i JOIN items c ON substr(c.request_hash, 1, 8) "
    "= substr(i.request_hash, 1, 8) AND c.request_hash = i.request_hash JOIN runs cr ON cr.id = c.run_id "
    "WHERE i.run_id = ? AND c.state = 'succeeded' AND cr.endpoint = (SELECT endpoint FROM runs WHERE id = ?) "
    f"AND i.state = ? AND i.{NOT_DONE} AND i.line_no IN (SELECT value FROM json_each(?)) "
    "ORDER BY i.line_no, c.run_id, c.line_no"
)
REUSE_UPDATE = (
    "UPDATE items SET state = ?, via = 'cache', result = ?, answered_from = ?, updated_at = ?, stop_reason = ?, "
    f"data = ?, cost_usd = coalesce(cost_usd, 0) WHERE run_id = ? AND line_no = ? AND state = ? AND {NOT_DONE}"
)
REUSE_CHUNK = 500


class CacheJudge(Protocol):
    """How the response cache asks the current job whether a stored reply is an answer for it."""

    def judges_like(self, schema: Any, schema_via: str | None, accept_truncated: bool) -> bool: ...

    def accepts_stored(self, result: Any) -> tuple[bool, str | None]: ...


class ResponseCache(StoreBase):
    """Pending items answered from the store instead of the API."""

    def reuse_results(self, run_id: str, judge: CacheJudge) -> int:
        """Answer pending items from identical requests that already succeeded in this database, on the same
        endpoint: never pay twice, and never serve one endpoint's answer (the emulator's) to a run on another.

        Only a reply this run's job accepts is served (stop reason, schema, truncation): the run that stored it
        may have judged it otherwise (e.g. accept_truncated). A reply a run that judges alike stored itself was
        accepted by the same judge: such replies are served by one statement, as before. Any other candidate
        reply is judged by `judge.accepts_stored`, as a new reply would be, a chunk of items at a time.

        The reused result is the original reply; the item is billed nothing (via 'cache', zero tokens), and
        `answered_from` names the run it was copied from.
        """
        if not self.db.execute(REUSE_MATCHED + " LIMIT 1", [run_id, PENDING, run_id]).fetchall():
            return 0  # no identical request (most runs): one look-up per pending item, as before
        alike = [
            other
            for other, schema, via, accept in self.db.execute(REUSE_JUDGING, [run_id])
            if judge.judges_like(schema if schema is None else orjson.loads(schema), via, bool(accept))
        ]
        values = {"alike": orjson.dumps(alike).decode(), "succeeded": SUCCEEDED, "now": time.time()}
        reused = self.db.execute(REUSE_ALIKE, {**values, "run": run_id, "pending": PENDING}).rowcount
        matched = [line for (line,) in self.db.execute(REUSE_MATCHED, [run_id, PENDING, run_id])]
        for at in range(0, len(matched), REUSE_CHUNK):
            with self._write():
                reused += self._reuse_chunk(run_id, matched[at : at + REUSE_CHUNK], judge)
        return reused

    def _reuse_chunk(self, run_id: str, lines: list[int], judge: CacheJudge) -> int:
        rows = self.db.execute(REUSE_CANDIDATES, [run_id, run_id, PENDING, orjson.dumps(lines).decode()]).fetchall()
        now = time.time()
        updates: dict[int, tuple[Any, ...]] = {}
        for line_no, source_run, result, stop_reason in rows:
            if line_no in updates:
                continue
            ok, data = judge.accepts_stored(result)
            if ok:
                updates[line_no] = (SUCCEEDED, result, source_run, now, stop_reason, data, run_id, line_no, PENDING)
        self.db.conn.executemany(REUSE_UPDATE, list(updates.values()))
        return len(updates)
