"""The app factory end to end: login, mint, verify, on PostgreSQL and on SQLite."""

from __future__ import annotations


async def test_admin_can_mint_a_token_that_verifies(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """A token minted with the bootstrap admin's token verifies at /v1/verify."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    minted = await client.post("/v1/tokens", json={"subject": "alice"}, headers=headers)
    token = (await minted.json())["token"]

    resp = await client.post("/v1/verify", json={"token": token})

    assert minted.status == 201
    assert resp.status == 200
    body = await resp.json()
    assert body["valid"] is True and body["subject"] == "alice"
