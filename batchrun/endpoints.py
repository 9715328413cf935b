"""Where answers come from, as a run records it: the API's base URL, or the built-in emulator. A module of its own
so a command that sends nothing need not import the API layer (asyncio, ssl) to name its endpoint."""

from __future__ import annotations

import os

DEFAULT_ENDPOINT = "https://api.anthropic.com"
EMULATOR_ENDPOINT = "emulator"


def endpoint_of(emulate: bool, base_url: str | None = None) -> str:
    """Where answers come from, as a run records it: the built-in emulator, or the API's base URL (normalised)."""
    if emulate:
        return EMULATOR_ENDPOINT
    url = (base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_ENDPOINT).strip().rstrip("/")
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}"
