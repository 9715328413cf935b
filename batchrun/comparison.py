"""`batchrun compare`: the same items on several models and on a reference model, each as a normal run in the store
(resumable, answered from the response cache when an identical request was answered before, inside one budget),
then every schema field of every model's answer compared with the reference's.

A text job (no schema) needs a judge model: an answer whose text equals the reference's (after trimming) agrees
without asking; for every other pair the judge gets JUDGE_SYSTEM with the job's system prompt (`judge_system`), the
instructions the answers were written to, and `judge_prompt(...)`, and answers JUDGE_SCHEMA.
The judge's requests are a run of their own per model, resumable and cached like the others.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import EXIT_FAILED_ITEMS, EXIT_NOT_FINISHED, EXIT_OK, EXIT_USAGE, UsageError
from batchrun.inputs import read_items
from batchrun.job import Job
from batchrun.pricing import price_for, total_cost, usage_cost
from batchrun.store import Store, answer_rows

# What `compare --emulate` makes the emulator's models do (unless BATCHRUN_EMULATOR_ARGS says otherwise): each
# gets this share of fields wrong against the reference, so an emulated comparison shows something to choose from.
EMULATED_DIVERGENCE = "claude-haiku-4-5=0.06,claude-sonnet-4-6=0.005"
TEXT_FIELD = "text"  # the one "field" of a text job
WHOLE_FIELD = "answer"  # the one "field" of a schema that is not an object with properties
MAX_EXAMPLES = 5  # disagreements kept per model for the report
PROBE_MODEL = "batchrun-compare-probe"  # no line names it: a rendered item with another model named its own
MAX_INPUT_CHARS = 2000
JUDGE_MAX_TOKENS = 400
JUDGE_SYSTEM = (
    "You compare two answers to the same request. Decide whether the candidate answer agrees with the reference "
    "answer: the same facts, decisions and conclusions. Wording, order and length may differ; a missing or "
    "contradicting point means it does not agree. Reply with the JSON asked for and nothing else."
)
JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"agrees": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["agrees", "reason"],
    "additionalProperties": False,
}


JUDGE_INSTRUCTIONS = (
    "\n\nThe answers were written to these instructions (the request's system prompt): judge them by what the "
    "instructions ask for.\n<instructions>\n{instructions}\n</instructions>"
)


def judge_system(instructions: str) -> str:
    """The judge's system prompt: JUDGE_SYSTEM, and the instructions every judged answer was written to (the job's
    system prompt, the same for every request: held once, and cached like any long system prompt)."""
    return JUDGE_SYSTEM + (JUDGE_INSTRUCTIONS.format(instructions=instructions) if instructions else "")


def judge_prompt(request: str, reference: str, candidate: str, instructions: str = "") -> str:
    """What the judge is asked for one pair of answers (documented in the README: do not change it lightly,
    a changed prompt is a new judge run). `instructions`: this request's own system prompt, when the requests
    do not all share one (judge_system holds a shared one)."""
    return (
        (f"<instructions>\n{instructions}\n</instructions>\n\n" if instructions else "")
        + f"<request>\n{request}\n</request>\n\n<reference_answer>\n{reference}\n</reference_answer>\n\n"
        f"<candidate_answer>\n{candidate}\n</candidate_answer>\n\n"
        "Does the candidate answer agree with the reference answer?"
    )


@dataclass(frozen=True)
class Spec:
    """What to compare: the models, the reference, and how."""

    models: tuple[str, ...]
    reference: str
    sample: int | None = None
    target: float = 0.9
    judge: str | None = None
    tolerance: Mapping[str, float] = field(default_factory=dict)
    max_cost: float | None = None

    def check(self, job: Job) -> None:
        problems = []
        if not self.models:
            problems.append("--models: give at least one model to compare with the reference (e.g. claude-haiku-4-5)")
        if len(set(self.models)) != len(self.models):
            problems.append(f"--models {','.join(self.models)}: a model is named twice (name each once)")
        if self.reference in self.models:
            problems.append(
                f"--models names the reference {self.reference} (the reference is compared with the others)"
            )
        if not 0 <= self.target <= 1:
            problems.append(f"--target {self.target}: must be a share between 0 and 1 (e.g. 0.9)")
        if self.sample is not None and self.sample < 1:
            problems.append(f"--sample {self.sample}: must be 1 or more items")
        if job.schema is None and self.judge is None:
            problems.append(
                "the job has no schema, so answers cannot be compared field by field: pass --judge MODEL (a model "
                "that decides whether each answer agrees with the reference's), or give the job a schema"
            )
        if job.schema is not None and self.judge is not None:
            problems.append("--judge is for text jobs; this job has a schema, its fields are compared directly")
        fields = schema_fields(job.schema) if job.schema is not None else [TEXT_FIELD]
        unknown = sorted(set(self.tolerance) - set(fields))
        if unknown:
            problems.append(
                f"--tolerance {', '.join(unknown)}: not a field of the schema (its fields: {', '.join(fields)})"
            )
        if job.mode == "auto":
            problems.append(
                "the job's mode is auto: a comparison runs online or in batches (pass --mode online or batch)"
            )
        if job.route_field is not None:
            problems.append("the job routes items to models (route_field): compare needs one model per run (remove it)")
        if self.max_cost is not None:
            unpriced = [m for m in self.all_models() if price_for(m, job.prices) is None]
            if unpriced:
                problems.append(
                    f"--max-cost needs the price of every model; none is known for {', '.join(unpriced)} (add "
                    '[prices."MODEL"] input = ..., output = ... in USD per million tokens to the job file)'
                )
        if problems:
            raise UsageError("\n".join(problems))

    def all_models(self) -> list[str]:
        return [*self.models, self.reference, *([self.judge] if self.judge else [])]


def schema_fields(schema: Mapping[str, Any] | None) -> list[str]:
    """The fields compared: the schema's top-level properties, or the whole answer as one field."""
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    return list(properties) if isinstance(properties, Mapping) and properties else [WHOLE_FIELD]


