"""openapi.yaml describes exactly the routes the app serves."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from tests.conftest import make_config
from tokensvc.web.app import create_app
from tokensvc.web.routes import NEVER_SERVED

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _served(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(make_config(database_url="sqlite+aiosqlite:///unused.db", data_dir=tmp_path))
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path == "/{unmatched_path}":
            continue  # the catch-all answering 404/405 for every other path (tokensvc.web.routes)
        if path and route.method == "*":
            # Any-method routes (forward-auth) are documented once per method OpenAPI has, but
            # those no route serves (TRACE: a 405).
            served.update((m, path) for m in METHODS if m.upper() not in NEVER_SERVED)
        elif path and route.method != "HEAD":  # aiohttp adds a HEAD to every GET
            served.add((route.method.lower(), path))
    return served


def test_every_served_route_is_in_the_spec(tmp_path: Path) -> None:
    """Each method and path the app registers has an operation in openapi.yaml, and vice versa."""
    spec = yaml.safe_load(SPEC.read_text())
    documented = {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method in METHODS
    }

    served = _served(tmp_path)

    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_every_operation_has_an_id_and_responses() -> None:
    """Operations are addressable (operationId) and say what they answer."""
    spec = yaml.safe_load(SPEC.read_text())

    operations = [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]

    assert operations
    for path, method, op in operations:
        assert op.get("operationId"), (method, path)
        assert op.get("responses"), (method, path)


def test_the_packaged_spec_is_the_repository_spec() -> None:
    """tokensvc/openapi.yaml (in the wheel, served at GET /openapi.yaml) is openapi.yaml itself."""
    packaged = Path(__file__).resolve().parents[2] / "tokensvc" / "openapi.yaml"

    installed = resources.files("tokensvc").joinpath("openapi.yaml").read_bytes()

    # A symlink, so there is one file to edit and nothing to keep in step by hand.
    assert packaged.is_symlink()
    assert packaged.resolve() == SPEC
    assert installed == SPEC.read_bytes()
