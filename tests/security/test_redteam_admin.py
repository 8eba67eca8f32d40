"""Red team (round 2): the admin API's keys, audit and user doors. Each test is an attack that
worked before its fix: a stale offline copy burning the live token it came from, a narrowed
`users:write` token removing every admin, and audit rows that could not tell a narrowed
delegate from its admin's own session.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from caveats import format_rfc3339
from tests.conftest import FakeClock
from tests.security.attack import attenuated, call, create_user, minted, token_id_of, verify

PASSWORD = "first long copper passphrase"


async def test_a_copy_expired_as_presented_does_not_burn_the_live_token(
    shaped: Any, root: str, clock: FakeClock
) -> None:
    """The reproduction: a copy of the admin's session narrowed offline to `keys:read` and an
    expiry an hour past (useless as presented) was reported as leaked, and the live session
    and the service token minted with it died. A live copy, however narrowed, still burns the
    token: copies share its id, and a leaked one must die."""
    service = await minted(shaped, root, subject="payments", service=True, ttl="30d")
    past = format_rfc3339((clock.now - timedelta(hours=1)).timestamp())
    future = format_rfc3339((clock.now + timedelta(minutes=5)).timestamp())
    stale = attenuated(root, "allow keys:read", f"time-before {past}")
    live = attenuated(root, "allow keys:read", f"time-before {future}")

    stale_report = await shaped.post("/v1/tokens/revoke", json={"token": stale})
    after_stale = ((await verify(shaped, root))[0], (await verify(shaped, service["token"]))[0])
    live_report = await shaped.post("/v1/tokens/revoke", json={"token": live})
    after_live = ((await verify(shaped, root))[0], (await verify(shaped, service["token"]))[0])

    assert stale_report.status == live_report.status == 204  # the answer says nothing either way
    assert after_stale == (200, 200)
    assert after_live == (401, 401)


async def test_a_stale_copy_cannot_burn_what_its_token_minted_once_that_token_expired(
    shaped: Any, root: str, clock: FakeClock
) -> None:
    """Red team: the copy expired as presented revoked nothing while its token lived; once
    the token itself had expired, the same copy took the month-long service token it had
    minted. A copy (an expiry before the token's own) expired as presented never revokes;
    the token itself, presented after its expiry, still does, for what it minted."""
    service = await minted(shaped, root, subject="billing", service=True, ttl="30d")
    soon = format_rfc3339((clock.now + timedelta(minutes=1)).timestamp())
    copy = attenuated(root, "allow read", f"time-before {soon}")

    clock.advance(hours=9)  # past the copy's expiry and the 8-hour login's
    by_copy = await shaped.post("/v1/tokens/revoke", json={"token": copy})
    after_copy = (await verify(shaped, service["token"]))[0]
    by_token = await shaped.post("/v1/tokens/revoke", json={"token": root})
    after_token = (await verify(shaped, service["token"]))[0]

    assert by_copy.status == by_token.status == 204
    assert after_copy == 200
    assert after_token == 401


async def test_a_cascade_row_names_the_token_it_was_done_with(shaped: Any, root: str) -> None:
    """Red team: the direct row of a delegate's revocation named its token, the rows of the
    tokens it took along did not, and read as the admin's own session's."""
    parent = await minted(shaped, root, subject="admin", admin=True, ttl="1h")
    child = await minted(shaped, parent["token"], subject="worker")
    revoker = await minted(shaped, root, admin=True, operations=["tokens:revoke"])

    status, _ = await call(shaped, "DELETE", f"/v1/tokens/{parent['token_id']}", revoker["token"])
    _, trail = await call(
        shaped, "GET", "/v1/audit", root, params={"target": child["token_id"], "limit": "5"}
    )

    cascade = [e for e in trail["entries"] if e["details"].get("via") == "cascade"]
    assert status == 204
    assert [e["details"]["by_token"] for e in cascade] == [revoker["token_id"]], trail


async def test_a_narrowed_users_write_token_cannot_demote_disable_or_delete_a_role_holder(
    shaped: Any, root: str
) -> None:
    """The reproduction: a token narrowed to `users:write` (for password resets) demoted,
    disabled and deleted admins, and once an admin was demoted it could set their password.
    It manages role-less users only."""
    await create_user(shaped, root, "ops1", PASSWORD, roles=["ops"])
    await create_user(shaped, root, "plain1", PASSWORD)
    users_only = attenuated(root, "allow users:write")

    on_holder = [
        (await call(shaped, "PATCH", "/v1/users/ops1", users_only, json={"roles": []}))[0],
        (await call(shaped, "PATCH", "/v1/users/ops1", users_only, json={"disabled": True}))[0],
        (await call(shaped, "DELETE", "/v1/users/ops1", users_only))[0],
        (await call(shaped, "DELETE", "/v1/users/admin", users_only))[0],
    ]
    on_plain = [
        (await call(shaped, "PATCH", "/v1/users/plain1", users_only, json={"disabled": True}))[0],
        (await call(shaped, "DELETE", "/v1/users/plain1", users_only))[0],
    ]
    status, holder = await call(shaped, "GET", "/v1/users/ops1", root)

    assert on_holder == [403, 403, 403, 403]
    assert on_plain == [200, 204]
    assert status == 200 and holder["roles"] == ["ops"] and holder["disabled"] is False


async def test_every_admin_action_names_the_token_it_was_done_with(shaped: Any, root: str) -> None:
    """The reproduction: a key rotation by a `keys:rotate`-only delegate was audited exactly as
    one by the admin's own session (`actor: admin`, no details). Each row now names the token
    (`by_token`); a mint names it as `parent_id`."""
    ci_bot = await minted(shaped, root, admin=True, operations=["keys:rotate"], description="ci")
    session = await token_id_of(shaped, root)

    assert (await call(shaped, "POST", "/v1/keys/rotate", ci_bot["token"]))[0] in (200, 201)
    await create_user(shaped, root, "ann", PASSWORD)
    status, trail = await call(shaped, "GET", "/v1/audit", root, params={"limit": "10"})

    rows: dict[str, Any] = {}
    for entry in trail["entries"]:  # newest first: the newest row of each action
        rows.setdefault(entry["action"], entry)
    assert status == 200
    assert rows["key_rotated"]["details"]["by_token"] == ci_bot["token_id"]
    assert rows["user_created"]["details"]["by_token"] == session
    assert rows["token_minted"]["details"]["parent_id"] == session


@pytest.mark.parametrize("path", ["/v1/tokens", "/v1/users", "/v1/audit"])
@pytest.mark.parametrize("limit", ["٣", "1_0", " 7", "+5"])
async def test_a_limit_is_ascii_digits_on_every_list(
    shaped: Any, root: str, path: str, limit: str
) -> None:
    """`int()` took `٣` and `1_0` on two lists while the audit refused them: one rule now."""
    status, body = await call(shaped, "GET", path, root, params={"limit": limit})

    assert status == 400 and "whole number" in body["error"]["message"], body
