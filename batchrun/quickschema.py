"""A fast check of a reply against the common subset of JSON Schema (types, properties, required, string enums,
bounds, lengths, items), about 20x quicker than jsonschema on a ticket-sized answer.

A schema using any other keyword gets no check (jsonschema judges every reply). The check says "valid" only
where jsonschema (Draft 2020-12, formats not asserted) would; what it rejects is judged again by jsonschema,
which also says why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]
ANNOTATIONS = frozenset(
    ("$schema", "$id", "$comment", "title", "description", "default", "examples", "deprecated", "format")
)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_integer(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": _is_number,
    "integer": _is_integer,
}


def compile_schema(schema: Any) -> Check | None:
    """The schema as a check, or None when it uses a keyword this module does not know."""
    if isinstance(schema, bool):
        return lambda v: schema
    if not isinstance(schema, dict):
        return None
    checks: list[Check] = []
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        make = KEYWORDS.get(key)
        check = make(value, schema) if make is not None else None
        if check is None:
            return None
        checks.append(check)
    return _all_of(checks)


def _all_of(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]

    def check(v: Any) -> bool:
        for one in checks:  # noqa: SIM110 (a loop: no generator made per check, this runs per reply)
            if not one(v):
                return False
        return True

    return check


def _type(value: Any, _: dict) -> Check | None:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n in TYPES for n in names):
        return None
    kinds = [TYPES[n] for n in names]
    return kinds[0] if len(kinds) == 1 else lambda v: any(kind(v) for kind in kinds)


def _enum(value: Any, _: dict) -> Check | None:
    if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
        return None
    allowed = frozenset(value)
    return lambda v: isinstance(v, str) and v in allowed


def _const(value: Any, _: dict) -> Check | None:
    return (lambda v: isinstance(v, str) and v == value) if isinstance(value, str) else None


def _properties(value: Any, _: dict) -> Check | None:
    if not isinstance(value, dict):
        return None
    props = [(name, compile_schema(sub)) for name, sub in value.items()]
    if any(check is None for _, check in props):
        return None

    def check(v: Any) -> bool:
        if isinstance(v, dict):
            for name, one in props:
                if name in v and not one(v[name]):
                    return False
        return True

    return check


def _required(value: Any, _: dict) -> Check | None:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        return None
    keys = frozenset(value)
    return lambda v: not isinstance(v, dict) or keys <= v.keys()


def _additional(value: Any, schema: dict) -> Check | None:
    sub = compile_schema(value)
    known = schema.get("properties", {})
    if sub is None or not isinstance(known, dict):
        return None
    if value is False:  # the common case, as one set comparison
        names = frozenset(known)
        return lambda v: not isinstance(v, dict) or v.keys() <= names
    return lambda v: not isinstance(v, dict) or all(sub(x) for k, x in v.items() if k not in known)


def _items(value: Any, _: dict) -> Check | None:
    sub = compile_schema(value)
    return None if sub is None else lambda v: not isinstance(v, list) or all(sub(x) for x in v)


def _bound(kind: Check, size: Callable[[Any], Any], ok: Callable[[Any, Any], bool], numeric: bool) -> Any:
    def make(value: Any, _: dict) -> Check | None:
        if not (_is_number(value) if numeric else _is_integer(value)):
            return None
        return lambda v: not kind(v) or ok(size(v), value)

    return make


def _same(v: Any) -> Any:
    return v


KEYWORDS: dict[str, Callable[[Any, dict], Check | None]] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "properties": _properties,
    "required": _required,
    "additionalProperties": _additional,
    "items": _items,
    "minimum": _bound(_is_number, _same, lambda v, b: v >= b, True),
    "maximum": _bound(_is_number, _same, lambda v, b: v <= b, True),
    "exclusiveMinimum": _bound(_is_number, _same, lambda v, b: v > b, True),
    "exclusiveMaximum": _bound(_is_number, _same, lambda v, b: v < b, True),
    "minLength": _bound(TYPES["string"], len, lambda v, b: v >= b, False),
    "maxLength": _bound(TYPES["string"], len, lambda v, b: v <= b, False),
    "minItems": _bound(TYPES["array"], len, lambda v, b: v >= b, False),
    "maxItems": _bound(TYPES["array"], len, lambda v, b: v <= b, False),
}
