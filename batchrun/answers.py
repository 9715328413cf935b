"""What a reply means: its text, the data a schema job asked for, and whether it is an answer at all.

A reply can come back 200 and still not be an answer: the model refused (`refusal`), it was cut at `max_tokens`,
or a schema job's JSON does not parse or does not validate (`invalid_output`). Only `invalid_output` is worth
sending again as is; the others fail the item with their own error type (a retry with a larger `max_tokens` or
another model is the user's call: `batchrun retry RUN --error-type max_tokens --max-tokens N`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from batchrun.quickschema import compile_schema

if TYPE_CHECKING:
    from batchrun.job import Job

INVALID_OUTPUT = "invalid_output"
REFUSAL = "refusal"
MAX_TOKENS = "max_tokens"
ANSWER_ERRORS = (INVALID_OUTPUT, REFUSAL, MAX_TOKENS)
MAX_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class Verdict:
    """A reply judged: `error_type` None means an answer (with `data` for a schema job)."""

    stop_reason: str | None
    data: Any = None
    error_type: str | None = None
    message: str | None = None
    text: str | None = None  # the reply text the data was parsed from (structured output)

    @property
    def ok(self) -> bool:
        return self.error_type is None

    @property
    def worth_retrying(self) -> bool:
        """A new request may well get a valid answer; a refusal or a cut reply would come back the same."""
        return self.error_type == INVALID_OUTPUT

    def data_json(self) -> str | None:
        return None if self.data is None else orjson.dumps(self.data).decode()

    def stored_data(self) -> str | None:
        """The data as the store keeps it: '' when the reply's text is exactly the data's compact JSON (the
        store then holds it once, in the result), else the data's JSON."""
        data = self.data_json()
        return "" if data is not None and data == self.text else data


def reply_text(message: dict[str, Any]) -> str:
    """The text blocks of a reply, joined."""
    return "".join(
        b.get("text") or "" for b in message.get("content") or [] if isinstance(b, dict) and b.get("type") == "text"
    )


class Judge:
    """Judges the replies of one job; the schema's validator is built once."""

    def __init__(self, job: Job) -> None:
        self.schema = job.schema
        self.via_tool = job.schema_via == "tool"
        self.accept_truncated = job.accept_truncated
        self.validator = None
        if self.schema is not None:
            from jsonschema import Draft202012Validator

            self.validator = Draft202012Validator(self.schema)
        self.quick = compile_schema(self.schema) if self.schema is not None else None

    def __call__(self, message: dict[str, Any]) -> Verdict:
        stop = message.get("stop_reason")
        if stop == REFUSAL:
            return Verdict(stop, error_type=REFUSAL, message=_refusal_message(message))
        if stop == MAX_TOKENS and (self.schema is not None or not self.accept_truncated):
            usage = message.get("usage") or {}
            return Verdict(
                stop,
                error_type=MAX_TOKENS,
                message=f"the reply was cut at max_tokens ({usage.get('output_tokens', '?')} output tokens): "
                "retry with a larger max_tokens (`batchrun retry RUN --error-type max_tokens --max-tokens N`)"
                + ("" if self.schema is not None else ", or set accept_truncated = true in the job"),
            )
        if self.validator is None:
            return Verdict(stop)
        return self._validate(stop, message)

    def judges_like(self, schema: Any, schema_via: str | None, accept_truncated: bool) -> bool:
        """Whether a job with these settings judges every reply as this one does (its answers are this job's)."""
        return _judging(schema, schema_via == "tool", accept_truncated) == _judging(
            self.schema, self.via_tool, self.accept_truncated
        )

    def accepts_stored(self, result: str | bytes) -> tuple[bool, str | None]:
        """Whether a stored succeeded result is an answer for this job, and the data to store with it: the
        response cache serves another run's reply only when this job would have accepted it as a new reply."""
        try:
            stored = orjson.loads(result)
        except (orjson.JSONDecodeError, TypeError):
            return False, None
        message = stored.get("message") if isinstance(stored, dict) else None
        if not isinstance(message, dict):
            return False, None
        verdict = self(message)
        return verdict.ok, verdict.stored_data() if verdict.ok else None

    def _validate(self, stop: str | None, message: dict[str, Any]) -> Verdict:
        if self.via_tool:
            blocks = [b for b in message.get("content") or [] if isinstance(b, dict) and b.get("type") == "tool_use"]
            if not blocks:
                return Verdict(stop, error_type=INVALID_OUTPUT, message="the reply has no tool_use block")
            data, text = blocks[0].get("input"), None
        else:
            text = reply_text(message)
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError as e:
                return Verdict(stop, error_type=INVALID_OUTPUT, message=_cut(f"the reply is not valid JSON: {e}"))
        if self.quick is not None and self.quick(data):
            return Verdict(stop, data=data, text=text)
        from jsonschema.exceptions import best_match

        error = best_match(self.validator.iter_errors(data))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            problem = f"the reply fails the schema at {where}: {error.message}"
            return Verdict(stop, error_type=INVALID_OUTPUT, message=_cut(problem))
        return Verdict(stop, data=data, text=text)


def _judging(schema: Any, via_tool: bool, accept_truncated: bool) -> tuple[Any, bool, bool]:
    """What decides a verdict: the schema and how it is asked for; truncation is accepted only without a schema."""
    return schema, schema is not None and via_tool, schema is None and bool(accept_truncated)


def _refusal_message(message: dict[str, Any]) -> str:
    text = reply_text(message).strip()
    return _cut("the model declined to answer" + (f": {text}" if text else ""))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def failed_result(verdict: Verdict, message: dict[str, Any], request_id: str | None) -> str:
    """The stored result of a reply that is not an answer: an errored result in the Message Batches format (so a
    JSONL export stays readable by anything that reads batch results), with the reply itself kept under
    `message` for whoever wants to look at it."""
    body = {
        "type": "error",
        "error": {"type": verdict.error_type, "message": verdict.message},
        "request_id": request_id,
    }
    return orjson.dumps({"type": "errored", "error": body, "message": message}).decode()


def item_cost(model: str, via: str, usage: dict[str, Any], job: Job) -> float | None:
    """What the replies of one item cost (None: no price known for the model)."""
    from batchrun.pricing import usage_cost

    return usage_cost(model, via, usage, job.prices, job.cache_ttl)


def add_usage(total: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    """Usage of several replies to one item, summed (every reply is billed, the invalid ones too)."""
    out = dict(total)
    for key in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
        if usage.get(key) or key in total:
            out[key] = (total.get(key) or 0) + (usage.get(key) or 0)
    created = usage.get("cache_creation")
    if isinstance(created, dict):
        before = total.get("cache_creation") if isinstance(total.get("cache_creation"), dict) else {}
        out["cache_creation"] = {k: (before.get(k) or 0) + (created.get(k) or 0) for k in set(before) | set(created)}
    return out
