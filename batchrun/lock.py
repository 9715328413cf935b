"""One process per run: an OS file lock next to the database, released by the kernel when its holder dies.

Locks live in `REALPATH.locks/` (mode 0700), where REALPATH is the database's path with every symlink resolved, so
the same database reached through a symlink or another relative path is one lock. Lock files are opened without
following symlinks and never truncated on open: only the holder rewrites its own content once it holds the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from batchrun.errors import RunLocked, StoreError, StoreUnavailable

MIGRATION_LOCK = ".migrations.lock"  # a run id never starts with a dot, so no run can own this name
MIGRATION_WAIT_S = 60.0


def lock_dir(db_path: str | Path) -> Path:
    """Where the locks of this database live: keyed by the database's real path, not the path as given."""
    return Path(f"{os.path.realpath(db_path)}.locks")


def _open_dir(path: Path, create: bool) -> int | None:
    """A descriptor of the lock directory (None if it does not exist and `create` is false); never a symlink."""
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise StoreError(
                f"cannot create the lock directory {path}: {e.strerror} (make {path.parent} writable)"
            ) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StoreError(
                f"{path} is not a directory batchrun made (a symlink or a file); remove it and run again"
            ) from None
        raise StoreError(f"cannot open the lock directory {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if create and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.fchmod(fd, 0o700)
    return fd


def _open_lock_file(dir_fd: int, name: str, dir_path: Path, create: bool) -> int | None:
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError(f"{dir_path / name} is a symbolic link; remove it and run again") from None
        raise StoreError(f"cannot open the lock file {dir_path / name}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{dir_path / name} is not a regular file; remove it and run again")
    return fd


def _open(db_path: str | Path, name: str, create: bool) -> int | None:
    path = lock_dir(db_path)
    dir_fd = _open_dir(path, create)
    if dir_fd is None:
        return None
    try:
        return _open_lock_file(dir_fd, name, path, create)
    finally:
        os.close(dir_fd)


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


class RunLock:
    def __init__(self, db_path: str | Path, run_id: str) -> None:
        self.db_path = db_path
        self.run_id = run_id
        self.path = lock_dir(db_path) / f"{run_id}.lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        while True:
            fd = _open(self.db_path, f"{self.run_id}.lock", create=True)
            assert fd is not None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunLocked(
                    f"run {self.run_id} is being processed by {holder}; "
                    "try again when it has finished (exit code 75 means: locked, retry later)"
                ) from None
            if _is_current(fd, self.path):
                break
            os.close(fd)  # its holder removed this file on release: lock the one at the path now
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
        self.fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.fd is not None:
            # removed while still held: a process that opened it meanwhile finds it gone and opens a new one
            with contextlib.suppress(OSError):
                if _is_current(self.fd, self.path):
                    self.path.unlink()
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


def _is_current(fd: int, path: Path) -> bool:
    """Whether the open lock file `fd` is still the file at `path` (not one a finished holder removed)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def lock_holder(db_path: str | Path, run_id: str) -> str | None:
    """Who holds the run's lock right now (pid and host), or None when no process does."""
    try:
        fd = _open(db_path, f"{run_id}.lock", create=False)
    except StoreError:
        return None
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextmanager
def migration_lock(db_path: str | Path, wait: float = MIGRATION_WAIT_S) -> Iterator[None]:
    """Held while the schema is created or upgraded, so processes opening a fresh database do it one at a time."""
    fd = _open(db_path, MIGRATION_LOCK, create=True)
    assert fd is not None
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"another process has been upgrading the database {db_path} for {wait:g}s; try again later"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)
