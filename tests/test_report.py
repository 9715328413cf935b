"""`batchrun report`: one self-contained HTML file whose numbers are `status --json`'s, checked in a real browser;
and `--on-finish`, told how the run ended."""

from __future__ import annotations

import itertools
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest

from tests.conftest import batchrun, cli_env, db_rows, prompts, write_jsonl

MODEL = "claude-haiku-4-5"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def bad_items(n: int, bad: tuple[int, ...]) -> list[dict]:
    rows = prompts(n)
    for i in bad:
        rows[i] = {"custom_id": f"item-{i}", "params": {"messages": [{"role": "user", "content": "x"}], "bogus": 1}}
    return rows


@pytest.fixture
def online_run(workdir: Path, emulator) -> tuple[str, dict]:
    """An online run with 429s, 529s and three items that fail for good; returns (run id, status --json)."""
    emulator.configure(p429=0.15, p529=0.1, retry_after_s=0.05, latency_ms=5)
    items = write_jsonl(workdir / "items.jsonl", bad_items(40, (3, 11, 17)))
    env = cli_env(emulator.base_url)
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "--run-id", "nightly", "--concurrency", "8"], cwd=workdir, env=env
    )
    assert proc.returncode == 1, proc.stderr
    status = batchrun(["status", "--json", "nightly"], cwd=workdir, env=env)
    return "nightly", orjson.loads(status.stdout)


