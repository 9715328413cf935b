"""The API emulator, driven over real HTTP by the official SDK with strict response validation."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime

import anthropic
import httpx2
import orjson
import pytest
from anthropic.types import Message
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse

from batchrun.emulator.config import EmulatorConfig, config_from_argv, config_to_argv
from batchrun.emulator.replies import (
    build_message,
    count_input_tokens,
    expected_reply,
    expected_text,
    request_key,
)
from batchrun.emulator.validation import check_messages
from tests.conftest import sdk_http_client


def validate_params(body):
    error = check_messages(body)
    return None if error is None else error.message


MODEL = "claude-sonnet-4-6"
VERSION = {"anthropic-version": "2023-06-01"}


def params(text: str = "hello", **extra: object) -> dict:
    return {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
async def client(emulator) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(
        api_key="test-key",
        base_url=emulator.base_url,
        max_retries=0,
        _strict_response_validation=True,
        http_client=sdk_http_client(),
    )
    yield sdk
    await sdk.close()


@pytest.fixture
async def raw(emulator) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=emulator.base_url, timeout=10, headers=VERSION) as http:
        yield http


# ---- Messages ---------------------------------------------------------------------------------


async def test_reply_validates_and_equals_build_message(client):
    p = params("What is 2+2?")
    response = await client.messages.with_raw_response.create(**p)
    message = await response.parse()
    assert response.headers["request-id"].startswith("req_")
    expected = build_message(p, msg_id=message.id)
    assert message == Message.model_validate(expected)
    assert message.content[0].text == expected_text(p)
    assert message.content[0].text.startswith(f"emu-{request_key(p)}: ")
    assert message.usage.input_tokens == count_input_tokens(p)
    assert message.stop_reason == "end_turn"


async def test_same_params_same_text_and_different_params_differ(client):
    first = await client.messages.create(**params("a"))
    again = await client.messages.create(**params("a"))
    other = await client.messages.create(**params("b"))
    assert first.content[0].text == again.content[0].text
    assert first.id != again.id
    assert other.content[0].text != first.content[0].text


async def test_tiny_max_tokens_truncates_but_keeps_prefix(client):
    p = params("truncate me", max_tokens=1)
    message = await client.messages.create(**p)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 1
    assert message.content[0].text == f"emu-{request_key(p)}:"
    assert expected_reply(params("truncate me")).output_tokens > 1


async def test_streaming_both_ways_gives_the_same_text_and_usage(emulator, client):
    p = params("stream this")
    plain = await client.messages.create(**p)
    async with client.messages.stream(**p) as stream:
        final = await stream.get_final_message()
    events = [event async for event in await client.messages.create(**p, stream=True)]
    streamed_text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert [events[0].type, events[1].type, events[-2].type, events[-1].type] == [
        "message_start",
        "content_block_start",
        "message_delta",
        "message_stop",
    ]
    assert final.content[0].text == streamed_text == plain.content[0].text
    assert final.usage == plain.usage
    assert events[-2].usage.output_tokens == plain.usage.output_tokens
    assert final.stop_reason == plain.stop_reason
    assert emulator.stats()["streamed"] == 2


async def test_aiohttp_backend(emulator):
    async with anthropic.AsyncAnthropic(
        api_key="test-key",
        base_url=emulator.base_url,
        max_retries=0,
        _strict_response_validation=True,
        http_client=anthropic.DefaultAioHttpClient(),
    ) as sdk:
        message = await sdk.messages.create(**params("via aiohttp"))
        assert message.content[0].text == expected_text(params("via aiohttp"))


async def test_count_tokens(client):
    p = params("count these tokens please", system="be brief")
    counted = await client.messages.count_tokens(model=MODEL, messages=p["messages"], system="be brief")
    assert counted.input_tokens == count_input_tokens(p)
    assert (await client.messages.create(**p)).usage.input_tokens == counted.input_tokens


async def test_invalid_params_give_the_api_400_message(client):
    with pytest.raises(anthropic.BadRequestError) as err:
        await client.messages.create(**params(max_tokens=0))
    assert err.value.body["error"]["message"] == "max_tokens: Input should be greater than or equal to 1"
    assert err.value.body["request_id"] == err.value.request_id
    with pytest.raises(anthropic.BadRequestError, match="bogus: Extra inputs are not permitted"):
        await client.messages.create(**params(), extra_body={"bogus": 1})
    with pytest.raises(anthropic.BadRequestError, match="first message must use the"):
        await client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "assistant", "content": "x"}])
    with pytest.raises(anthropic.NotFoundError, match="model: gpt-4"):
        await client.messages.create(**{**params(), "model": "gpt-4"})


def test_validate_params_messages():
    assert validate_params(params()) is None
    assert validate_params({**params(), "messages": []}) == "messages: at least one message is required"
    assert validate_params({"model": MODEL, "messages": []}) == "max_tokens: Field required"
    assert validate_params({**params(), "temperature": 1.5}).startswith("temperature:")
    assert validate_params({**params(), "system": [{"type": "image"}]}) == "system.0.type: Input should be 'text'"


async def test_wrong_api_key_is_401_and_not_echoed(emulator, raw):
    emulator.configure(api_key="right-key")
    async with anthropic.AsyncAnthropic(api_key="wrong-secret-123", base_url=emulator.base_url, max_retries=0) as sdk:
        with pytest.raises(anthropic.AuthenticationError) as err:
            await sdk.messages.create(**params())
    assert "wrong-secret-123" not in err.value.response.text
    assert err.value.body["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    ok = await raw.post("/v1/messages", json=params(), headers={"x-api-key": "right-key"})
    assert ok.status_code == 200
    missing = await raw.post("/v1/messages", json=params())
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"


# ---- Rate limits and faults -------------------------------------------------------------------


async def test_rpm_limit_gives_429_with_retry_after_and_headers(emulator, client):
    emulator.configure(rpm=5, itpm=0)
    remaining = []
    for i in range(5):
        response = await client.messages.with_raw_response.create(**params(f"r{i}"))
        assert response.headers["anthropic-ratelimit-requests-limit"] == "5"
        datetime.fromisoformat(response.headers["anthropic-ratelimit-requests-reset"])
        remaining.append(int(response.headers["anthropic-ratelimit-requests-remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    with pytest.raises(anthropic.RateLimitError) as err:
        await client.messages.create(**params("r6"))
    headers = err.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert "50 requests per minute" not in str(err.value) and "of 5 requests per minute" in str(err.value)
    assert "anthropic-ratelimit-input-tokens-limit" not in headers  # unlimited dimension: no headers
    stats = emulator.stats()
    assert stats["by_status"] == {"200": 5, "429": 1}
    assert stats["rate_limited"] == 1


async def test_token_headers_round_to_thousands(emulator, client):
    emulator.configure(rpm=0, itpm=90_000, otpm=30_000)
    response = await client.messages.with_raw_response.create(**params(max_tokens=2000))
    h = response.headers
    assert h["anthropic-ratelimit-input-tokens-limit"] == "90000"
    assert int(h["anthropic-ratelimit-input-tokens-remaining"]) % 1000 == 0
    assert int(h["anthropic-ratelimit-output-tokens-remaining"]) == 29_000  # 2000 reserved, then refunded
    assert h["anthropic-ratelimit-tokens-limit"] == "30000"  # the tighter of the two
    assert "anthropic-ratelimit-requests-limit" not in h


async def test_otpm_reserves_max_tokens_and_refunds_unused(emulator, client):
    emulator.configure(otpm=600)
    await client.messages.create(**params("one", max_tokens=500))  # reserves 500, uses <= 60
    await client.messages.create(**params("two", max_tokens=500))  # fits only thanks to the refund
    emulator.configure(otpm=601)  # rebuilds full buckets
    await client.messages.create(**params("three", max_tokens=600))  # leaves 601 - its output (>= 5)
    with pytest.raises(anthropic.RateLimitError, match="601 output tokens per minute"):
        await client.messages.create(**params("four", max_tokens=600))


async def test_injected_429_stops_after_max_faults(emulator, client):
    emulator.configure(p429=1.0, max_faults_per_request=3)
    for _ in range(3):
        with pytest.raises(anthropic.RateLimitError) as err:
            await client.messages.create(**params("faulty"))
        assert err.value.response.headers["retry-after"] == "1"
    message = await client.messages.create(**params("faulty"))
    assert message.content[0].text == expected_text(params("faulty"))
    stats = emulator.stats()
    assert stats["injected"] == {"429": 3}
    assert stats["received_by_key"] == {request_key(params("faulty")): 4}
    assert stats["ok_by_key"] == {request_key(params("faulty")): 1}


async def test_injected_529_and_500(emulator, client):
    emulator.configure(p529=1.0, retry_after_s=2.5)
    with pytest.raises(anthropic.OverloadedError) as err:
        await client.messages.create(**params())
    assert isinstance(err.value, anthropic.InternalServerError)
    assert err.value.status_code == 529
    assert err.value.response.headers["retry-after"] == "3"
    assert err.value.body["error"]["type"] == "overloaded_error"
    emulator.configure(p529=0.0, p500=1.0)
    with pytest.raises(anthropic.InternalServerError) as err:
        await client.messages.create(**params("other"))
    assert err.value.status_code == 500
    assert "retry-after" not in err.value.response.headers


async def test_dropped_connection_is_an_api_connection_error(emulator, client):
    emulator.configure(p_drop=1.0)
    with pytest.raises(anthropic.APIConnectionError):
        await client.messages.create(**params())
    async with anthropic.AsyncAnthropic(
        api_key="k", base_url=emulator.base_url, max_retries=0, http_client=anthropic.DefaultAioHttpClient()
    ) as sdk:
        with pytest.raises(anthropic.APIConnectionError):
            await sdk.messages.create(**params())
    stats = emulator.stats()
    assert stats["dropped"] == 2
    assert stats["in_flight"] == 0


async def test_sdk_retries_through_drops(emulator):
    emulator.configure(p_drop=1.0, max_faults_per_request=1)
    async with anthropic.AsyncAnthropic(api_key="k", base_url=emulator.base_url, max_retries=1) as sdk:
        response = await sdk.messages.with_raw_response.create(**params())
    assert response.retries_taken == 1
    assert emulator.stats()["dropped"] == 1


async def test_early_retry_is_counted_and_patient_retry_is_not(emulator, client):
    emulator.configure(p429=1.0, max_faults_per_request=1, retry_after_s=0.4)
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(**params("impatient"))
    await client.messages.create(**params("impatient"))  # at once: early
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(**params("patient"))
    await asyncio.sleep(0.4)
    await client.messages.create(**params("patient"))
    stats = emulator.stats()
    assert stats["early_retries"] == 1
    [sample] = stats["early_retry_samples"]
    assert sample["key"] == request_key(params("impatient"))
    assert 0.2 < sample["early_by_s"] <= 0.4


async def test_slow_and_latency(emulator, client):
    emulator.configure(p_slow=1.0, slow_ms=300, latency_ms=50)
    started = time.monotonic()
    await client.messages.create(**params())
    assert time.monotonic() - started >= 0.35
    assert emulator.stats()["injected"] == {"slow": 1}


async def test_in_flight_is_tracked(emulator, client):
    emulator.configure(latency_ms=300)
    await asyncio.gather(*(client.messages.create(**params(f"c{i}")) for i in range(8)))
    stats = emulator.stats()
    assert stats["max_in_flight"] == 8
    assert stats["in_flight"] == 0
    assert stats["usage"]["messages"][MODEL]["requests"] == 8


# ---- Prompt caching ---------------------------------------------------------------------------


def cached_params(question: str, model: str = MODEL, chars: int = 5000, ttl: str | None = None) -> dict:
    cache_control = {"type": "ephemeral"} | ({"ttl": ttl} if ttl else {})
    system = [{"type": "text", "text": "x" * chars, "cache_control": cache_control}]
    return {**params(question), "model": model, "system": system}


async def test_prompt_cache_writes_once_then_reads(client):
    first = await client.messages.create(**cached_params("q1"))
    second = await client.messages.create(**cached_params("q2"))
    prefix = 5000 // 4
    assert first.usage.cache_creation_input_tokens == prefix
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == prefix
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.cache_read_input_tokens == prefix
    assert second.usage.input_tokens == count_input_tokens(cached_params("q2")) - prefix
    one_hour = await client.messages.create(**cached_params("q3", chars=6000, ttl="1h"))
    assert one_hour.usage.cache_creation.ephemeral_1h_input_tokens == 6000 // 4


async def test_prompt_cache_ignores_short_prefixes(client):
    short = await client.messages.create(**cached_params("q", chars=4000))  # 1000 < 1024 tokens
    haiku = await client.messages.create(**cached_params("q", model="claude-haiku-4-5", chars=8000))
    for message in (short, haiku):
        assert message.usage.cache_creation_input_tokens == 0
        assert message.usage.cache_read_input_tokens == 0


async def test_cache_reads_do_not_count_toward_itpm(emulator, client):
    await client.messages.create(**cached_params("warm"))  # 1259 input tokens, 1250 of them cacheable
    emulator.configure(itpm=100)  # a bucket of 100: one uncached prompt would drain it
    for i in range(3):
        message = await client.messages.create(**cached_params(f"hit {i}"))
        assert message.usage.cache_read_input_tokens == 1250
        assert message.usage.input_tokens < 20


# ---- Message Batches --------------------------------------------------------------------------


def batch_requests(n: int, prefix: str = "q") -> list[dict]:
    return [{"custom_id": f"item-{i}", "params": params(f"{prefix} {i}")} for i in range(n)]


async def wait_ended(client, batch_id: str) -> MessageBatch:
    for _ in range(100):
        batch = await client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        await asyncio.sleep(0.05)
    raise AssertionError("batch did not end")


async def test_batch_lifecycle_and_results(emulator, client):
    emulator.configure(batch_seconds=0.05, batch_p_errored=0.2, batch_p_expired=0.1, seed=7)
    requests = batch_requests(300)
    requests[5]["params"] = {**params(), "max_tokens": 0}
    requests[6]["params"] = {**params(), "bogus": True}
    batch = await client.messages.batches.create(requests=requests)
    assert batch.id.startswith("msgbatch_")
    assert batch.processing_status == "in_progress"
    assert batch.results_url is None and batch.ended_at is None
    assert batch.request_counts.processing == 300 and batch.request_counts.succeeded == 0
    assert abs((batch.expires_at - batch.created_at).total_seconds() - 24 * 3600) < 0.001
    ended = await wait_ended(client, batch.id)
    assert abs((ended.ended_at - ended.created_at).total_seconds() - 0.05) < 0.001  # from timestamps
    assert ended.results_url == f"{emulator.base_url}/v1/messages/batches/{batch.id}/results"
    counts = ended.request_counts
    assert counts.processing == 0 and counts.canceled == 0
    assert counts.succeeded + counts.errored + counts.expired == 300

    by_id = {r["custom_id"]: r["params"] for r in requests}
    seen: Counter[str] = Counter()
    error_types: Counter[str] = Counter()
    async for line in await client.messages.batches.results(batch.id):
        item = MessageBatchIndividualResponse.model_validate(line.to_dict())  # the decoder does not validate
        result = item.result
        seen[result.type] += 1
        if result.type == "succeeded":
            assert result.message.content[0].text == expected_text(by_id[item.custom_id])
            assert result.message.usage.service_tier == "batch"
        elif result.type == "errored":
            error_types[result.error.error.type] += 1
    assert seen == {k: v for k, v in counts.to_dict().items() if v and k != "processing"}
    assert error_types["invalid_request_error"] == 2
    assert 40 <= error_types["api_error"] + error_types["overloaded_error"] <= 80  # ~20% of 298
    assert abs(error_types["api_error"] - error_types["overloaded_error"]) <= 1
    assert 15 <= counts.expired <= 45  # ~10%
    stats = emulator.stats()
    assert stats["batches_created"] == 1 and stats["batch_requests"] == 300
    assert stats["usage"]["batches"][MODEL]["requests"] == counts.succeeded
    assert stats["usage"]["messages"] == {}


async def test_batch_results_are_clean_jsonl(emulator, client, raw):
    emulator.configure(batch_seconds=0.0)
    batch = await client.messages.batches.create(requests=batch_requests(2500))
    ended = await wait_ended(client, batch.id)
    response = await raw.get(ended.results_url, headers={"Authorization": "Bearer k"})
    assert response.headers["content-type"].startswith("application/x-jsonl")
    body = response.content
    assert body.endswith(b"\n") and b"\n\n" not in body and b"\r" not in body
    lines = body.split(b"\n")[:-1]
    assert len(lines) == 2500
    assert {orjson.loads(line)["custom_id"] for line in lines} == {f"item-{i}" for i in range(2500)}


async def test_batch_faults_are_retryable_and_end(emulator, client):
    emulator.configure(batch_seconds=0.0, batch_p_errored=1.0, max_faults_per_request=1)
    requests = batch_requests(4)
    first = await wait_ended(client, (await client.messages.batches.create(requests=requests)).id)
    assert first.request_counts.errored == 4
    second = await wait_ended(client, (await client.messages.batches.create(requests=requests)).id)
    assert second.request_counts.succeeded == 4


async def test_batch_list_paginates_newest_first(emulator, client):
    ids = [(await client.messages.batches.create(requests=batch_requests(1))).id for _ in range(5)]
    page = await client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2]
    assert page.has_more is True and page.first_id == ids[4] and page.last_id == ids[3]
    listed = [b.id async for b in client.messages.batches.list(limit=2)]
    assert listed == ids[::-1]
    newer = await client.messages.batches.list(limit=2, before_id=ids[1])
    assert [b.id for b in newer.data] == [ids[3], ids[2]]
    assert newer.has_more is True


async def test_batch_cancel_and_delete(emulator, client):
    emulator.configure(batch_seconds=30)
    batch = await client.messages.batches.create(requests=batch_requests(3))
    with pytest.raises(anthropic.BadRequestError, match="cannot be deleted"):
        await client.messages.batches.delete(batch.id)
    canceling = await client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    ended = await wait_ended(client, batch.id)
    assert ended.request_counts.canceled == 3
    results = [line.result.type async for line in await client.messages.batches.results(batch.id)]
    assert results == ["canceled"] * 3
    deleted = await client.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.batches.retrieve(batch.id)


@pytest.mark.parametrize(
    ("custom_id", "message"),
    [
        ("has space", "String should match pattern"),
        ("x" * 65, "String should match pattern"),
        ("", "String should match pattern"),
        ("item-0", "Duplicate custom_id 'item-0'"),
    ],
)
async def test_batch_create_rejects_bad_custom_ids(client, custom_id, message):
    requests = [*batch_requests(2), {"custom_id": custom_id, "params": params()}]
    with pytest.raises(anthropic.BadRequestError, match=message) as err:
        await client.messages.batches.create(requests=requests)
    assert "requests.2.custom_id" in err.value.body["error"]["message"]


async def test_batch_create_rejects_empty_and_results_before_end(emulator, client, raw):
    with pytest.raises(anthropic.BadRequestError, match="at least 1 item"):
        await client.messages.batches.create(requests=[])
    emulator.configure(batch_seconds=30)
    batch = await client.messages.batches.create(requests=batch_requests(1))
    with pytest.raises(anthropic.AnthropicError, match="No `results_url`"):
        await client.messages.batches.results(batch.id)
    early = await raw.get(f"/v1/messages/batches/{batch.id}/results", headers={"x-api-key": "k"})
    assert early.status_code == 400
    assert early.json()["error"]["type"] == "invalid_request_error"


# ---- Control and configuration ----------------------------------------------------------------


async def test_reset_and_config_endpoint(emulator, client):
    await client.messages.create(**params())
    assert emulator.stats()["requests"] == 1
    emulator.reset()
    assert emulator.stats()["requests"] == 0
    assert emulator.configure(rpm=7)["rpm"] == 7
    with pytest.raises(RuntimeError, match="unknown config field"):
        emulator.configure(nonsense=1)
    emulator.configure(track_keys=False)
    await client.messages.create(**params())
    assert "ok_by_key" not in emulator.stats()


async def test_unknown_route_uses_the_error_envelope(raw):
    response = await raw.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["type"] == "error"
    assert response.headers["request-id"].startswith("req_")


def test_config_argv_round_trip():
    config = EmulatorConfig(rpm=50, p_drop=0.25, api_key="k", track_keys=False, seed=3)
    argv = config_to_argv(config)
    assert "--no-track-keys" in argv
    parsed, host, port = config_from_argv(["--port", "0", *argv])
    assert parsed == config and (host, port) == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match="unknown"):
        EmulatorConfig().update(rpmm=1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        EmulatorConfig().update(p429=2)


async def test_reset_with_a_config_and_a_clock_moved_on(emulator, client):
    emulator.reset(batch_seconds=3600, p429=0.5)
    config = emulator.config()
    assert config["batch_seconds"] == 3600 and config["p429"] == 0.5 and config["p529"] == 0.0
    emulator.reset(batch_seconds=3600)
    batch = await client.messages.batches.create(requests=[{"custom_id": "a", "params": params("clock")}])
    assert (await client.messages.batches.retrieve(batch.id)).processing_status == "in_progress"
    emulator.advance_clock(3600)
    ended = await client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.request_counts.succeeded == 1
    with pytest.raises(RuntimeError, match="400"):
        emulator.advance_clock(-1)
    with pytest.raises(RuntimeError, match="400"):
        emulator.reset(no_such_field=1)
    with pytest.raises(RuntimeError, match="config patch must be a JSON object"):
        emulator._call("POST", "/_emulator/reset", {"config": 5})
    emulator.reset()  # the clock is back to wall time
    fresh = await client.messages.batches.create(requests=[{"custom_id": "b", "params": params("clock")}])
    assert abs(fresh.created_at.timestamp() - time.time()) < 60
