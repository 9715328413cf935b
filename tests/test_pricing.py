"""Prices that are right: every id named, dated ids by their date only, cache TTLs priced, unknown shown as unknown."""

from __future__ import annotations

import io
from pathlib import Path

import anthropic
import orjson
import pytest

from batchrun.caching import CacheWatch, cached_system, min_cacheable_tokens, prefix_key
from batchrun.dryrun import format_plan, plan
from batchrun.events import Event
from batchrun.job import Job
from batchrun.pricing import price_for, usage_cost
from batchrun.progress import Progress
from batchrun.report import format_status, run_status
from batchrun.runs import prepare_run
from batchrun.store import SUCCEEDED, Outcome, Store
from tests.conftest import TEST_KEY, batchrun, cli_env, db_dump, prompts, write_jsonl

# Published prices (USD per million tokens, input / output), written out independently of batchrun's table.
PUBLISHED = {
    "claude-opus-4-6": (5, 25),
    "claude-opus-4-5": (5, 25),
    "claude-opus-4-5-20251101": (5, 25),
    "claude-opus-4-1": (15, 75),
    "claude-opus-4-1-20250805": (15, 75),
    "claude-opus-4-0": (15, 75),
    "claude-opus-4-20250514": (15, 75),
    "claude-sonnet-4-6": (3, 15),
    "claude-sonnet-4-5": (3, 15),
    "claude-sonnet-4-5-20250929": (3, 15),
    "claude-sonnet-4-0": (3, 15),
    "claude-sonnet-4-20250514": (3, 15),
    "claude-haiku-4-5": (1, 5),
    "claude-haiku-4-5-20251001": (1, 5),
    "claude-3-5-haiku-latest": (0.8, 4),
    "claude-3-5-haiku-20241022": (0.8, 4),
}
UNPRICED = "claude-opus-4-7"  # the emulator answers it; its id starts like Opus 4's, which is not its price
LONG_POLICY = "Policy clause {n}: answer in one word, cite no customer data, escalate refunds over 500 EUR. "