class Page(HTMLParser):
    """The report's summary cells (data-key -> text) and its charts (name -> drawn shapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self.charts: dict[str, int] = {}
        self.key: str | None = None
        self.chart: str | None = None
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if "data-key" in a:
            self.key = a["data-key"]
            self.cells[self.key] = a["data-value"]
        if tag == "svg":
            self.chart = a.get("data-chart")
            self.charts[self.chart] = 0
        elif self.chart and tag in ("polyline", "rect", "path") and a.get("width") not in ("0", "0.0"):
            self.charts[self.chart] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.chart = None


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def test_report_numbers_equal_status_json(workdir: Path, emulator, online_run) -> None:
    run_id, status = online_run
    proc = batchrun(["report", run_id, "-o", "r.html"], cwd=workdir, env=cli_env(emulator.base_url))
    assert proc.returncode == 0, proc.stderr
    text = (workdir / "r.html").read_text()
    page = parse(text)
    assert page.cells["total"] == str(status["total"]) == "40"
    for state, n in status["counts"].items():
        assert page.cells[f"counts.{state}"] == str(n)
    for kind, n in status["tokens"].items():
        assert page.cells[f"tokens.{kind}"] == str(n)
    assert float(page.cells["cost_usd"]) == status["cost_usd"] > 0
    assert f"${status['cost_usd']:,.4f}" in text
    # failures grouped by message, with their example items
    assert "bogus" in text and "item-3, item-11, item-17" in text
    # nothing to fetch when opened: no script, no remote address
    assert page.scripts == 0 and not re.search(r"(src|href)=['\"]?https?:", text)
    assert set(page.charts) >= {"throughput", "concurrency", "latency", "cost", "cache", "retries"}
    assert all(n > 0 for n in page.charts.values()), page.charts
    throttled = db_rows(workdir / "batchrun.db", "SELECT count(*) FROM attempts WHERE status IN (429, 529)")[0][0]
    assert text.count("class='mark-429'") + text.count("class='mark-529'") == throttled > 0


def test_report_of_a_batch_run_draws_its_batches(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(30))
    env = cli_env(emulator.base_url)
    args = ["submit", str(items), "--model", MODEL, "--mode", "batch", "--batch-size", "10", "--poll-interval", "0.1"]
    assert batchrun([*args, "--run-id", "b"], cwd=workdir, env=env).returncode == 0
    assert batchrun(["report", "b", "-o", "b.html"], cwd=workdir, env=env).returncode == 0
    text = (workdir / "b.html").read_text()
    page = parse(text)
    assert page.charts["batches"] == 3 and text.count("msgbatch_") == 3  # the table's ids, not the timeline's
    assert page.cells["counts.succeeded"] == "30"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install -y chromium)")
def test_report_renders_in_a_real_browser(workdir: Path, emulator, online_run) -> None:
    run_id, _ = online_run
    assert batchrun(["report", run_id, "-o", "r.html"], cwd=workdir, env=cli_env(emulator.base_url)).returncode == 0
    url = (workdir / "r.html").as_uri()
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr
    page = parse(dom.stdout)
    assert len(page.charts) >= 6 and all(n > 0 for n in page.charts.values()), page.charts


def test_on_finish_runs_with_the_outcome_and_its_failure_keeps_the_exit_code(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", bad_items(6, (2,)))
    hook = "env | grep ^BATCHRUN_ | sort > hook.env; echo hook says hi; exit 7"
    env = cli_env(emulator.base_url)
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "--run-id", "h", "-o", "out.jsonl", "--on-finish", hook],
        cwd=workdir,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr  # the run's own code: one item failed; not the hook's 7
    assert "--on-finish command exited 7" in proc.stderr and "hook says hi" in proc.stderr
    assert proc.stdout == ""
    seen = dict(line.split("=", 1) for line in (workdir / "hook.env").read_text().splitlines())
    status = orjson.loads(batchrun(["status", "--json", "h"], cwd=workdir, env=env).stdout)
    assert seen["BATCHRUN_RUN_ID"] == "h"
    assert seen["BATCHRUN_EXIT_CODE"] == "1"
    assert (seen["BATCHRUN_SUCCEEDED"], seen["BATCHRUN_FAILED"], seen["BATCHRUN_PENDING"]) == ("5", "1", "0")
    assert float(seen["BATCHRUN_COST_USD"]) == pytest.approx(status["cost_usd"])
    assert seen["BATCHRUN_RESULTS"] == str(workdir / "out.jsonl")
    assert seen["BATCHRUN_DB"] == str(workdir / "batchrun.db")
    assert not any("sk-ant" in value for value in seen.values())


def test_on_finish_runs_when_the_run_stops_early(workdir: Path, emulator) -> None:
    emulator.configure(p529=1.0, retry_after_s=0.01, max_faults_per_request=100)
    items = write_jsonl(workdir / "items.jsonl", prompts(3))
    proc = batchrun(
        ["submit", str(items), "--model", MODEL, "--max-attempts", "2", "--on-finish", "echo $BATCHRUN_EXIT_CODE>code"],
        cwd=workdir,
        env=cli_env(emulator.base_url),
    )
    assert proc.returncode == 3, proc.stderr
    assert (workdir / "code").read_text().strip() == "3"


def test_a_schema_jobs_fields_are_counted_beside_the_previous_run_of_the_job(workdir: Path, emulator) -> None:
    """Two nights of the shipped schema job: the report counts each enum/boolean/small-range field of tonight's
    answers, and last night's beside them, exactly as the answers view has them."""
    from batchrun.htmlreport import categorical_fields

    jobs = Path(__file__).resolve().parents[1] / "jobs"
    shutil.copytree(jobs, workdir / "jobs")
    lines = (workdir / "jobs/examples/tickets.csv").read_text().splitlines(keepends=True)
    (workdir / "night1.csv").write_text("".join(lines[:31]))
    (workdir / "night2.csv").write_text(lines[0] + "".join(lines[31:]))
    env = cli_env(emulator.base_url)
    for night in ("night1", "night2"):
        proc = batchrun(
            ["submit", f"{night}.csv", "--job", "jobs/classify_tickets_csv.toml", "--run-id", night, "-q"],
            cwd=workdir,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
    proc = batchrun(["report", "night2", "-o", "r.html"], cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    text = (workdir / "r.html").read_text()
    assert "beside the previous run, night1" in text
    schema = orjson.loads((workdir / "jobs/ticket.schema.json").read_bytes())
    fields = categorical_fields(schema)
    assert {"category", "urgency", "sentiment"} <= set(fields) and "summary" not in fields
    for name in fields:
        assert f"data-chart='field-{name}'" in text
        rows = db_rows(
            workdir / "batchrun.db",
            f"SELECT json_extract(data, '$.{name}'), count(*) FROM answers WHERE run_id = 'night2' GROUP BY 1",
        )
        for value, n in rows:
            assert f"data-field='{name}' data-value='{value}'>{n:,}</td>" in text


HOSTILE = "x'><script>alert(1)</script><img src=x onerror=alert(2)>\"<svg onload=alert(3)>"
# what the report itself is made of; anything else (a <script>, an <img onerror>) came from the data
REPORT_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "span", "table", "tr", "th", "td",
    "pre", "svg", "text", "line", "polyline", "rect", "path", "g", "details", "summary", "br",
}  # fmt: skip


class Markup(HTMLParser):
    """Every tag and attribute of a page, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)
        self.attributes |= {name for name, _ in attrs}

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def assert_inert(text: str) -> Markup:
    """No script, and no tag or event attribute that the data could have brought in."""
    assert "<script" not in text.lower()
    markup = Markup()
    markup.feed(text)
    assert markup.tags <= REPORT_TAGS, markup.tags - REPORT_TAGS
    assert not [name for name in markup.attributes if name.startswith("on")], markup.attributes
    return markup


def hostile_run(workdir: Path, emulator) -> dict:
    """A schema job whose property names and enum values are hostile, with a hostile source id and kept column,
    and an item that fails with the hostile text in its error message."""
    schema = {
        "type": "object",
        "properties": {
            HOSTILE: {"type": "boolean"},
            "category": {"type": "string", "enum": [HOSTILE, f"{HOSTILE}2"]},
            "level": {"type": "integer", "minimum": 1, "maximum": 3},
        },
        "required": [HOSTILE, "category", "level"],
        "additionalProperties": False,
    }
    (workdir / "s.json").write_bytes(orjson.dumps(schema))
    rows = [{"custom_id": f"i-{i}", "ticket": f"{HOSTILE}{i}", "prompt": f"q {i} {HOSTILE}"} for i in range(12)]
    rows.append({"custom_id": "bad", "ticket": HOSTILE, "params": {"messages": [{"role": "user", "content": "x"}]}})
    rows[-1]["params"][HOSTILE] = 1
    items = write_jsonl(workdir / "items.jsonl", rows)
    env = cli_env(emulator.base_url)
    job = workdir / "job.toml"
    job.write_text(f'model = "{MODEL}"\nmax_tokens = 300\nschema_file = "s.json"\nkeep = ["ticket"]\n')
    proc = batchrun(["submit", str(items), "--job", str(job), "--run-id", "hostile", "-q"], cwd=workdir, env=env)
    assert proc.returncode == 1, proc.stderr
    return env


def test_hostile_names_and_values_in_the_data_stay_text_in_the_report(workdir: Path, emulator) -> None:
    env = hostile_run(workdir, emulator)
    assert batchrun(["report", "hostile", "-o", "r.html"], cwd=workdir, env=env).returncode == 0
    text = (workdir / "r.html").read_text()
    markup = assert_inert(text)
    shown = "".join(markup.text)
    assert f"{HOSTILE}: Extra inputs are not permitted" in shown  # the error message, as text
    assert f"\n{HOSTILE}\n" in "\n".join(markup.text)  # the field name as a heading
    assert f"\n{HOSTILE}2\n" in "\n".join(markup.text)  # the field's values in the table
    assert f"data-chart='field-{HOSTILE}'" not in text


def test_every_string_of_a_report_can_be_hostile(workdir: Path, emulator) -> None:
    """Whatever string the store hands the report (model names, run and batch ids, statuses, input path, error
    types, field names and values, sample results), it is shown as text."""
    from batchrun.htmlreport import gather, render
    from batchrun.store import Store

    env = hostile_run(workdir, emulator)
    args = ["submit", str(workdir / "items.jsonl"), "--job", "job.toml", "--mode", "batch", "--poll-interval", "0.1"]
    batchrun([*args, "--run-id", "b", "-q", "--new-run"], cwd=workdir, env=env)
    store = Store(workdir / "batchrun.db")
    try:
        data = gather(store, "b")
    finally:
        store.close()
    assert data.status["batches"] and data.status["by_model"] and data.failures and data.fields

    def poison(value):
        if isinstance(value, str):
            return value if value.endswith(("_at", "Z")) or value[:4].isdigit() else HOSTILE + value
        if isinstance(value, dict):
            return {poison(k) if not isinstance(k, str) or k not in keys else k: poison(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(poison(v) for v in value)
        return value

    keys = {  # the dict keys the report looks up: they stay, their values are poisoned
        *data.status, *data.status["counts"], *data.status["tokens"], *data.status["by_model"][0],
        *data.status["batches"][0], *data.failures[0], "custom_id", "state", "result", "message", "content",
        "type", "text", "error", "usage",
    }  # fmt: skip
    data.status = poison(data.status)
    data.failures = poison(data.failures)
    data.sample = poison(data.sample)
    data.fields = {HOSTILE + name: (poison(now), poison(before)) for name, (now, before) in data.fields.items()}
    data.previous_run = HOSTILE
    assert_inert(render(data))


def test_the_report_is_private_and_a_full_disk_leaves_the_previous_one(workdir: Path, emulator) -> None:
    import os
    import resource
    import stat
    import sys

    items = bad_items(30, ())
    for i in range(30):  # distinct long failures: a report larger than the file size limit below
        items.append({"custom_id": f"bad-{i}", "params": {"messages": [{"role": "user", "content": "x"}]}})
        items[-1]["params"][f"bogus_{i}_" + "y" * 3000] = 1
    write_jsonl(workdir / "items.jsonl", items)
    env = cli_env(emulator.base_url)
    assert batchrun(["submit", "items.jsonl", "--model", MODEL, "--run-id", "r", "-q"], cwd=workdir, env=env).returncode
    assert batchrun(["report", "r", "-o", "r.html"], cwd=workdir, env=env).returncode == 0
    report = workdir / "r.html"
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    before = report.read_bytes()
    assert len(before) > 100_000
    report.write_bytes(b"last night's report")

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    # not measured by coverage (under --cov): its own data file would meet the same file size limit
    unmeasured = {k: v for k, v in env.items() if not k.startswith("COVERAGE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "report", "r", "-o", "r.html"],
        cwd=workdir,
        env=unmeasured,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=small_files,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("batchrun: error: r.html: File too large (free some space")
    assert len(proc.stderr.splitlines()) == 1
    assert report.read_bytes() == b"last night's report"
    assert sorted(os.listdir(workdir)) == sorted(["batchrun.db", "batchrun.db.locks", "items.jsonl", "r.html"])


class Charts(HTMLParser):
    """Each chart's texts by class (y-tick, x-tick) and all its texts; each table's header and cells."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, list[str]]] = {}
        self.chart: str | None = None
        self.kind = "text"
        self.tables: list[list[list[str]]] = []
        self.in_cell = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "svg":
            self.chart = a["data-chart"]
            self.charts[self.chart] = {"text": []}
        elif tag == "text":
            self.kind = a.get("class") or "text"
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
            self.in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.chart = None
        elif tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data: str) -> None:
        if self.chart:
            chart = self.charts[self.chart]
            chart["text"].append(data)
            if self.kind != "text":
                chart.setdefault(self.kind, []).append(data)
        elif self.in_cell:
            self.tables[-1][-1][-1] += data

    def table(self, *headers: str) -> list[list[str]]:
        return next(t for t in self.tables if t and t[0][: len(headers)] == list(headers))


