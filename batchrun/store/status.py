"""What `status`, `doctor` and `results` read: counts, tokens, failures and results of a run, and the store's checks."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from batchrun.store.connection import StoreBase
from batchrun.store.record import FAILED, IN_FLIGHT, STATES, SUCCEEDED
from batchrun.store.schema import NOT_DONE


class Status(StoreBase):
    """A run's counts, tokens, failures and results (from the tallies where it can), and the store's checks."""

    def check(self) -> list[str]:
        """Inconsistencies a crash or a hand edit could leave; an empty list means the store is sound."""
        try:
            return self._check()
        except sqlite3.DatabaseError as e:
            return [f"the database is damaged: {e} (restore it from a backup; `sqlite3 DB .recover` may save rows)"]

    def _check(self) -> list[str]:
        problems = [f"integrity_check: {row[0]}" for row in self.db.execute("PRAGMA integrity_check") if row[0] != "ok"]
        checks = {
            "items whose run does not exist": "SELECT count(*) FROM items WHERE run_id NOT IN (SELECT id FROM runs)",
            "attempts whose item does not exist": "SELECT count(*) FROM attempts a WHERE NOT EXISTS "
            "(SELECT 1 FROM items i WHERE i.run_id = a.run_id AND i.line_no = a.line_no)",
            "items in an unknown state": f"SELECT count(*) FROM items WHERE state NOT IN {STATES!r}",
            "succeeded items without a result": "SELECT count(*) FROM items WHERE state = 'succeeded' "
            "AND (result IS NULL OR json_extract(result, '$.type') != 'succeeded')",
            "failed items without an error": "SELECT count(*) FROM items WHERE state = 'failed' "
            "AND (result IS NULL OR error_type IS NULL)",
            "pending items holding a result": "SELECT count(*) FROM items WHERE state IN ('pending', 'in_flight') "
            "AND result IS NOT NULL",
            "runs whose item count is wrong": "SELECT count(*) FROM runs r WHERE total != "
            "(SELECT count(*) FROM items WHERE run_id = r.id)",
            "run tallies that differ from the items": "SELECT count(*) FROM (SELECT run_id, model, via, state, "
            "stop_reason, sum(n) FROM (SELECT run_id, model, via, state, stop_reason, items AS n FROM run_tallies "
            "UNION ALL SELECT run_id, model, coalesce(via, ''), state, coalesce(stop_reason, ''), -count(*) "
            "FROM items GROUP BY 1, 2, 3, 4, 5) GROUP BY 1, 2, 3, 4, 5 HAVING sum(n) != 0)",
            "runs whose billed tokens differ from their items'": "SELECT count(*) FROM (SELECT run_id, sum(n) "
            "FROM (SELECT run_id, input + output + cache_creation + cache_read AS n FROM run_billed UNION ALL "
            "SELECT run_id, -(input_tokens + output_tokens + cache_creation_tokens + cache_read_tokens) FROM items) "
            "GROUP BY run_id HAVING sum(n) != 0)",
            "custom_ids used twice in a run": "SELECT count(*) FROM (SELECT 1 FROM items GROUP BY run_id, custom_id "
            "HAVING count(*) > 1)",
        }
        for what, sql in checks.items():
            n = self.db.execute(sql).fetchone()[0]
            if n:
                problems.append(f"{n} {what}")
        return problems

    def in_flight_count(self) -> int:
        """Items left in flight: a process is sending them, or one died and a resume will send them again."""
        return self._one("SELECT count(*) FROM items WHERE state = ?", [IN_FLIGHT])[0]

    def counts(self, run_id: str) -> dict[str, int]:
        """Items by state, from the run's tallies (kept exact by a trigger, so no row is counted)."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in self.db.execute(
            "SELECT state, sum(items) FROM run_tallies WHERE run_id = ? GROUP BY state", [run_id]
        ):
            counts[state] = n
        return counts

    def counted_counts(self, run_id: str) -> dict[str, int]:
        """Items by state counted row by row: what the tallies must always equal (for `doctor` and tests)."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in self.db.execute("SELECT state, count(*) FROM items WHERE run_id = ? GROUP BY state", [run_id]):
            counts[state] = n
        return counts

    def usage(self, run_id: str) -> list[dict[str, Any]]:
        """Tokens the run was billed, by model and path (online or batch; cache: answered from the store, free),
        with the items that path ended. Every billed reply counts, whatever became of its item: one that went
        back to pending as well (`run_billed`)."""
        return list(
            self.db.query(
                "SELECT model, via, sum(items) AS items, sum(input) AS input, sum(output) AS output, "
                "sum(cache_creation) AS cache_creation, sum(cache_creation_1h) AS cache_creation_1h, "
                "sum(cache_read) AS cache_read FROM (SELECT model, via, items, 0 AS input, 0 AS output, "
                "0 AS cache_creation, 0 AS cache_creation_1h, 0 AS cache_read FROM run_tallies "
                "WHERE run_id = ?1 AND via != '' UNION ALL SELECT model, via, 0, input, output, cache_creation, "
                "cache_creation_1h, cache_read FROM run_billed WHERE run_id = ?1) GROUP BY model, via "
                "HAVING sum(items) > 0 OR sum(input) + sum(output) + sum(cache_creation) + sum(cache_read) > 0 "
                "ORDER BY model, via",
                [run_id],
            )
        )

    def answered_by(self, run_id: str) -> dict[str, int]:
        """Succeeded items by what answered them: the API online, a batch, or the response cache."""
        names = {"online": "api", "batch": "batch", "cache": "cache"}
        counts = dict.fromkeys(names.values(), 0)
        for via, n in self.db.execute(
            "SELECT via, sum(items) FROM run_tallies WHERE run_id = ? AND state = ? GROUP BY via HAVING sum(items)",
            [run_id, SUCCEEDED],
        ):
            counts[names.get(via, via)] = n
        return counts

    def stop_reasons(self, run_id: str) -> dict[str, int]:
        """Succeeded items by the reply's stop_reason (end_turn, tool_use, max_tokens accepted, ...)."""
        rows = self.db.execute(
            "SELECT CASE stop_reason WHEN '' THEN 'unknown' ELSE stop_reason END, sum(items) FROM run_tallies "
            "WHERE run_id = ? AND state = ? GROUP BY 1 HAVING sum(items) > 0 ORDER BY 2 DESC, 1",
            [run_id, SUCCEEDED],
        )
        return dict(rows.fetchall())

    def failures(self, run_id: str) -> list[dict[str, Any]]:
        """Failed items grouped by error type and status, with one example message each."""
        return list(
            self.db.query(
                "SELECT error_type, error_status, count(*) AS items, min(error_message) AS example "
                f"FROM items WHERE run_id = ? AND state = ? AND {NOT_DONE} GROUP BY error_type, error_status "
                "ORDER BY items DESC",
                [run_id, FAILED],
            )
        )

    def attempt_count(self, run_id: str) -> int:
        """Requests the run has sent: its attempts rows and the items its batches answered (from the tallies)."""
        return self._one(
            "SELECT (SELECT count(*) FROM attempts WHERE run_id = ?1) + (SELECT coalesce(sum(items), 0) "
            "FROM run_tallies WHERE run_id = ?1 AND via = 'batch' AND state = ?2)",
            [run_id, SUCCEEDED],
        )[0]

    def iter_results(self, run_id: str, only: str | None = None) -> Iterator[tuple[str, str, str]]:
        """(custom_id, state, result JSON) in input order, for succeeded and failed items."""
        states = [only] if only else [SUCCEEDED, FAILED]
        marks = ",".join("?" * len(states))
        cur = self.db.execute(
            f"SELECT custom_id, state, result FROM items WHERE run_id = ? AND state IN ({marks}) ORDER BY line_no",
            [run_id, *states],
        )
        while rows := cur.fetchmany(1000):
            yield from rows
