"""Small helpers for the attack suite: API calls as an attacker (or a victim) makes them."""

from __future__ import annotations

from typing import Any

from tests.conftest import basic_auth


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client: Any, name: str, password: str, **body: Any) -> str:
    """A token from POST /v1/login (fails the test otherwise)."""
    resp = await client.post("/v1/login", headers=basic_auth(name, password), json=body or None)
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["token"])


async def call(client: Any, method: str, path: str, token: str, **kwargs: Any) -> tuple[int, Any]:
    """(status, JSON body or None) of one API call made with `token`."""
    resp = await client.request(method, path, headers=bearer(token), **kwargs)
    body = await resp.json() if resp.content_type == "application/json" else None
    return resp.status, body


async def verify(client: Any, token: str, **context: str) -> tuple[int, Any]:
    resp = await client.post("/v1/verify", json={"token": token, "context": context})
    return resp.status, await resp.json()


async def token_id_of(client: Any, token: str) -> str:
    """The id of a live token, as /v1/verify reports it."""
    status, body = await verify(client, token)
    assert status == 200, body
    return str(body["token_id"])


async def minted(client: Any, token: str, **body: Any) -> dict[str, Any]:
    """The answer of POST /v1/tokens made with `token` (fails the test unless 201)."""
    status, answer = await call(client, "POST", "/v1/tokens", token, json=body)
    assert status == 201, answer
    return dict(answer)


async def create_user(client: Any, admin: str, name: str, password: str, **body: Any) -> None:
    status, answer = await call(
        client, "POST", "/v1/users", admin, json={"name": name, "password": password, **body}
    )
    assert status == 201, answer


def attenuated(token: str, *predicates: str) -> str:
    """`token` with first-party caveats appended by its holder (no key needed)."""
    from tokensvc.macaroons.attenuation import attenuate

    return attenuate(token, [p.encode() for p in predicates])
