"""Time formatting shared by the emulator's headers and batch objects."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(timestamp: float, *, micros: bool = False) -> str:
    """RFC 3339 UTC: whole seconds for rate-limit resets, microseconds for batch times (as the API)."""
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if micros else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.fromtimestamp(timestamp, UTC).strftime(fmt)
