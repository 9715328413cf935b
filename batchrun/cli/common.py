"""What commands do before the work: read .env, open the store, check -o, decide where requests go."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from batchrun.errors import UsageError


def check_output(output: str | None, db: Path, *inputs: str | None) -> None:
    """Refuse an `-o` that would overwrite the database, its -wal/-shm files or an input file, or that cannot be
    written (missing or read-only directory), before anything runs."""
    if output is None:
        return
    from batchrun.export import refuse_spreadsheet

    refuse_spreadsheet(output)
    out = Path(output)
    parent = out.parent
    if not parent.is_dir():
        raise UsageError(f"-o {output}: directory {parent} does not exist (create it first, or write elsewhere)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"-o {output}: directory {parent} is not writable (choose a writable directory)")
    protected = {f"{db}{suffix}": "the database" for suffix in ("", "-wal", "-shm", "-journal")}
    protected.update({str(i): "the input file" for i in inputs if i and i != "-"})
    for path, what in protected.items():
        if os.path.realpath(path) == os.path.realpath(out) or _same_file(path, out):
            raise UsageError(f"-o {output} is {what} ({path}): results would overwrite it (write them to another file)")


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_run_output(store: Any, run_id: str, output: str | None) -> None:
    """`check_output` for a command on an existing run: its database and the file the run was made from."""
    run = store.get_run(run_id) if output else None
    check_output(output, store.path, run["input_path"] if run else None)


def open_store(db_path: str | None, create: bool = False) -> Any:
    """Only `submit` creates a database; every other command on a missing one says where it looked."""
    import batchrun

    store = batchrun.open_store(db_path, create)
    click.get_current_context().call_on_close(store.close)
    return store


def load_env() -> None:
    from batchrun.hooks import load_env as load

    load(Path.cwd() / ".env")


def written(path: str, fmt: str | None = None) -> str:
    """What an export of `path` holds: result lines (jsonl), or rows of a table."""
    from batchrun.export import format_of

    fmt = format_of(path, fmt)
    return "result line(s)" if fmt == "jsonl" else f"{fmt} row(s)"


def client_factory(stack: ExitStack, emulate: bool, backend: str) -> Any:
    """Where requests go (the library's Target), decided before anything is stored or sent."""
    import batchrun

    return batchrun.client_factory(stack, emulate, backend, note)


def note(text: str, log_format: str = "text") -> None:
    """A line before progress starts, written like the progress lines (timestamped, or JSON, off a terminal)."""
    from batchrun.progress import Progress

    Progress(log_format=log_format).write(text)
