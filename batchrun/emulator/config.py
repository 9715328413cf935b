"""Emulator settings, their command-line form, and runtime patching."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from typing import Any, NoReturn

LIMIT_FIELDS = frozenset({"rpm", "itpm", "otpm", "bucket_seconds"})
PROBABILITY_FIELDS = frozenset(
    {
        "p429",
        "p529",
        "p500",
        "p_drop",
        "p_slow",
        "p_midstream_error",
        "p_stream_as_json",
        "p_invalid_json",
        "p_missing_required",
        "p_truncated",
        "p_refusal",
        "batch_p_errored",
        "batch_p_expired",
        "batch_p_tail",
    }
)
# The ways batch_bad_lines can spoil a result line (see batches.spoil).
BAD_LINE_KINDS = (
    "content_string",
    "block_number",
    "block_null",
    "text_without_text",
    "tokens_string",
    "result_string",
    "error_string",
    "no_custom_id",
    "cut_json",
)
# A Tier-4-like account (requests / input tokens / output tokens per minute), as the API's headers show one.
DEFAULT_RPM, DEFAULT_ITPM, DEFAULT_OTPM = 4_000, 2_000_000, 400_000


@dataclass
class EmulatorConfig:
    # Per-minute limits (0 = unlimited: no bucket, no headers), enforced as token buckets holding
    # limit*bucket_seconds/60 and refilling limit/60 per second. A small bucket_seconds makes bursts hit
    # 429 early, like the real API's per-second enforcement. The defaults are a Tier-4-like account.
    rpm: int = DEFAULT_RPM
    itpm: int = DEFAULT_ITPM
    otpm: int = DEFAULT_OTPM
    bucket_seconds: float = 60.0
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    # Injected faults, drawn per request while its key has had < max_faults_per_request of them.
    p429: float = 0.0
    p529: float = 0.0
    p500: float = 0.0
    p_drop: float = 0.0
    p_slow: float = 0.0
    slow_ms: float = 2000.0
    retry_after_s: float = 1.0
    # Pause between streamed events, like tokens arriving (0 = the whole stream at once).
    stream_event_ms: float = 0.0
    # After the 200 has begun: a streamed reply sends `event: error` (overloaded_error) after a few deltas.
    p_midstream_error: float = 0.0
    # A gateway that ignores `stream: true`: a streamed request is answered with the Message as a plain JSON body.
    p_stream_as_json: float = 0.0
    # The model's answer goes wrong (drawn per attempt from seed, request key and attempt number):
    # structured replies (output_config json_schema, forced tool) with invalid JSON or a required property
    # missing, and any reply cut at max_tokens.
    p_invalid_json: float = 0.0
    p_missing_required: float = 0.0
    p_truncated: float = 0.0
    p_refusal: float = 0.0  # a share of replies stop with stop_reason "refusal" after a few tokens
    max_faults_per_request: int = 3
    seed: int = 0
    api_key: str | None = None
    # Message Batches. With batch_fast_s = batch_tail_s = 0 every request of a batch finishes
    # batch_seconds (wall time) after create. Otherwise each request gets its own processing time, in API
    # seconds, divided by batch_time_scale for wall time: most (1 - batch_p_tail) exponential with mean
    # batch_fast_s, the tail uniform between batch_fast_s and batch_tail_s; past 24 h a request expires.
    # The batch ends when its last request finishes.
    batch_seconds: float = 2.0
    batch_fast_s: float = 0.0
    batch_tail_s: float = 0.0
    batch_p_tail: float = 0.0
    batch_time_scale: float = 1.0
    # The API keeps request_counts at {processing: all} until the batch ends; True shows progress instead.
    batch_progress_counts: bool = False
    batch_p_errored: float = 0.0
    batch_p_expired: float = 0.0
    # Malformed result lines (tests): comma-separated kinds of BAD_LINES, each spoiling one line of every batch
    # created while it is set, the first whose request was never spoiled, so the item sent again comes back whole.
    batch_bad_lines: str | None = None
    track_keys: bool = True
    # Keep the bodies of the last `request_log` Messages requests and batch requests' params received (0: none), for
    # GET /_emulator/requests: a test reads what went over the wire.
    request_log: int = 0
    # Models that answer differently from the reference (see divergence.py): model id -> share of wrong answers,
    # decided field by field from a hash of the question. Empty: every model answers as before (its own way).
    model_divergence: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, f.type, getattr(self, f.name)))

    def update(self, **changes: Any) -> set[str]:
        """Patch fields in place after checking every one; returns the names that changed value.

        Raises ValueError on an unknown field or a value of the wrong type.
        """
        types = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(changes) - set(types))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        coerced = {name: _coerce(name, types[name], value) for name, value in changes.items()}
        changed = {name for name, value in coerced.items() if getattr(self, name) != value}
        for name, value in coerced.items():
            setattr(self, name, value)
        return changed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, type_name: Any, value: Any) -> Any:
    kind = str(type_name)
    if kind == "dict[str, float]":
        return _divergence(name, value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected a boolean, got {value!r}")
        return value
    if kind == "str | None":
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name}: expected a string or null, got {value!r}")
        kinds = [k.strip() for k in (value or "").split(",") if k.strip()] if name == "batch_bad_lines" else []
        unknown = [k for k in kinds if k not in BAD_LINE_KINDS]
        if unknown:
            raise ValueError(f"{name}: unknown kind(s) {', '.join(unknown)}; known: {', '.join(BAD_LINE_KINDS)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if kind == "int":
        if value != int(value):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value!r}")
    if name == "batch_time_scale" and value == 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")
    if name in PROBABILITY_FIELDS and value > 1:
        raise ValueError(f"{name}: must be between 0 and 1, got {value!r}")
    return value


def _divergence(name: str, value: Any) -> dict[str, float]:
    """`{"model": share}`, or its command-line form `model=share,model=share`."""
    if isinstance(value, str):
        pairs = [p.partition("=") for p in value.split(",") if p.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError(f"{name}: expected MODEL=SHARE[,MODEL=SHARE...], got {value!r}")
        try:
            value = {model.strip(): float(share) for model, _, share in pairs}
        except ValueError:
            raise ValueError(f"{name}: each share must be a number, got {value!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a table of model -> share, got {value!r}")
    out = {}
    for model, share in value.items():
        if not isinstance(model, str) or isinstance(share, bool) or not isinstance(share, int | float):
            raise ValueError(f"{name}: expected model -> share between 0 and 1, got {model!r}: {share!r}")
        if not 0 <= share <= 1:
            raise ValueError(f"{name}: the share of {model} must be between 0 and 1, got {share!r}")
        out[model] = float(share)
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_to_argv(config: EmulatorConfig) -> list[str]:
    """The command-line flags that rebuild `config` (only fields that differ from the defaults)."""
    argv: list[str] = []
    default = EmulatorConfig()
    for f in fields(config):
        value = getattr(config, f.name)
        if value == getattr(default, f.name):
            continue
        if isinstance(value, bool):
            argv.append(_flag(f.name) if value else "--no-" + _flag(f.name)[2:])
        elif isinstance(value, dict):
            argv += [_flag(f.name), ",".join(f"{k}={v}" for k, v in value.items())]
        else:
            argv += [_flag(f.name), str(value)]
    return argv


def build_arg_parser(prog: str = "python -m batchrun.emulator") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Local emulator of the Anthropic API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    for f in fields(EmulatorConfig):
        kind = str(f.type)
        if kind == "bool":
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction)
        elif kind in ("str | None", "dict[str, float]"):
            parser.add_argument(_flag(f.name), dest=f.name)
        else:
            parser.add_argument(_flag(f.name), dest=f.name, type=int if kind == "int" else float)
    return parser


class FlagError(ValueError):
    """A flag the emulator cannot take: one line, said by whoever started it (`batchrun emulator`, `--emulate`)."""


def config_from_argv(argv: list[str] | None = None) -> tuple[EmulatorConfig, str, int]:
    """Parse command-line flags into (config, host, port); a bad flag raises FlagError (argparse's own usage
    screen is not printed)."""
    parser = build_arg_parser()

    def refuse(message: str) -> NoReturn:
        raise FlagError(message)

    parser.error = refuse  # type: ignore[method-assign]
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    try:
        config = EmulatorConfig(**{k: v for k, v in args.items() if v is not None})
    except ValueError as exc:
        raise FlagError(str(exc)) from None
    return config, host, port
