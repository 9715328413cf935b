"""Models that answer differently: `model_divergence = {"claude-haiku-4-5": 0.2}`.

While the table is not empty, every model answers a question the way the reference model would (the reply is
built from the request with its model and its cache marks taken out, so every model gives the same answer), except
that a model named in the table gets that share of its answers wrong, decided by a hash of the question:

- a structured reply (output_config json_schema, forced tool) whose value is an object: each top-level field
  differs on its own, when `draw(question key, model, field) < share`; an enum takes another of its values, a
  boolean its opposite, an integer or number moves by 1 (down when up would leave its bounds), a string gets
  another text. A field that cannot differ (a const, an enum of one value) stays as it is.
- a structured reply that is not an object: the whole value, on `draw(question key, model, "$")`.
- a text reply: the whole text, on `draw(question key, model, "text")`: it is then the reply that model gives
  without the table.

A model not in the table (the reference, a judge) answers exactly as the reference would.
Pure functions: a test computes which items and fields differ with `diverging_fields`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import orjson

from .models import find_model
from .schema_gen import generate

Divergence = Mapping[str, float]
TEXT = "text"
WHOLE = "$"


def draw(*parts: object) -> float:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


def share_of(model: Any, divergence: Divergence) -> float:
    """The model's share of wrong answers: by the id it was asked for, else by its other names."""
    if not isinstance(model, str):
        return 0.0
    if model in divergence:
        return float(divergence[model])
    spec = find_model(model)
    for name in (spec.id, *spec.aliases) if spec is not None else ():
        if name in divergence:
            return float(divergence[name])
    return 0.0


def _strip_cache_marks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_cache_marks(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip_cache_marks(v) for v in value]
    return value


def question(params: dict) -> dict:
    """The request as every model sees the same question: no model, no cache marks, no stream flag."""
    body = {k: v for k, v in params.items() if k not in ("model", "stream")}
    body = _strip_cache_marks(body)
    # a system prompt given as one block or as a string is the same question
    system = body.get("system")
    if isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in system):
        body["system"] = "".join(b.get("text") or "" for b in system)
    return {"model": "reference", **body}


def question_key(params: dict) -> str:
    return hashlib.sha256(orjson.dumps(question(params), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def diverging_fields(params: dict, fields: list[str], divergence: Divergence) -> set[str]:
    """Which of `fields` (top-level properties, or WHOLE, or TEXT) this request's model gets wrong."""
    share = share_of(params.get("model"), divergence)
    if share <= 0:
        return set()
    key = question_key(params)
    model = params.get("model")
    return {f for f in fields if draw(key, model, f) < share}


def other_value(schema: Any, value: Any, seed: str) -> Any:
    """A value valid against `schema` that differs from `value` (or `value` when none can)."""
    if not isinstance(schema, dict):
        return value
    if "const" in schema:
        return value
    options = schema.get("enum")
    if isinstance(options, list):
        others = [o for o in options if o != value]
        return others[int(draw(seed, "enum") * len(others))] if others else value
    kind = schema.get("type")
    if isinstance(value, bool) or kind == "boolean":
        return not value if isinstance(value, bool) else value
    if isinstance(value, int | float) and kind in ("integer", "number"):
        return _moved(schema, value)
    if isinstance(value, str):
        return _other_text(schema, value, seed)
    candidate = generate(schema, seed + "|other")
    return candidate if candidate != value else value


def _moved(schema: dict, value: float) -> Any:
    high = schema.get("maximum", math.inf)
    low = schema.get("minimum", -math.inf)
    if "exclusiveMaximum" in schema:
        high = min(high, schema["exclusiveMaximum"] - 1e-9)
    if "exclusiveMinimum" in schema:
        low = max(low, schema["exclusiveMinimum"] + 1e-9)
    for moved in (value + 1, value - 1):
        if low <= moved <= high:
            return moved
    return value


def _other_text(schema: dict, value: str, seed: str) -> str:
    if schema.get("format"):
        candidate = generate(schema, seed + "|other")
        return candidate if candidate != value else value
    limit = schema.get("maxLength")
    candidate = "other: " + generate({k: v for k, v in schema.items() if k != "maxLength"}, seed + "|other")
    if isinstance(limit, int):
        candidate = candidate[:limit]
    return candidate if candidate.strip() != value.strip() else value


def diverge_value(params: dict, schema: dict, value: Any, divergence: Divergence) -> Any:
    """The reference's structured `value` as this request's model gives it."""
    key = question_key(params)
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if isinstance(value, dict) and isinstance(properties, dict):
        wrong = diverging_fields(params, list(properties), divergence)
        out = dict(value)
        for name in properties:
            if name in wrong and name in out:
                out[name] = other_value(properties[name], out[name], f"{key}|{params.get('model')}|{name}")
        return out
    if WHOLE in diverging_fields(params, [WHOLE], divergence):
        return other_value(schema, value, f"{key}|{params.get('model')}|$")
    return value
