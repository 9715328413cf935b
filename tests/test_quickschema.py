"""The fast schema check agrees with jsonschema on the subset it handles, and declines every other schema."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from batchrun.job import load_job
from batchrun.quickschema import compile_schema

TICKETS = load_job(Path(__file__).resolve().parent.parent / "jobs" / "classify_tickets.toml").schema
SCHEMAS = [
    TICKETS,
    {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "minLength": 2, "maxLength": 4}, "maxItems": 2},
            "score": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1.5},
            "n": {"type": "integer", "minimum": -1, "exclusiveMaximum": 3},
            "ok": {"type": "boolean"},
            "kind": {"const": "x"},
            "any": True,
        },
        "additionalProperties": {"type": "string"},
        "required": ["n"],
        "minItems": 1,
    },
    {"type": "array", "items": False, "minItems": 0},
    True,
    False,
]
VALUES = [
    None,
    True,
    False,
    0,
    1,
    2,
    3,
    -1,
    -2,
    1.0,
    2.5,
    0.0,
    "",
    "x",
    "ab",
    "abcde",
    "é✓",
    "bug",
    "positive",
    [],
    ["ab"],
    ["ab", "cd", "ef"],
    ["a"],
    [1],
    {},
]
OBJECTS = [
    {"category": "bug", "urgency": 3, "sentiment": "neutral", "summary": "s"},
    {"category": "bug", "urgency": 3.0, "sentiment": "neutral", "summary": "s"},
    {"category": "bug", "urgency": True, "sentiment": "neutral", "summary": "s"},
    {"category": "bug", "urgency": 6, "sentiment": "neutral", "summary": "s"},
    {"category": "nope", "urgency": 3, "sentiment": "neutral", "summary": "s"},
    {"category": "bug", "urgency": 3, "sentiment": "neutral"},
    {"category": "bug", "urgency": 3, "sentiment": "neutral", "summary": "s", "extra": 1},
    {"n": 0, "tags": ["ab"], "score": None, "ok": False, "kind": "x", "any": [1], "more": "s"},
    {"n": 2.0, "score": 1.5},
    {"n": 3},
    {"n": 0, "score": 0},
    {"n": 0, "score": True},
    {"n": 0, "more": 1},
    {"n": 0, "kind": "y"},
    {"n": 0, "tags": ["a"]},
    {"n": 0, "ok": 1},
    {"score": 1},
]


def instances() -> list:
    changed = [{**o, k: v} for o in OBJECTS for k in list(o)[:2] for v in VALUES]
    return VALUES + OBJECTS + changed + [list(p) for p in itertools.combinations(VALUES[:6], 2)]


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_the_quick_check_agrees_with_jsonschema(schema) -> None:
    check = compile_schema(schema)
    assert check is not None
    validator = Draft202012Validator(schema)
    for value in instances():
        assert check(value) == validator.is_valid(value), value


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^a"},
        {"$ref": "#/$defs/x", "$defs": {"x": {"type": "string"}}},
        {"enum": [1, "a"]},
        {"const": 1},
        {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}},
        {"type": "object", "patternProperties": {"^a": {}}, "additionalProperties": False},
        {"type": "array", "prefixItems": [{"type": "string"}]},
        {"type": "strng"},
        {"minimum": True},
        [],
    ],
)
def test_a_schema_outside_the_subset_gets_no_quick_check(schema) -> None:
    assert compile_schema(schema) is None