def charts_of(path: Path) -> Charts:
    page = Charts()
    page.feed(path.read_text())
    return page


def assert_round_ticks(labels: list[str]) -> None:
    """0 and evenly spaced steps of 1, 2 or 5 times a power of ten, written out (2,000; 0.5), never 2e+03."""
    assert labels and not [t for t in labels if "e+" in t or "e-" in t], labels
    values = [float(t.replace(",", "")) for t in labels]
    step = values[1] - values[0]
    assert values[0] == 0 and all(abs(b - a - step) < 1e-9 for a, b in itertools.pairwise(values)), labels
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in (1, 2, 5), labels


def test_axes_have_round_ticks_written_out_even_at_thousands_of_items_a_second(workdir: Path, emulator) -> None:
    """The second night of the same items is answered from the response cache: thousands of items a second."""
    items = write_jsonl(workdir / "items.jsonl", prompts(300))
    env = cli_env(emulator.base_url)
    for night in ("n1", "n2"):
        args = ["submit", str(items), "--model", MODEL, "--run-id", night, "-q", "--concurrency", "64"]
        assert batchrun(args, cwd=workdir, env=env).returncode == 0
    for night in ("n1", "n2"):
        assert batchrun(["report", night, "-o", f"{night}.html"], cwd=workdir, env=env).returncode == 0
        page = charts_of(workdir / f"{night}.html")
        for name in {"throughput", "concurrency"} & set(page.charts):  # n2 sent no request
            assert_round_ticks(page.charts[name]["y-tick"])
            x = page.charts[name]["x-tick"]
            assert_round_ticks([str(float(t[:-1]) * {"s": 1, "m": 60, "h": 3600}[t[-1]]) for t in x])
    tops = charts_of(workdir / "n2.html").charts["throughput"]["y-tick"]
    assert float(tops[-1].replace(",", "")) >= 1000 and "," in tops[-1]  # 2,000 (or more), as written


