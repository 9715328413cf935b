"""The README's set-up: `pip install -e '.[dev]'` installs everything the test suite imports, so `pytest` runs."""

from __future__ import annotations

import ast
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent


def _imported_modules(folder: Path) -> set[str]:
    """The top-level modules imported (at any depth of the code) by the .py files of `folder`."""
    found: set[str] = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def _installed_by(requirements: list[str]) -> set[str]:
    """The distributions pip installs for `requirements`: them and, through their metadata, what they require."""
    todo = [Requirement(r) for r in requirements]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            environments = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in environments):
                todo.append(sub)
    return seen


def test_the_dev_extra_installs_every_module_the_tests_import() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    installed = _installed_by([*project["dependencies"], *project["optional-dependencies"]["dev"]])
    local = {"tests", "batchrun", "conftest"}
    modules = sorted(m for m in _imported_modules(REPO / "tests") if m not in sys.stdlib_module_names | local)
    distributions = md.packages_distributions()
    missing = {
        m: distributions.get(m, [m])
        for m in modules
        if not any(canonicalize_name(d) in installed for d in distributions.get(m, [m]))
    }
    assert not missing, f"the tests import {missing}, which `pip install -e '.[dev]'` does not install"
