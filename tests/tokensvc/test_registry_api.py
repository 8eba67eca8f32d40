"""The token registry: every minted token has a row, listed without secrets; last use is recorded."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient as Client

from tests.conftest import ADMIN_PASSWORD, basic_auth
from tokensvc.tokens.registry import TokenRecord, TokenRegistry
from tokensvc.web import appkeys


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def mint(client: Client, admin_token: str, **body: Any) -> dict[str, Any]:
    resp = await client.post(
        "/v1/tokens", json={"subject": "alice", **body}, headers=bearer(admin_token)
    )
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def listing(client: Client, admin_token: str, query: str = "") -> dict[str, Any]:
    resp = await client.get("/v1/tokens" + query, headers=bearer(admin_token))
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def test_minted_and_login_tokens_are_listed_without_secrets(
    client: Client, admin_token: str
) -> None:
    """A POST /v1/tokens mint and a login each have a row with the metadata, and no token or key."""
    minted = await mint(client, admin_token, description="deploy bot", ttl="10m")

    body = await listing(client, admin_token)
    raw = json.dumps(body)

    rows = {r["token_id"]: r for r in body["tokens"]}
    row = rows[minted["token_id"]]
    assert row["subject"] == "alice"
    assert row["description"] == "deploy bot"
    assert row["created_by"] == "admin"
    assert row["expires_at"] == minted["expires_at"]
    assert row["status"] == "active" and row["kind"] == "rotating"
    assert row["revoked_at"] is None and row["last_used_at"] is None
    assert any(r["subject"] == "admin" and r["admin"] for r in body["tokens"])  # the login
    assert "tsv1_" not in raw and minted["token"] not in raw
    assert "token" not in row and "key_id" not in row


async def test_list_filters_and_pages(client: Client, admin_token: str) -> None:
    """subject= filters, limit/after pages through every row once, revoked rows only on request."""
    ids = {(await mint(client, admin_token, subject="pager"))["token_id"] for _ in range(5)}
    revoked = min(ids)
    resp = await client.delete(f"/v1/tokens/{revoked}", headers=bearer(admin_token))
    assert resp.status == 204

    seen: list[str] = []
    after = ""
    while True:
        page = await listing(client, admin_token, f"?subject=pager&limit=2{after}")
        seen += [r["token_id"] for r in page["tokens"]]
        if page["next_after"] is None:
            break
        after = f"&after={page['next_after']}"
    with_revoked = await listing(client, admin_token, "?subject=pager&include_revoked=true")

    assert sorted(seen) == sorted(ids - {revoked})
    assert {r["token_id"] for r in with_revoked["tokens"]} == ids
    assert {r["status"] for r in with_revoked["tokens"] if r["token_id"] == revoked} == {"revoked"}


async def test_list_needs_tokens_read_on_an_admin_token(client: Client, admin_token: str) -> None:
    """No token is a 401; an admin token narrowed to other operations is a 403; bad params 400."""
    narrowed = await mint(
        client, admin_token, subject="admin", admin=True, operations=["keys:read"]
    )

    anonymous = await client.get("/v1/tokens")
    denied = await client.get("/v1/tokens", headers=bearer(narrowed["token"]))
    bad = await client.get("/v1/tokens?limit=0", headers=bearer(admin_token))

    assert anonymous.status == 401
    assert denied.status == 403
    assert bad.status == 400


async def test_expired_rows_only_on_request(client: Client, admin_token: str, clock: Any) -> None:
    """A row whose token expired is hidden by default and shown as expired with include_expired."""
    registry = client.app[appkeys.REGISTRY]
    now = datetime.now(UTC)
    await registry.add(
        TokenRecord(
            token_id="ee" * 16,
            subject="old",
            created_by="admin",
            created_at=now - timedelta(hours=2),
            expires_at=now - timedelta(hours=1),
        )
    )

    default = await listing(client, admin_token, "?subject=old")
    everything = await listing(client, admin_token, "?subject=old&include_expired=true")

    assert default["tokens"] == []
    assert [r["status"] for r in everything["tokens"]] == ["expired"]


async def test_a_thousand_concurrent_verifies_record_last_use_without_db_errors(
    client: Client, admin_token: str, caplog: pytest.LogCaptureFixture, clock: Any
) -> None:
    """1,000 concurrent verifies of one token all answer 200, log no database error, and the
    flushed last_used_at shows up in the list."""
    minted = await mint(client, admin_token)
    caplog.set_level(logging.WARNING)
    before = clock.now  # the app's clock is what verify records

    responses = await asyncio.gather(
        *(client.post("/v1/verify", json={"token": minted["token"]}) for _ in range(1000))
    )
    statuses = [r.status for r in responses]
    for r in responses:
        r.release()
    flushed = await client.app[appkeys.USAGE].flush()
    rows = {r["token_id"]: r for r in (await listing(client, admin_token))["tokens"]}

    assert statuses == [200] * 1000
    assert flushed >= 1
    last_used = rows[minted["token_id"]]["last_used_at"]
    assert last_used is not None
    assert datetime.strptime(last_used, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) >= before
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING and "tokensvc" in r.name]
    assert not [r for r in errors if "usage" in r.name or "database" in r.getMessage().lower()]


async def test_last_use_never_moves_backwards(client: Client, admin_token: str) -> None:
    """Two flushes in either order (replicas flush independently) keep the later time."""
    registry: TokenRegistry = client.app[appkeys.REGISTRY]
    minted = await mint(client, admin_token)
    late = datetime.now(UTC).replace(microsecond=0)
    early = late - timedelta(minutes=5)

    await registry.touch({minted["token_id"]: late})
    await registry.touch({minted["token_id"]: early, "ff" * 16: early})  # unknown ids are ignored
    record = await registry.get(minted["token_id"])

    assert record is not None and record.last_used_at == late


async def test_login_registers_its_token(client: Client) -> None:
    """A login's token id is in the registry, created by the subject itself."""
    resp = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    token_id = (await resp.json())["token_id"]

    record = await client.app[appkeys.REGISTRY].get(token_id)

    assert record is not None
    assert record.subject == "admin" and record.created_by == "admin" and record.admin