def categorical_fields(schema: Mapping[str, Any] | None) -> list[str]:
    """Enum and boolean fields: the ones a confusion table makes sense for."""
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(properties, Mapping):
        return []
    return [
        name
        for name, spec in properties.items()
        if isinstance(spec, Mapping) and (isinstance(spec.get("enum"), list) or spec.get("type") == "boolean")
    ]


# the legs: one run per model


@dataclass
class Leg:
    model: str
    role: str  # "model", "reference" or "judge"
    job: Job
    path: str
    run_id: str | None = None
    of: str | None = None  # a judge leg: the model it judges


def sample_ids(path: str, job: Job, n: int | None) -> tuple[set[str] | None, int]:
    """The custom_ids of a deterministic sample of `n` items (those whose id hashes lowest), or None for all;
    and how many items the file has. The same file and n give the same sample on every machine. `job` names
    PROBE_MODEL, so a line that names any model of its own (the reference's too) is seen and refused."""
    ids = []
    for item in read_items(path, job):
        if item.params.get("model") != job.model:
            raise UsageError(
                f"{path}:{item.line_no}: the line names its own model ({item.params.get('model')}); a comparison "
                "sends every item to each model in turn (remove the model from the line)"
            )
        ids.append(item.custom_id)
    if n is None or n >= len(ids):
        return None, len(ids)
    chosen = heapq.nsmallest(n, ids, key=lambda cid: hashlib.sha256(cid.encode()).hexdigest())
    return set(chosen), len(ids)


def write_sample(path: str, job: Job, chosen: set[str], out: Path) -> None:
    """The sampled items as rendered requests (`{"custom_id", "params"}` lines), in input order."""
    with out.open("wb") as f:
        for item in read_items(path, job):
            if item.custom_id in chosen:
                f.write(orjson.dumps({"custom_id": item.custom_id, "params": item.params}) + b"\n")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "x"


def make_legs(path: str, job: Job, spec: Spec, workdir: Path) -> tuple[list[Leg], int]:
    """A leg per model and one for the reference, each with its job and its input file; and the number of items
    compared. Without a sample (or a sample as large as the file) a leg's run is `submit ITEMS --model M`'s run."""
    chosen, total = sample_ids(path, replace(job, model=PROBE_MODEL), spec.sample)
    legs = []
    for model, role in [*((m, "model") for m in spec.models), (spec.reference, "reference")]:
        leg_job = job.with_overrides(model=model)
        leg_path = path
        if chosen is not None:
            stem = _slug(Path(path).name.split(".")[0])[:20]
            out = workdir / f"{stem}-sample{len(chosen)}-{_slug(model)}.jsonl"
            write_sample(path, leg_job, chosen, out)
            leg_path = str(out)
            leg_job = replace(leg_job, id_field=None, keep=[], template=None)
        legs.append(Leg(model, role, leg_job, leg_path))
    return legs, len(chosen) if chosen is not None else total


