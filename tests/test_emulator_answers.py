"""The emulator answers like the model would (schemas, tools, faults) and batches take time like the API's."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import anthropic
import jsonschema
import orjson
import pytest

from batchrun.emulator.config import EmulatorConfig
from batchrun.emulator.replies import expected_output, expected_reply
from batchrun.emulator.schema_gen import generate
from tests.conftest import sdk_http_client

MODEL = "claude-haiku-4-5"
SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "other"]},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string"},
    },
    "required": ["category", "urgency", "summary"],
    "additionalProperties": False,
}


def schema_body(text: str, max_tokens: int = 200) -> dict:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
    }


@pytest.fixture
async def sdk(emulator) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(
        api_key="k", base_url=emulator.base_url, max_retries=0, http_client=sdk_http_client()
    )
    yield client
    await client.close()


async def create(sdk: anthropic.AsyncAnthropic, body: dict) -> anthropic.types.Message:
    return await sdk.post("/v1/messages", body=body, cast_to=anthropic.types.Message)


TRICKY_SCHEMAS = [
    {"type": "object", "properties": {"n": {"type": "number", "exclusiveMinimum": 2, "exclusiveMaximum": 3}}},
    {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer"}, "minItems": 4}}},
    {"type": "object", "properties": {"s": {"type": "string", "minLength": 30, "maxLength": 31}}},
    {"type": "object", "properties": {"v": {"type": ["string", "null"], "const": "fixed"}}},
    {
        "type": "object",
        "properties": {"d": {"$ref": "#/$defs/day"}},
        "required": ["d"],
        "$defs": {"day": {"enum": [1, 2]}},
    },
    {"type": "object", "properties": {"u": {"anyOf": [{"type": "boolean"}, {"type": "string", "format": "email"}]}}},
    {"type": "object", "allOf": [{"properties": {"a": {"type": "integer", "maximum": -5}}, "required": ["a"]}]},
    {"type": "object", "properties": {"o": {"type": "object", "properties": {"k": {"type": "null"}}}}},
]


@pytest.mark.parametrize("schema", TRICKY_SCHEMAS)
def test_generated_values_validate_and_are_deterministic(schema):
    for seed in ("a", "b", "c"):
        value = generate(schema, seed)
        jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
        assert generate(schema, seed) == value


async def test_schema_faults_break_a_share_of_replies_deterministically(emulator, sdk):
    emulator.configure(p_invalid_json=0.2, p_missing_required=0.1, seed=5)
    outcomes: Counter[str] = Counter()
    texts = []
    for i in range(60):
        body = schema_body(f"ticket {i}")
        message = await create(sdk, body)
        texts.append(message.content[0].text)
        try:
            data = orjson.loads(message.content[0].text)
        except orjson.JSONDecodeError:
            outcomes["invalid_json"] += 1
            continue
        try:
            jsonschema.validate(data, SCHEMA)
        except jsonschema.ValidationError as exc:
            assert "is a required property" in exc.message
            outcomes["missing_required"] += 1
            continue
        assert data == expected_output(body)  # a good reply belongs to its own request
        outcomes["valid"] += 1
    assert 4 <= outcomes["invalid_json"] <= 22 and 1 <= outcomes["missing_required"] <= 14
    assert emulator.stats()["injected"] == {k: v for k, v in outcomes.items() if k != "valid"}
    emulator.reset()
    again = [(await create(sdk, schema_body(f"ticket {i}"))).content[0].text for i in range(60)]
    assert again == texts  # same seed, same order: the same faults


async def test_truncation_fault_and_small_max_tokens_cut_the_json(emulator, sdk):
    cut = await create(sdk, schema_body("short", max_tokens=5))
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 5
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(cut.content[0].text)
    emulator.configure(p_truncated=1.0)
    message = await create(sdk, schema_body("long enough"))
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 200
    assert expected_reply(schema_body("long enough")).stop_reason == "end_turn"
    plain = await sdk.messages.create(model=MODEL, max_tokens=300, messages=[{"role": "user", "content": "hi"}])
    assert plain.stop_reason == "max_tokens" and plain.usage.output_tokens == 300


async def test_refusal_fault(emulator, sdk):
    emulator.configure(p_refusal=1.0)
    message = await create(sdk, schema_body("refuse me"))
    assert message.stop_reason == "refusal" and message.usage.output_tokens <= 5
    assert emulator.stats()["injected"] == {"refusal": 1}


async def test_forced_tool_fault_drops_a_required_property(emulator, sdk):
    emulator.configure(p_invalid_json=1.0)
    tool = {"name": "t", "input_schema": SCHEMA}
    body = {**schema_body("x"), "tools": [tool], "tool_choice": {"type": "tool", "name": "t"}}
    del body["output_config"]
    message = await create(sdk, body)
    assert message.stop_reason == "tool_use"
    with pytest.raises(jsonschema.ValidationError, match="required property"):
        jsonschema.validate(message.content[0].input, SCHEMA)


async def test_schema_faults_reach_batch_results_too(emulator, sdk):
    emulator.configure(p_invalid_json=1.0, batch_seconds=0.0)
    batch = await sdk.messages.batches.create(requests=[{"custom_id": "a", "params": schema_body("a")}])
    await sdk.messages.batches.retrieve(batch.id)
    [line] = [line async for line in await sdk.messages.batches.results(batch.id)]
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(line.result.message.content[0].text)


# ---- batch processing time ------------------------------------------------------------------------


def requests(n: int) -> list[dict]:
    return [
        {
            "custom_id": f"r{i}",
            "params": {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": f"q{i}"}]},
        }
        for i in range(n)
    ]


def test_processing_times_follow_the_distribution_and_the_seed():
    from batchrun.emulator.batches import processing_times

    config = EmulatorConfig(batch_fast_s=300, batch_tail_s=6 * 3600, batch_p_tail=0.1, batch_time_scale=3600, seed=1)
    times, late = processing_times(config, 0, 2000)
    api_minutes = sorted(t * 3600 / 60 for t in times)
    assert api_minutes[len(times) // 2] < 10  # median within minutes
    assert 0.05 < sum(m > 60 for m in api_minutes) / len(times) < 0.15  # a tail over an hour
    assert max(api_minutes) <= 6 * 60 and not late
    assert processing_times(config, 0, 2000) == (times, late)
    assert processing_times(config, 1, 2000)[0] != times
    config.update(batch_tail_s=48 * 3600)
    assert processing_times(config, 0, 2000)[1]  # past 24 h: expired


async def test_batch_progress_and_cancel_keep_what_finished(emulator, sdk):
    # 10% of requests take 2-4 h of API time: at 1 h = 1 s they finish after 2-4 s.
    emulator.configure(
        batch_fast_s=60, batch_tail_s=4 * 3600, batch_p_tail=0.1, batch_time_scale=3600, batch_progress_counts=True
    )
    batch = await sdk.messages.batches.create(requests=requests(200))
    emulator.advance_clock(0.5)  # half an API hour
    midway = await sdk.messages.batches.retrieve(batch.id)
    counts = midway.request_counts
    assert midway.processing_status == "in_progress"
    assert 150 <= counts.succeeded <= 195 and counts.processing == 200 - counts.succeeded
    canceled = await sdk.messages.batches.cancel(batch.id)
    assert canceled.processing_status == "canceling"
    emulator.advance_clock(0.3)  # a cancel takes effect within 0.2 s
    ended = await sdk.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended"
    final = ended.request_counts
    assert final.succeeded >= counts.succeeded and final.succeeded + final.canceled == 200 and final.canceled > 0
    kinds = Counter([line.result.type async for line in await sdk.messages.batches.results(batch.id)])
    assert kinds == {"succeeded": final.succeeded, "canceled": final.canceled}


async def test_request_counts_stay_put_until_the_end_by_default(emulator, sdk):
    emulator.configure(batch_fast_s=1, batch_tail_s=3600, batch_p_tail=0.05, batch_time_scale=7200)
    started = time.monotonic()
    batch = await sdk.messages.batches.create(requests=requests(100))
    await asyncio.sleep(0.1)
    midway = await sdk.messages.batches.retrieve(batch.id)
    assert midway.request_counts.processing == 100 and midway.request_counts.succeeded == 0
    while (ended := await sdk.messages.batches.retrieve(batch.id)).processing_status != "ended":
        await asyncio.sleep(0.05)
    assert ended.request_counts.succeeded == 100
    assert time.monotonic() - started < 1.0  # the longest of 1 h API time = 0.5 s
