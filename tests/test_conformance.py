"""Conformance: every emulator endpoint driven by the official SDK in strict mode.

Valid requests must parse as the SDK's own types; each invalid one must get the API's status and error type.
A green run here is what makes a green `--emulate` run mean something.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import jsonschema
import orjson
import pytest
from anthropic.types import Message, MessageTokensCount
from anthropic.types.messages import DeletedMessageBatch, MessageBatch, MessageBatchIndividualResponse

from batchrun.emulator.media import image_tokens
from batchrun.emulator.models import MODELS
from batchrun.emulator.replies import (
    WORDS,
    build_message,
    count_input_tokens,
    expected_output,
    expected_reply,
    request_key,
)
from tests.conftest import sdk_http_client

MODEL = "claude-haiku-4-5"
TICKET_SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "account", "other"]},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
        "sentiment": {"type": "string", "enum": ["negative", "neutral", "positive"]},
        "summary": {"type": "string", "maxLength": 120},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "opened": {"type": "string", "format": "date"},
    },
    "required": ["category", "urgency", "sentiment", "summary"],
    "additionalProperties": False,
}
TOOL = {"name": "record_ticket", "description": "Record the ticket's fields.", "input_schema": TICKET_SCHEMA}


def body(text: str = "hello", **extra: Any) -> dict:
    return {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": text}], **extra}


def png(width: int, height: int, size: int = 0) -> str:
    raw = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00"
    return base64.b64encode(raw + b"\x00" * max(0, size - len(raw) - 4) + b"IEND").decode()


def jpeg(width: int, height: int) -> str:
    raw = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    raw += b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return base64.b64encode(raw + b"\xff\xd9").decode()


def gif(width: int, height: int) -> str:
    return base64.b64encode(b"GIF89a" + struct.pack("<HH", width, height) + b"\x00" * 8).decode()


def webp(width: int, height: int) -> str:
    chunk = b"VP8X" + b"\x0a\x00\x00\x00" + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    chunk += (height - 1).to_bytes(3, "little")
    return base64.b64encode(b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk).decode()


def image(data: str, media_type: str = "image/png") -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def blocks(message: Any) -> list[dict]:
    """Content blocks as plain dicts (the stream helper's ParsedTextBlock adds a parsed_output field)."""
    return [{k: v for k, v in block.to_dict().items() if k != "parsed_output"} for block in message.content]


def user(*blocks: dict) -> dict:
    return {"role": "user", "content": list(blocks)}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


@pytest.fixture
async def sdk(emulator) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(
        api_key="test-key",
        base_url=emulator.base_url,
        max_retries=0,
        _strict_response_validation=True,
        http_client=sdk_http_client(),
    )
    yield client
    await client.close()


async def post(sdk: anthropic.AsyncAnthropic, path: str, payload: Any, cast_to: type = Message, **options: Any):
    """A raw body through the SDK's own request path (strict validation, error mapping)."""
    return await sdk.post(path, body=payload, cast_to=cast_to, options=options)


# ---- valid requests parse as the SDK's types ------------------------------------------------------


async def test_every_known_model_answers_and_unknown_ones_are_404(sdk):
    for spec in MODELS:
        for model in (spec.id, *spec.aliases):
            message = await sdk.messages.create(**{**body(), "model": model})
            assert message.model == model
    for endpoint in ("/v1/messages", "/v1/messages/count_tokens"):
        payload = {**body(), "model": "claude-made-up"}
        if endpoint.endswith("count_tokens"):
            del payload["max_tokens"]
        with pytest.raises(anthropic.NotFoundError) as err:
            await post(sdk, endpoint, payload)
        assert err.value.body["error"] == {"type": "not_found_error", "message": "model: claude-made-up"}


async def test_models_endpoints_list_the_table(sdk):
    listed = [model.id async for model in sdk.models.list(limit=7)]
    assert listed == [spec.id for spec in MODELS]
    alias = await sdk.models.retrieve("claude-haiku-4-5")
    assert (alias.id, alias.max_tokens, alias.max_input_tokens) == ("claude-haiku-4-5", 64_000, 200_000)
    with pytest.raises(anthropic.NotFoundError):
        await sdk.models.retrieve("claude-made-up")


async def test_sdk_model_literal_ids_are_all_known():
    from typing import get_args

    from anthropic.types import Model

    literal_ids = set(get_args(get_args(Model)[0]))
    known = {name for spec in MODELS for name in (spec.id, *spec.aliases)}
    assert literal_ids <= known


async def test_rate_limit_headers_on_every_response_by_default(sdk):
    ok = await sdk.messages.with_raw_response.create(**body())
    counted = await sdk.messages.with_raw_response.count_tokens(model=MODEL, messages=body()["messages"])
    with pytest.raises(anthropic.BadRequestError) as bad:
        await post(sdk, "/v1/messages", {**body(), "max_tokens": 0})
    for headers in (ok.headers, counted.headers, bad.value.response.headers):
        assert headers["anthropic-ratelimit-requests-limit"] == "4000"
        assert headers["anthropic-ratelimit-input-tokens-limit"] == "2000000"
        assert headers["anthropic-ratelimit-output-tokens-limit"] == "400000"
        assert headers["anthropic-ratelimit-tokens-limit"] in ("2000000", "400000")
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "3999"


async def test_thinking_block_with_signature_before_the_text(sdk):
    p = body("think first", max_tokens=3000, thinking={"type": "enabled", "budget_tokens": 2000})
    message = await post(sdk, "/v1/messages", p)
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking, answer = message.content
    assert thinking.signature and thinking.thinking.startswith(f"emu-think-{request_key(p)}:")
    assert answer.text == expected_reply(p).text
    assert message.usage.output_tokens == expected_reply(p).output_tokens <= 3000
    assert message.usage.output_tokens > len(answer.text.split()) + 1  # thinking tokens count too
    async with sdk.messages.stream(**p) as stream:
        kinds = [event.delta.type async for event in stream if event.type == "content_block_delta"]
        final = await stream.get_final_message()
    assert {"thinking_delta", "signature_delta", "text_delta"} <= set(kinds)
    assert blocks(final) == blocks(message)


@pytest.mark.parametrize("choice", [{"type": "tool", "name": "record_ticket"}, {"type": "any"}])
async def test_forced_tool_gets_a_valid_tool_use(sdk, choice):
    other = {"name": "noop", "input_schema": {"type": "object", "properties": {}}}
    p = body("Printer on fire", tools=[TOOL] if choice["type"] == "any" else [other, TOOL], tool_choice=choice)
    message = await post(sdk, "/v1/messages", p)
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.name == "record_ticket" and block.id.startswith("toolu_")
    jsonschema.validate(block.input, TICKET_SCHEMA)
    assert block.input == expected_output(p)
    async with sdk.messages.stream(**p) as stream:
        kinds = {event.delta.type async for event in stream if event.type == "content_block_delta"}
        final = await stream.get_final_message()
    assert kinds == {"input_json_delta"}
    assert blocks(final) == blocks(message) and final.stop_reason == "tool_use"


async def test_structured_output_is_valid_json_for_the_schema_and_belongs_to_its_input(sdk):
    answers = []
    for ticket in ("refund please", "app crashes", "cannot log in"):
        p = body(ticket, output_config={"format": {"type": "json_schema", "schema": TICKET_SCHEMA}})
        message = await post(sdk, "/v1/messages", p)
        data = orjson.loads(message.content[0].text)
        jsonschema.validate(data, TICKET_SCHEMA, format_checker=jsonschema.FormatChecker())
        assert data == expected_output(p)
        assert message.stop_reason == "end_turn"
        again = await post(sdk, "/v1/messages", p)
        assert again.content == message.content
        answers.append(data)
    assert len({orjson.dumps(a) for a in answers}) == 3


async def test_stop_sequences_cut_the_text(sdk):
    p = body("say many words", stop_sequences=["never-there", *WORDS])  # every filler word stops it
    message = await sdk.messages.create(**p)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence in WORDS
    assert message.content[0].text == f"emu-{request_key(p)}: "
    assert message.usage.output_tokens < expected_reply(body("say many words")).output_tokens
    async with sdk.messages.stream(**p) as stream:
        final = await stream.get_final_message()
    assert blocks(final) == blocks(message) and final.stop_sequence == message.stop_sequence
    colon = body("x", stop_sequences=[":"])
    assert (await sdk.messages.create(**colon)).content[0].text == f"emu-{request_key(colon)}"
    missing = body("y", stop_sequences=["never-there"])
    assert (await sdk.messages.create(**missing)).stop_reason == "end_turn"


async def test_image_tokens_come_from_the_image_size(sdk):
    base = count_input_tokens(body())
    cases = [
        (png(1000, 1000, size=300_000), "image/png", image_tokens(1000, 1000)),
        (jpeg(4000, 3000), "image/jpeg", image_tokens(4000, 3000)),
        (gif(200, 100), "image/gif", image_tokens(200, 100)),
        (webp(800, 600), "image/webp", image_tokens(800, 600)),
    ]
    for data, media_type, tokens in cases:
        messages = [user(image(data, media_type), text("hello"))]
        counted = await sdk.messages.count_tokens(model=MODEL, messages=messages)
        assert counted.input_tokens == base + tokens, media_type
    assert image_tokens(1000, 1000) == 1334  # 300 KB of PNG used to count as ~100,000 tokens
    assert 1500 <= image_tokens(4000, 3000) <= 1600
    message = await sdk.messages.create(model=MODEL, max_tokens=20, messages=[user(image(png(64, 64)), text("hi"))])
    assert isinstance(message, Message)


async def test_count_tokens_and_batches_parse(sdk, emulator):
    counted = await post(
        sdk, "/v1/messages/count_tokens", {"model": MODEL, "messages": body()["messages"]}, MessageTokensCount
    )
    assert counted.input_tokens == count_input_tokens(body())
    emulator.configure(batch_seconds=0.0)
    requests = [
        {"custom_id": "ok", "params": body("fine")},
        {"custom_id": "unknown-model", "params": {**body(), "model": "claude-made-up"}},
        {"custom_id": "too-long", "params": {**body(), "max_tokens": 10_000_000}},
    ]
    batch = await sdk.messages.batches.create(requests=requests)
    assert isinstance(batch, MessageBatch)
    listed = await sdk.messages.batches.list(limit=5)
    assert [b.id for b in listed.data] == [batch.id]
    ended = await sdk.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    results = {}
    async for line in await sdk.messages.batches.results(batch.id):
        item = MessageBatchIndividualResponse.model_validate(line.to_dict())
        results[item.custom_id] = item.result
    assert results["ok"].message.content == Message.model_validate(build_message(body("fine"), msg_id="x")).content
    assert results["unknown-model"].error.error.type == "not_found_error"
    assert results["too-long"].error.error.type == "invalid_request_error"
    assert "maximum allowed number of output tokens" in results["too-long"].error.error.message
    deleted = await sdk.messages.batches.delete(batch.id)
    assert isinstance(deleted, DeletedMessageBatch)


# ---- faults after the 200 -----------------------------------------------------------------------


async def test_mid_stream_error_is_raised_by_the_sdk_and_a_retry_succeeds(sdk, emulator):
    emulator.configure(p_midstream_error=1.0, max_faults_per_request=1)
    p = body("stream and fail")
    seen = []
    with pytest.raises(anthropic.APIStatusError) as err:
        async with sdk.messages.stream(**p) as stream:
            async for event in stream:
                seen.append(event.type)
    assert type(err.value) is anthropic.APIStatusError  # status 200: no status-specific subclass
    assert err.value.status_code == 200
    assert err.value.body["error"]["type"] == "overloaded_error"
    assert "text" in seen  # deltas arrived before the error
    async with sdk.messages.stream(**p) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == expected_reply(p).text
    assert emulator.stats()["injected"] == {"midstream": 1}


async def test_client_hanging_up_mid_stream_counts_as_aborted(emulator):
    import httpx2

    emulator.configure(stream_event_ms=50)
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with (
        httpx2.AsyncClient(base_url=emulator.base_url, timeout=10) as http,
        http.stream("POST", "/v1/messages", json=body(stream=True), headers=headers) as response,
    ):
        async for _ in response.aiter_bytes():
            break
    for _ in range(40):
        stats = emulator.stats()
        if stats["in_flight"] == 0:
            break
        await asyncio.sleep(0.05)
    assert stats["aborted"] == 1 and stats["in_flight"] == 0
    assert "500" not in stats["by_status"]


async def test_aborted_stream_logs_no_traceback(caplog):
    import httpx2

    from batchrun.emulator.config import EmulatorConfig
    from batchrun.emulator.server import EMULATOR, start

    runner, base_url = await start(EmulatorConfig(stream_event_ms=30))
    try:
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        async with (
            httpx2.AsyncClient(base_url=base_url, timeout=10) as http,
            http.stream("POST", "/v1/messages", json=body(stream=True), headers=headers) as response,
        ):
            async for _ in response.aiter_bytes():
                break
        stats = runner.app[EMULATOR].stats
        for _ in range(40):
            if stats.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert stats.aborted == 1
    finally:
        await runner.cleanup()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]