# comparing answers


def same_value(a: Any, b: Any, tolerance: float = 0.0) -> bool:
    """Numbers within `tolerance`, strings equal after trimming, lists and objects element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) <= tolerance
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k], tolerance) for k in a)
    return a == b


_MISSING = object()


def field_value(data: Any, name: str) -> Any:
    if name in (WHOLE_FIELD, TEXT_FIELD) and not isinstance(data, dict):
        return data
    if name == WHOLE_FIELD and isinstance(data, dict):
        return data
    return data.get(name, _MISSING) if isinstance(data, dict) else _MISSING


@dataclass
class Answer:
    custom_id: str
    ok: bool
    value: Any  # a schema job's data, a text job's text


def leg_answers(store: Store, leg: Leg) -> dict[str, Answer]:
    """Each item's answer in the leg's run (a schema job's data, a text job's text)."""
    answers = {}
    for custom_id, state, text, data in answer_rows(store, leg.run_id or "", ["custom_id", "state", "text", "data"]):
        value = (orjson.loads(data) if data else None) if leg.job.schema is not None else text
        answers[custom_id] = Answer(custom_id, state == "succeeded", value)
    return answers


def leg_cost(store: Store, leg: Leg) -> float | None:
    """What the leg's answers cost at the comparison's prices; an answer reused from the response cache is priced
    at what it cost when it was bought (so the cost compares models, not cache hits). None: no known price."""
    run_id = leg.run_id or ""
    usd, unpriced = total_cost(store.usage(run_id), leg.job.prices, leg.job.cache_ttl)
    if unpriced:
        return None
    reused = {cid for cid, by in answer_rows(store, run_id, ["custom_id", "answered_by"], "succeeded") if by == "cache"}
    if reused:
        via = "batch" if (store.get_run(run_id) or {}).get("mode") == "batch" else "online"
        for custom_id, _, result in store.iter_results(run_id, "succeeded"):
            if custom_id in reused:
                usage = (orjson.loads(result).get("message") or {}).get("usage") or {}
                usd = _add_cost(usd, usage_cost(leg.model, via, usage, leg.job.prices, leg.job.cache_ttl))
    return usd


@dataclass
class ModelResult:
    model: str
    items: int = 0
    agreed: Counter = field(default_factory=Counter)
    agreed_all: int = 0
    failed: int = 0
    cost_usd: float | None = 0.0
    total: int = 0
    confusion: dict[str, Counter] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    judge_run_id: str | None = None

    def to_dict(self, fields: list[str]) -> dict[str, Any]:
        cost = None if self.cost_usd is None else round(self.cost_usd, 6)
        per_1000 = None if cost is None or not self.total else round(self.cost_usd * 1000 / self.total, 6)
        return {
            "model": self.model,
            "items": self.items,
            "agreement": {f: _share(self.agreed[f], self.items) for f in fields},
            "agreement_all": _share(self.agreed_all, self.items),
            "cost_usd": cost,
            "cost_per_1000": per_1000,
            "failed": self.failed,
        }


def _share(part: int, whole: int) -> float | None:
    return None if not whole else round(part / whole, 6)


def _add_cost(total: float | None, usd: float | None) -> float | None:
    return None if total is None or usd is None else total + usd


def compare_fields(
    result: ModelResult,
    answers: Mapping[str, Answer],
    reference: Mapping[str, Answer],
    fields: list[str],
    categorical: list[str],
    tolerance: Mapping[str, float],
) -> None:
    """Tally one model's answers against the reference's, field by field, item by item (reference order)."""
    result.confusion = {f: Counter() for f in categorical}
    for custom_id, ref in reference.items():
        mine = answers.get(custom_id)
        result.total += 1
        if mine is None or not (mine.ok and ref.ok):
            result.failed += 1
            continue
        result.items += 1
        differing = []
        for name in fields:
            a, b = field_value(mine.value, name), field_value(ref.value, name)
            if name in result.confusion and a is not _MISSING and b is not _MISSING:
                result.confusion[name][(_label(b), _label(a))] += 1
            if (a is _MISSING and b is _MISSING) or (
                a is not _MISSING and b is not _MISSING and same_value(a, b, tolerance.get(name, 0.0))
            ):
                result.agreed[name] += 1
            else:
                differing.append(name)
        if not differing:
            result.agreed_all += 1
        elif len(result.examples) < MAX_EXAMPLES:
            result.examples.append(
                {"custom_id": custom_id, "fields": differing, "answer": mine.value, "reference": ref.value}
            )


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else orjson.dumps(value).decode()


# the comparison as a whole


@dataclass
class Comparison:
    """What `compare` found: `to_dict()` is the `--json` output; `exit_code` the command's."""

    reference: str
    items: int
    fields: list[str]
    results: list[ModelResult]
    recommended: str | None
    target: float
    exit_code: int = EXIT_OK
    stop_message: str | None = None
    reference_run_id: str | None = None
    reference_cost_usd: float | None = None
    categorical: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # custom_id -> request text, for the examples
    judge: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "items": self.items,
            "models": [r.to_dict(self.fields) for r in self.results],
            "recommended": self.recommended,
        }

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    @property
    def finished(self) -> bool:
        return self.exit_code != EXIT_NOT_FINISHED


