"""Deterministic replies: what the emulator answers for a Messages request body.

Pure functions with no aiohttp import, so tests and batchrun can predict replies cheaply. A reply is a
function of the request (and, when a fault flag picked one, of that fault): thinking block when thinking is
on, a `tool_use` block when a tool is forced, JSON valid against the schema for structured outputs, else
text; `stop_sequences` cut the text before the first one that occurs.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from .divergence import TEXT, diverge_value, diverging_fields, question, share_of
from .media import block_tokens
from .schema_gen import generate

BASE_INPUT_TOKENS = 4
MESSAGE_OVERHEAD_TOKENS = 3
PREFIX_TOKENS = 5  # "emu-<16 hex>:" counts as 5 output tokens
TOOL_USE_TOKENS = 10  # the tool_use block's framing, on top of its JSON input
MIN_REPLY_TOKENS, MAX_REPLY_TOKENS = 5, 60
MIN_THINKING_TOKENS, MAX_THINKING_TOKENS = 8, 40
# Three-letter words: each word plus its space is 4 characters, about one token.
WORDS = ("ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "jay", "koi", "owl", "pig", "ram", "yak", "elk", "bat")
DELTA_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
# Reply faults (see faults.FaultInjector.reply_fault): the model's answer goes wrong, the HTTP exchange does not.
INVALID_JSON = "invalid_json"
MISSING_REQUIRED = "missing_required"
TRUNCATED = "truncated"
REFUSAL = "refusal"
REPLY_FAULTS = (INVALID_JSON, MISSING_REQUIRED, TRUNCATED, REFUSAL)


class Unit(NamedTuple):
    """One piece of the prompt, in the order the API reads it (tools, system, messages)."""

    tokens: int
    data: bytes  # canonical bytes, for prefix hashing
    cache_control: dict | None


class Reply(NamedTuple):
    text: str  # the text block's text ("" when the reply has none)
    output_tokens: int
    stop_reason: str
    content: list[dict]
    stop_sequence: str | None = None


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
    sized = block_tokens(body) if body.get("type") in ("image", "document") else None
    if sized is not None:
        tokens = sized
    else:
        tokens = _text_tokens(text) if isinstance(text, str) else _text_tokens(data.decode())
    return Unit(tokens, data, cache_control if isinstance(cache_control, dict) else None)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _message_units(content: Any) -> list[Unit]:
    units: list[Unit] = []
    for block in _as_list(content):
        if isinstance(block, dict) and block.get("type") == "tool_result" and isinstance(block.get("content"), list):
            inner = [_block_unit(b) for b in block["content"]]
            head = _block_unit({k: v for k, v in block.items() if k != "content"})
            data = head.data + b"".join(u.data for u in inner)
            units.append(Unit(head.tokens + sum(u.tokens for u in inner), data, head.cache_control))
        else:
            units.append(_block_unit(block))
    return units


def input_units(params: dict) -> list[Unit]:
    """The prompt split into token-counted units; prompt caching hashes prefixes of this list."""
    units = [_block_unit(tool) for tool in _as_list(params.get("tools"))]
    units += [_block_unit(block) for block in _as_list(params.get("system"))]
    messages = params.get("messages")
    for message in messages if isinstance(messages, list) else []:
        role = message.get("role") if isinstance(message, dict) else None
        units.append(Unit(MESSAGE_OVERHEAD_TOKENS, f"<{role}>".encode(), None))
        units += _message_units(message.get("content") if isinstance(message, dict) else None)
    top_level = params.get("cache_control")
    if isinstance(top_level, dict) and units:
        # Top-level cache_control marks the last cacheable block of the request.
        units[-1] = units[-1]._replace(cache_control=top_level)
    return units


def count_input_tokens(params: dict) -> int:
    return BASE_INPUT_TOKENS + sum(unit.tokens for unit in input_units(params))


def reply_tokens(params: dict) -> int:
    """Output tokens of the full (untruncated) text reply: 5..60, derived from the request key."""
    span = MAX_REPLY_TOKENS - MIN_REPLY_TOKENS + 1
    return MIN_REPLY_TOKENS + int(request_key(params)[:8], 16) % span


def _filler(key: str, count: int) -> list[str]:
    digest = hashlib.sha256(key.encode()).hexdigest()  # 64 hex digits >= MAX_REPLY_TOKENS words
    return [WORDS[int(ch, 16)] for ch in digest[:count]]


# ---- what the request asks for ----------------------------------------------------------------


def thinking_on(params: dict) -> bool:
    thinking = params.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def forced_tool(params: dict) -> dict | None:
    """The custom tool a `tool` or `any` tool_choice makes the model call, or None."""
    choice = params.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") not in ("tool", "any"):
        return None
    tools = [
        t for t in _as_list(params.get("tools")) if isinstance(t, dict) and isinstance(t.get("input_schema"), dict)
    ]
    if choice["type"] == "tool":
        return next((t for t in tools if t.get("name") == choice.get("name")), None)
    return tools[int(request_key(params)[8:12], 16) % len(tools)] if tools else None


def output_schema(params: dict) -> dict | None:
    config = params.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return fmt["schema"]
    return None


def wants_structured(params: dict) -> bool:
    """True when a schema governs the reply (structured output or a forced tool): schema faults apply."""
    return output_schema(params) is not None or forced_tool(params) is not None


def expected_output(params: dict, divergence: Mapping[str, float] | None = None) -> Any:
    """The object the emulator answers a structured request with: the parsed JSON text for
    `output_config.format`, the tool_use `input` for a forced tool; None for a plain text request."""
    if divergence:
        reply = expected_reply(params, None, divergence)
        last = reply.content[-1]
        return last["input"] if last.get("type") == "tool_use" else orjson.loads(reply.text)
    tool = forced_tool(params)
    if tool is not None:
        return generate(tool["input_schema"], request_key(params))
    schema = output_schema(params)
    return None if schema is None else generate(schema, request_key(params))


def _drop_required(value: Any, schema: dict) -> Any:
    required = [name for name in schema.get("required") or [] if isinstance(value, dict) and name in value]
    if not required:
        return value
    return {k: v for k, v in value.items() if k != required[0]}


# ---- building the reply -----------------------------------------------------------------------


def _thinking_block(key: str, params: dict, room: int) -> tuple[dict, int]:
    budget = params["thinking"].get("budget_tokens")
    tokens = MIN_THINKING_TOKENS + int(key[4:8], 16) % (MAX_THINKING_TOKENS - MIN_THINKING_TOKENS + 1)
    tokens = max(1, min(tokens, room, budget if isinstance(budget, int) else tokens))
    words = _filler(key[::-1], max(0, tokens - PREFIX_TOKENS))
    text = " ".join([f"emu-think-{key}:", *words])
    signature = base64.b64encode(hashlib.sha256(f"sig:{key}:{text}".encode()).digest() * 2).decode()
    return {"type": "thinking", "thinking": text, "signature": signature}, tokens


def _plain_text(key: str, params: dict, room: int, fault: str | None) -> tuple[str, int, str]:
    full = reply_tokens(params)
    tokens = min(full, room)
    cut = room < full
    if fault == TRUNCATED:
        tokens, cut = max(1, min(full, room) // 2), True
    words = _filler(key, max(0, tokens - PREFIX_TOKENS))
    text = " ".join([f"emu-{key}:", *words])
    return text, (room if fault == TRUNCATED else tokens), "max_tokens" if cut else "end_turn"


def _json_text(key: str, params: dict, schema: dict, room: int, fault: str | None) -> tuple[str, int, str]:
    value = generate(schema, key)
    if fault == MISSING_REQUIRED:
        value = _drop_required(value, schema)
    text = orjson.dumps(value).decode()
    if fault == INVALID_JSON:
        text = text[: max(1, len(text) // 2)]
    tokens = _text_tokens(text)
    if fault == TRUNCATED or tokens > room:
        keep = len(text) // 2 if fault == TRUNCATED else room * 4
        return text[: min(keep, room * 4)], room, "max_tokens"
    return text, tokens, "end_turn"


def _tool_use(key: str, tool: dict, room: int, fault: str | None) -> tuple[dict, int, str]:
    value = generate(tool["input_schema"], key)
    if fault == MISSING_REQUIRED:
        value = _drop_required(value, tool["input_schema"])
    tokens = TOOL_USE_TOKENS + _text_tokens(orjson.dumps(value).decode())
    block = {"type": "tool_use", "id": f"toolu_emu{key}", "name": tool["name"], "input": value}
    if fault == TRUNCATED or tokens > room:
        return {**block, "input": {}}, room, "max_tokens"
    return block, tokens, "tool_use"


def _apply_stop_sequences(text: str, tokens: int, stops: Any) -> tuple[str, int, str | None]:
    hits = [(text.find(s), s) for s in _as_list(stops) if isinstance(s, str) and s and s in text]
    if not hits:
        return text, tokens, None
    at, stop = min(hits)
    cut = text[:at]
    return cut, max(1, min(tokens, _text_tokens(cut))), stop


def expected_reply(params: dict, fault: str | None = None, divergence: Mapping[str, float] | None = None) -> Reply:
    """The reply's content, output token count and stop reason; output_tokens <= max_tokens.

    `fault` is one of REPLY_FAULTS when the server's fault flags picked one for this attempt, else None.
    `divergence` (the config's model_divergence): when not empty, models answer as the reference would, except
    for their share of wrong answers (see divergence.py).
    """
    if divergence:
        return _diverged_reply(params, fault, divergence)
    key = request_key(params)
    max_tokens = params.get("max_tokens")
    room = max_tokens if isinstance(max_tokens, int) and max_tokens >= 1 else MAX_REPLY_TOKENS * 1000
    content: list[dict] = []
    used = 0
    if thinking_on(params):
        block, used = _thinking_block(key, params, max(1, room - 1))
        content.append(block)
    room = max(1, room - used)
    if fault == REFUSAL:  # the classifiers stop the reply after its first tokens
        text = f"emu-{key}:"
        return Reply(text, used + min(room, PREFIX_TOKENS), "refusal", [*content, {"type": "text", "text": text}])
    tool = forced_tool(params)
    schema = output_schema(params)
    if tool is not None:
        block, tokens, stop_reason = _tool_use(key, tool, room, fault)
        return Reply("", used + tokens, stop_reason, [*content, block])
    if schema is not None:
        text, tokens, stop_reason = _json_text(key, params, schema, room, fault)
    else:
        text, tokens, stop_reason = _plain_text(key, params, room, fault)
    text, tokens, stop_sequence = _apply_stop_sequences(text, tokens, params.get("stop_sequences"))
    if stop_sequence is not None:
        stop_reason = "stop_sequence"
    content.append({"type": "text", "text": text})
    return Reply(text, used + tokens, stop_reason, content, stop_sequence)


def _diverged_reply(params: dict, fault: str | None, divergence: Mapping[str, float]) -> Reply:
    reference = expected_reply(question(params), fault)
    if fault is not None or share_of(params.get("model"), divergence) <= 0:
        return reference
    tool = forced_tool(params)
    schema = tool["input_schema"] if tool is not None else output_schema(params)
    if schema is None:
        if TEXT not in diverging_fields(params, [TEXT], divergence) or reference.stop_reason == "max_tokens":
            return reference
        return expected_reply({**question(params), "model": params.get("model")}, fault)
    content = list(reference.content)
    last = content[-1]
    if last.get("type") == "tool_use":
        if reference.stop_reason != "tool_use":
            return reference
        value = diverge_value(params, schema, last["input"], divergence)
        content[-1] = {**last, "input": value}
        tokens = reference.output_tokens - _text_tokens(orjson.dumps(last["input"]).decode())
        return reference._replace(content=content, output_tokens=tokens + _text_tokens(orjson.dumps(value).decode()))
    if reference.stop_reason != "end_turn":
        return reference
    value = diverge_value(params, schema, orjson.loads(reference.text), divergence)
    text = orjson.dumps(value).decode()
    content[-1] = {**last, "text": text}
    tokens = reference.output_tokens - _text_tokens(reference.text) + _text_tokens(text)
    return reference._replace(text=text, content=content, output_tokens=tokens)


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
    fault: str | None = None,
    divergence: Mapping[str, float] | None = None,
) -> dict:
    """The full Message JSON for `params`; cache numbers come from the server's prompt cache."""
    reply = expected_reply(params, fault, divergence)
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
        "content": reply.content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": usage,
    }


