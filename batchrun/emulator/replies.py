"""Deterministic replies: what the emulator answers for a Messages request body.

Pure functions with no aiohttp import, so tests and batchrun can predict replies cheaply.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, NamedTuple

import orjson

KNOWN_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "stream",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "output_config",
        "container",
        "mcp_servers",
        "inference_geo",
        "speed",
        "context_management",
        # Sent by anthropic 2.12's messages.create when given:
        "cache_control",
        "diagnostics",
    }
)
BASE_INPUT_TOKENS = 4
MESSAGE_OVERHEAD_TOKENS = 3
PREFIX_TOKENS = 5  # "emu-<16 hex>:" counts as 5 output tokens
MIN_REPLY_TOKENS, MAX_REPLY_TOKENS = 5, 60
# Three-letter words: each word plus its space is 4 characters, about one token.
WORDS = (
    "ant",
    "bee",
    "cat",
    "dog",
    "eel",
    "fox",
    "gnu",
    "hen",
    "jay",
    "koi",
    "owl",
    "pig",
    "ram",
    "yak",
    "elk",
    "bat",
)
MODEL_ID_RE = re.compile(r"^claude-")
DELTA_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


class Unit(NamedTuple):
    """One piece of the prompt, in the order the API reads it (tools, system, messages)."""

    tokens: int
    data: bytes  # canonical bytes, for prefix hashing
    cache_control: dict | None


class Reply(NamedTuple):
    text: str
    output_tokens: int
    stop_reason: str


def canonical(params: dict) -> bytes:
    return orjson.dumps({k: v for k, v in params.items() if k != "stream"}, option=orjson.OPT_SORT_KEYS)


def request_key(params: dict) -> str:
    """16 hex chars identifying a request body across retries (`stream` is ignored)."""
    return hashlib.sha256(canonical(params)).hexdigest()[:16]


def _text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _block_unit(block: Any) -> Unit:
    if isinstance(block, str):
        return Unit(_text_tokens(block), block.encode(), None)
    if not isinstance(block, dict):
        data = orjson.dumps(block)
        return Unit(_text_tokens(data.decode()), data, None)
    cache_control = block.get("cache_control")
    body = {k: v for k, v in block.items() if k != "cache_control"}
    data = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    text = body.get("text") if body.get("type") == "text" else None
    tokens = _text_tokens(text) if isinstance(text, str) else _text_tokens(data.decode())
    return Unit(tokens, data, cache_control if isinstance(cache_control, dict) else None)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def input_units(params: dict) -> list[Unit]:
    """The prompt split into token-counted units; prompt caching hashes prefixes of this list."""
    units = [_block_unit(tool) for tool in _as_list(params.get("tools"))]
    units += [_block_unit(block) for block in _as_list(params.get("system"))]
    messages = params.get("messages")
    for message in messages if isinstance(messages, list) else []:
        role = message.get("role") if isinstance(message, dict) else None
        units.append(Unit(MESSAGE_OVERHEAD_TOKENS, f"<{role}>".encode(), None))
        content = message.get("content") if isinstance(message, dict) else None
        units += [_block_unit(block) for block in _as_list(content)]
    top_level = params.get("cache_control")
    if isinstance(top_level, dict) and units:
        # Top-level cache_control marks the last cacheable block of the request.
        units[-1] = units[-1]._replace(cache_control=top_level)
    return units


def count_input_tokens(params: dict) -> int:
    return BASE_INPUT_TOKENS + sum(unit.tokens for unit in input_units(params))


def reply_tokens(params: dict) -> int:
    """Output tokens of the full (untruncated) reply: 5..60, derived from the request key."""
    span = MAX_REPLY_TOKENS - MIN_REPLY_TOKENS + 1
    return MIN_REPLY_TOKENS + int(request_key(params)[:8], 16) % span


def _filler(key: str, count: int) -> list[str]:
    digest = hashlib.sha256(key.encode()).hexdigest()  # 64 hex digits >= MAX_REPLY_TOKENS words
    return [WORDS[int(ch, 16)] for ch in digest[:count]]


def expected_reply(params: dict) -> Reply:
    """The reply text, its output token count and stop reason; output_tokens <= max_tokens."""
    key = request_key(params)
    full = reply_tokens(params)
    max_tokens = params.get("max_tokens")
    limit = max_tokens if isinstance(max_tokens, int) and max_tokens >= 1 else full
    tokens = min(full, limit)
    words = _filler(key, max(0, tokens - PREFIX_TOKENS))
    text = " ".join([f"emu-{key}:", *words])
    return Reply(text, tokens, "max_tokens" if limit < full else "end_turn")


def expected_text(params: dict) -> str:
    return expected_reply(params).text


def build_usage(
    params: dict,
    output_tokens: int,
    *,
    cache_creation: int = 0,
    cache_read: int = 0,
    cache_ttl: str = "5m",
    service_tier: str = "standard",
) -> dict:
    long_lived = cache_ttl == "1h"
    creation = {
        "ephemeral_5m_input_tokens": 0 if long_lived else cache_creation,
        "ephemeral_1h_input_tokens": cache_creation if long_lived else 0,
    }
    return {
        "input_tokens": count_input_tokens(params) - cache_creation - cache_read,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
        "cache_creation": creation,
        "service_tier": service_tier,
    }


def build_message(
    params: dict,
    *,
    msg_id: str,
    cache_creation: int = 0,
    cache_read: int = 0,
    cache_ttl: str = "5m",
    service_tier: str = "standard",
) -> dict:
    """The full Message JSON for `params`; cache numbers come from the server's prompt cache."""
    reply = expected_reply(params)
    usage = build_usage(
        params,
        reply.output_tokens,
        cache_creation=cache_creation,
        cache_read=cache_read,
        cache_ttl=cache_ttl,
        service_tier=service_tier,
    )
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def model_error(params: dict) -> str | None:
    """The 404 not_found_error message for an unknown model, or None."""
    model = params.get("model")
    return None if MODEL_ID_RE.match(model) else f"model: {model}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _content_error(path: str, content: Any) -> str | None:
    if isinstance(content, str):
        return None if content else f"{path}: messages must have non-empty content"
    if not isinstance(content, list):
        return f"{path}.content: Input should be a valid list"
    if not content:
        return f"{path}: messages must have non-empty content"
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return f"{path}.content.{j}: Input should be a valid dictionary with a 'type' field"
        if block["type"] == "text":
            if not isinstance(block.get("text"), str):
                return f"{path}.content.{j}.text: Field required"
            if not block["text"]:
                return "messages: text content blocks must be non-empty"
    return None


