"""The user admin API, /v1/users[/{name}], over HTTP: create, list, get, patch, delete, who may.

Every test runs against the real app factory on PostgreSQL and on SQLite (the `client` fixture).
"""

from __future__ import annotations

from typing import Any

from tests.conftest import basic_auth
from tokensvc.web import appkeys

ALICE_PASSWORD = "her long lantern passphrase"

# ---- helpers ---------------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(client: Any, admin_token: str, **body: Any) -> Any:
    """POST /v1/users as the admin; the response."""
    return await client.post("/v1/users", json=body, headers=bearer(admin_token))


async def login_token(client: Any, name: str, password: str) -> str:
    resp = await client.post("/v1/login", headers=basic_auth(name, password))
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["token"])


async def verify_status(client: Any, token: str) -> int:
    resp = await client.post("/v1/verify", json={"token": token})
    return int(resp.status)


async def assert_json_error(resp: Any, status: int) -> dict[str, Any]:
    """The uniform error shape with `status`; the body."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = dict(await resp.json())
    assert set(body["error"]) == {"code", "message"}, body
    return body


USER_FIELDS = {"name", "roles", "disabled", "created_at", "updated_at"}

# ---- create, read, update, delete ------------------------------------------------------------------


async def test_create_returns_the_user_without_any_hash(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """POST /v1/users answers 201 with name, roles and flags, never the password or its hash."""
    resp = await create(
        client, admin_token, name="Alice", password=ALICE_PASSWORD, roles=["reader", "admin"]
    )

    assert resp.status == 201, await resp.text()
    body = await resp.json()
    text = await resp.text()
    assert set(body) == USER_FIELDS
    assert body["name"] == "alice"  # stored lowercase
    assert body["roles"] == ["admin", "reader"]
    assert body["disabled"] is False
    assert "$argon2" not in text and ALICE_PASSWORD not in text
    assert (await client.app[appkeys.USERS].get("alice")).password_hash.startswith("$argon2id$")  # type: ignore[union-attr]


async def test_duplicate_name_is_409(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """Creating a name that exists, in any letter case, is a 409 and leaves the first user's password intact."""
    await create(client, admin_token, name="alice", password=ALICE_PASSWORD)

    same = await create(client, admin_token, name="alice", password="another long password")
    upper = await create(client, admin_token, name="ALICE", password="another long password")

    body = await assert_json_error(same, 409)
    assert body["error"]["code"] == "conflict"
    await assert_json_error(upper, 409)
    assert await verify_status(client, await login_token(client, "alice", ALICE_PASSWORD)) == 200


