"""Job settings (a TOML file plus command-line flags) and rendering of input lines into request params."""

from __future__ import annotations

import difflib
import functools
import hashlib
import math
import string
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import orjson

from batchrun.caching import cached_system
from batchrun.deadline import DEFAULT_MARGIN_S, deadline_problem
from batchrun.errors import UsageError
from batchrun.models import max_tokens_problem
from batchrun.pricing import check_prices

MODES = ("online", "batch", "auto")
# Settings that do not change what is sent: they may change under a run (resume, a repeated submit).
RUNTIME_KEYS = (
    "mode",
    "concurrency",
    "max_attempts",
    "rpm",
    "itpm",
    "otpm",
    "max_cost",
    "poll_interval",
    "batch_size",
    "deadline",
    "deadline_margin",
    "force",
)
MAX_CONCURRENCY = 1000  # requests in flight; more buys nothing under any account's rate limits
MAX_ATTEMPTS = 100
MAX_RATE = 10**12  # per minute: above any account's limits, and far inside the store's 64-bit integers
MAX_BATCH_SIZE = 100_000  # the Message Batches API's limits
MAX_BATCH_BYTES = 256_000_000
MAX_SCHEMA_BYTES = 32 * 1024 * 1024  # the API's request limit: a larger schema could never be sent
MAX_DEPTH = 200  # levels of nesting in a line or a schema: orjson writes at most 255
SCHEMA_VIAS = ("json_schema", "tool")
ANSWER_TOOL = "answer"  # the name of the forced tool a `schema_via = "tool"` job sends
LATER_KEYS: dict[str, Any] = {
    "schema": None,
    "schema_via": "json_schema",
    "accept_truncated": False,
    "id_field": None,
    "keep": [],
    "files": "inline",
}