# ---- streaming ----------------------------------------------------------------------------------


def _word_pieces(text: str, words_per_delta: int) -> list[str]:
    words = text.split(" ")
    return [
        " ".join(words[i : i + words_per_delta]) + (" " if i + words_per_delta < len(words) else "")
        for i in range(0, len(words), words_per_delta)
    ]


def _block_events(index: int, block: dict, words_per_delta: int) -> list[dict]:
    kind = block["type"]
    if kind == "text":
        start, deltas = (
            {"type": "text", "text": ""},
            [{"type": "text_delta", "text": piece} for piece in _word_pieces(block["text"], words_per_delta) if piece],
        )
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": p} for p in _word_pieces(block["thinking"], words_per_delta)]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:  # tool_use
        start = {**block, "input": {}}
        raw = orjson.dumps(block["input"]).decode() if block["input"] else ""
        deltas = [{"type": "input_json_delta", "partial_json": raw[i : i + 16]} for i in range(0, len(raw), 16)]
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def stream_events(message: dict, words_per_delta: int = 3) -> list[dict]:
    """The SSE event payloads that stream `message`, in the order the API sends them."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**usage, "output_tokens": 1}
    # message_delta usage is cumulative: the SDK overwrites its snapshot with these values.
    final_usage = {name: usage[name] for name in DELTA_USAGE_FIELDS}
    blocks: list[dict] = []
    for index, block in enumerate(message["content"]):
        blocks += _block_events(index, block, words_per_delta)
    if blocks:
        blocks.insert(1, {"type": "ping"})
    return [
        {"type": "message_start", "message": start},
        *blocks,
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
            "usage": final_usage,
        },
        {"type": "message_stop"},
    ]