def test_a_batch_runs_latency_is_per_batch_and_its_table_names_each_batch_once(workdir: Path, emulator) -> None:
    items = write_jsonl(workdir / "items.jsonl", prompts(30))
    env = cli_env(emulator.base_url)
    args = ["submit", str(items), "--model", MODEL, "--mode", "batch", "--batch-size", "10", "--poll-interval", "0.1"]
    assert batchrun([*args, "--run-id", "b", "-q"], cwd=workdir, env=env).returncode == 0
    assert batchrun(["report", "b", "-o", "b.html"], cwd=workdir, env=env).returncode == 0
    text = (workdir / "b.html").read_text()
    page = charts_of(workdir / "b.html")
    assert "latency is per batch" in text
    assert "latency" not in page.charts  # no percentiles that would all be the batch's time
    assert [t for t in page.charts["batch-latency"]["text"] if t.startswith("batch")] == [
        "batch 1",
        "batch 2",
        "batch 3",
    ]
    status = orjson.loads(batchrun(["status", "--json", "b"], cwd=workdir, env=env).stdout)
    assert [row[1] for row in page.table("#")[1:]] == [b["id"] for b in status["batches"]]
    assert not [t for t in page.charts["batches"]["text"] if "msgbatch_" in t]  # a short label, never clipped


