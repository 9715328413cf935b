"""What batchrun knows of models besides their prices: the most output tokens each may be asked for.

The published maximum output (`max_tokens`) of each model id and alias; dated ids whose base id is listed need no
row of their own. A model not listed (a newer one, or a gateway's) gets only MAX_TOKENS_CEILING, far above any
model's, which keeps a typo such as 99999999999 out of the store and off the wire.
"""

from __future__ import annotations

import functools

from batchrun.pricing import base_model_id

K = 1000
MAX_TOKENS_CEILING = 1_000_000
MAX_OUTPUT: dict[str, int] = {
    "claude-opus-4-6": 128 * K,
    "claude-sonnet-4-6": 64 * K,
    "claude-haiku-4-5": 64 * K,
    "claude-opus-4-5": 64 * K,
    "claude-sonnet-4-5": 64 * K,
    "claude-opus-4-1": 32 * K,
    "claude-opus-4-0": 32 * K,
    "claude-opus-4": 32 * K,
    "claude-sonnet-4-0": 64 * K,
    "claude-sonnet-4": 64 * K,
    "claude-3-7-sonnet": 64 * K,
    "claude-3-7-sonnet-latest": 64 * K,
    "claude-3-5-haiku": 8192,
    "claude-3-5-haiku-latest": 8192,
    "claude-3-haiku": 4096,
}


@functools.lru_cache(maxsize=256)
def max_output(model: str | None) -> int | None:
    """The model's published maximum of output tokens, None when batchrun does not know the model."""
    if not isinstance(model, str):
        return None
    for name in dict.fromkeys((model, base_model_id(model))):
        if name in MAX_OUTPUT:
            return MAX_OUTPUT[name]
    return None


def max_tokens_problem(model: str | None, max_tokens: int) -> str | None:
    """Why `max_tokens` is too many for `model` (its published maximum, or the ceiling), None when it is not."""
    known = max_output(model) if isinstance(model, str) else None
    if known is not None and max_tokens > known:
        return f"{model} writes at most {known:,} output tokens (give max_tokens {known:,} or less)"
    if max_tokens > MAX_TOKENS_CEILING:
        return f"no model writes more than {MAX_TOKENS_CEILING:,} output tokens (give a smaller max_tokens)"
    return None
