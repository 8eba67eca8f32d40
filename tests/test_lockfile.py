"""requirements-lock.txt pins every dependency pyproject.toml names, within its bounds."""

from __future__ import annotations

import ast
import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-lock.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")
# The product's own code (what the Dockerfile installs) as opposed to tests and tools.
PRODUCT_DIRS = ("tokensvc", "caveats", "keystore")


def _pins() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    return [Requirement(line) for line in lines]


def test_every_requirement_is_pinned_within_its_bounds() -> None:
    """A requirement added or re-bounded in pyproject.toml without ./dev lock fails here."""
    pins = _pins()

    stale = []
    for req in _requirements():
        name = canonicalize_name(req.name)
        if name not in pins:
            stale.append(f"{req}: not in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            stale.append(f"{req}: the lock pins {pins[name]}")

    assert not stale, "run ./dev lock and commit requirements-lock.txt: " + "; ".join(stale)


def test_the_venv_holds_the_locked_versions() -> None:
    """./dev installed exactly the pinned versions of the project's direct dependencies."""
    pins = _pins()
    environment = {**default_environment(), "extra": ""}
    direct = [
        req for req in _requirements() if req.marker is None or req.marker.evaluate(environment)
    ]

    installed = {canonicalize_name(req.name): Version(metadata.version(req.name)) for req in direct}

    assert installed == {name: pins[name] for name in installed}


def test_the_product_does_not_import_pymacaroons() -> None:
    """pymacaroons is a test-only dependency: no module of the product imports it."""
    importers = []

    for package in PRODUCT_DIRS:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                if any(name.split(".")[0] == "pymacaroons" for name in names):
                    importers.append(str(path.relative_to(ROOT)))

    assert importers == []
