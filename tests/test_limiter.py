"""The limiter: limits learned from headers, a 429 pausing everyone, reservations refunded from usage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from batchrun.limiter import Limiter, Meter
from tests.conftest import batchrun, cli_env, prompts, write_jsonl


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def headers(requests: tuple[int, int], inp: tuple[int, int], out: tuple[int, int]) -> dict[str, str]:
    h = {}
    for name, (limit, remaining) in (("requests", requests), ("input-tokens", inp), ("output-tokens", out)):
        h[f"anthropic-ratelimit-{name}-limit"] = str(limit)
        h[f"anthropic-ratelimit-{name}-remaining"] = str(remaining)
        h[f"anthropic-ratelimit-{name}-reset"] = "2026-11-23T12:00:00Z"
    return h


def test_limits_and_remaining_are_learned_from_headers() -> None:
    clock = FakeClock()
    limiter = Limiter(clock=clock)
    assert limiter.meters["requests"].wait_time(10**9) == 0  # unknown limit: no throttling until told
    limiter.observe(headers((600, 0), (100_000, 50_000), (20_000, 20_000)))
    assert limiter.meters["requests"].capacity == 600
    # the server says nothing is left: the next request waits for one request's worth of refill (0.1 s at 600/min)
    assert limiter.meters["requests"].wait_time(1) == 0.1
    assert limiter.meters["input_tokens"].level == 50_000
    clock.now += 6  # a tenth of a minute refills a tenth of the limit
    assert limiter.meters["requests"].wait_time(60) == 0
    assert limiter.meters["requests"].wait_time(61) > 0


def test_user_caps_stay_below_the_account_limit() -> None:
    clock = FakeClock()
    limiter = Limiter(rpm=100, clock=clock)
    limiter.observe(headers((4000, 3999), (2_000_000, 2_000_000), (400_000, 400_000)))
    assert limiter.meters["requests"].capacity == 100
    assert limiter.meters["output_tokens"].capacity == 400_000


def test_output_reservation_is_refunded_from_usage() -> None:
    clock = FakeClock()
    meter_limit = 1000

    async def scenario() -> None:
        limiter = Limiter(otpm=meter_limit, clock=clock)
        out = limiter.meters["output_tokens"]
        reservation = await limiter.acquire(input_tokens=10, max_tokens=400)
        assert out.level == 600
        limiter.release(reservation, {"input_tokens": 10, "output_tokens": 25})
        assert out.level == 975  # the 375 reserved but not used come back
        reservation = await limiter.acquire(input_tokens=10, max_tokens=400)
        limiter.release(reservation, None)  # no reply: nothing was used
        assert out.level == 975

    asyncio.run(scenario())


def test_input_estimate_is_corrected_by_usage() -> None:
    clock = FakeClock()

    async def scenario() -> None:
        limiter = Limiter(itpm=10_000, clock=clock)
        meter = limiter.meters["input_tokens"]
        reservation = await limiter.acquire(input_tokens=100, max_tokens=1)
        limiter.release(reservation, {"input_tokens": 300, "cache_creation_input_tokens": 200, "output_tokens": 1})
        assert meter.level == 10_000 - 500  # cache writes count, as the API counts them
        reservation = await limiter.acquire(input_tokens=100, max_tokens=1)
        limiter.release(reservation, {"input_tokens": 40, "cache_read_input_tokens": 5000, "output_tokens": 1})
        assert meter.level == 10_000 - 540  # cache reads do not

    asyncio.run(scenario())


def test_a_429_pauses_every_admission_until_its_retry_after() -> None:
    async def scenario() -> list[float]:
        limiter = Limiter(concurrency=8)
        start = time.monotonic()
        limiter.throttled(429, 0.4)

        async def one() -> float:
            reservation = await limiter.acquire(1, 1)
            limiter.release(reservation, None)
            return time.monotonic() - start

        return await asyncio.gather(*(one() for _ in range(5)))

    assert min(asyncio.run(scenario())) >= 0.39


def test_429_and_529_narrow_the_concurrency_window_and_successes_widen_it() -> None:
    clock = FakeClock()
    limiter = Limiter(concurrency=40, clock=clock)
    limiter.throttled(529, None)
    assert limiter.window == 30
    limiter.throttled(529, None)
    assert limiter.window == 30  # at most once a second
    clock.now += 1.5
    limiter.throttled(429, 1.0)
    assert limiter.window == 22.5
    for _ in range(100):
        limiter.succeeded()
    assert limiter.window == 40


def test_a_request_larger_than_the_bucket_waits_for_a_full_bucket_not_forever() -> None:
    clock = FakeClock()
    meter = Meter(60, clock)
    meter.take(60)
    assert meter.wait_time(500) == 60.0


def test_online_run_learns_the_limit_from_headers_and_avoids_429s(workdir: Path, emulator) -> None:
    """The emulator enforces 3,000 RPM (only) per second (a 50-request bucket, refilled at 50 a second: the 100
    requests take at least 1 s); batchrun is not told the limit."""
    emulator.configure(rpm=3000, itpm=0, otpm=0, bucket_seconds=1.0)
    items = write_jsonl(workdir / "items.jsonl", prompts(100))
    proc = batchrun(
        ["submit", str(items), "--model", "claude-haiku-4-5", "--concurrency", "64"],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 0, proc.stderr
    stats = emulator.stats()
    assert stats["by_status"]["200"] == 100
    # 64 unpaced workers would send all 100 at once and meet about 50 429s; the headers announce a per-minute
    # limit of 3,000 while the bucket holds 50, so the first second's burst may still meet a few
    assert stats["by_status"].get("429", 0) <= 15, stats["by_status"]
