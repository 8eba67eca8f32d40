"""What schemathesis found where openapi.yaml and the code disagreed, pinned case by case.

test_schema_fuzz.py finds these again only if its random cases happen to hit them; these
requests hit them every time, on PostgreSQL and on the embedded SQLite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from tests.conftest import ADMIN_PASSWORD, basic_auth

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_revoke_by_presenting_offers_only_post(client: Any) -> None:
    """OPTIONS and DELETE /v1/tokens/revoke are a 405 whose Allow names POST alone."""

    options = await client.options("/v1/tokens/revoke")
    delete = await client.delete("/v1/tokens/revoke")

    assert options.status == 405
    assert options.headers["Allow"] == "POST"
    assert delete.status == 405
    assert delete.headers["Allow"] == "POST"


async def test_only_a_token_id_names_a_token(client: Any, admin_token: str) -> None:
    """DELETE /v1/tokens/{id} with anything but 32 hex digits is the router's 404."""

    resp = await client.delete("/v1/tokens/ABCDEF", headers=bearer(admin_token))

    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "body",
    [
        {"context": []},
        {"context": ""},
        {"context": 0},
        {"context": False},
        {"discharges": ""},
        {"discharges": 0},
        {"discharges": False},
        {"discharges": {}},
    ],
)
async def test_verify_refuses_context_and_discharges_of_another_type(
    client: Any, admin_token: str, body: dict[str, Any]
) -> None:
    """A context that is not an object, or discharges that are not a list, are a 400, not none."""

    resp = await client.post("/v1/verify", json={"token": admin_token, **body})

    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_request"


async def test_verify_takes_null_context_and_discharges_as_none(
    client: Any, admin_token: str
) -> None:
    """Null context and discharges get the answer absent ones get, as openapi.yaml documents."""

    nulls = await client.post(
        "/v1/verify", json={"token": admin_token, "context": None, "discharges": None}
    )
    absent = await client.post("/v1/verify", json={"token": admin_token})

    assert nulls.status == absent.status == 200, await nulls.text()


async def test_a_subject_any_token_can_have_can_be_listed(client: Any, admin_token: str) -> None:
    """A subject without control characters (U+00A0 included) is a filter GET /v1/tokens takes;
    a control, or a line separator (which `is_name` refuses at mint too), is not."""
    subject = "no\u00a0break"
    minted = await client.post("/v1/tokens", json={"subject": subject}, headers=bearer(admin_token))
    assert minted.status == 201, await minted.text()

    listed = await client.get(f"/v1/tokens?subject={quote(subject)}", headers=bearer(admin_token))
    control = await client.get("/v1/tokens?subject=a%01b", headers=bearer(admin_token))
    separator = await client.get("/v1/tokens?subject=a%E2%80%A8b", headers=bearer(admin_token))

    assert listed.status == 200
    assert [t["subject"] for t in (await listed.json())["tokens"]] == [subject]
    assert (control.status, separator.status) == (400, 400)


async def test_a_subject_any_token_can_have_can_have_its_tokens_revoked(
    client: Any, admin_token: str
) -> None:
    """Revoke-all takes every subject minting takes (U+00A0 included), and refuses a control."""
    subject = "no\u00a0break"
    minted = await client.post("/v1/tokens", json={"subject": subject}, headers=bearer(admin_token))
    assert minted.status == 201, await minted.text()

    revoked = await client.post(
        f"/v1/subjects/{quote(subject)}/revoke-all", headers=bearer(admin_token)
    )
    control = await client.post("/v1/subjects/a%01b/revoke-all", headers=bearer(admin_token))
    verified = await client.post("/v1/verify", json={"token": (await minted.json())["token"]})

    assert revoked.status == 200, await revoked.text()
    assert (await revoked.json())["subject"] == subject
    assert control.status == 400
    assert verified.status == 401


@pytest.mark.parametrize(("ttl", "status"), [(60.0, 201), (60.5, 400)])
async def test_a_whole_number_ttl_may_be_written_as_a_float(
    client: Any, admin_token: str, ttl: float, status: int
) -> None:
    """60.0 is the JSON integer 60 (a 201); 60.5 is no number of seconds (a 400)."""

    resp = await client.post("/v1/tokens", json={"ttl": ttl}, headers=bearer(admin_token))

    assert resp.status == status, await resp.text()


async def test_null_body_credentials_beside_basic_are_absent(client: Any) -> None:
    """A login with HTTP Basic and `"password": null` in the body logs in."""

    resp = await client.post(
        "/v1/login", json={"password": None}, headers=basic_auth("admin", ADMIN_PASSWORD)
    )

    assert resp.status == 200, await resp.text()


async def test_roles_count_every_entry(client: Any, admin_token: str) -> None:
    """33 roles are a 400 even when they repeat (openapi.yaml's maxItems is 32)."""

    resp = await client.post(
        "/v1/users",
        json={"name": "roles", "password": "long enough password", "roles": ["ops"] * 33},
        headers=bearer(admin_token),
    )

    assert resp.status == 400


@pytest.mark.parametrize(("length", "status"), [(256, 200), (257, 404)])
async def test_a_lockout_name_is_at_most_a_login_name(
    client: Any, admin_token: str, length: int, status: int
) -> None:
    """GET /v1/users/{name}/lockout takes names up to 256 characters, as /v1/login does."""

    resp = await client.get(f"/v1/users/{'a' * length}/lockout", headers=bearer(admin_token))

    assert resp.status == status


def _operations_with_a_body() -> list[tuple[str, str, dict[str, Any]]]:
    spec = yaml.safe_load(SPEC.read_text())
    return [
        (method, path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "requestBody" in op
    ]


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    _operations_with_a_body(),
    ids=[f"{m.upper()} {p}" for m, p, _ in _operations_with_a_body()],
)
async def test_an_unsupported_content_encoding_is_a_documented_answer(
    client: Any, admin_token: str, method: str, path: str, operation: dict[str, Any]
) -> None:
    """A body in an encoding the service does not decode gets an answer its operation documents."""
    url = path.replace("{name}", "someone").replace("{subject}", "someone")
    headers = {**bearer(admin_token), "Content-Encoding": "br", "Content-Type": "application/json"}

    resp = await client.request(method.upper(), url, data=b"\x0b\x02\x80{}\x03", headers=headers)

    assert resp.status == 415
    assert "415" in operation["responses"]
