"""The connection's edges: a private database file, one-line errors with their fix, retries of a busy database,
and what every part of the Store shares (its transactions, the shared request parts)."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from batchrun.errors import StoreCorrupt, StoreError, StoreUnavailable

BUSY_TIMEOUT_S = 30
T = TypeVar("T")


def create_private_file(path: Path) -> None:
    """The database holds prompts and replies: only its owner may read it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))


def store_error(e: BaseException, path: str | Path | None = None) -> StoreError:
    """One line saying what is wrong with the database and how to fix it, for a sqlite3 or OS error."""
    where = str(path) if path is not None else "the batchrun database"
    text = str(e) or type(e).__name__
    low = text.lower()
    code = getattr(e, "errno", None)
    if isinstance(e, IsADirectoryError) or (path is not None and Path(path).is_dir()):
        return StoreError(
            f"{where} is a directory, not a database file (give --db a file path, e.g. {where}/batchrun.db)"
        )
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return StoreCorrupt(
            f"{where} is damaged or not a batchrun database ({text}); restore it from a backup, "
            "or give another --db (`batchrun doctor` reports what is wrong)"
        )
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or "full" in low or "disk i/o" in low:
        return StoreUnavailable(
            f"cannot write {where}: the disk is full or a file size limit was reached ({text}); "
            "free some space and run the command again (nothing that was committed is lost)"
        )
    if "locked" in low or "busy" in low:
        return StoreUnavailable(
            f"{where} stayed locked by another process for over {BUSY_TIMEOUT_S}s ({text}); try again later"
        )
    if isinstance(e, PermissionError) or code in (errno.EACCES, errno.EPERM, errno.EROFS) or "readonly" in low:
        return StoreError(
            f"cannot write {where} ({text}): the database and its directory must be writable by this user "
            "(fix their permissions, or give another --db)"
        )
    if "unable to open" in low:
        return StoreError(
            f"cannot open {where} ({text}): check that its directory exists and is writable by this user "
            "(SQLite writes -wal and -shm files next to it)"
        )
    return StoreError(f"cannot use {where}: {text} (check the path given to --db or BATCHRUN_DB)")


def _is_busy(e: BaseException) -> bool:
    return isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e))


def retry_busy(fn: Callable[[], T]) -> T:
    """Run a statement that can meet another process's write; SQLITE_BUSY that the busy timeout does not cover
    (a WAL snapshot upgrade, a journal-mode change) is retried with jitter until the same timeout. tenacity is
    imported only when a statement met one (a command's start-up does not pay for it)."""
    try:
        return fn()
    except sqlite3.OperationalError as e:
        if not _is_busy(e):
            raise
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

    for attempt in Retrying(
        retry=retry_if_exception(_is_busy),
        stop=stop_after_delay(BUSY_TIMEOUT_S),
        wait=wait_random_exponential(multiplier=0.01, max=0.5),
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable")


class Database:
    """The few calls the store makes on its connection, on sqlite3 itself: sqlite-utils (and the pandas and numpy
    it imports whenever they are installed, most of a command's start-up) is loaded only to apply migrations.
    The connection is in autocommit mode (isolation_level=None): a statement outside BEGIN commits at once."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute("PRAGMA recursive_triggers=on")  # as sqlite-utils sets it: the tally triggers rely on it

    def execute(self, sql: str, parameters: Iterable[Any] | dict[str, Any] | None = None) -> sqlite3.Cursor:
        return self.conn.execute(sql) if parameters is None else self.conn.execute(sql, parameters)

    def query(self, sql: str, parameters: Iterable[Any] | dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """The rows of a SELECT as dicts, fetched as they are read."""
        cursor = self.execute(sql, parameters)
        keys = [d[0] for d in cursor.description]
        return (dict(zip(keys, row, strict=True)) for row in cursor)

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction; nested in an open one, a savepoint."""
        nested = self.conn.in_transaction
        self.conn.execute("SAVEPOINT atomic" if nested else "BEGIN")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK TO atomic" if nested else "ROLLBACK")
                if nested:
                    self.conn.execute("RELEASE atomic")
            raise
        self.conn.execute("RELEASE atomic" if nested else "COMMIT")

    def close(self) -> None:
        self.conn.close()


class StoreBase:
    """What every part of the Store uses: the open database, its write transactions, and request bytes."""

    path: Path
    db: Database
    _parts: dict[int, tuple[bytes, bytes]]

    @contextmanager
    def _write(self) -> Iterator[None]:
        """A write transaction that takes the write lock up front (BEGIN IMMEDIATE): a transaction that read first
        and then writes can get SQLITE_BUSY from SQLite at once, without the busy timeout."""
        retry_busy(lambda: self.db.execute("BEGIN IMMEDIATE"))
        try:
            yield
        except BaseException:
            if self.db.conn.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def _big_cache(self, kib: int = 32768) -> Iterator[None]:
        """A larger page cache while a run's items are inserted (four indexes grow at random places), given back
        after, so a long run's memory stays what it was."""
        before = self._one("PRAGMA cache_size")[0]
        self.db.execute(f"PRAGMA cache_size = -{kib}")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA cache_size = {int(before)}")

    def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | tuple | None:
        return self.db.execute(sql, list(params)).fetchone()

    def request(self, own: bytes, part: int) -> bytes:
        """An item's request bytes (as sent and hashed) from its own part and its shared part's id."""
        shared = self._parts.get(part)
        if shared is None:
            row = self._one("SELECT head, tail FROM request_parts WHERE id = ?", [part])
            shared = self._parts[part] = (bytes(row[0]), bytes(row[1]))
        return shared[0] + own + shared[1]
