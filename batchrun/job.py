"""Job settings (a TOML file plus command-line flags) and rendering of input lines into request params."""

from __future__ import annotations

import hashlib
import string
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import orjson

from batchrun.caching import cached_system
from batchrun.errors import UsageError
from batchrun.pricing import check_prices

MODES = ("online", "batch")
# Settings that do not change what is sent: they may change under a run (resume, a repeated submit).
RUNTIME_KEYS = ("mode", "concurrency", "max_attempts", "rpm", "itpm", "otpm", "max_cost", "poll_interval", "batch_size")


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

    def with_overrides(self, **flags: Any) -> Job:
        """Flags given on the command line win over the job file; None means 'not given'."""
        given = {k: v for k, v in flags.items() if v is not None}
        job = replace(self, **given)
        job.check()
        return job

    def check(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.cache_ttl not in ("5m", "1h"):
            raise UsageError(f'cache_ttl must be "5m" or "1h", not {self.cache_ttl!r}')
        check_prices(self.prices)
        for name in ("max_tokens", "concurrency", "max_attempts", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{name} must be a whole number >= 1, not {value!r}")

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
        return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def runtime_settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RUNTIME_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def load_job(path: str | Path | None) -> Job:
    """Read a job file; unknown keys are an error so a typo never silently changes a run."""
    if path is None:
        return Job()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such job file (check the path given to --job)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML: {e} (fix the file's syntax)") from None
    system_file = data.pop("system_file", None)
    if system_file is not None:
        if "system" in data:
            raise UsageError(f"{path}: set either system or system_file, not both")
        try:
            data["system"] = (path.parent / system_file).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(
                f"{path}: system_file {system_file!r}: {e.strerror} (path is relative to the job file)"
            ) from None
    known = {f.name for f in fields(Job)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(unknown)} (known keys: {', '.join(sorted(known))})")
    job = Job(**data)
    try:
        job.check()
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None
    return job


def load_system(value: str | None) -> str | None:
    """`--system TEXT` or `--system @FILE`."""
    if value is None or not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"--system {value}: {e.strerror} (give the path of a readable text file after @)") from None


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
        params = {"messages": [{"role": "user", "content": _prompt(obj["prompt"])}]}
    elif "messages" in obj:
        params = {"messages": obj["messages"]}
    elif job.template is not None:
        params = {"messages": [{"role": "user", "content": _fill(job.template, obj)}]}
    else:
        raise RenderError(
            'no "params", "prompt" or "messages" field, and the job has no template '
            '(add {"prompt": "..."} to the line, or set template = "... {field} ..." in the job file)'
        )
    _apply_defaults(params, obj, job)
    check_params(params)
    return params


def _prompt(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RenderError('"prompt" must be a non-empty string (put the text to send in it)')
    return value


def _fill(template: str, obj: dict[str, Any]) -> str:
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    missing = [n for n in names if n not in obj]
    if missing:
        raise RenderError(
            f"template field(s) {', '.join(missing)} missing from the line "
            f"(add {', '.join(repr(m) for m in missing)} to it, or change the job's template)"
        )
    return template.format_map(obj)


def _apply_defaults(params: dict[str, Any], obj: dict[str, Any], job: Job) -> None:
    for key, value in job.params.items():
        params.setdefault(key, value)
    if "model" not in params:
        params["model"] = route(obj, job)
    params.setdefault("max_tokens", job.max_tokens)
    if job.system is not None and "system" not in params:
        params["system"] = cached_system(job.system, params["model"], job.cache_ttl) if job.cache else job.system


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