# ---- invalid requests: status and error type ---------------------------------------------------

DOCS = "https://docs.claude.com"
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "record_ticket", "input": {}}
INVALID_MESSAGES: dict[str, tuple[dict, str]] = {
    "max_tokens over the model's maximum": ({"max_tokens": 10_000_000}, "maximum allowed number of output tokens"),
    "metadata with other keys": ({"metadata": {"user_id": "u", "team": "x"}}, "metadata.team: Extra inputs"),
    "metadata not an object": ({"metadata": "u-1"}, "metadata: Input should be a valid dictionary"),
    "unknown service_tier": ({"service_tier": "priority"}, "service_tier: Input should be"),
    "tools not a list": ({"tools": {"name": "x"}}, "tools: Input should be a valid list"),
    "tool not an object": ({"tools": ["record_ticket"]}, "tools.0: Input should be a valid dictionary"),
    "tool without input_schema": ({"tools": [{"name": "x"}]}, "tools.0.custom.input_schema: Field required"),
    "duplicate tool names": ({"tools": [TOOL, TOOL]}, "Tool names must be unique"),
    "tool_choice without tools": ({"tool_choice": {"type": "any"}}, "tool_choice may only be specified"),
    "tool_choice naming a missing tool": (
        {"tools": [TOOL], "tool_choice": {"type": "tool", "name": "nope"}},
        "Tool 'nope' not found",
    ),
    "tool_result without tool_use": (
        {"messages": [user({"type": "tool_result", "tool_use_id": "toolu_9", "content": "4"})]},
        "unexpected `tool_use_id` found in `tool_result` blocks: toolu_9",
    ),
    "tool_use without tool_result after it": (
        {
            "tools": [TOOL],
            "messages": [user(text("a")), {"role": "assistant", "content": [TOOL_USE]}, user(text("b"))],
        },
        "without `tool_result` blocks immediately after: toolu_1",
    ),
    "unknown content block type": ({"messages": [user({"type": "video", "url": "x"})]}, "Input tag 'video'"),
    "image of another media type": (
        {"messages": [user(image(png(10, 10), "image/bmp"))]},
        "media_type: Input should be 'image/jpeg'",
    ),
    "image data not base64": ({"messages": [user(image("not base64!!"))]}, "valid base64"),
    "image bytes not the declared type": ({"messages": [user(image(gif(4, 4), "image/png"))]}, "does not match"),
    "image over 8000 px": ({"messages": [user(image(png(9000, 10)))]}, "exceed max allowed size: 8000"),
    "more than 100 images": ({"messages": [user(*[image(png(2, 2))] * 101)]}, "A maximum of 100 images"),
    "whitespace-only text": ({"messages": [user(text("  \n "))]}, "must contain non-whitespace text"),
    "whitespace-only string content": (
        {"messages": [{"role": "user", "content": " \t"}]},
        "non-whitespace",
    ),
    "final assistant turn ending in whitespace": (
        {"messages": [user(text("hi")), {"role": "assistant", "content": "The answer is "}]},
        "final assistant content cannot end with trailing whitespace",
    ),
    "whitespace-only stop sequence": ({"stop_sequences": ["END", "  "]}, "stop_sequences.1"),
    "thinking budget under 1024": (
        {"thinking": {"type": "enabled", "budget_tokens": 500}},
        "greater than or equal to 1024",
    ),
    "thinking budget not under max_tokens": (
        {"max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 2000}},
        "`max_tokens` must be greater than `thinking.budget_tokens`",
    ),
    "thinking with temperature other than 1": (
        {"max_tokens": 3000, "temperature": 0.5, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        "`temperature` may only be set to 1 when thinking is enabled",
    ),
    "thinking with top_k": (
        {"max_tokens": 3000, "top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        "`top_k` is not supported when thinking is enabled",
    ),
    "thinking with a forced tool": (
        {
            "max_tokens": 3000,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "tools": [TOOL],
            "tool_choice": {"type": "any"},
        },
        "Thinking may not be enabled when tool_choice forces tool use",
    ),
    "output format other than json_schema": (
        {"output_config": {"format": {"type": "xml"}}},
        "output_config.format.type: Input should be 'json_schema'",
    ),
    "more than 4 cache breakpoints": (
        {"system": [{**text(f"s{i}"), "cache_control": {"type": "ephemeral"}} for i in range(5)]},
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    ),
    "prompt over the context window": (
        {"messages": [user(text("word " * 900_000))]},
        "prompt is too long",
    ),
    "input plus max_tokens over the context window": (
        {"max_tokens": 64_000, "messages": [user(text("word " * 120_000))]},
        "exceed context limit",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_MESSAGES))
async def test_invalid_messages_get_400_invalid_request_error(sdk, case):
    change, fragment = INVALID_MESSAGES[case]
    with pytest.raises(anthropic.BadRequestError) as err:
        await post(sdk, "/v1/messages", {**body(), **change})
    assert err.value.status_code == 400
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert fragment in err.value.body["error"]["message"]
    assert err.value.body["request_id"] == err.value.request_id


async def test_missing_anthropic_version_is_400_on_every_v1_endpoint(sdk, emulator):
    no_version = {"extra_headers": {"anthropic-version": anthropic.omit}}
    calls = [
        sdk.messages.create(**body(), **no_version),
        sdk.messages.count_tokens(model=MODEL, messages=body()["messages"], **no_version),
        sdk.messages.batches.create(requests=[{"custom_id": "a", "params": body()}], **no_version),
        sdk.messages.batches.list(**no_version),
    ]
    for call in calls:
        with pytest.raises(anthropic.BadRequestError, match="anthropic-version") as err:
            await call
        assert err.value.body["error"]["type"] == "invalid_request_error"
    assert emulator.stats()["usage"]["messages"] == {}


@pytest.mark.parametrize("field", ["temperature", "stream", "max_tokens"])
async def test_count_tokens_rejects_fields_it_does_not_take(sdk, field):
    payload = {"model": MODEL, "messages": body()["messages"], field: {"stream": True}.get(field, 1)}
    with pytest.raises(anthropic.BadRequestError, match=f"{field}: Extra inputs are not permitted"):
        await post(sdk, "/v1/messages/count_tokens", payload, MessageTokensCount)


async def test_valid_tool_round_trip_and_prefill_are_accepted(sdk):
    messages = [
        user(text("classify")),
        {"role": "assistant", "content": [TOOL_USE]},
        user({"type": "tool_result", "tool_use_id": "toolu_1", "content": [text("done"), image(png(8, 8))]}),
        {"role": "assistant", "content": "Result:"},
    ]
    message = await post(sdk, "/v1/messages", {**body(), "tools": [TOOL], "messages": messages})
    assert message.stop_reason == "end_turn"
