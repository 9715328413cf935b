"""Every example of README.md runs as written, against the emulator, in a temporary copy of the repository's jobs/.

The README is read, not copied: a ```sh block's commands run in order (the guide's later steps use the runs of its
earlier ones), then the ```python example; a ```cron block's lines run as cron would run them, with `sh`. A
command must exit 0 unless its line ends with `# exit N`. An HTML comment right before a block marks it:
`<!-- not-run: reason -->` (not run, with the reason), `<!-- file: PATH -->` (the block must equal that file of
the repository), `<!-- output: what -->` (the block must be what the command run just before it printed on standard
output, times, ports, rates and the working directory aside). The first block's install and test lines are run as
printed by .ci/run, in a fresh virtualenv; here its quick start (the `batchrun ...` part of the install line) runs.

`--emulate` starts a fresh emulator for each command; here each such command gets the session's emulator, reset
first (nothing carries over from one command to the next, as for a user), which saves a process start per
command. Batch polling sleeps a hundredth of its time (batches on the test emulator last 50 ms).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shlex
import shutil
import signal
import subprocess as sp
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

import batchrun.batches
import batchrun.emulate
from batchrun.cli import cli
from tests.conftest import (
    TEST_KEY,
    _check_no_leaks,
    _process_state,
    items_in_state,
    start_batchrun,
    wait_until,
)
from tests.emulator_fixture import TEST_BATCH_SECONDS, stand_in_for_emulate

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", ">&", "<", "&", "(", ")"}
TODAY_RE = re.compile(r"\$\(date \+\\?%F\)")


@dataclass
class Block:
    lang: str
    text: str
    line: int  # the line of README.md where the block's text starts
    marks: dict[str, str] = field(default_factory=dict)


@dataclass
class Command:
    text: str
    line: int
    expect: int


def readme_blocks() -> list[Block]:
    """The fenced blocks of README.md, each with the `<!-- key: value -->` comments right above its fence."""
    lines = README.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        marks = {}
        j = i - 1
        while j >= 0 and (m := re.match(r"^\s*<!--\s*([\w-]+):\s*(.*?)\s*-->\s*$", lines[j])):
            marks[m.group(1)] = m.group(2)
            j -= 1
        indent = fence.group(1)
        end = next(k for k in range(i + 1, len(lines)) if lines[k].strip() == "```")
        body = "\n".join(line[len(indent) :] for line in lines[i + 1 : end])
        blocks.append(Block(fence.group(2), body + "\n", i + 2, marks))
        i = end + 1
    return blocks


def commands(block: Block) -> list[Command]:
    """The block's commands: a line, with the lines a trailing backslash or an open quote joins to it."""
    found: list[Command] = []
    pending: list[str] = []
    start = 0
    for n, line in enumerate(block.text.splitlines()):
        if not pending:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = block.line + n
        pending.append(line)
        text = "\n".join(pending)
        if text.endswith("\\"):
            continue
        try:
            shlex.split(text, comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        expect = re.search(r"\s#\s*exits?\s+(\d+)\b[^'\"]*$", text)
        found.append(Command(text, start, int(expect.group(1)) if expect else 0))
        pending = []
    assert not pending, f"README.md:{start}: a command that never ends: {pending}"
    return found


def tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


# running the examples


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch polls (and the batch path's retry waits) sleep a hundredth as long."""
    pause = batchrun.batches.BatchEngine._pause

    async def shorter_pause(self: batchrun.batches.BatchEngine, seconds: float) -> None:
        await pause(self, seconds / 100)

    monkeypatch.setattr(batchrun.batches.BatchEngine, "_pause", shorter_pause)


@pytest.fixture
def emulated(emulator, monkeypatch: pytest.MonkeyPatch, fast_polls: None) -> None:
    """`--emulate` gets the session's emulator with fresh state, configured as --emulate configures its own."""
    stand_in_for_emulate(emulator, monkeypatch)


def user_env(home: Path) -> dict[str, str]:
    """A user's environment: no key, no gateway, no batchrun settings; the virtualenv's commands on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHRUN_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(home)
    return env


def repo_copy(tmp_path: Path) -> Path:
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copytree(ROOT / "jobs", work / "jobs")
    return work


def run_cli(args: list[str], cwd: Path, env: dict[str, str], stdin: bytes | None = None) -> tuple[int, str]:
    """`batchrun ARGS` in this process (as tests/conftest.py's run_in_process), with `stdin` as its input."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    before = _process_state()
    os.environ.clear()
    os.environ.update(env)
    try:
        os.chdir(cwd)
        result = CliRunner().invoke(cli, args, input=stdin, prog_name="batchrun", catch_exceptions=True)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    output = result.stdout + result.stderr
    LAST_STDOUT[:] = [result.stdout]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += f"\nexception: {result.exception!r}"
    code = result.exit_code
    del result
    _check_no_leaks(before, args)
    return code, output


LAST_STDOUT = [""]  # what the last in-process command printed on standard output, for an `<!-- output -->` block


def run_shell(text: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    done = sp.run(["sh", "-c", text], cwd=cwd, env=env, capture_output=True, timeout=60)
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def run_command(text: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """A `batchrun ...` command in-process; `CMD | batchrun ...` with CMD in a shell; anything else with sh."""
    words = tokens(text)
    operators = [w for w in words if w in SHELL_OPERATORS]
    if words[0] == "batchrun" and not operators and "$" not in text and "`" not in text:
        return run_cli(words[1:], cwd, env)
    if operators == ["|"] and words[words.index("|") + 1] == "batchrun":
        left, right = text.split("|", 1)
        feed = sp.run(["sh", "-c", left], cwd=cwd, env=env, capture_output=True, timeout=60)
        if feed.returncode:
            return feed.returncode, feed.stderr.decode(errors="replace")
        return run_cli(tokens(right)[1:], cwd, env, stdin=feed.stdout)
    return run_shell(text, cwd, env)


def quick_start(block: Block) -> list[Command]:
    """The first block: the `batchrun ...` part of its install line (.ci/run runs both lines as printed)."""
    install = commands(block)[0]
    part = next(p.strip() for p in install.text.split("&&") if p.strip().startswith("batchrun "))
    return [Command(part, install.line, 0)]


def test_the_readme_examples_run_as_written(tmp_path: Path, emulated: None) -> None:
    blocks = readme_blocks()
    work = repo_copy(tmp_path)
    env = user_env(tmp_path)
    ran, failures = 0, []
    for index, block in enumerate(blocks):
        if "not-run" in block.marks:
            assert block.marks["not-run"], f"README.md:{block.line}: not-run needs a reason"
            continue
        if "file" in block.marks:
            shipped = (ROOT / block.marks["file"]).read_text()
            assert block.text == shipped, f"README.md:{block.line}: the block differs from {block.marks['file']}"
        if "output" in block.marks:  # what the command before it printed on standard output, from the guide's state
            printed = normalized(LAST_STDOUT[0].replace(f"{work}/", ""))
            if normalized(block.text) != printed:
                shown = "\n".join(printed)
                failures.append(f"README.md:{block.line}: the output shown is not what the command prints:\n{shown}")
        if block.lang != "sh":
            continue
        for command in quick_start(block) if index == 0 else commands(block):
            started = time.monotonic()
            code, output = run_command(command.text, work, env)
            print(f"{time.monotonic() - started:5.1f}s README.md:{command.line}: exit {code}: {command.text[:100]}")
            ran += 1
            if code != command.expect:
                failures.append(
                    f"README.md:{command.line}: exit {code}, not {command.expect}: {command.text}\n{output}"
                )
    python = [b for b in blocks if b.lang == "python" and "not-run" not in b.marks]
    for block in python:
        error = run_python(block.text, work, env)
        ran += 1
        if error:
            failures.append(f"README.md:{block.line}: the Python example failed: {error}")
    assert ran >= 15, f"only {ran} examples found in README.md"
    assert not failures, "\n\n".join(failures)
    [sample] = [b for b in blocks if b.lang == "csv"]  # the quick start's first rows, as the README shows them
    assert (work / "results.csv").read_text().startswith(sample.text), "README.md: the results.csv sample is stale"


VARYING = [  # what changes from one run to the next in a transcript: times, ports, rates
    (re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", re.M), "TIME "),
    (re.compile(r"http://127\.0\.0\.1:\d+"), "http://127.0.0.1:PORT"),
    (re.compile(r"[\d.,]+ items/s"), "N items/s"),
    (re.compile(r"ETA [^;]+;"), "ETA T;"),
    (re.compile(r" in [\d.]+s\b"), " in Ts"),
    (re.compile(r"had \d+% of the account's"), "had N% of the account's"),  # a rate: it varies with timing
    (re.compile(r"while sending online \([\d,]+ s\)"), "while sending online (T s)"),
]
PROGRESS = re.compile(r": [\d,]+/[\d,]+ done, ")


def normalized(output: str) -> list[str]:
    """The output without what varies; of its progress lines only the last (a slow run writes one every 10 s)."""
    for pattern, replacement in VARYING:
        output = pattern.sub(replacement, output)
    lines = output.strip("\n").splitlines()
    progress = [i for i, line in enumerate(lines) if PROGRESS.search(line)]
    return [line for i, line in enumerate(lines) if i not in progress[:-1]]


def test_the_quoted_transcripts_are_what_the_commands_print(tmp_path: Path, emulated: None) -> None:
    """A block of `$ batchrun ...` lines and their output (run from a fresh copy) is what the current code prints."""
    transcripts = [b for b in readme_blocks() if b.lang == "" and b.text.startswith("$ batchrun ")]
    assert transcripts, "README.md has no transcript"
    for block in transcripts:
        (tmp_path / f"line{block.line}").mkdir()
        work = repo_copy(tmp_path / f"line{block.line}")
        env = user_env(tmp_path)
        steps = re.split(r"^\$ ", block.text, flags=re.M)[1:]
        for step in steps:
            command, _, shown = step.partition("\n")
            code, output = run_cli(tokens(command)[1:], work, env)
            assert code == 0, f"README.md:{block.line}: exit {code}: {command}\n{output}"
            # standard output and standard error, in either order (the transcript shows them as a terminal does)
            assert sorted(normalized(output)) == sorted(normalized(shown)), f"README.md:{block.line}: `{command}`"


def run_python(code: str, cwd: Path, env: dict[str, str]) -> str | None:
    """The example in this process, in `cwd` with exactly `env`; its error, or None."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    before = _process_state()
    os.environ.clear()
    os.environ.update(env)
    out = io.StringIO()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    except Exception as exc:
        return f"{exc!r}\n{out.getvalue()}"
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    _check_no_leaks(before, ["python example"])
    return None


# cron


@dataclass
class Crontab:
    env: dict[str, str]
    entries: list[tuple[str, int]]  # the command of each line, and its line in README.md


def crontab(block: Block, home: Path) -> Crontab:
    """The block's variables and commands, as cron runs them: `\\%` is `%`, and `/srv/jobs` is `home`."""
    env: dict[str, str] = {}
    entries = []
    for n, line in enumerate(block.text.splitlines()):
        line = line.replace("/srv/jobs", str(home))
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if m := re.match(r"^(\w+)=(.*)$", line):
            env[m.group(1)] = m.group(2)
            continue
        fields = line.split(None, 5)
        assert len(fields) == 6, f"README.md:{block.line + n}: not a crontab line: {line}"
        entries.append((fields[5].replace("\\%", "%"), block.line + n))
    return Crontab(env, entries)


def cron_home(tmp_path: Path, emulator_url: str) -> tuple[Path, dict[str, str]]:
    """/srv/jobs: the job files, the key in .env (the API: the test's emulator), batchrun in .venv/bin; and the
    environment cron gives a command (its PATH unless the crontab sets one)."""
    home = repo_copy(tmp_path)
    (home / ".env").write_text(f"ANTHROPIC_API_KEY={TEST_KEY}\nANTHROPIC_BASE_URL={emulator_url}\n")
    (home / ".venv" / "bin").mkdir(parents=True)
    (home / ".venv" / "bin" / "batchrun").symlink_to(Path(sys.executable).parent / "batchrun")
    return home, {"HOME": str(home), "LOGNAME": "batchrun", "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}


def cron_block(containing: str) -> Block:
    found = [b for b in readme_blocks() if b.lang == "cron" and containing in b.text]
    assert len(found) == 1, f"README.md: {len(found)} cron blocks with {containing!r}"
    return found[0]


def today() -> str:
    return sp.run(["date", "+%F"], capture_output=True, text=True, check=True).stdout.strip()


@dataclass
class CronCommand:
    """A crontab command of the form `cd DIR && [mkdir -p DIR &&] batchrun ARGS [>> LOG 2>&1]`, taken apart.

    sh would do the same, at a process start (an `import anthropic`, a second or more) per batchrun command;
    here batchrun runs in this process, or in a fork of it when it must be killed. Any other form fails the test.
    """

    cwd: Path
    mkdirs: list[str]
    args: list[str]
    log: str | None

    @classmethod
    def parse(cls, text: str, line: int) -> CronCommand:
        cwd, mkdirs, args, log = None, [], None, None
        for step in (s.strip() for s in TODAY_RE.sub(today(), text).split("&&")):
            words = tokens(step)
            if words[0] == "cd" and len(words) == 2:
                cwd = Path(words[1])
            elif words[:2] == ["mkdir", "-p"]:
                mkdirs += words[2:]
            elif words[0] == "batchrun" and args is None:
                if redirect := re.fullmatch(r"(.*?)\s*>>\s*(\S+)\s+2>&1", step):
                    step, log = redirect.groups()
                args = tokens(step)[1:]
                assert not SHELL_OPERATORS & set(args), f"README.md:{line}: a form this test cannot run: {step}"
            else:
                raise AssertionError(f"README.md:{line}: a form this test cannot run: {step}")
        assert cwd is not None and args is not None, f"README.md:{line}: no `cd DIR && ... batchrun`: {text}"
        return cls(cwd, mkdirs, args, log)

    def prepare(self) -> None:
        for d in self.mkdirs:
            (self.cwd / d).mkdir(parents=True, exist_ok=True)

    def log_output(self, output: str) -> None:
        if self.log:
            with open(self.cwd / self.log, "a") as f:
                f.write(output)

    def run(self, env: dict[str, str]) -> int:
        self.prepare()
        code, output = run_cli(self.args, self.cwd, env)
        self.log_output(output)
        return code


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def log_of(home: Path) -> str:
    log = home / "batchrun.log"
    return log.read_text() if log.exists() else "(no batchrun.log)"


def cron_setup(block: Block, tmp_path: Path, base_url: str) -> tuple[Path, dict[str, str], list[CronCommand]]:
    home, env = cron_home(tmp_path, base_url)
    tab = crontab(block, home)
    env.update(tab.env)
    assert shutil.which("batchrun", path=env["PATH"]), "the crontab's PATH does not find batchrun"
    return home, env, [CronCommand.parse(text, line) for text, line in tab.entries]


def test_the_cron_recipe_delivers_the_results_file_after_an_interruption(
    tmp_path: Path, emulator, fast_polls: None
) -> None:
    home, env, (night, *later) = cron_setup(cron_block("batchrun resume"), tmp_path, emulator.base_url)
    items = night.cwd / night.args[night.args.index("submit") + 1]
    shutil.copy(ROOT / "jobs" / "examples" / "tickets.csv", items)  # the helpdesk's export of the day
    results = night.cwd / option(night.args, "-o")
    db = Path(env["BATCHRUN_DB"])

    emulator.configure(latency_ms=500)  # slow replies: the night's run is still going when it is killed
    night.prepare()
    child = start_batchrun(night.args, cwd=night.cwd, env=env)
    wait_until(lambda: items_in_state(db, "succeeded") >= 1 or child.poll() is not None)
    child.kill()  # a reboot in the middle of the run
    night.log_output("".join(child.communicate(timeout=30)))
    assert child.returncode == -signal.SIGKILL, log_of(home)
    assert 1 <= items_in_state(db, "succeeded") < 60
    assert not results.exists()
    emulator.configure(latency_ms=0)

    for command in later:  # the resume line, then the prune line
        assert command.run(env) == 0, f"{command.args}\n{log_of(home)}"
    rows = list(csv.DictReader(results.open()))
    tickets = list(csv.DictReader((ROOT / "jobs" / "examples" / "tickets.csv").open()))
    assert [r["ticket_id"] for r in rows] == [t["ticket_id"] for t in tickets]
    assert {r["state"] for r in rows} == {"succeeded"}, log_of(home)


def test_the_batch_cron_line_collects_its_batches(tmp_path: Path, emulator, fast_polls: None) -> None:
    home, env, [command] = cron_setup(cron_block("--no-wait"), tmp_path, emulator.base_url)
    codes = [command.run(env)]  # creates the batches
    while codes[-1] == 3 and len(codes) < 5:  # every 10 minutes
        time.sleep(TEST_BATCH_SECONDS)
        codes.append(command.run(env))
    assert codes[0] == 3 and codes[-1] == 0, f"{codes}\n{log_of(home)}"
    lines = (command.cwd / option(command.args, "-o")).read_bytes().splitlines()
    assert len(lines) == 40
    assert {orjson.loads(line)["result"]["type"] for line in lines} == {"succeeded"}


# the reference stays whole


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_link_of_the_readme_and_docs_leads_somewhere() -> None:
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # a `# comment` in a block is no heading
        anchors = {github_anchor(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith("http"):
                continue
            path, _, anchor = target.partition("#")
            if path:
                assert (page.parent / path).exists(), f"{page.name}: link to {path}, which does not exist"
            elif anchor:
                assert anchor in anchors, f"{page.name}: link to #{anchor}, no such heading"


def test_the_job_keys_table_names_every_key() -> None:
    from dataclasses import fields

    from batchrun.job import Job

    text = README.read_text()
    table = text[text.index("### Job file keys") :]
    table = table[: table.index("\n\n", table.index("| key |"))]
    named = set(re.findall(r"`(\w+)`", table))
    missing = {f.name for f in fields(Job)} | {"system_file", "schema_file"}
    assert not missing - named, f"README.md's job keys table does not name {sorted(missing - named)}"