@dataclass(frozen=True)
class Job:
    model: str | None = None
    max_tokens: int = 1024
    system: str | None = None
    template: str | None = None
    mode: str = "online"
    concurrency: int = 64
    max_attempts: int = 8
    params: dict[str, Any] = field(default_factory=dict)
    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    batch_size: int = 100_000
    batch_max_bytes: int = 256_000_000
    poll_interval: float = 5.0
    poll_max_interval: float = 60.0
    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    route_field: str | None = None
    routes: dict[str, str] = field(default_factory=dict)
    cache: bool = True
    cache_ttl: str = "5m"
    max_cost: float | None = None
    on_finish: str | None = None  # a shell command run when a run stops (not part of the run's identity)
    schema: dict[str, Any] | None = None  # JSON Schema every reply must meet (job key schema_file, or [schema])
    schema_via: str = "json_schema"  # sent as output_config.format, or "tool": one forced tool
    accept_truncated: bool = False  # a text reply cut at max_tokens counts as succeeded
    id_field: str | None = None  # the input field holding each row's id
    keep: list[str] = field(default_factory=list)  # input fields carried to every export
    deadline: str | None = None  # mode auto: an ISO time, or a duration from the run's start ("6h")
    deadline_margin: float = DEFAULT_MARGIN_S  # mode auto: seconds of safety on top of 20% of the online time
    force: bool = False  # mode auto: go on (online at once) when the deadline cannot be met
    files: str = "inline"  # folder inputs: files sent in each request, or "upload"ed once with the Files API

    def with_overrides(self, **flags: Any) -> Job:
        """Flags given on the command line win over the job file; None means 'not given'."""
        given = {k: v for k, v in flags.items() if v is not None}
        job = replace(self, **given)
        job.check()
        return job

    def check(self) -> None:
        """Every setting's type and range, all problems at once, before anything is stored or sent."""
        problems = job_problems(asdict(self))
        if not problems:
            problems = self._model_problems()
        if not problems:
            check_prices(self.prices)
        if problems:
            raise UsageError("\n".join(problems))

    def _model_problems(self) -> list[str]:
        """max_tokens against the published maximum of each model the job names."""
        models = dict.fromkeys([self.model, *self.routes.values()])
        found = (max_tokens_problem(m, self.max_tokens) for m in models)
        return [f"max_tokens = {self.max_tokens}: {p}" for p in dict.fromkeys(found) if p]

    def fingerprint(self) -> str:
        """What decides the requests a run sends: the same input and fingerprint continue the same run."""
        keys = (
            "model",
            "max_tokens",
            "system",
            "template",
            "params",
            "route_field",
            "routes",
            "cache",
            "cache_ttl",
        )
        data = {k: getattr(self, k) for k in keys}
        # keys added later count only when set, so the runs made before them keep their identity
        data.update({k: getattr(self, k) for k, default in LATER_KEYS.items() if getattr(self, k) != default})
        return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def runtime_settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RUNTIME_KEYS}

    def given_settings(self, given: Iterable[str]) -> dict[str, Any]:
        """The runtime settings a repeated submit applies to its run: those given as flags, and those the job file
        sets to other than the default. A setting left out keeps the value the run has stored."""
        named = set(given)
        return {k: v for k, v in self.runtime_settings().items() if k in named or v != getattr(DEFAULT_JOB, k)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """A job as stored. A runtime setting no check would let in now (written by an older version, or by hand)
        falls back to its default, so reading a run (status, runs) never fails on it."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        concurrency = data.get("concurrency")
        if _is_int(concurrency) and concurrency > MAX_CONCURRENCY:  # stored before the cap existed
            data["concurrency"] = MAX_CONCURRENCY
        return cls(**{k: v for k, v in data.items() if not (k in STORED_CHECKS and CHECKS[k](v))})


def load_job(path: str | Path | None) -> Job:
    """Read a job file; unknown keys are an error so a typo never silently changes a run."""
    if path is None:
        return Job()
    import tomllib  # only a command given a job file reads one

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such job file (check the path given to --job)") from None
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror} (give --job a readable TOML file)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML: {e} (fix the file's syntax)") from None
    system_file = data.pop("system_file", None)
    if system_file is not None:
        if not isinstance(system_file, str):
            raise UsageError(f"{path}: system_file must be a path in quotes (relative to the job file)")
        if "system" in data:
            raise UsageError(f"{path}: set either system or system_file, not both")
        try:
            data["system"] = (path.parent / system_file).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(
                f"{path}: system_file {system_file!r}: {e.strerror} (path is relative to the job file)"
            ) from None
    if "schema_file" in data:
        if "schema" in data:
            raise UsageError(f"{path}: set either schema_file or [schema], not both")
        data["schema"] = load_schema(path.parent / str(data.pop("schema_file")), f"{path}: schema_file")
    problems = [f"{path}: {p}" for p in unknown_key_problems(data)]
    problems += [f"{path}: {p}" for p in job_problems({k: v for k, v in data.items() if k in KNOWN_KEYS})]
    if problems:
        raise UsageError("\n".join(problems))
    return Job(**data)


def unknown_key_problems(data: dict[str, Any]) -> list[str]:
    problems = []
    for key in sorted(set(data) - KNOWN_KEYS):
        close = difflib.get_close_matches(key, KNOWN_KEYS | {"system_file", "schema_file"}, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(sorted(KNOWN_KEYS))}"
        problems.append(f"unknown key {key} ({hint})")
    return problems


def job_problems(data: dict[str, Any]) -> list[str]:
    """What is wrong with these settings, one line each: `key = value: what it must be`."""
    problems = []
    for key, value in data.items():
        check = CHECKS.get(key)
        problem = check(value) if check else None
        if problem:
            problems.append(f"{key} = {_short(value)}: {problem}")
    return problems


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(low: int, high: int | None = None, optional: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not _is_int(value) or value < low or (high is not None and value > high):
            if high is None or high >= MAX_RATE:
                return f"must be a whole number from {low:,} up" + (f", at most {high:,}" if high else "")
            return f"must be a whole number from {low:,} to {high:,}"
        return None

    return check


def _positive_number(value: Any) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        return "must be a number of seconds above 0 (e.g. 5 or 0.5)"
    return None


def _text(optional: bool = True, empty: bool = True) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or (not empty and not value.strip()):
            return "must be a string" + ("" if empty else " that is not empty") + ' (in quotes: "...")'
        return None

    return check


def _choice(*options: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in options else f"must be one of {', '.join(repr(o) for o in options)}"

    return check


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _params(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be a table of Messages parameters (params = { temperature = 0.0 })"
    if "stream" in value:
        return '"stream" is chosen by batchrun (remove it from params)'
    return None


def _routes(value: Any) -> str | None:
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        return 'must be a table of field value = "model" (routes = { hard = "claude-sonnet-4", default = "..." })'
    return None


def _prices(value: Any) -> str | None:
    example = '(prices = { "claude-haiku-4-5" = { input = 1.0, output = 5.0 } }, USD per million tokens)'
    if not isinstance(value, dict):
        return f"must be a table of model = {{ input, output }} {example}"
    for model, price in value.items():
        if not isinstance(price, dict) or set(price) != {"input", "output"}:
            return f"{model!r} must have exactly input and output {example}"
        for kind, usd in price.items():
            if not isinstance(usd, int | float) or isinstance(usd, bool) or not math.isfinite(usd) or usd < 0:
                return f"{model}.{kind} must be a number >= 0 {example}"
    return None


def _positive_usd(value: Any) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        return "must be a number of US dollars above 0 (e.g. 25 or 0.5)"
    return None


def _template(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return 'must be a string with {field} placeholders (template = "Classify: {text}")'
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as e:
        return f"is not a valid template: {e} (write a field as {{name}} and a literal brace as {{{{ or }}}})"
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or name.isdigit():
            return "has a field without a name ({} or {0}): name each one after a field of the input lines ({text})"
        if "." in name or "[" in name or "{" in (spec or ""):
            return f"field {{{name}}} is not a plain field name (use {{text}}; no attributes, indexes or nesting)"
        if conversion not in (None, "r", "s", "a"):
            return f"field {{{name}!{conversion}}} has an unknown conversion (use !r, !s or !a, or none)"
    return None


def _schema(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return 'must be a JSON Schema object (a [schema] table, or schema_file = "x.schema.json")'
    if too_deep(value, MAX_DEPTH):
        return f"is nested more than {MAX_DEPTH} levels deep (no reply could be checked against it)"
    encoded = orjson.dumps(value)
    if len(encoded) > MAX_SCHEMA_BYTES:
        return f"is {len(encoded):,} bytes: more than the API's 32 MB request limit (make the schema smaller)"
    if encoded not in _schema_verdicts:
        if len(_schema_verdicts) >= 32:
            _schema_verdicts.clear()
        _schema_verdicts[encoded] = _schema_verdict(value)
    return _schema_verdicts[encoded]


# A command checks its job several times (the file, the flags, the stored run's settings), and checking a schema
# against the metaschema takes milliseconds: the verdict is kept per schema text.
_schema_verdicts: dict[bytes, str | None] = {}


def _schema_verdict(value: dict[str, Any]) -> str | None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as e:
        return f"is not a valid JSON Schema (Draft 2020-12): {e.message}"
    cycle = _ref_cycle(value)
    if cycle:
        return f"refers to itself without end ({cycle}): no reply could ever be checked against it"
    return _unusable(Draft202012Validator(value))


def too_deep(value: Any, limit: int) -> bool:
    """Whether objects and lists sit more than `limit` levels inside each other (orjson stops at 255)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


IN_PLACE_LISTS = ("allOf", "anyOf", "oneOf")
IN_PLACE_ONE = ("not", "if", "then", "else", "$ref", "$dynamicRef")
SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
SUBSCHEMA_ONE = (
    "items",
    "contains",
    "additionalProperties",
    "unevaluatedItems",
    "unevaluatedProperties",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
)


def _ref_cycle(schema: dict[str, Any]) -> str | None:
    """A chain of `$ref`s (through allOf/anyOf/oneOf/not/if/then/else) that comes back to where it started
    without going into the instance: validating anything against it never ends (`{"$ref": "#"}`)."""
    state: dict[int, int] = {}  # 1: on the current path, 2: done

    def visit(node: Any, path: str) -> str | None:
        if not isinstance(node, dict) or state.get(id(node)) == 2:
            return None
        if state.get(id(node)) == 1:
            return path
        state[id(node)] = 1
        for key, target, where in _in_place(schema, node):
            found = visit(target, f"{path} -> {key} {where}" if path else f"{key} {where}")
            if found:
                return found
        state[id(node)] = 2
        return None

    for node in _subschemas(schema):
        found = visit(node, "")
        if found:
            return found
    return None


def _in_place(root: dict[str, Any], node: dict[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """The schemas that apply at the same place of the instance as `node`."""
    for key in IN_PLACE_LISTS:
        for n, sub in enumerate(node.get(key) or () if isinstance(node.get(key), list) else ()):
            yield key, sub, f"[{n}]"
    for key in IN_PLACE_ONE:
        sub = node.get(key)
        if key in ("$ref", "$dynamicRef"):
            if isinstance(sub, str):
                yield key, _pointer(root, sub), repr(sub)
        elif isinstance(sub, dict):
            yield key, sub, ""


def _pointer(root: dict[str, Any], ref: str) -> Any:
    """The part of the schema a local `$ref` ("#", "#/$defs/x") names; None for any other reference."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """Every schema inside `schema`, itself first."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield node
        for key in SUBSCHEMA_MAPS:
            if isinstance(node.get(key), dict):
                stack.extend(node[key].values())
        for key in (*SUBSCHEMA_ONE, *IN_PLACE_LISTS, "prefixItems"):
            sub = node.get(key)
            stack.extend(sub if isinstance(sub, list) else [sub])


def _unusable(validator: Any) -> str | None:
    """What a reply would meet: a reference that cannot be resolved, or one that recurses without end."""
    from referencing.exceptions import Unresolvable

    for sample in ({}, [], "", 0, None):
        try:
            validator.is_valid(sample)
        except RecursionError:
            return "refers to itself without end: no reply could ever be checked against it"
        except Unresolvable as e:
            return f"has a $ref that cannot be resolved ({e}; use a local reference such as #/$defs/name)"
    return None


def _keep(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return 'must be a list of input field names (keep = ["ticket_id", "customer"])'
    return None


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "model": _text(empty=False),
    "max_tokens": _int(1),  # and at most the model's maximum: Job._model_problems
    "system": _text(),
    "template": _template,
    "mode": _choice(*MODES),
    "concurrency": _int(1, MAX_CONCURRENCY),
    "max_attempts": _int(1, MAX_ATTEMPTS),
    "params": _params,
    "rpm": _int(1, MAX_RATE, optional=True),
    "itpm": _int(1, MAX_RATE, optional=True),
    "otpm": _int(1, MAX_RATE, optional=True),
    "batch_size": _int(1, MAX_BATCH_SIZE),
    "batch_max_bytes": _int(1, MAX_BATCH_BYTES),
    "poll_interval": _positive_number,
    "poll_max_interval": _positive_number,
    "prices": _prices,
    "route_field": _text(empty=False),
    "routes": _routes,
    "cache": _bool,
    "cache_ttl": _choice("5m", "1h"),
    "on_finish": _text(empty=False),
    "max_cost": lambda v: None if v is None else _positive_usd(v),
    "schema": _schema,
    "schema_via": _choice(*SCHEMA_VIAS),
    "accept_truncated": _bool,
    "id_field": _text(empty=False),
    "keep": _keep,
    "deadline": deadline_problem,
    "deadline_margin": lambda v: None if v == 0 and not isinstance(v, bool) else _positive_number(v),
    "force": _bool,
    "files": _choice("inline", "upload"),
}
KNOWN_KEYS = frozenset(f.name for f in fields(Job))
STORED_CHECKS = frozenset((*RUNTIME_KEYS, "prices", "cache_ttl"))
DEFAULT_JOB = Job()


def load_system(value: str | None) -> str | None:
    """`--system TEXT` or `--system @FILE`."""
    if value is None or not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"--system {value}: {e.strerror} (give the path of a readable text file after @)") from None


def load_schema(path: str | Path, label: str = "--schema") -> dict[str, Any]:
    """A JSON Schema file (JSON), checked against Draft 2020-12."""
    try:
        schema = orjson.loads(Path(path).read_bytes())
    except OSError as e:
        raise UsageError(f"{label} {str(path)!r}: {e.strerror} (give a readable JSON Schema file)") from None
    except orjson.JSONDecodeError as e:
        raise UsageError(f"{label} {str(path)!r}: not valid JSON: {e} (a schema file is one JSON object)") from None
    problem = _schema(schema)
    if problem:
        raise UsageError(f"{label} {str(path)!r}: {problem}")
    return schema


class RenderError(ValueError):
    """A line that cannot become a request; the message says what is wrong and how to fix it."""


def render(obj: dict[str, Any], job: Job) -> dict[str, Any]:
    """Turn one input object into Messages request params."""
    if "params" in obj:
        params = obj["params"]
        if not isinstance(params, dict):
            raise RenderError('"params" must be an object (write {"params": {"model": ..., "messages": [...]}})')
        params = dict(params)
    elif "prompt" in obj:
        params = {"messages": [{"role": "user", "content": _prompt(obj["prompt"])}], **_line_settings(obj)}
    elif "messages" in obj:
        params = {"messages": obj["messages"], **_line_settings(obj)}
    elif job.template is not None:
        params = {"messages": [{"role": "user", "content": _fill(job.template, obj)}], **_line_settings(obj)}
    else:
        raise RenderError(
            'no "params", "prompt" or "messages" field, and the job has no template '
            '(add {"prompt": "..."} to the line, or set template = "... {field} ..." in the job file)'
        )
    _apply_defaults(params, obj, job)
    check_params(params)
    return params


LINE_SETTINGS = ("model", "max_tokens", "system", "metadata")


def _line_settings(obj: dict[str, Any]) -> dict[str, Any]:
    """In the short forms, a line's own model, max_tokens, system and metadata win over the job's."""
    return {k: obj[k] for k in LINE_SETTINGS if obj.get(k) is not None}


@functools.lru_cache(maxsize=64)
def _template_fields(template: str) -> tuple[str, ...]:
    """The fields a template names, parsed once per template (not once per line)."""
    return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)


def _prompt(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RenderError('"prompt" must be a non-empty string (put the text to send in it)')
    return value


def _fill(template: str, obj: dict[str, Any]) -> str:
    missing = [n for n in _template_fields(template) if n not in obj]
    if missing:
        raise RenderError(
            f"template field(s) {', '.join(missing)} missing from the line "
            f"(add {', '.join(repr(m) for m in missing)} to it, or change the job's template)"
        )
    try:
        return template.format_map(obj)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise RenderError(f"cannot fill the job's template from this line: {e} (check the fields' values)") from None


def _apply_defaults(params: dict[str, Any], obj: dict[str, Any], job: Job) -> None:
    for key, value in job.params.items():
        params.setdefault(key, value)
    if "model" not in params:
        params["model"] = route(obj, job)
    params.setdefault("max_tokens", job.max_tokens)
    if job.schema is not None:
        _apply_schema(params, job)
    if job.system is not None and "system" not in params:
        params["system"] = cached_system(job.system, params["model"], job.cache_ttl) if job.cache else job.system


def _apply_schema(params: dict[str, Any], job: Job) -> None:
    """The job's schema as structured output, or as one forced tool; a line that brings its own keeps it."""
    if job.schema_via == "tool":
        if "tool_choice" not in params:
            tool = {"name": ANSWER_TOOL, "description": "Record the answer.", "input_schema": job.schema}
            params["tools"] = [*(params.get("tools") or []), tool]
            params["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}
        return
    config = dict(params.get("output_config") or {})
    config.setdefault("format", {"type": "json_schema", "schema": job.schema})
    params["output_config"] = config


def route(obj: dict[str, Any], job: Job) -> str:
    if job.route_field is not None:
        key = obj.get(job.route_field)
        model = job.routes.get(str(key)) if key is not None else None
        if model is not None:
            return model
        if "default" in job.routes:
            return job.routes["default"]
    if job.model is None:
        raise RenderError("no model (pass --model, set model in the job file, or put it in the line's params)")
    return job.model


def check_params(params: dict[str, Any]) -> None:
    """Checks the API would fail every time; anything subtler is left to the API."""
    if not isinstance(params.get("model"), str) or not params["model"]:
        raise RenderError('"model" must be a non-empty string (e.g. "claude-haiku-4-5")')
    max_tokens = params.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise RenderError(f'"max_tokens" must be a whole number >= 1, not {max_tokens!r} (e.g. "max_tokens": 256)')
    too_many = max_tokens_problem(params["model"], max_tokens)
    if too_many:
        raise RenderError(f'"max_tokens" {max_tokens}: {too_many}')
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RenderError(
            '"messages" must be a non-empty list (write "messages": [{"role": "user", "content": "..."}])'
        )
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RenderError(f'messages[{n}] must be an object (write {{"role": "user", "content": "..."}})')
        if message.get("role") not in ("user", "assistant"):
            raise RenderError(f'messages[{n}].role must be "user" or "assistant" (the first message is the user\'s)')
        content = message.get("content")
        if not content or not isinstance(content, str | list):
            raise RenderError(f"messages[{n}] has no content (give it a non-empty string or list of blocks)")
    if "stream" in params:
        raise RenderError('"stream" is chosen by batchrun (remove it from params)')
