"""`batchrun compare`: models that answer differently (the emulator's model_divergence) compared with a reference.

The emulator decides from a hash of each request which fields a model gets wrong (`diverging_fields`); the tests
compute from the requests batchrun stored exactly which items and fields must disagree, and check the reported
shares against that, for every field and model."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

import batchrun
from batchrun.emulator.divergence import TEXT, diverging_fields
from batchrun.emulator.replies import expected_output, expected_reply
from tests.conftest import batchrun as run_cli
from tests.conftest import cli_env, db_rows, items_in_state, start_batchrun, wait_until, write_jsonl

HAIKU, SONNET, OPUS, JUDGE = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6", "claude-sonnet-4-5"
SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "account", "other"]},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
        "spam": {"type": "boolean"},
        "summary": {"type": "string"},
    },
    "required": ["category", "urgency", "spam", "summary"],
    "additionalProperties": False,
}
FIELDS = list(SCHEMA["properties"])
DIVERGENCE = {HAIKU: 0.3, SONNET: 0.1}


def tickets(n: int, what: str = "invoice") -> list[dict]:
    return [{"custom_id": f"t-{i}", "text": f"Ticket {i}: my {what} {i * 7} is wrong"} for i in range(n)]


def write_job(workdir: Path, *, schema: bool = True, extra: str = "", name: str = "job.toml") -> Path:
    lines = ['model = "claude-opus-4-6"', "max_tokens = 200", "concurrency = 8", 'template = "Triage: {text}"']
    if schema:
        lines.append(f"schema_file = {orjson.dumps(str(workdir / 'schema.json')).decode()}")
        (workdir / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    path = workdir / name
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def stored_params(db: Path) -> dict[str, dict[str, dict]]:
    """custom_id -> model -> the request batchrun sent (from every run in the store)."""
    out: dict[str, dict[str, dict]] = {}
    for custom_id, params in db_rows(db, "SELECT custom_id, params FROM requests"):
        p = orjson.loads(params)
        out.setdefault(custom_id, {})[p["model"]] = p
    return out


def expected_row(params: dict[str, dict[str, dict]], model: str) -> dict:
    """The agreement the emulator was set to produce: a field agrees unless the hash made the model get it wrong."""
    n = len(params)
    wrong = {cid: diverging_fields(by_model[model], FIELDS, DIVERGENCE) for cid, by_model in params.items()}
    return {
        "agreement": {f: round(sum(f not in w for w in wrong.values()) / n, 6) for f in FIELDS},
        "agreement_all": round(sum(not w for w in wrong.values()) / n, 6),
        "items": n,
        "failed": 0,
    }


def compare_args(items: Path, job: Path, *more: str) -> list[str]:
    return ["compare", str(items), "--job", str(job), "--models", f"{HAIKU},{SONNET}", "--reference", OPUS, *more]


def test_reported_agreement_is_exactly_what_the_emulator_produced(workdir: Path, emulator) -> None:
    emulator.configure(model_divergence=DIVERGENCE)
    items = write_jsonl(workdir / "tickets.jsonl", tickets(24))
    job = write_job(workdir)
    env = cli_env(emulator.base_url)
    done = run_cli([*compare_args(items, job), "--json", "-q", "--report", "cmp.html"], cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    params = stored_params(workdir / "batchrun.db")
    assert report["reference"] == OPUS and report["items"] == 24 and len(params) == 24
    for row, model in zip(report["models"], (HAIKU, SONNET), strict=True):
        expected = expected_row(params, model)
        assert row["model"] == model
        assert {k: row[k] for k in expected} == expected
    # the hash did make both models wrong somewhere (the test would prove nothing otherwise)
    assert report["models"][0]["agreement_all"] < report["models"][1]["agreement_all"] < 1
    assert emulator.stats()["by_status"]["200"] == 3 * 24
    # the confusion of the enum field, as the HTML report shows it (values escaped, no script)
    html = (workdir / "cmp.html").read_text()
    assert "<script" not in html and "<h4>category</h4>" in html and "<h4>spam</h4>" in html
    first_wrong = next(
        cid for cid, by_model in params.items() if "category" in diverging_fields(by_model[HAIKU], FIELDS, DIVERGENCE)
    )
    assert f"Triage: {tickets(24)[int(first_wrong[2:])]['text']}" in html  # an example shows its input

    # a number field within its tolerance agrees: the emulator moves a wrong integer by 1
    again = run_cli([*compare_args(items, job), "--json", "-q", "--tolerance", "urgency=1"], cwd=workdir, env=env)
    assert again.returncode == 0, again.stderr
    assert {row["agreement"]["urgency"] for row in orjson.loads(again.stdout)["models"]} == {1.0}
    assert emulator.stats()["by_status"]["200"] == 3 * 24  # the same runs: nothing sent again


def test_the_table_shows_the_confusion_and_the_job_line_of_the_recommended_model(workdir: Path, emulator) -> None:
    emulator.configure(model_divergence={HAIKU: 0.5})
    items = write_jsonl(workdir / "tickets.jsonl", tickets(20))
    job = write_job(workdir)
    done = run_cli([*compare_args(items, job), "-q"], cwd=workdir, env=cli_env(emulator.base_url))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"{HAIKU} vs {OPUS} (reference -> {HAIKU}):" in out
    assert ("  category: " in out and "  spam: true -> false" in out) or "  spam: false -> true" in out
    assert f"recommended: {SONNET}" in out and f'in {job}: model = "{SONNET}"' in out


def test_the_recommendation_follows_the_prices(workdir: Path, emulator) -> None:
    emulator.configure(model_divergence={HAIKU: 0.0})  # every model answers as the reference does
    items = write_jsonl(workdir / "tickets.jsonl", tickets(12))
    env = cli_env(emulator.base_url)
    # every model agrees with the reference: the cheapest per 1,000 items wins
    listed = run_cli([*compare_args(items, write_job(workdir)), "--json", "-q"], cwd=workdir, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["model"]: r for r in orjson.loads(listed.stdout)["models"]}
    assert rows[HAIKU]["agreement_all"] == rows[SONNET]["agreement_all"] == 1.0
    assert rows[HAIKU]["cost_per_1000"] < rows[SONNET]["cost_per_1000"]  # $1/$5 against $3/$15 per million
    assert orjson.loads(listed.stdout)["recommended"] == HAIKU
    # the job's own prices make Sonnet the cheaper one: the same runs, priced again, nothing sent again
    flipped = '[prices."claude-haiku-4-5"]\ninput = 30.0\noutput = 150.0\n'
    job = write_job(workdir, extra=flipped, name="flipped.toml")
    again = run_cli([*compare_args(items, job), "--json", "-q"], cwd=workdir, env=env)
    assert again.returncode == 0, again.stderr
    data = orjson.loads(again.stdout)
    assert data["recommended"] == SONNET
    haiku = next(r for r in data["models"] if r["model"] == HAIKU)
    assert haiku["cost_per_1000"] == pytest.approx(rows[HAIKU]["cost_per_1000"] * 30, rel=1e-6)
    assert emulator.stats()["by_status"]["200"] == 3 * 12
    # a model under the target is never recommended, however cheap
    emulator.configure(model_divergence={HAIKU: 0.6})
    items2 = write_jsonl(workdir / "more.jsonl", tickets(12, "order"))  # new questions: not in the cache
    low = run_cli([*compare_args(items2, write_job(workdir)), "--json", "-q"], cwd=workdir, env=env)
    assert orjson.loads(low.stdout)["recommended"] == SONNET
    none = run_cli(
        [*compare_args(items2, write_job(workdir)), "--json", "-q", "--target", "1.01"], cwd=workdir, env=env
    )
    assert none.returncode == 2 and "--target" in none.stderr


def test_a_killed_comparison_resumes_without_paying_twice(workdir: Path, emulator) -> None:
    emulator.configure(model_divergence=DIVERGENCE, latency_ms=20)
    n = 30
    items = write_jsonl(workdir / "tickets.jsonl", tickets(n))
    job = write_job(workdir)
    env = cli_env(emulator.base_url)
    db = workdir / "batchrun.db"
    child = start_batchrun([*compare_args(items, job), "-q", "--concurrency", "2"], cwd=workdir, env=env)
    # the reference's run is done and the first model's is under way
    wait_until(lambda: items_in_state(db, "succeeded") >= n + 6 or child.poll() is not None)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    in_flight = db_rows(db, "SELECT count(*) FROM items WHERE state = 'in_flight'")[0][0]
    done_before = items_in_state(db, "succeeded")
    assert n + 6 <= done_before < 3 * n
    emulator.configure(latency_ms=0)
    resumed = run_cli([*compare_args(items, job), "--json", "-q"], cwd=workdir, env=env)
    assert resumed.returncode == 0, resumed.stderr
    answered = emulator.stats()["by_status"]["200"]
    assert 3 * n <= answered <= 3 * n + in_flight  # only what was in flight at the kill was bought again
    params = stored_params(db)
    for row, model in zip(orjson.loads(resumed.stdout)["models"], (HAIKU, SONNET), strict=True):
        expected = expected_row(params, model)
        assert {k: row[k] for k in expected} == expected
    assert len(db_rows(db, "SELECT id FROM runs")) == 3


def test_a_text_job_with_a_judge(workdir: Path, emulator) -> None:
    divergence = {HAIKU: 0.5}
    emulator.configure(model_divergence=divergence)
    n = 16
    items = write_jsonl(workdir / "tickets.jsonl", tickets(n))
    job = write_job(workdir, schema=False)
    env = cli_env(emulator.base_url)
    args = ["compare", str(items), "--job", str(job), "--models", HAIKU, "--reference", OPUS]
    refused = run_cli(args, cwd=workdir, env=env)
    assert refused.returncode == 2 and "--judge MODEL" in refused.stderr
    assert not (workdir / "batchrun.db").exists()
    done = run_cli([*args, "--judge", JUDGE, "--json", "-q"], cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr
    row = orjson.loads(done.stdout)["models"][0]
    params = stored_params(workdir / "batchrun.db")
    differing = {
        cid for cid, m in params.items() if HAIKU in m and TEXT in diverging_fields(m[HAIKU], [TEXT], divergence)
    }
    for cid in differing:  # the texts do differ
        assert expected_reply(params[cid][HAIKU], None, divergence).text != expected_reply(params[cid][OPUS]).text
    judged = {cid: m[JUDGE] for cid, m in params.items() if JUDGE in m}
    assert set(judged) == differing and 0 < len(differing) < n  # equal answers agree without asking the judge
    for cid in judged:
        prompt = judged[cid]["messages"][0]["content"]
        assert f"Triage: Ticket {cid[2:]}:" in prompt and "<candidate_answer>" in prompt
    agrees = sum(expected_output(p, divergence)["agrees"] for p in judged.values())
    assert row["agreement"] == {"text": round((n - len(differing) + agrees) / n, 6)}
    assert row["agreement_all"] == row["agreement"]["text"] and row["items"] == n and row["failed"] == 0


def test_max_cost_covers_the_whole_comparison(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "tickets.jsonl", tickets(20))
    job = write_job(workdir)
    env = cli_env(emulator.base_url)
    db = workdir / "batchrun.db"
    plan = run_cli([*compare_args(items, job), "--dry-run"], cwd=workdir, env=env)
    assert plan.returncode == 0, plan.stderr
    assert (
        f"{OPUS} (reference): 20 item(s), at most $" in plan.stdout and "the whole comparison: at most $" in plan.stdout
    )
    assert not db.exists() and emulator.stats()["by_status"] == {}
    stopped = run_cli([*compare_args(items, job), "-q", "--max-cost", "0.02"], cwd=workdir, env=env)
    assert stopped.returncode == 3, stopped.stderr
    assert "run the same command" in stopped.stderr, stopped.stderr
    spent = sum(c or 0 for (c,) in db_rows(db, "SELECT cost_usd FROM items"))
    assert 0 < spent <= 0.02
    finished = run_cli([*compare_args(items, job), "-q", "--json", "--max-cost", "1"], cwd=workdir, env=env)
    assert finished.returncode == 0, finished.stderr
    assert emulator.stats()["by_status"]["200"] == 3 * 20


def test_python_api_takes_a_pydantic_schema_and_returns_the_same_data(
    workdir: Path, emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typing import Literal

    from pydantic import BaseModel

    class Ticket(BaseModel):
        category: Literal["billing", "bug", "account", "other"]
        urgency: int
        spam: bool
        summary: str

    emulator.configure(model_divergence=DIVERGENCE)
    for k, v in cli_env(emulator.base_url).items():
        monkeypatch.setenv(k, v)
    rows = tickets(10)
    common = dict(models=[HAIKU, SONNET], reference=OPUS, schema=Ticket, template="Triage: {text}", max_tokens=200)
    found = batchrun.compare(rows, db=workdir / "api.db", log=None, **common)
    assert found.exit_code == 0 and found["items"] == 10
    params = stored_params(workdir / "api.db")
    fields = list(Ticket.model_json_schema()["properties"])
    for row, model in zip(found.to_dict()["models"], (HAIKU, SONNET), strict=True):
        wrong = [diverging_fields(m[model], fields, DIVERGENCE) for m in params.values()]
        assert row["agreement_all"] == round(sum(not w for w in wrong) / 10, 6)
    reference_run = found.reference_run_id
    parsed = list(batchrun.results(reference_run, db=workdir / "api.db").parsed(Ticket))
    assert len(parsed) == 10 and all(isinstance(t, Ticket) for t in parsed)
    assert [p.model_dump() for p in parsed] == [expected_output(params[f"t-{i}"][OPUS], DIVERGENCE) for i in range(10)]
    assert params["t-0"][OPUS]["output_config"]["format"]["schema"] == Ticket.model_json_schema()  # what was sent
    assert emulator.stats()["by_status"]["200"] == 30


def test_failed_items_are_counted_apart_and_batch_mode_answers_the_same(workdir: Path, emulator) -> None:
    emulator.configure(model_divergence=DIVERGENCE, p_refusal=0.2)
    n = 20
    items = write_jsonl(workdir / "tickets.jsonl", tickets(n))
    job = write_job(workdir, extra="poll_interval = 0.05\n")
    db = workdir / "batchrun.db"
    done = run_cli(
        [*compare_args(items, job), "--json", "-q", "--mode", "batch"], cwd=workdir, env=cli_env(emulator.base_url)
    )
    assert done.returncode == 1, done.stderr  # items failed for good (refused): exit 1, the comparison is still made
    report = orjson.loads(done.stdout)
    runs = {model: run for run, model in db_rows(db, "SELECT DISTINCT run_id, model FROM items")}
    failed = {
        model: {
            cid for (cid,) in db_rows(db, "SELECT custom_id FROM items WHERE run_id = ? AND state = 'failed'", (run,))
        }
        for model, run in runs.items()
    }
    assert db_rows(db, "SELECT DISTINCT via FROM items WHERE state = 'succeeded'") == [("batch",)]
    params = stored_params(db)
    for row, model in zip(report["models"], (HAIKU, SONNET), strict=True):
        lost = failed[model] | failed[OPUS]
        assert lost and row["failed"] == len(lost) and row["items"] == n - len(lost)
        kept = {cid: by_model for cid, by_model in params.items() if cid not in lost}
        expected = expected_row(kept, model)
        assert row["agreement"] == expected["agreement"] and row["agreement_all"] == expected["agreement_all"]


def test_bad_input_is_refused_before_anything_is_sent_or_stored(workdir: Path, emulator) -> None:
    items = workdir / "tickets.jsonl"
    items.write_text('{"custom_id": "a", "text": "fine"}\n{"custom_id": "b", "text": \n')
    env = cli_env(emulator.base_url)
    bad = run_cli(compare_args(items, write_job(workdir)), cwd=workdir, env=env)
    assert bad.returncode == 2 and f"{items}:2: not valid JSON" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and "error: unexpected" not in bad.stderr
    write_jsonl(items, [*tickets(2), {"custom_id": "c", "text": "mine", "model": SONNET}])
    own = run_cli(compare_args(items, write_job(workdir)), cwd=workdir, env=env)
    assert own.returncode == 2 and f"{items}:3: the line names its own model" in own.stderr, own.stderr
    # the reference's own name too: every leg would go to the reference, which agrees with itself 100%
    params = {"model": OPUS, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    write_jsonl(items, [*tickets(2), {"custom_id": "r", "params": params}])
    reference = run_cli(compare_args(items, write_job(workdir)), cwd=workdir, env=env)
    assert reference.returncode == 2, reference.stderr
    assert f"{items}:3: the line names its own model ({OPUS})" in reference.stderr
    write_jsonl(items, tickets(3))
    same = run_cli([*compare_args(items, write_job(workdir)), "--models", f"{HAIKU},{OPUS}"], cwd=workdir, env=env)
    assert same.returncode == 2 and "names the reference" in same.stderr
    assert not (workdir / "batchrun.db").exists() and emulator.stats()["by_status"] == {}


def test_the_emulator_takes_model_divergence_as_a_flag_and_refuses_a_bad_share() -> None:
    from batchrun.emulator.config import EmulatorConfig, config_from_argv, config_to_argv

    config, _, _ = config_from_argv(["--model-divergence", "claude-haiku-4-5=0.25,claude-sonnet-4-6=0"])
    assert config.model_divergence == {HAIKU: 0.25, SONNET: 0.0}
    assert config_from_argv(config_to_argv(config))[0].model_divergence == config.model_divergence
    for bad in ({HAIKU: 1.5}, {HAIKU: "x"}, "claude-haiku-4-5", [HAIKU]):
        with pytest.raises(ValueError, match="model_divergence"):
            EmulatorConfig(model_divergence=bad)


def test_the_html_report_escapes_every_value_and_has_no_script() -> None:
    from collections import Counter

    from batchrun.comparereport import render_html
    from batchrun.comparison import Comparison, ModelResult

    evil = '<script>alert("x")</script>'
    result = ModelResult(HAIKU, items=1, total=1, run_id="r-1")
    result.agreed["kind"] = 0
    result.confusion = {"kind": Counter({(evil, "b&b"): 1})}
    result.examples = [{"custom_id": "c-1", "fields": ["kind"], "answer": {"kind": "b&b"}, "reference": {"kind": evil}}]
    c = Comparison(OPUS, 1, ["kind"], [result], None, 0.9, reference_run_id="r-0", inputs={"c-1": evil})
    page = render_html(c)
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 2 and "b&amp;b" in page
