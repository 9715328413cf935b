"""A JSON value valid against a JSON Schema, as a deterministic function of a seed string.

Covers what structured outputs and tool input schemas use: objects (every property, required ones always),
arrays (minItems..maxItems), enum/const, strings (minLength/maxLength, simple formats), bounded numbers and
integers, booleans, null, type lists, anyOf/oneOf, allOf (merged), and local $ref into $defs/definitions.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

WORDS = ("alpha", "bravo", "delta", "echo", "golf", "kilo", "lima", "oscar", "romeo", "tango", "victor", "zulu")
MAX_DEPTH = 12
FORMATS = {
    "date": "2026-01-{d:02d}",
    "date-time": "2026-01-{d:02d}T12:00:00Z",
    "time": "12:{d:02d}:00Z",
    "email": "user{d}@example.com",
    "uri": "https://example.com/{d}",
    "uuid": "00000000-0000-4000-8000-0000000000{d:02d}",
    "hostname": "host{d}.example.com",
    "ipv4": "192.0.2.{d}",
}


def _n(seed: str, path: str, modulo: int) -> int:
    digest = hashlib.sha256(f"{seed}|{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % max(1, modulo)


class _Gen:
    def __init__(self, root: dict, seed: str) -> None:
        self.root = root
        self.seed = seed

    def resolve(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < MAX_DEPTH:
            target: Any = self.root
            for part in schema["$ref"].lstrip("#").strip("/").split("/"):
                if part:
                    target = (
                        target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
                    )
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            seen += 1
        return schema

    def value(self, schema: Any, path: str, depth: int = 0) -> Any:
        schema = self.resolve(schema)
        if not isinstance(schema, dict) or depth > MAX_DEPTH:
            return None if schema is False else f"value-{_n(self.seed, path, 1000)}"
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][_n(self.seed, path, len(schema["enum"]))]
        if isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part)
                if isinstance(part, dict):
                    merged["properties"] = {**merged.get("properties", {}), **part.get("properties", {})}
                    merged["required"] = [*merged.get("required", []), *part.get("required", [])]
                    merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
            return self.value(merged, path, depth + 1)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.value(options[_n(self.seed, path + key, len(options))], path, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"] or ["null"]
            kind = kinds[_n(self.seed, path + "type", len(kinds))]
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        return getattr(self, "_" + kind, self._string)(schema, path, depth)

    def _object(self, schema: dict, path: str, depth: int) -> dict:
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        out = {name: self.value(sub, f"{path}.{name}", depth + 1) for name, sub in properties.items()}
        for name in schema.get("required") or []:
            if name not in out:
                extra = schema.get("additionalProperties")
                out[name] = self.value(extra if isinstance(extra, dict) else {}, f"{path}.{name}", depth + 1)
        return out

    def _array(self, schema: dict, path: str, depth: int) -> list:
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, 3)))
        count = low + _n(self.seed, path + "#", high - low + 1)
        items = schema.get("items", {})
        if isinstance(schema.get("prefixItems"), list):
            prefix = [self.value(s, f"{path}[{i}]", depth + 1) for i, s in enumerate(schema["prefixItems"])]
            return prefix[: max(count, len(prefix))]
        values = [self.value(items, f"{path}[{i}]", depth + 1) for i in range(count)]
        if schema.get("uniqueItems") and isinstance(items, dict) and "enum" not in items:
            values = [f"{v}-{i}" if isinstance(v, str) else v for i, v in enumerate(values)]
        return values

    def _string(self, schema: dict, path: str, depth: int) -> str:
        d = 1 + _n(self.seed, path, 28)
        fmt = FORMATS.get(schema.get("format"))
        if fmt is not None:
            return fmt.format(d=d)
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        words = [WORDS[_n(self.seed, f"{path}/{i}", len(WORDS))] for i in range(1 + _n(self.seed, path + "n", 4))]
        text = " ".join(words)
        if len(text) < low:
            text = (text + " ") * math.ceil(low / (len(text) + 1))
            text = text[:low]
        if isinstance(high, int):
            text = text[:high]
        return text

    def _integer(self, schema: dict, path: str, depth: int) -> int:
        low, high = self._bounds(schema, integer=True)
        return int(low + _n(self.seed, path, int(high - low) + 1))

    def _number(self, schema: dict, path: str, depth: int) -> float:
        low, high = self._bounds(schema, integer=False)
        return round(low + (high - low) * _n(self.seed, path, 1001) / 1000, 3)

    @staticmethod
    def _bounds(schema: dict, *, integer: bool) -> tuple[float, float]:
        step = 1 if integer else 0.001
        low = schema.get("minimum", -math.inf)
        if "exclusiveMinimum" in schema:
            low = max(low, schema["exclusiveMinimum"] + step)
        high = schema.get("maximum", math.inf)
        if "exclusiveMaximum" in schema:
            high = min(high, schema["exclusiveMaximum"] - step)
        if low == -math.inf:
            low = 0 if high == math.inf or high >= 0 else high - 100
        if high == math.inf:
            high = low + 100
        if integer:
            low, high = math.ceil(low), math.floor(high)
        return low, max(low, high)

    def _boolean(self, schema: dict, path: str, depth: int) -> bool:
        return _n(self.seed, path, 2) == 1

    def _null(self, schema: dict, path: str, depth: int) -> None:
        return None


def generate(schema: Any, seed: str) -> Any:
    """A value valid against `schema`, the same for the same (schema, seed)."""
    root = schema if isinstance(schema, dict) else {}
    return _Gen(root, seed).value(schema, "$")