async def test_a_full_usage_buffer_stops_growing_until_the_next_flush(
    client: Client, admin_token: str
) -> None:
    """Past MAX_PENDING distinct tokens waiting, further uses are dropped (a stream of distinct
    tokens must not grow a worker's memory), and once a flush has taken the batch the next use
    is recorded again."""
    from tokensvc.tokens import usage as usage_module

    recorder = client.app[appkeys.USAGE]
    minted = await mint(client, admin_token)
    for n in range(usage_module.MAX_PENDING):
        recorder.record(f"{n:032x}", 1.0)
    recorder.record(minted["token_id"], 2.0)
    assert len(recorder.pending) == usage_module.MAX_PENDING
    assert minted["token_id"] not in recorder.pending

    await recorder.flush()
    resp = await client.post("/v1/verify", json={"token": minted["token"]})
    assert resp.status == 200
    assert minted["token_id"] in recorder.pending
    await recorder.flush()
    record = await client.app[appkeys.REGISTRY].get(minted["token_id"])
    assert record is not None and record.last_used_at is not None


async def test_expired_rows_are_pruned_after_the_retention_leaves_first(
    client: Client, admin_token: str
) -> None:
    """Red team (helper-38): no row was ever deleted; one account logging in again and again grew
    the table by ~0.5 GB a day. Rows expired longer than the retention go (a service token's key
    with its row), except a parent whose child is still there: a revocation can still follow
    the lineage from it. A chain of expired rows goes in one call, leaves first."""
    registry = client.app[appkeys.REGISTRY]
    now = datetime.now(UTC)

    def row(token_id: str, expired_days_ago: float, parent: str | None = None) -> TokenRecord:
        expires = now - timedelta(days=expired_days_ago)
        return TokenRecord(
            token_id=token_id * 16,
            subject="pruned",
            created_by="admin",
            created_at=expires - timedelta(hours=1),
            expires_at=expires,
            parent_id=None if parent is None else parent * 16,
        )

    for record in (
        row("a1", 40),  # an old leaf: goes
        row("b1", 40),  # an old parent of a live child: stays, and so does the child
        row("b2", -365, parent="b1"),
        row("c1", 40),  # an old parent of an old child: both go
        row("c2", 35, parent="c1"),
        row("d1", 40),  # a chain of three old rows: all go, leaves first
        row("d2", 40, parent="d1"),
        row("d3", 40, parent="d2"),
        row("e1", 1),  # expired within the retention: stays
        row("f1", -1),  # live: stays
    ):
        await registry.add(record)

    pruned = await registry.prune_expired(now - timedelta(days=30))

    listed = await listing(
        client, admin_token, "?subject=pruned&include_expired=true&include_revoked=true&limit=1000"
    )
    assert pruned == 6
    assert sorted(r["token_id"][:2] for r in listed["tokens"]) == ["b1", "b2", "e1", "f1"]
    resp = await client.delete(f"/v1/tokens/{'b1' * 16}", headers=bearer(admin_token))
    assert resp.status == 204
    after = await listing(client, admin_token, "?subject=pruned&include_revoked=true&limit=1000")
    assert [r["status"] for r in after["tokens"] if r["token_id"] == "b2" * 16] == ["revoked"]


async def test_key_maintenance_prunes_the_registry(
    aiohttp_client: Any, sqlite_url: str, data_dir: Any
) -> None:
    """The pruning runs with root key maintenance (TOKENSVC_KEY_MAINTENANCE_INTERVAL), on
    TOKENSVC_TOKEN_RETENTION."""
    from tests.conftest import make_config
    from tokensvc.web.app import create_app

    config = make_config(
        database_url=sqlite_url,
        data_dir=data_dir,
        key_maintenance_interval="1s",
        token_retention="1h",
    )
    client = await aiohttp_client(create_app(config))
    registry = client.app[appkeys.REGISTRY]
    now = datetime.now(UTC)
    for token_id, expired in (("aa" * 16, timedelta(hours=2)), ("bb" * 16, timedelta(minutes=30))):
        await registry.add(
            TokenRecord(
                token_id=token_id,
                subject="maintained",
                created_by="admin",
                created_at=now - expired - timedelta(hours=1),
                expires_at=now - expired,
            )
        )

    async with asyncio.timeout(10):
        while await registry.get("aa" * 16) is not None:  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.1)

    assert await registry.get("bb" * 16) is not None