def policy(chars: int) -> str:
    text = "".join(LONG_POLICY.format(n=n) for n in range(chars // len(LONG_POLICY) + 1))
    return text[:chars]


def status(workdir: Path, env: dict, run_id: str) -> dict:
    proc = batchrun(["status", run_id, "--json"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout)


def per_million(usage: dict, price: tuple[float, float], write: float, batch: bool = False) -> float:
    usd = (
        usage["input_tokens"] * price[0]
        + usage["output_tokens"] * price[1]
        + usage["cache_creation_input_tokens"] * price[0] * write
        + usage["cache_read_input_tokens"] * price[0] * 0.1
    ) / 1e6
    return usd / 2 if batch else usd


# --- the table ---


@pytest.mark.parametrize(("model", "price"), PUBLISHED.items())
def test_every_listed_id_and_alias_has_its_published_price(model: str, price: tuple[float, float]) -> None:
    assert price_for(model) == {"input": price[0], "output": price[1]}


def test_opus_4_6_is_priced_as_opus_4_6_not_as_opus_4() -> None:
    assert price_for("claude-opus-4-6") == {"input": 5.0, "output": 25.0}
    assert price_for("claude-opus-4-6-20260205") == {"input": 5.0, "output": 25.0}


@pytest.mark.parametrize(
    ("dated", "base"),
    [("claude-sonnet-4-6-20260217", "claude-sonnet-4-6"), ("claude-haiku-4-5-20991231", "claude-haiku-4-5")],
)
def test_a_dated_id_is_priced_as_its_base_id(dated: str, base: str) -> None:
    assert price_for(dated) == price_for(base) is not None


@pytest.mark.parametrize(
    "model",
    [
        UNPRICED,
        "claude-opus-4",
        "claude-sonnet-4",
        "claude-opus-4-6-fast",
        "claude-sonnet-4-6x",
        "claude-haiku-4-5-2025",
        "claude-sonnet-5",
        "gpt-4o",
    ],
)
def test_an_id_that_only_shares_a_prefix_has_no_price(model: str) -> None:
    assert price_for(model) is None
    assert usage_cost(model, "online", {"input_tokens": 1000, "output_tokens": 10}) is None


def test_the_jobs_prices_name_new_models_and_win_over_the_table() -> None:
    prices = {UNPRICED: {"input": 2, "output": 8}, "claude-haiku-4-5": {"input": 0.5, "output": 2}}
    assert price_for(UNPRICED, prices) == {"input": 2.0, "output": 8.0}
    assert price_for("claude-haiku-4-5-20251001", prices) == {"input": 0.5, "output": 2.0}
    assert price_for("claude-sonnet-4-6", prices) == {"input": 3.0, "output": 15.0}


# --- cache TTLs and the batch discount ---

SONNET_USAGE = {"input_tokens": 1000, "output_tokens": 100, "cache_read_input_tokens": 10_000}


def test_cache_writes_cost_1_25x_for_5_minutes_and_2x_for_an_hour_reads_a_tenth() -> None:
    five = {**SONNET_USAGE, "cache_creation_input_tokens": 2000, "cache_creation": _split(2000, 0)}
    hour = {**SONNET_USAGE, "cache_creation_input_tokens": 2000, "cache_creation": _split(0, 2000)}
    mixed = {**SONNET_USAGE, "cache_creation_input_tokens": 2000, "cache_creation": _split(1000, 1000)}
    base = (1000 * 3 + 100 * 15 + 10_000 * 3 * 0.1) / 1e6
    assert usage_cost("claude-sonnet-4-6", "online", five) == pytest.approx(base + 2000 * 3 * 1.25 / 1e6)
    assert usage_cost("claude-sonnet-4-6", "online", hour) == pytest.approx(base + 2000 * 3 * 2 / 1e6)
    assert usage_cost("claude-sonnet-4-6", "online", mixed) == pytest.approx(base + 1000 * 3 * 3.25 / 1e6)
    # the reply's breakdown wins over the TTL the request asked for
    assert usage_cost("claude-sonnet-4-6", "online", five, ttl="1h") == usage_cost("claude-sonnet-4-6", "online", five)


def test_without_a_breakdown_cache_writes_are_priced_at_the_requested_ttl() -> None:
    usage = {**SONNET_USAGE, "cache_creation_input_tokens": 2000}
    base = (1000 * 3 + 100 * 15 + 10_000 * 3 * 0.1) / 1e6
    assert usage_cost("claude-sonnet-4-6", "online", usage) == pytest.approx(base + 2000 * 3 * 1.25 / 1e6)
    assert usage_cost("claude-sonnet-4-6", "online", usage, ttl="1h") == pytest.approx(base + 2000 * 3 * 2 / 1e6)


def test_the_batch_api_halves_every_part_of_the_price() -> None:
    usage = {**SONNET_USAGE, "cache_creation_input_tokens": 2000, "cache_creation": _split(500, 1500)}
    full = (1000 * 5 + 100 * 25 + 500 * 5 * 1.25 + 1500 * 5 * 2 + 10_000 * 5 * 0.1) / 1e6
    assert usage_cost("claude-opus-4-6", "online", usage) == pytest.approx(full)
    assert usage_cost("claude-opus-4-6", "batch", usage) == pytest.approx(full / 2)
    assert usage_cost("claude-opus-4-6", "cache", usage) == 0.0  # answered from the store: not billed again


def _split(five: int, hour: int) -> dict:
    return {"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour}


# --- runs on the emulator ---


def test_opus_4_6_with_a_1_hour_cache_is_priced_right_in_status(workdir: Path, emulator) -> None:
    emulator.configure(batch_seconds=0.05)
    job = workdir / "job.toml"
    (workdir / "policy.md").write_text(policy(13_000))
    job.write_text(
        'model = "claude-opus-4-6"\nmax_tokens = 64\nsystem_file = "policy.md"\ncache_ttl = "1h"\nconcurrency = 4\n'
    )
    items = write_jsonl(workdir / "items.jsonl", prompts(6))
    env = cli_env(emulator.base_url)
    online = batchrun(["submit", str(items), "--job", str(job), "--run-id", "on"], cwd=workdir, env=env)
    assert online.returncode == 0, online.stderr
    usage = emulator.stats()["usage"]["messages"]["claude-opus-4-6"]
    assert usage["cache_creation_input_tokens"] > 0 and usage["cache_read_input_tokens"] > 0
    data = status(workdir, env, "on")
    assert data["cost_usd"] == pytest.approx(per_million(usage, (5, 25), write=2.0), abs=1e-6)
    assert (
        data["tokens"]["cache_creation_1h"] == data["tokens"]["cache_creation"] == usage["cache_creation_input_tokens"]
    )
    assert data["unpriced_models"] == [] and data["prices_taken"] == "2026-11-23"
    emulator.reset()
    batch = batchrun(
        [
            "submit",
            str(items),
            "--job",
            str(job),
            "--mode",
            "batch",
            "--poll-interval",
            "0.1",
            "--run-id",
            "ba",
            "--no-cache",
        ],
        cwd=workdir,
        env=env,
    )
    assert batch.returncode == 0, batch.stderr
    usage = emulator.stats()["usage"]["batches"]["claude-opus-4-6"]
    runs = orjson.loads(batchrun(["status", "--json"], cwd=workdir, env=env).stdout)["runs"]
    run_id = next(r["run_id"] for r in runs if r["mode"] == "batch")
    assert status(workdir, env, run_id)["cost_usd"] == pytest.approx(
        per_million(usage, (5, 25), write=2.0, batch=True), abs=1e-6
    )


def test_a_model_without_a_price_has_an_unknown_cost_until_the_job_prices_it(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(4))
    env = cli_env(emulator.base_url)
    proc = batchrun(["submit", str(items), "--model", UNPRICED, "--run-id", "u"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert emulator.stats()["usage"]["messages"][UNPRICED]["requests"] == 4
    summary = next(line for line in proc.stderr.splitlines() if "cost so far" in line)
    assert "batchrun: cost so far unknown (no price for claude-opus-4-7" in summary and "$0" not in summary
    data = status(workdir, env, "u")
    assert data["cost_usd"] is None and data["unpriced_models"] == [UNPRICED]
    assert [row["cost_usd"] for row in data["by_model"]] == [None]
    text = batchrun(["status", "u"], cwd=workdir, env=env).stdout
    assert "cost unknown (no price for claude-opus-4-7: give it under [prices] in the job file)" in text
    assert "$0.0000" not in text
    # the same model, priced by the job
    emulator.reset()
    job = workdir / "job.toml"
    job.write_text(f'model = "{UNPRICED}"\n\n[prices."{UNPRICED}"]\ninput = 2\noutput = 8\n')
    proc = batchrun(["submit", str(items), "--job", str(job), "--run-id", "p", "--no-cache"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    usage = emulator.stats()["usage"]["messages"][UNPRICED]
    data = status(workdir, env, "p")
    assert data["unpriced_models"] == []
    assert data["cost_usd"] == pytest.approx(per_million(usage, (2, 8), write=1.25), abs=1e-6) and data["cost_usd"] > 0


def test_the_dry_run_says_the_cost_is_unknown_for_a_model_without_a_price(workdir: Path) -> None:
    items = str(write_jsonl(workdir / "items.jsonl", prompts(5)))
    unknown = format_plan(plan(items, Job(model=UNPRICED), None))
    assert "expected cost: unknown (no price for claude-opus-4-7" in unknown and "$0" not in unknown
    priced = format_plan(plan(items, Job(model=UNPRICED, prices={UNPRICED: {"input": 2, "output": 8}}), None))
    assert "expected cost at most: online $" in priced and "unknown" not in priced


def test_a_malformed_prices_table_is_refused_before_anything_is_sent(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    job = workdir / "job.toml"
    job.write_text(f'model = "{UNPRICED}"\n\n[prices."{UNPRICED}"]\ninput = "two"\noutput = 8\n')
    proc = batchrun(["submit", str(items), "--job", str(job)], cwd=workdir, env=cli_env(emulator.base_url))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "job.toml" in proc.stderr and "input must be a number" in proc.stderr
    assert emulator.stats()["requests"] == 0 and db_dump(workdir / "batchrun.db") == []


def test_cache_writes_without_a_breakdown_are_stored_at_the_ttl_the_request_asked_for(workdir: Path) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(2))
    job = Job(model="claude-sonnet-4-6", system=policy(7000), cache_ttl="1h")
    store = Store(workdir / "b.db")
    run_id, _ = prepare_run(store, str(items), job, "https://api.anthropic.com")
    claimed = store.claim_pending(run_id, 0, 10)
    assert claimed[0].params["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    usage = {"input_tokens": 20, "output_tokens": 10, "cache_creation_input_tokens": 1800}  # an older gateway's reply
    store.record(
        [Outcome(run_id, c.line_no, SUCCEEDED, result="{}", usage=usage, model=c.params["model"]) for c in claimed]
    )
    data = run_status(store, run_id)
    assert data["tokens"]["cache_creation_1h"] == data["tokens"]["cache_creation"] == 3600
    assert data["cost_usd"] == pytest.approx((40 * 3 + 20 * 15 + 3600 * 3 * 2) / 1e6)
    assert "3,600 cache write (3,600 of them 1-hour)" in format_status(data)


# --- the progress line ---


def started(progress: Progress, total: int) -> Progress:
    progress.event(Event("run_started", "r", {"total": total, "done": 0, "mode": "online"}))
    return progress


def test_progress_shows_an_unknown_cost_never_zero() -> None:
    out = io.StringIO()
    progress = started(Progress(stream=out, interval=0), total=3)
    progress.update(1, 0, 0.002)
    assert "cost $0.0020" in out.getvalue()
    progress.update(1, 0, None)
    progress.update(1, 0, 0.0)
    assert progress.cost() == "unknown ($0.0020 + unpriced)"
    assert out.getvalue().splitlines()[-1].count("cost unknown ($0.0020 + unpriced)") == 1
    only_unknown = started(Progress(stream=io.StringIO(), interval=0), total=1)
    only_unknown.update(1, 0, None)
    assert only_unknown.cost() == "unknown"


# --- minimum cacheable length, and trusting the API over the table ---


def test_the_minimum_cacheable_length_is_per_model() -> None:
    assert min_cacheable_tokens("claude-opus-4-6") == 4096 and min_cacheable_tokens("claude-haiku-4-5-20251001") == 4096
    assert min_cacheable_tokens("claude-sonnet-4-5") == 1024 and min_cacheable_tokens("claude-opus-4-1") == 1024
    assert min_cacheable_tokens("claude-3-5-haiku-latest") == 2048 and min_cacheable_tokens("claude-sonnet-4-6") == 2048
    # about 2,000 tokens: cached by Sonnet 4.5 (and perhaps by Sonnet 4.6), too short for Opus 4.6
    text = policy(6200)
    assert isinstance(cached_system(text, "claude-sonnet-4-5"), list)
    assert isinstance(cached_system(text, "claude-sonnet-4-6"), list)
    assert cached_system(text, "claude-opus-4-6") == text


@pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
def test_a_first_reply_without_cache_tokens_is_reported_once_and_ends_serialising(emulator) -> None:
    """The emulator, like the API, ignores a cache mark below the model's real minimum (4,096 for its Haiku);
    batchrun's table says 2,048 for Haiku 3.5, so it marks a prompt the API does not cache."""
    client = anthropic.Anthropic(base_url=emulator.base_url, api_key=TEST_KEY, max_retries=0)
    watch = CacheWatch()
    seen = {}
    for model, chars in (("claude-3-5-haiku-latest", 9000), ("claude-sonnet-4-5", 9000), ("claude-opus-4-8", 4000)):
        params = {
            "model": model,
            "max_tokens": 64,
            "system": cached_system(policy(chars), model),
            "messages": [{"role": "user", "content": "Ticket 1: the export is empty."}],
        }
        key = prefix_key(params)
        assert key is not None and watch.serialise(key)
        usage = client.messages.create(**params).usage.model_dump()
        seen[model] = (key, watch.first_reply(key, params, usage), usage)
        assert watch.first_reply(key, params, usage) is None  # said once
    client.close()
    key, notice, usage = seen["claude-3-5-haiku-latest"]
    assert usage["cache_creation_input_tokens"] == usage["cache_read_input_tokens"] == 0
    assert notice.startswith("the system prompt was not cached: it is about ")
    assert "claude-3-5-haiku-latest should cache prompts of at least 2,048" in notice
    assert notice.endswith("it is sent uncached, and requests no longer wait for a first one to warm the cache")
    assert not watch.serialise(key)
    key, notice, usage = seen["claude-sonnet-4-5"]
    assert usage["cache_creation_input_tokens"] > 0 and notice is None and watch.serialise(key)
    key, notice, _ = seen["claude-opus-4-8"]
    assert "does not know the minimum cacheable length of claude-opus-4-8" in notice and not watch.serialise(key)


def test_the_notice_names_the_minimum_and_the_prompts_size() -> None:
    params = {
        "model": "claude-opus-4-5-20251101",
        "system": [{"type": "text", "text": "x" * 9000, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "y" * 1000}],
    }
    usage = {"input_tokens": 2500, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    notice = CacheWatch().first_reply("k", params, usage)
    assert notice == (
        "the system prompt was not cached: claude-opus-4-5-20251101 caches prompts of at least 4,096 tokens, "
        "this one is about 2,250; it is sent uncached, and requests no longer wait for a first one to warm the cache"
    )
    progress = started(Progress(stream=(out := io.StringIO())), total=1)
    progress.notice(notice)
    assert out.getvalue().endswith(f"batchrun: {notice}\n")


# --- wired into the engines (online.py: CacheWatch and the progress cost; batches.py: the progress cost) ---


def test_no_line_of_a_run_shows_an_unpriced_model_as_costing_nothing(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    env = cli_env(emulator.base_url)
    for mode in ("online", "batch"):
        proc = batchrun(
            [
                "submit",
                str(items),
                "--model",
                UNPRICED,
                "--mode",
                mode,
                "--poll-interval",
                "0.1",
                "--run-id",
                mode,
                "--no-cache",
            ],
            cwd=workdir,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert "cost unknown" in proc.stderr and "$0.0000" not in proc.stderr


def test_a_run_whose_prompt_the_api_does_not_cache_says_so_once(workdir: Path, emulator) -> None:
    (workdir / "policy.md").write_text(policy(9000))
    job = workdir / "job.toml"
    job.write_text('model = "claude-3-5-haiku-latest"\nmax_tokens = 64\nsystem_file = "policy.md"\nconcurrency = 4\n')
    items = write_jsonl(workdir / "items.jsonl", prompts(8))
    proc = batchrun(["submit", str(items), "--job", str(job)], cwd=workdir, env=cli_env(emulator.base_url))
    assert proc.returncode == 0, proc.stderr
    usage = emulator.stats()["usage"]["messages"]["claude-3-5-haiku-latest"]
    assert usage["cache_creation_input_tokens"] == usage["cache_read_input_tokens"] == 0
    assert proc.stderr.count("batchrun: the system prompt was not cached: ") == 1