async def test_list_and_get(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """GET /v1/users lists every user in name order, GET /v1/users/{name} one of them, neither with hashes."""
    for name in ("carol", "bob"):
        await create(client, admin_token, name=name, password=ALICE_PASSWORD)

    listed = await client.get("/v1/users", headers=bearer(admin_token))
    paged = await client.get("/v1/users?after=bob&limit=1", headers=bearer(admin_token))
    one = await client.get("/v1/users/Bob", headers=bearer(admin_token))
    missing = await client.get("/v1/users/nobody", headers=bearer(admin_token))

    assert listed.status == 200, await listed.text()
    users = (await listed.json())["users"]
    assert [u["name"] for u in users] == ["admin", "bob", "carol"]
    assert all(set(u) == USER_FIELDS for u in users)
    assert "$argon2" not in await listed.text()
    assert [u["name"] for u in (await paged.json())["users"]] == ["carol"]
    assert one.status == 200, await one.text()
    assert (await one.json())["name"] == "bob"
    await assert_json_error(missing, 404)


async def test_list_limit_out_of_range_is_400(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """A limit that is not a whole number from 1 to 1000 is a 400."""
    answers = {}
    for limit in ("0", "1001", "ten", "-1"):
        resp = await client.get(f"/v1/users?limit={limit}", headers=bearer(admin_token))
        answers[limit] = resp.status

    assert answers == {"0": 400, "1001": 400, "ten": 400, "-1": 400}


async def test_patch_roles_grants_and_revokes_admin(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """PATCH roles to admin makes alice's next login admin-capable; taking the role away kills that token."""
    await create(client, admin_token, name="alice", password=ALICE_PASSWORD)

    granted = await client.patch(
        "/v1/users/alice", json={"roles": ["admin"]}, headers=bearer(admin_token)
    )
    alice_admin = await login_token(client, "alice", ALICE_PASSWORD)
    keys_as_admin = await client.get("/v1/keys", headers=bearer(alice_admin))
    revoked = await client.patch("/v1/users/alice", json={"roles": []}, headers=bearer(admin_token))
    keys_after = await client.get("/v1/keys", headers=bearer(alice_admin))

    assert granted.status == 200, await granted.text()
    assert (await granted.json())["roles"] == ["admin"]
    assert keys_as_admin.status == 200, await keys_as_admin.text()
    assert (await revoked.json())["roles"] == []
    assert keys_after.status in (401, 403), await keys_after.text()
    assert await verify_status(client, alice_admin) == 401


async def test_patch_validates_everything_before_writing(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """A PATCH with a good role change and a weak password is a 400 and changes nothing."""
    await create(client, admin_token, name="alice", password=ALICE_PASSWORD)
    token = await login_token(client, "alice", ALICE_PASSWORD)

    resp = await client.patch(
        "/v1/users/alice",
        json={"roles": ["admin"], "password": "short"},
        headers=bearer(admin_token),
    )
    after = await client.get("/v1/users/alice", headers=bearer(admin_token))

    await assert_json_error(resp, 400)
    assert (await after.json())["roles"] == []
    assert await verify_status(client, token) == 200
    assert await verify_status(client, await login_token(client, "alice", ALICE_PASSWORD)) == 200


async def test_patch_rejects_bad_bodies(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """An empty PATCH, an unknown field, a non-boolean `disabled` or a missing user are 400, 400, 400 and 404."""
    await create(client, admin_token, name="alice", password=ALICE_PASSWORD)

    empty = await client.patch("/v1/users/alice", json={}, headers=bearer(admin_token))
    unknown = await client.patch(
        "/v1/users/alice", json={"password_hash": "$argon2id$x"}, headers=bearer(admin_token)
    )
    not_bool = await client.patch(
        "/v1/users/alice", json={"disabled": "yes"}, headers=bearer(admin_token)
    )
    missing = await client.patch(
        "/v1/users/nobody", json={"disabled": True}, headers=bearer(admin_token)
    )

    await assert_json_error(empty, 400)
    await assert_json_error(unknown, 400)
    await assert_json_error(not_bool, 400)
    await assert_json_error(missing, 404)


async def test_delete_then_404(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """DELETE /v1/users/{name} answers 204; the user is then 404 on GET and on a second DELETE, and cannot log in."""
    await create(client, admin_token, name="alice", password=ALICE_PASSWORD)

    deleted = await client.delete("/v1/users/alice", headers=bearer(admin_token))
    got = await client.get("/v1/users/alice", headers=bearer(admin_token))
    again = await client.delete("/v1/users/alice", headers=bearer(admin_token))
    login = await client.post("/v1/login", headers=basic_auth("alice", ALICE_PASSWORD))

    assert deleted.status == 204, await deleted.text()
    await assert_json_error(got, 404)
    await assert_json_error(again, 404)
    await assert_json_error(login, 401)


async def test_deleted_users_tokens_stay_dead_after_recreation(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """Tokens of a deleted user are 401, and stay 401 after a new user is created with the same name and password."""
    await create(client, admin_token, name="alice", password=ALICE_PASSWORD)
    old = await login_token(client, "alice", ALICE_PASSWORD)

    await client.delete("/v1/users/alice", headers=bearer(admin_token))
    after_delete = await verify_status(client, old)
    recreated = await create(client, admin_token, name="alice", password=ALICE_PASSWORD)
    after_recreate = await verify_status(client, old)
    fresh = await login_token(client, "alice", ALICE_PASSWORD)

    assert after_delete == 401
    assert recreated.status == 201, await recreated.text()
    assert after_recreate == 401
    assert await verify_status(client, fresh) == 200


async def test_deleted_admins_token_cannot_manage_users(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """An admin deleted and re-created without the admin role cannot use their old admin token."""
    await create(client, admin_token, name="root2", password=ALICE_PASSWORD, roles=["admin"])
    old = await login_token(client, "root2", ALICE_PASSWORD)

    await client.delete("/v1/users/root2", headers=bearer(admin_token))
    await create(client, admin_token, name="root2", password=ALICE_PASSWORD, roles=["admin"])
    resp = await client.get("/v1/users", headers=bearer(old))

    await assert_json_error(resp, 401)


# ---- validation ------------------------------------------------------------------------------------


async def test_weak_password_is_400(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """A password under 15 characters (after NFKC), over 1024 bytes, or not a string is a 400 and creates nobody."""
    bad = ["short", "", "1234567", "x" * 1025, None, 12345678]

    answers = []
    for n, password in enumerate(bad):
        resp = await create(client, admin_token, name=f"user{n}", password=password)
        answers.append(resp.status)
    listed = await client.get("/v1/users", headers=bearer(admin_token))

    assert answers == [400] * len(bad)
    assert [u["name"] for u in (await listed.json())["users"]] == ["admin"]


async def test_weak_password_change_is_400(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """PATCH with a short password is a 400 and the old password still works."""
    await create(client, admin_token, name="alice", password=ALICE_PASSWORD)

    resp = await client.patch(
        "/v1/users/alice", json={"password": "short"}, headers=bearer(admin_token)
    )

    await assert_json_error(resp, 400)
    assert await verify_status(client, await login_token(client, "alice", ALICE_PASSWORD)) == 200


async def test_bad_names_are_400(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """Names outside 1–64 of [a-z0-9._-] starting with a letter or digit, or not strings, are 400."""
    bad: list[Any] = [
        "",
        "-alice",
        ".alice",
        "a" * 65,
        "al ice",
        "alice/x",
        "al:ice",
        "élise",
        "alice\n",
        None,
        7,
    ]

    answers = {}
    for name in bad:
        resp = await create(client, admin_token, name=name, password=ALICE_PASSWORD)
        answers[repr(name)] = resp.status
    listed = await client.get("/v1/users", headers=bearer(admin_token))

    assert answers == {repr(name): 400 for name in bad}
    assert [u["name"] for u in (await listed.json())["users"]] == ["admin"]


async def test_good_edge_names_are_accepted(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """One character, 64 characters, digits first, and `.`, `_`, `-` inside are valid names."""
    good = ["a", "a" * 64, "0day", "first.last", "snake_case", "kebab-case"]

    statuses = [
        (await create(client, admin_token, name=name, password=ALICE_PASSWORD)).status
        for name in good
    ]

    assert statuses == [201] * len(good)


async def test_bad_roles_and_unknown_fields_are_400(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """Invalid roles, a hash sent by the client, or a non-boolean `disabled` make POST /v1/users a 400."""
    bodies: list[dict[str, Any]] = [
        {"roles": ["Admin!"]},
        {"roles": ["admin", 7]},
        {"roles": [f"r{n}" for n in range(33)]},
        {"password_hash": "$argon2id$v=19$m=8,t=1,p=1$x$y"},
        {"disabled": "no"},
    ]

    statuses = [
        (await create(client, admin_token, name="alice", password=ALICE_PASSWORD, **b)).status
        for b in bodies
    ]

    assert statuses == [400] * len(bodies)


async def test_body_must_be_a_json_object(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """A POST /v1/users body that is not JSON, or not an object, is a 400 JSON error."""
    not_json = await client.post(
        "/v1/users",
        data=b"name=alice",
        headers={**bearer(admin_token), "Content-Type": "application/json"},
    )
    a_list = await client.post("/v1/users", json=["alice"], headers=bearer(admin_token))

    await assert_json_error(not_json, 400)
    await assert_json_error(a_list, 400)


# ---- who may ---------------------------------------------------------------------------------------


async def test_non_admins_get_403_and_anonymous_401(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """A plain user's token gets 403 on every /v1/users call; no token gets 401; nothing changes."""
    await create(client, admin_token, name="alice", password=ALICE_PASSWORD)
    alice = await login_token(client, "alice", ALICE_PASSWORD)
    calls = [
        ("POST", "/v1/users", {"name": "mallory", "password": ALICE_PASSWORD}),
        ("GET", "/v1/users", None),
        ("GET", "/v1/users/alice", None),
        ("PATCH", "/v1/users/alice", {"roles": ["admin"]}),
        ("DELETE", "/v1/users/admin", None),
        ("GET", "/v1/users/alice/lockout", None),
        ("DELETE", "/v1/users/alice/lockout", None),
    ]

    as_alice = []
    anonymous = []
    for method, path, body in calls:
        as_alice.append(
            (await client.request(method, path, json=body, headers=bearer(alice))).status
        )
        anonymous.append((await client.request(method, path, json=body)).status)
    listed = await client.get("/v1/users", headers=bearer(admin_token))

    assert as_alice == [403] * len(calls)
    assert anonymous == [401] * len(calls)
    assert [(u["name"], u["roles"]) for u in (await listed.json())["users"]] == [
        ("admin", ["admin"]),
        ("alice", []),
    ]


async def test_basic_credentials_do_not_authorise_admin_calls(client) -> None:  # type: ignore[no-untyped-def]
    """The admin's password in HTTP Basic is not a token: /v1/users answers 401."""
    from tests.conftest import ADMIN_PASSWORD

    resp = await client.get("/v1/users", headers=basic_auth("admin", ADMIN_PASSWORD))

    await assert_json_error(resp, 401)


async def test_disabled_user_is_shown_and_enabled_again(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    """Creating a user disabled shows `disabled: true`; they cannot log in until PATCHed to enabled."""
    created = await create(
        client, admin_token, name="alice", password=ALICE_PASSWORD, disabled=True
    )
    refused = await client.post("/v1/login", headers=basic_auth("alice", ALICE_PASSWORD))

    enabled = await client.patch(
        "/v1/users/alice", json={"disabled": False}, headers=bearer(admin_token)
    )

    assert (await created.json())["disabled"] is True
    assert refused.status == 401
    assert (await enabled.json())["disabled"] is False
    assert await verify_status(client, await login_token(client, "alice", ALICE_PASSWORD)) == 200