def recommend(rows: list[dict[str, Any]], target: float) -> str | None:
    """The cheapest model (cost per 1,000 items) whose agreement_all reaches the target; None if none does."""
    good = [
        r
        for r in rows
        if r["agreement_all"] is not None and r["agreement_all"] >= target and r["cost_per_1000"] is not None
    ]
    return min(good, key=lambda r: r["cost_per_1000"])["model"] if good else None


def request_text(params: Mapping[str, Any]) -> str:
    """The user's side of a request, as the judge and the report show it."""
    parts = []
    for message in params.get("messages") or []:
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
            continue
        for block in content or []:
            if isinstance(block, Mapping) and block.get("type") == "text":
                parts.append(str(block.get("text") or ""))
            elif isinstance(block, Mapping):
                parts.append(f"[{block.get('type')}]")
    return "\n".join(parts)


def request_system(params: Mapping[str, Any]) -> str:
    """The request's system prompt as text ('' when it has none)."""
    system = params.get("system")
    if isinstance(system, str):
        return system
    blocks = system if isinstance(system, list) else []
    return "\n".join(str(b.get("text") or "") for b in blocks if isinstance(b, Mapping) and b.get("type") == "text")


def request_texts(leg: Leg, ids: Iterable[str]) -> dict[str, str]:
    return {cid: text for cid, (text, _) in request_views(leg, ids).items()}


