"""The audit trail: admin actions recorded with who, what and when, listed by GET /v1/audit."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient as Client

from tests.conftest import ADMIN_PASSWORD, basic_auth
from tokensvc.operations.config import Config
from tokensvc.storage.audit import AuditLog
from tokensvc.web import appkeys


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_admin_actions_are_audited_without_secrets(client: Client, admin_token: str) -> None:
    """mint, revoke, revoke-all, user create/update/delete, key rotate/revoke each leave one entry."""
    h = bearer(admin_token)
    minted = await (
        await client.post(
            "/v1/tokens", json={"subject": "alice", "operations": ["read"]}, headers=h
        )
    ).json()
    await client.delete(f"/v1/tokens/{minted['token_id']}", headers=h)
    await client.post("/v1/subjects/alice/revoke-all", headers=h)
    await client.post(
        "/v1/users", json={"name": "bob", "password": "a secret password!"}, headers=h
    )
    await client.patch("/v1/users/bob", json={"password": "another secret pw!"}, headers=h)
    await client.delete("/v1/users/bob", headers=h)
    rotated = await (await client.post("/v1/keys/rotate", json={}, headers=h)).json()
    old_key = minted["key_id"]
    await client.post(f"/v1/keys/{rotated['id']}/revoke", headers=h)

    resp = await client.get("/v1/audit?limit=50", headers=h)
    body = await resp.json()
    # The first start's own row: the bootstrap admin, created through the user service.
    bootstrap = [e for e in body["entries"] if e["actor"] == "local:(service start)"]
    body["entries"] = [e for e in body["entries"] if e not in bootstrap]

    assert resp.status == 200
    assert [(e["action"], e["target"]) for e in bootstrap] == [("user_created", "admin")]
    actions = [(e["action"], e["target"]) for e in reversed(body["entries"])]
    assert actions == [
        ("token_minted", minted["token_id"]),
        ("token_revoked", minted["token_id"]),
        ("tokens_revoked_all", "alice"),
        ("user_created", "bob"),
        ("user_updated", "bob"),
        ("user_deleted", "bob"),
        ("key_rotated", rotated["id"]),
        ("key_revoked", rotated["id"]),
    ]
    assert old_key != rotated["id"]
    assert all(e["actor"] == "admin" and e["at"].endswith("Z") for e in body["entries"])
    assert body["entries"][-1]["details"]["operations"] == ["read"]
    raw = json.dumps(body)
    assert "secret" not in raw and "tsv1_" not in raw


async def test_audit_filters_and_paging(client: Client, admin_token: str) -> None:
    """action= filters; limit/before pages backwards through every entry once."""
    h = bearer(admin_token)
    for _ in range(5):
        await client.post("/v1/tokens", json={"subject": "alice"}, headers=h)

    seen: list[int] = []
    cursor = ""
    while True:
        page = await (
            await client.get(f"/v1/audit?action=token_minted&limit=2{cursor}", headers=h)
        ).json()
        seen += [e["id"] for e in page["entries"]]
        if page["next_before"] is None:
            break
        cursor = f"&before={page['next_before']}"

    assert len(seen) == len(set(seen)) == 5
    assert seen == sorted(seen, reverse=True)


async def test_audit_is_for_admins_only(client: Client, admin_token: str) -> None:
    """A plain user's token gets 403, no token 401, a bad limit 400."""
    await client.post(
        "/v1/users",
        json={"name": "carol", "password": "a violet lantern passphrase"},
        headers=bearer(admin_token),
    )
    carol = (
        await (
            await client.post(
                "/v1/login", headers=basic_auth("carol", "a violet lantern passphrase")
            )
        ).json()
    )["token"]

    denied = await client.get("/v1/audit", headers=bearer(carol))
    anonymous = await client.get("/v1/audit")
    bad = await client.get("/v1/audit?limit=abc", headers=bearer(admin_token))

    assert denied.status == 403 and anonymous.status == 401 and bad.status == 400
    assert ADMIN_PASSWORD not in await denied.text()


