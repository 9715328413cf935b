"""Other batchrun processes on this machine that use the same API key: found through a small shared folder.

Each process sending online keeps a file `<pid>-<random>.peer` in `<cache>/batchrun/limits/<account>/`, where
`<account>` is a hash of the API key and the endpoint (never the key itself), holds an exclusive lock on it for
as long as it lives, and writes into it how much of each limit it is using. A file whose lock can be taken
belongs to a process that died: it is removed. So a process knows at once how many others share its key here,
and what they take, before a single reply has told it anything; what the headers show beyond that is a client
elsewhere (batchrun.fairshare).

`BATCHRUN_LIMIT_DIR` moves the folder; `BATCHRUN_LIMIT_DIR=off` turns the sharing off (the headers still work).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import time
from pathlib import Path

import orjson

PUBLISH_EVERY_S = 0.25
STALE_S = 5.0  # a live process that has not written for this long is not sending: it takes nothing


def account_key(api_key: str | None, base_url: str) -> str:
    """Which account's limits: a hash of the key and the endpoint, so the folder never holds the key."""
    return hashlib.sha256(f"{api_key or ''}\0{base_url.rstrip('/')}".encode()).hexdigest()[:24]


def limits_dir() -> Path | None:
    configured = os.environ.get("BATCHRUN_LIMIT_DIR")
    if configured == "off":
        return None
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "batchrun" / "limits"


class Neighbours:
    """This process's entry in the account's folder, and what the other live entries say."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        hidden = self.folder / f".{name}.new"
        self.fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # locked before it can be seen, so no one takes it for dead
        self.path = self.folder / f"{name}.peer"
        os.replace(hidden, self.path)
        self._published = 0.0
        self._peers: list[dict[str, float]] = []
        self._read_at = 0.0
        self.started = time.time()

    @classmethod
    def join(cls, account: str) -> Neighbours | None:
        """Join the account's folder; None when sharing is off or the folder cannot be used (nothing breaks)."""
        root = limits_dir()
        if root is None:
            return None
        try:
            return cls(root / account)
        except OSError:
            return None

    def publish(self, shares: dict[str, float], now: float) -> None:
        """Say what this process uses and wants of each limit (as shares of it); at most every PUBLISH_EVERY_S."""
        if now - self._published < PUBLISH_EVERY_S:
            return
        self._published = now
        data = orjson.dumps({"at": time.time(), "started": self.started, "shares": shares})
        with contextlib.suppress(OSError):
            os.pwrite(self.fd, data.ljust(256), 0)

    def peers(self, now: float) -> list[dict[str, float]]:
        """What each other live process here says it uses and wants, and its "age" in seconds (re-read at most
        every PUBLISH_EVERY_S); a process that has said nothing yet is there with its age only."""
        if now - self._read_at < PUBLISH_EVERY_S:
            return self._peers
        self._read_at = now
        found = []
        with contextlib.suppress(OSError):
            for entry in self.folder.iterdir():
                if entry.suffix == ".peer" and entry != self.path:
                    rates = _read_live(entry)
                    if rates is not None:
                        found.append(rates)
        self._peers = found
        return found

    def leave(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _read_live(entry: Path) -> dict[str, float] | None:
    """The rates in a live process's file; a dead one's file is removed and None returned."""
    try:
        fd = os.open(entry, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            data = os.pread(fd, 256, 0).strip()
            return _rates(data)
        with contextlib.suppress(OSError):
            entry.unlink()  # its process is gone
        return None
    finally:
        os.close(fd)


def _rates(data: bytes) -> dict[str, float]:
    try:
        parsed = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        return {"age": 0.0}
    now = time.time()
    if not isinstance(parsed, dict):
        return {"age": 0.0}
    age = now - float(parsed.get("started") or now)
    if now - float(parsed.get("at") or 0) > STALE_S:
        return {"age": age}  # alive, sending nothing: it takes nothing
    shares = parsed.get("shares")
    found = {k: float(v) for k, v in shares.items() if isinstance(v, int | float)} if isinstance(shares, dict) else {}
    return {**found, "age": age}
