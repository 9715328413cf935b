"""The Store: opening, creating and upgrading the database file, with the methods of every concern of the package."""

from __future__ import annotations

import errno
import functools
import os
import sqlite3
import threading
from contextlib import suppress
from pathlib import Path

from batchrun.lock import MIGRATION_LOCK, lock_dir, migration_lock
from batchrun.store.batches import Batches
from batchrun.store.connection import BUSY_TIMEOUT_S, Database, create_private_file, retry_busy, store_error
from batchrun.store.items import Items
from batchrun.store.record import Recording
from batchrun.store.reuse import ResponseCache
from batchrun.store.runs import Runs
from batchrun.store.schema import (
    applied_migrations,
    apply_migrations,
    check_not_newer,
    pending_migrations,
    record_versions,
)
from batchrun.store.status import Status

PAGE_SIZE = 8192  # a grown item (about 900 bytes with its result) leaves less of a 4 KB page unused


@functools.cache
def new_database_image() -> bytes:
    """The bytes of a database with every migration applied, made once per process: a new database file is a copy
    of them (a process that makes many, a test run or a comparison, no longer replays 200-odd statements each)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # new databases only: it is set before any table
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # prune gives pages back without a whole VACUUM
        apply_migrations(conn)
        record_versions(conn)
        return conn.serialize()
    finally:
        conn.close()


class Store(Runs, Items, Recording, ResponseCache, Status, Batches):
    """The database of every run; its methods are grouped by concern in the modules of this package."""

    def __init__(self, path: str | Path) -> None:
        """Open (and create or upgrade) the database; any problem is a StoreError with the fix in its message."""
        self.path = Path(path)
        self.db: Database | None = None
        self._parts: dict[int, tuple[bytes, bytes]] = {}
        try:
            self._open()
        except (sqlite3.Error, OSError) as e:
            if self.db is not None:
                self.db.close()
            raise store_error(e, self.path) from None

    def _open(self) -> None:
        if self.path.is_dir():
            raise IsADirectoryError(str(self.path))
        self.is_new = not self.path.exists() and self._create()
        create_private_file(self.path)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self.db = Database(conn)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        applied = retry_busy(lambda: applied_migrations(conn))
        retry_busy(lambda: check_not_newer(conn, self.path, applied))
        retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute("PRAGMA synchronous=NORMAL")
        if pending_migrations(applied):  # sqlite-utils checks again under the lock: another process may have done it
            with migration_lock(self.path):
                retry_busy(lambda: apply_migrations(conn))
                retry_busy(lambda: record_versions(conn))

    def _create(self) -> bool:
        """Make the database with its whole schema under a private name, then link it into place: no process ever
        sees it without its tables, and of processes creating it at once one wins and the others open its file.
        Returns whether this process created it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one name per thread too: two threads of a process making the database must not share (and unlink) it
        tmp = self.path.with_name(f".{self.path.name}.new-{os.getpid()}-{threading.get_ident()}")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb") as f:
                f.write(new_database_image())
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            return not self.path.exists()  # no hard links here: create in place, the migration lock serialises
        finally:
            tmp.unlink(missing_ok=True)
            Path(f"{tmp}-journal").unlink(missing_ok=True)

    def close(self) -> None:
        self.db.close()

    def discard(self) -> None:
        """Remove a database this process created and that holds no run: bad input leaves no trace."""
        if self.is_new and not self.run_ids():
            self.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            locks = lock_dir(self.path)
            (locks / MIGRATION_LOCK).unlink(missing_ok=True)
            with suppress(OSError):
                locks.rmdir()