async def test_audit_retention_deletes_old_entries_and_records_that_it_did(
    aiohttp_client: Any, app_config: Config
) -> None:
    """With TOKENSVC_AUDIT_RETENTION, key maintenance deletes the entries older than it, keeps
    the rest, and adds one `audit_pruned` entry saying how many went and from before when; by
    default (off) nothing is deleted."""
    from tokensvc.web.app import create_app

    config = app_config.model_copy(
        update={
            "key_maintenance_interval": timedelta(seconds=1),
            "audit_retention": timedelta(days=30),
        }
    )
    client = await aiohttp_client(create_app(config))
    engine = client.app[appkeys.ENGINE]
    now = datetime.now(UTC)
    for age, target in ((40, "old-1"), (31, "old-2"), (29, "kept")):
        await AuditLog(engine, clock=lambda age=age: now - timedelta(days=age)).record(
            "admin", "user_created", target
        )
    audit = AuditLog(engine)

    async with asyncio.timeout(10):
        while not await audit.recent(action="audit_pruned"):  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.1)

    targets = {entry.target for entry in await audit.recent(action="user_created")}
    assert targets == {"admin", "kept"}  # the bootstrap admin's creation, and the young one
    (pruned,) = await audit.recent(action="audit_pruned")
    assert (pruned.actor, pruned.target, pruned.details["deleted"]) == (
        "local:(retention)",
        "audit_log",
        2,
    )
    cutoff = datetime.fromisoformat(pruned.details["before"].replace("Z", "+00:00"))
    assert now - timedelta(days=30) <= cutoff <= datetime.now(UTC) - timedelta(days=30)


async def test_audit_entries_are_kept_without_a_retention(
    aiohttp_client: Any, sqlite_url: str, data_dir: Path
) -> None:
    from tests.conftest import make_config
    from tokensvc.web.app import create_app

    config = make_config(database_url=sqlite_url, data_dir=data_dir, key_maintenance_interval="1s")
    client = await aiohttp_client(create_app(config))
    engine = client.app[appkeys.ENGINE]
    old = datetime.now(UTC) - timedelta(days=3650)
    await AuditLog(engine, clock=lambda: old).record("admin", "user_created", "ancient")
    await asyncio.sleep(2.5)  # two maintenance rounds

    audit = AuditLog(engine)
    assert [e.target for e in await audit.recent(action="user_created")] == ["ancient", "admin"]
    assert await audit.recent(action="audit_pruned") == []


async def test_each_retention_pass_says_what_it_deleted_and_quiet_trails_stay_quiet(
    aiohttp_client: Any, sqlite_url: str, data_dir: Path
) -> None:
    """Review (helper-60): the `audit_pruned` entry was written once, after every pass, and
    best effort: a pass that failed left earlier passes' deletions unexplained. Each pass now
    records its own in its transaction. And a pass that deleted only earlier `audit_pruned`
    entries records nothing: they would otherwise renew themselves for ever."""
    from tests.conftest import make_config
    from tokensvc.web.app import create_app

    client = await aiohttp_client(
        create_app(make_config(database_url=sqlite_url, data_dir=data_dir))
    )
    engine = client.app[appkeys.ENGINE]
    old = datetime.now(UTC) - timedelta(days=100)
    for target in ("a", "b", "c"):
        await AuditLog(engine, clock=lambda: old).record("admin", "user_created", target)
    audit = AuditLog(engine)
    cutoff = datetime.now(UTC) - timedelta(days=30)

    assert await audit.prune(cutoff, actor="local:(retention)", batch=1, passes=5) == 3
    passes = await audit.recent(action="audit_pruned")
    assert [p.details["deleted"] for p in passes] == [1, 1, 1]

    await AuditLog(engine, clock=lambda: old).record("local:(retention)", "audit_pruned", "x")
    assert await audit.prune(cutoff, actor="local:(retention)") == 1
    assert len(await audit.recent(action="audit_pruned")) == 3  # none added for that one