def request_views(leg: Leg, ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """custom_id -> (the user's side of the request, its system prompt), for the items `ids` names."""
    wanted = set(ids)
    if not wanted:
        return {}
    return {
        item.custom_id: (request_text(item.params)[:MAX_INPUT_CHARS], request_system(item.params))
        for item in read_items(leg.path, leg.job)
        if item.custom_id in wanted
    }


RunLeg = Callable[[Leg, float | None], Any]  # processes a leg's run within a budget; returns a RunResult


@dataclass
class Comparer:
    """Runs the legs in order inside one budget and compares what they answered."""

    store: Store
    job: Job
    spec: Spec
    prepare: Callable[[Leg], str]  # creates (or finds) the leg's run, returns its id
    run_leg: RunLeg
    workdir: Path
    say: Callable[[str], Any] = lambda text: None
    legs: list[Leg] = field(default_factory=list)

    def spent(self, but: str | None = None) -> float:
        total = 0.0
        for leg in self.legs:
            if leg.run_id is not None and leg.run_id != but:
                total += total_cost(self.store.usage(leg.run_id), leg.job.prices, leg.job.cache_ttl)[0]
        return total

    def process(self, leg: Leg) -> Any:
        """The leg's run processed, with what is left of the budget as its own ceiling."""
        budget = None
        if self.spec.max_cost is not None:
            budget = self.spec.max_cost - self.spent(but=leg.run_id)
            if budget <= 0:
                return None
        return self.run_leg(leg, budget)

    def run(self, path: str) -> Comparison:
        legs, n = make_legs(path, self.job, self.spec, self.workdir)
        for leg in legs:
            leg.run_id = self.prepare(leg)
        self.legs = legs
        fields = schema_fields(self.job.schema) if self.job.schema is not None else [TEXT_FIELD]
        categorical = categorical_fields(self.job.schema) if self.job.schema is not None else []
        reference_leg = legs[-1]
        assert reference_leg.role == "reference"
        exit_code = EXIT_OK
        for leg in (reference_leg, *legs[:-1]):
            self.say(f"compare: {leg.model}{' (reference)' if leg.role == 'reference' else ''}: run {leg.run_id}")
            outcome = self.process(leg)
            stopped = self._stopped(leg, outcome)
            if stopped is not None:
                return self._partial(legs, n, fields, stopped)
            exit_code = max(exit_code, outcome.exit_code)
        reference = leg_answers(self.store, reference_leg)
        results = []
        for leg in legs[:-1]:
            result = ModelResult(leg.model, run_id=leg.run_id, cost_usd=leg_cost(self.store, leg))
            answers = leg_answers(self.store, leg)
            if self.spec.judge is None:
                compare_fields(result, answers, reference, fields, categorical, self.spec.tolerance)
            else:
                judged = self.judge(leg, answers, reference)
                if isinstance(judged, str):
                    return self._partial(legs, n, fields, judged)
                verdicts, judge_exit, result.judge_run_id, reasons = judged
                exit_code = max(exit_code, judge_exit)
                compare_fields(result, verdicts, judged_reference(reference), fields, [], {})
                for example in result.examples:
                    cid = example["custom_id"]
                    example.update(answer=answers[cid].value, reference=reference[cid].value, reason=reasons.get(cid))
            results.append(result)
        rows = [r.to_dict(fields) for r in results]
        ids = [e["custom_id"] for r in results for e in r.examples]
        ref_cost = leg_cost(self.store, reference_leg)
        return Comparison(
            reference=self.spec.reference,
            items=n,
            fields=fields,
            results=results,
            recommended=recommend(rows, self.spec.target),
            target=self.spec.target,
            exit_code=EXIT_FAILED_ITEMS if exit_code == EXIT_FAILED_ITEMS else EXIT_OK,
            reference_run_id=reference_leg.run_id,
            reference_cost_usd=None if ref_cost is None else round(ref_cost, 6),
            categorical=categorical,
            inputs=request_texts(reference_leg, ids),
            judge=self.spec.judge,
        )

    def _stopped(self, leg: Leg, outcome: Any) -> str | None:
        if outcome is None:
            return (
                f"the comparison's budget (--max-cost {self.spec.max_cost:g}) is spent before {leg.model}'s run "
                f"{leg.run_id}; run the same command with a larger --max-cost to go on (nothing is bought twice)"
            )
        if outcome.exit_code == EXIT_USAGE:  # a model the API does not know: its items stay pending, as in submit
            stop = getattr(outcome, "stop", None)
            models = ", ".join(stop.detail.get("models") or [leg.model]) if stop is not None else leg.model
            raise UsageError(
                f"model {models} does not exist (check the model name given to --models, --reference or --judge); "
                f"the comparison stopped at its run {leg.run_id}, whose items stay pending"
            )
        if outcome.exit_code == EXIT_NOT_FINISHED:
            why = f": {outcome.stop_message}" if outcome.stop_message else ""
            return (
                f"{leg.model}'s run {leg.run_id} is not finished{why}; run the same command again to go on "
                "(what is done is kept, nothing is bought twice)"
            )
        return None

    def _partial(self, legs: list[Leg], n: int, fields: list[str], message: str) -> Comparison:
        return Comparison(
            reference=self.spec.reference,
            items=n,
            fields=fields,
            results=[],
            recommended=None,
            target=self.spec.target,
            exit_code=EXIT_NOT_FINISHED,
            stop_message=message,
            reference_run_id=legs[-1].run_id,
            judge=self.spec.judge,
        )

    def judge(
        self, leg: Leg, answers: dict[str, Answer], reference: Mapping[str, Answer]
    ) -> tuple[dict[str, Answer], int, str | None, dict[str, str]] | str:
        """The text answers judged: equal text agrees at once; every other pair is a request to the judge, in a
        run of its own. Returns each answer with `value` True (agrees) or False, the judge's exit code, run and
        reasons; or why the comparison stopped."""
        both = [cid for cid, ref in reference.items() if cid in answers and ref.ok and answers[cid].ok]
        pairs = [cid for cid in both if not same_value(answers[cid].value, reference[cid].value)]
        verdicts = {cid: replace(a, value=True) for cid, a in answers.items()}
        if not pairs:
            return verdicts, EXIT_OK, None, {}
        assert self.spec.judge is not None
        views = request_views(self._reference(), pairs)
        systems = {system for _, system in views.values()}
        shared = systems.pop() if len(systems) == 1 else ""  # the job's system prompt: in the judge's own
        stem = _slug(Path(self._reference().path).name.split(".")[0])[:16]
        out = self.workdir / f"{stem}-judge-{_slug(leg.model)}.jsonl"
        with out.open("wb") as f:
            for cid in pairs:
                text, system = views.get(cid, ("", ""))
                own = "" if shared else system
                prompt = judge_prompt(text, str(reference[cid].value), str(answers[cid].value), own)
                f.write(orjson.dumps({"custom_id": cid, "prompt": prompt}) + b"\n")
        judge_job = Job(
            model=self.spec.judge,
            max_tokens=JUDGE_MAX_TOKENS,
            system=judge_system(shared),
            schema=JUDGE_SCHEMA,
            mode=self.job.mode if self.job.mode != "auto" else "online",
            concurrency=self.job.concurrency,
            prices=self.job.prices,
        )
        judge_leg = Leg(self.spec.judge, "judge", judge_job, str(out), of=leg.model)
        judge_leg.run_id = self.prepare(judge_leg)
        self.legs.append(judge_leg)
        self.say(f"compare: judge {self.spec.judge} on {leg.model}'s answers: run {judge_leg.run_id}")
        outcome = self.process(judge_leg)
        stopped = self._stopped(judge_leg, outcome)
        if stopped is not None:
            return stopped
        reasons = {}
        for cid, verdict in leg_answers(self.store, judge_leg).items():
            agrees = verdict.value.get("agrees") if verdict.ok and isinstance(verdict.value, dict) else None
            verdicts[cid] = replace(verdicts[cid], ok=isinstance(agrees, bool), value=agrees)
            if isinstance(verdict.value, dict):
                reasons[cid] = str(verdict.value.get("reason") or "")
        return verdicts, outcome.exit_code, judge_leg.run_id, reasons

    def _reference(self) -> Leg:
        return next(leg for leg in self.legs if leg.role == "reference")


def judged_reference(reference: Mapping[str, Answer]) -> dict[str, Answer]:
    """The reference agrees with itself: what a judged model's answers are compared with."""
    return {cid: replace(a, value=True if a.ok else None) for cid, a in reference.items()}


# the dry run


def dry_run(path: str, job: Job, spec: Spec, make_client: Callable[[], Any] | None, workdir: Path) -> str:
    """What every run of the comparison would cost at most (output priced at max_tokens), the judge's requests
    estimated from the inputs and max_tokens; nothing is sent but count_tokens requests."""
    from batchrun.budget import worst_cost
    from batchrun.dryrun import plan
    from batchrun.pricing import PRICES_TAKEN

    legs, n = make_legs(path, job, spec, workdir)
    how = "online" if job.mode != "batch" else "batch"
    lines = [f"dry run: compare on {n:,} item(s), nothing sent; prices of {PRICES_TAKEN}; mode {how}"]
    total: float | None = 0.0
    for leg in [legs[-1], *legs[:-1]]:
        p = plan(leg.path, leg.job, make_client)
        usd = p["cost_usd"][how]
        total = _add_cost(total, usd)
        role = " (reference)" if leg.role == "reference" else ""
        lines.append(f"  {leg.model}{role}: {p['items']:,} item(s), at most {_money(usd)}")
    if spec.judge is not None:
        judge_usd: float | None = 0.0
        for item in read_items(legs[-1].path, legs[-1].job):
            chars = len(request_text(item.params)) + 8 * job.max_tokens + len(judge_system(request_system(item.params)))
            chars += 300
            judge_usd = _add_cost(
                judge_usd, worst_cost(spec.judge, chars, JUDGE_MAX_TOKENS, job.prices, batch=how == "batch")
            )
        judge_usd = None if judge_usd is None else judge_usd * len(spec.models)
        total = _add_cost(total, judge_usd)
        lines.append(
            f"  judge {spec.judge}: at most {n * len(spec.models):,} request(s) (only answers that differ from the "
            f"reference's are judged), at most {_money(judge_usd)} (estimated from the inputs and max_tokens)"
        )
    lines.append(f"  the whole comparison: at most {_money(total)} (output priced at max_tokens)")
    if spec.max_cost is not None and total is not None:
        fits = "within" if total <= spec.max_cost else "over"
        lines[-1] += f", {fits} --max-cost ${spec.max_cost:,.4f}"
    return "\n".join(lines)


def _money(usd: float | None) -> str:
    return (
        "an unknown cost (no price for the model: add it under [prices] in the job file)"
        if usd is None
        else (f"${usd:,.4f}")
    )
