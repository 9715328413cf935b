"""The SQLite store: the only source of truth. Every SQL statement of batchrun lives in this package.

One module per concern: `schema` (migrations, views, triggers), `parts` (requests' shared parts), `record`
(item states, outcomes and the statement that writes them), `connection` (errors, busy retries, transactions),
`runs`, `items`, `reuse` (the response cache), `status`, `files`, `batches` (the Store's methods by concern),
`database` (the Store: open, create, upgrade), and the module functions of `housekeeping` and `reports`.
Callers import from `batchrun.store`.
"""

from __future__ import annotations

from batchrun.store.batches import SENT_ID_OVERHEAD, TOKEN_LEN, new_batch_token, sent_custom_id
from batchrun.store.connection import BUSY_TIMEOUT_S, create_private_file, retry_busy, store_error
from batchrun.store.database import Store
from batchrun.store.housekeeping import (
    ITEM_OVERHEAD_BYTES,
    database_bytes,
    delete_run,
    free_pages,
    open_batch_count,
    reclaim_space,
    run_summaries,
    strip_run,
    vacuums_incrementally,
)
from batchrun.store.parts import _PartIds as _PartIds  # tests/test_scale.py
from batchrun.store.parts import split_bounds, split_request
from batchrun.store.record import (
    FAILED,
    IN_FLIGHT,
    PENDING,
    STATES,
    SUCCEEDED,
    Attempt,
    BatchTimes,
    ClaimedItem,
    Outcome,
    State,
)
from batchrun.store.reports import (
    answer_rows,
    report_attempts,
    report_attempts_per_item,
    report_failure_messages,
    report_field_counts,
    report_finished_times,
    report_previous_run,
)
from batchrun.store.reuse import CacheJudge
from batchrun.store.schema import ANSWER_COLUMNS, batchrun_version, migration_set

__all__ = [
    "ANSWER_COLUMNS",
    "BUSY_TIMEOUT_S",
    "FAILED",
    "IN_FLIGHT",
    "ITEM_OVERHEAD_BYTES",
    "PENDING",
    "SENT_ID_OVERHEAD",
    "STATES",
    "SUCCEEDED",
    "TOKEN_LEN",
    "Attempt",
    "BatchTimes",
    "CacheJudge",
    "ClaimedItem",
    "Outcome",
    "State",
    "Store",
    "answer_rows",
    "batchrun_version",
    "create_private_file",
    "database_bytes",
    "delete_run",
    "free_pages",
    "migration_set",
    "new_batch_token",
    "open_batch_count",
    "reclaim_space",
    "report_attempts",
    "report_attempts_per_item",
    "report_failure_messages",
    "report_field_counts",
    "report_finished_times",
    "report_previous_run",
    "retry_busy",
    "run_summaries",
    "sent_custom_id",
    "split_bounds",
    "split_request",
    "store_error",
    "strip_run",
    "vacuums_incrementally",
]
