"""A request's input tokens before the API has counted them: what the limiter reserves and the dry run estimates.
A module of its own so the dry run does not import the limiter (asyncio)."""

from __future__ import annotations

from collections.abc import Mapping


def estimate_input_tokens(params: Mapping[str, object]) -> int:
    """A cheap upper-leaning estimate (4 characters a token) of a request's input tokens, corrected by usage."""
    chars = len(str(params.get("system") or "")) + len(str(params.get("messages") or ""))
    return chars // 4 + 8