def _messages_error(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        path = f"messages.{i}"
        if not isinstance(message, dict):
            return f"{path}: Input should be a valid dictionary"
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            return f"{path}.{extra[0]}: Extra inputs are not permitted"
        if message.get("role") not in ("user", "assistant"):
            return f"{path}.role: Input should be 'user' or 'assistant'"
        if "content" not in message:
            return f"{path}.content: Field required"
        error = _content_error(path, message["content"])
        if error:
            return error
    if messages[0]["role"] != "user":
        return 'messages: first message must use the "user" role'
    return None


def _system_error(system: Any) -> str | None:
    if isinstance(system, str):
        return None
    if not isinstance(system, list):
        return "system: Input should be a valid string or a list of text blocks"
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            return f"system.{i}.type: Input should be 'text'"
        if not isinstance(block.get("text"), str):
            return f"system.{i}.text: Field required"
        if not block["text"]:
            return "system: text content blocks must be non-empty"
    return None


def _sampling_error(params: dict) -> str | None:
    for name, high in (("temperature", 1), ("top_p", 1)):
        if name in params:
            value = params[name]
            if not _is_number(value):
                return f"{name}: Input should be a valid number"
            if not 0 <= value <= high:
                return f"{name}: Input should be between 0 and {high}"
    if "top_k" in params and (not _is_int(params["top_k"]) or params["top_k"] < 0):
        return "top_k: Input should be a non-negative integer"
    stops = params.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        return "stop_sequences: Input should be a valid list of strings"
    if "stream" in params and not isinstance(params["stream"], bool):
        return "stream: Input should be a valid boolean"
    return None


def validate_params(params: Any) -> str | None:
    """The API-style 400 message for an invalid Messages body, or None if it is acceptable."""
    if not isinstance(params, dict):
        return "Input should be a valid dictionary"
    extra = sorted(set(params) - KNOWN_FIELDS)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    for name in ("model", "max_tokens", "messages"):
        if name not in params:
            return f"{name}: Field required"
    if not isinstance(params["model"], str) or not params["model"]:
        return "model: Input should be a valid string"
    if not _is_int(params["max_tokens"]):
        return "max_tokens: Input should be a valid integer"
    if params["max_tokens"] < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    error = _messages_error(params["messages"])
    if error is None and "system" in params:
        error = _system_error(params["system"])
    return error or _sampling_error(params)


def stream_events(message: dict, words_per_delta: int = 3) -> list[dict]:
    """The SSE event payloads that stream `message`, in the order the API sends them."""
    text = message["content"][0]["text"]
    words = text.split(" ")
    pieces = [
        " ".join(words[i : i + words_per_delta]) + (" " if i + words_per_delta < len(words) else "")
        for i in range(0, len(words), words_per_delta)
    ]
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**usage, "output_tokens": 1}
    # message_delta usage is cumulative: the SDK overwrites its snapshot with these values.
    final_usage = {name: usage[name] for name in DELTA_USAGE_FIELDS}
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            for piece in pieces
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": final_usage,
        },
        {"type": "message_stop"},
    ]
