"""The models the emulator knows: ids, aliases, dated ids, maximum output tokens, context window.

An id not in this table gets the API's 404 not_found_error. Ids are those of the installed SDK's `Model`
literal (anthropic 2.12) plus the older dated ids still served; limits are the published ones where known
(values marked `assumed` are not published in what we read and follow the family's predecessor).
"""

from __future__ import annotations

from typing import NamedTuple


class ModelSpec(NamedTuple):
    id: str  # the canonical (dated where one exists) id
    aliases: tuple[str, ...]
    max_output: int
    context_window: int
    display_name: str


K = 1000
MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("claude-opus-4-6", (), 128 * K, 200 * K, "Claude Opus 4.6"),
    ModelSpec("claude-sonnet-4-6", (), 64 * K, 200 * K, "Claude Sonnet 4.6"),
    ModelSpec("claude-haiku-4-5-20251001", ("claude-haiku-4-5",), 64 * K, 200 * K, "Claude Haiku 4.5"),
    ModelSpec("claude-opus-4-5-20251101", ("claude-opus-4-5",), 64 * K, 200 * K, "Claude Opus 4.5"),
    ModelSpec("claude-sonnet-4-5-20250929", ("claude-sonnet-4-5",), 64 * K, 200 * K, "Claude Sonnet 4.5"),
    ModelSpec("claude-opus-4-1-20250805", ("claude-opus-4-1",), 32 * K, 200 * K, "Claude Opus 4.1"),
    ModelSpec("claude-opus-4-20250514", ("claude-opus-4-0",), 32 * K, 200 * K, "Claude Opus 4"),
    ModelSpec("claude-sonnet-4-20250514", ("claude-sonnet-4-0",), 64 * K, 200 * K, "Claude Sonnet 4"),
    ModelSpec("claude-3-7-sonnet-20250219", ("claude-3-7-sonnet-latest",), 64 * K, 200 * K, "Claude Sonnet 3.7"),
    ModelSpec("claude-3-5-haiku-20241022", ("claude-3-5-haiku-latest",), 8192, 200 * K, "Claude Haiku 3.5"),
    ModelSpec("claude-3-haiku-20240307", (), 4096, 200 * K, "Claude Haiku 3"),
    # In the SDK's Model literal; limits assumed from the family's predecessor.
    ModelSpec("claude-opus-4-7", (), 128 * K, 200 * K, "Claude Opus 4.7"),
    ModelSpec("claude-opus-4-8", (), 128 * K, 200 * K, "Claude Opus 4.8"),
    ModelSpec("claude-mythos-preview", (), 128 * K, 200 * K, "Claude Mythos Preview"),
    ModelSpec("claude-opus-5", (), 128 * K, 200 * K, "Claude Opus 5"),
    ModelSpec("claude-sonnet-5", (), 64 * K, 200 * K, "Claude Sonnet 5"),
    ModelSpec("claude-mythos-5", (), 128 * K, 200 * K, "Claude Mythos 5"),
    ModelSpec("claude-fable-5", (), 64 * K, 200 * K, "Claude Fable 5"),
    ModelSpec("claude-mythos-5-1", (), 128 * K, 200 * K, "Claude Mythos 5.1"),
    ModelSpec("claude-fable-5-1", (), 64 * K, 200 * K, "Claude Fable 5.1"),
    ModelSpec("claude-opus-5-5", (), 128 * K, 200 * K, "Claude Opus 5.5"),
    ModelSpec("claude-sonnet-5-5", (), 64 * K, 200 * K, "Claude Sonnet 5.5"),
    ModelSpec("claude-haiku-5-5", (), 64 * K, 200 * K, "Claude Haiku 5.5"),
    ModelSpec("claude-mythos-5-2", (), 128 * K, 200 * K, "Claude Mythos 5.2"),
    ModelSpec("claude-fable-5-2", (), 64 * K, 200 * K, "Claude Fable 5.2"),
)
BY_ID: dict[str, ModelSpec] = {name: spec for spec in MODELS for name in (spec.id, *spec.aliases)}


def find_model(model: object) -> ModelSpec | None:
    """The spec of a known id or alias, else None (the API answers 404 for it)."""
    return BY_ID.get(model) if isinstance(model, str) else None


def not_found_message(model: object) -> str:
    return f"model: {model}"


def model_info(spec: ModelSpec, requested: str | None = None) -> dict:
    """The Models API object for a spec (GET /v1/models/{id} answers with the id it was asked for)."""
    return {
        "type": "model",
        "id": requested or spec.id,
        "display_name": spec.display_name,
        "created_at": "2025-01-01T00:00:00Z",
        "lifecycle": "active",
        "max_tokens": spec.max_output,
        "max_input_tokens": spec.context_window,
    }