def test_answers_by_field_in_value_order_grouped_refusals_and_no_empty_previous_columns(
    workdir: Path, emulator
) -> None:
    emulator.configure(p_refusal=0.25)
    schema = {
        "type": "object",
        "properties": {
            "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
            "escalate": {"type": "boolean"},
            "category": {"type": "string", "enum": ["zeta", "alpha", "mid"]},
        },
        "required": ["urgency", "escalate", "category"],
        "additionalProperties": False,
    }
    (workdir / "s.json").write_bytes(orjson.dumps(schema))
    items = write_jsonl(workdir / "items.jsonl", prompts(40))
    env = cli_env(emulator.base_url)
    args = ["submit", str(items), "--model", MODEL, "--schema", "s.json", "--max-tokens", "300", "-q"]
    assert batchrun([*args, "--run-id", "one"], cwd=workdir, env=env).returncode == 1  # refusals
    assert batchrun(["report", "one", "-o", "one.html"], cwd=workdir, env=env).returncode == 0
    text = (workdir / "one.html").read_text()
    assert "Previous run" not in text and "no previous run" in text
    page = charts_of(workdir / "one.html")
    urgency = [t for t in page.charts["field-urgency"]["text"] if t.isdigit()]
    assert urgency == sorted(urgency, key=int) and len(urgency) >= 4, urgency
    assert [t for t in page.charts["field-escalate"]["text"] if t in ("true", "false")] == ["false", "true"]
    category = [t for t in page.charts["field-category"]["text"] if t in ("zeta", "alpha", "mid")]
    assert category == [c for c in ("zeta", "alpha", "mid") if c in category]  # the schema's order
    refused = db_rows(workdir / "batchrun.db", "SELECT count(*) FROM items WHERE error_type = 'refusal'")[0][0]
    assert refused >= 3
    failures = page.table("Items", "Type")[1:]
    assert [(row[0], row[1]) for row in failures] == [(str(refused), "refusal")]
    # the next night has a previous run: its columns are there
    assert batchrun([*args, "--run-id", "two", "--new-run", "--no-cache"], cwd=workdir, env=env).returncode == 1
    assert batchrun(["report", "two", "-o", "two.html"], cwd=workdir, env=env).returncode == 0
    assert "<th>Previous run</th>" in (workdir / "two.html").read_text()


def test_status_says_where_prices_come_from_in_the_products_terms(workdir: Path, emulator, online_run) -> None:
    from batchrun.pricing import PRICES_TAKEN

    _, status = online_run
    assert "shared/" not in orjson.dumps(status).decode()
    assert status["prices_source"].startswith(f"batchrun's built-in price table of {PRICES_TAKEN}")
    (workdir / "p.toml").write_text('[prices]\n"claude-haiku-4-5" = { input = 2.0, output = 8.0 }\n')
    items = write_jsonl(workdir / "few.jsonl", prompts(2))
    env = cli_env(emulator.base_url)
    args = ["submit", str(items), "--model", MODEL, "--job", "p.toml", "--run-id", "priced", "-q"]
    assert batchrun(args, cwd=workdir, env=env).returncode == 0
    priced = orjson.loads(batchrun(["status", "--json", "priced"], cwd=workdir, env=env).stdout)
    assert priced["prices_source"].startswith("the job's [prices] for claude-haiku-4-5; batchrun's built-in")
