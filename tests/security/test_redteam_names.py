"""Red team (round 2): one name, many doors. User names and token subjects are one namespace,
read by user administration, revoke-all, the second-factor endpoints, the lockout and
forward-auth's `X-Auth-Subject`; where two doors read a name differently, an attacker acted as
someone else or escaped a revocation. Each test is an attack that worked before its fix.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import FakeClock
from tests.security.attack import attenuated, call, create_user, login, minted, verify

PASSWORD = "first long copper passphrase"


async def legacy_token(shaped: Any, subject: str) -> str:
    """A registered token for `subject` as the service minted it before a subject had to be
    a user name's one spelling (`test_a_subject_is_one_spelling_of_a_user_name`)."""
    from datetime import timedelta

    from tokensvc.tokens.minting import MintRequest
    from tokensvc.web import appkeys

    made = await shaped.app[appkeys.MINTER].mint(
        MintRequest(subject=subject, ttl=timedelta(hours=1))
    )
    return made.token


@pytest.mark.parametrize(
    ("subject", "spelled"),
    [
        ("Ledger", "ledger"),
        ("\uff42\uff49\uff4c\uff4c\uff49\uff4e\uff47", "billing"),
        ("FIN", "fin"),
        # Bypasses (helper-68): invisible characters and accents, which NFKC keeps and a
        # case- or accent-insensitive collation (ICU level 2, MySQL's ai_ci) ignores.
        ("le\u200bdger", "ledger"),
        ("ledger\u00ad", "ledger"),
        ("fin\u034f", "fin"),
        ("adm\u0130n", "admin"),
        ("l\u00e9dger", "ledger"),
    ],
)
async def test_a_subject_is_one_spelling_of_a_user_name(
    shaped: Any, root: str, subject: str, spelled: str
) -> None:
    """Red team (helper-66): a service token for `Ledger` (or fullwidth `ｂｉｌｌｉｎｇ`), then a
    `users:write` delegate created the user `ledger` with its own password: a backend that
    compares subjects loosely (a case-insensitive collation) took its logins for the service.
    And a service token for `FIN` was minted while the user `fin` existed. A subject that is
    another spelling of a possible user name is refused at the mint, so the exact checks on
    both sides see every collision."""
    await create_user(shaped, root, "fin", PASSWORD)
    users_only = attenuated(root, "allow users:write")

    status, body = await call(
        shaped, "POST", "/v1/tokens", root, json={"subject": subject, "service": True, "ttl": "30d"}
    )
    taken = await call(
        shaped, "POST", "/v1/users", users_only, json={"name": spelled, "password": PASSWORD}
    )

    assert status == 400 and f"write it as {spelled!r}" in body["error"]["message"], body
    # No token was issued to any spelling of a new name; `fin` exists, `admin` has tokens.
    assert taken[0] == {"fin": 409, "admin": 403}.get(spelled, 201), taken
    assert (await minted(shaped, root, subject="Batch Job"))["token"]  # no user has that name
    assert (await minted(shaped, root, subject="svc:Payments"))["token"]


async def test_a_spelling_issued_before_the_rule_still_guards_its_user_name(
    shaped: Any, root: str
) -> None:
    """Review (helper-72): a `Ledger` token minted before the mint refused that spelling was
    not seen by user creation (the registry matched subjects exactly), so a `users:write`
    delegate made `ledger` a user of its own. The row records the name it spells."""
    await legacy_token(shaped, "L\u00e9d\u200bger")
    users_only = attenuated(root, "allow users:write")

    taken = await call(
        shaped, "POST", "/v1/users", users_only, json={"name": "ledger", "password": PASSWORD}
    )

    assert taken[0] == 403 and "tokens were issued" in taken[1]["error"]["message"], taken
    assert (await call(shaped, "GET", "/v1/users/ledger", root))[0] == 404


async def test_the_migration_records_the_spelling_of_older_tokens(pg_url: str) -> None:
    """Revision 0011 fills `spelling_of` for rows minted before it, and only for subjects that
    spell another user name."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    from keystore import create_engine
    from tokensvc.storage.migrate import downgrade, upgrade

    engine = create_engine(pg_url)
    try:
        await upgrade(engine)
        await downgrade(engine, "0010_token_parent")
        async with engine.begin() as conn:
            for n, subject in enumerate(["Ledger", "ledger", "svc:Payments", "\uff26\uff29\uff2e"]):
                await conn.execute(
                    text(
                        "INSERT INTO tokens (token_id, subject, description, created_by,"
                        " created_at, expires_at, admin, kind, bounded) VALUES (:i, :s, '',"
                        " 'admin', :t, :t, false, 'rotating', false)"
                    ),
                    {"i": f"{n:032x}", "s": subject, "t": datetime.now(UTC)},
                )
        await upgrade(engine)
        async with engine.connect() as conn:
            rows = dict((await conn.execute(text("SELECT subject, spelling_of FROM tokens"))).all())
    finally:
        await engine.dispose()

    assert rows == {
        "Ledger": "ledger",
        "ledger": None,
        "svc:Payments": None,
        "\uff26\uff29\uff2e": "fin",
    }


async def test_a_users_write_token_cannot_make_a_services_subject_a_user(
    shaped: Any, root: str
) -> None:
    """The reproduction: a token narrowed to `users:write` created the user `payments` (a
    service's subject), logged in as it and held the service's identity, and deleting that user
    revoked every token of the service: a revoke-all without `tokens:revoke`."""
    service = await minted(shaped, root, subject="payments", service=True, ttl="30d")
    users_only = attenuated(root, "allow users:write")

    taken = await call(
        shaped, "POST", "/v1/users", users_only, json={"name": "payments", "password": PASSWORD}
    )
    fresh = await call(
        shaped, "POST", "/v1/users", users_only, json={"name": "newcomer", "password": PASSWORD}
    )

    assert taken[0] == 403 and "tokens were issued" in taken[1]["error"]["message"], taken
    assert fresh[0] == 201, fresh  # a name no token was issued to is still the narrowed token's
    assert (await verify(shaped, service["token"]))[0] == 200
    assert (await call(shaped, "GET", "/v1/users/payments", root))[0] == 404


async def test_an_unrestricted_admin_making_a_subject_a_user_starts_it_with_no_tokens(
    shaped: Any, root: str
) -> None:
    """A token minted for `frank` before there was a user frank does not become the user's
    (red team: it then got `has-role` discharges as frank): creating the user revokes it."""
    early = await minted(shaped, root, subject="frank", service=True, ttl="30d")

    await create_user(shaped, root, "frank", PASSWORD, roles=["ops"])
    own = await login(shaped, "frank", PASSWORD)
    status, trail = await call(shaped, "GET", "/v1/audit?action=user_created&target=frank", root)

    assert (await verify(shaped, early["token"]))[0] == 401
    assert (await verify(shaped, own))[0] == 200
    assert status == 200 and trail["entries"][0]["details"]["tokens_revoked"] is True, trail


@pytest.mark.parametrize("spelling", ["Carol", "CAROL", "carol ", "ｃarol", " CaRoL"])
async def test_revoke_all_of_another_spelling_of_a_user_is_refused_not_claimed(
    shaped: Any, root: str, spelling: str
) -> None:
    """The reproduction: revoke-all of `Carol` answered 200 and audited `tokens_revoked_all`
    while carol's tokens lived on (subjects are exact; the user endpoints fold case)."""
    await create_user(shaped, root, "carol", PASSWORD)
    token = await login(shaped, "carol", PASSWORD)

    near = await call(shaped, "POST", f"/v1/subjects/{quote(spelling)}/revoke-all", root)
    status, trail = await call(
        shaped,
        "GET",
        "/v1/audit",
        root,
        params={"action": "tokens_revoked_all", "target": spelling},
    )
    still = (await verify(shaped, token))[0]
    exact = await call(shaped, "POST", "/v1/subjects/carol/revoke-all", root)

    assert near[0] == 404 and "'carol'" in near[1]["error"]["message"], near
    assert status == 200 and trail["entries"] == [], trail
    assert still == 200
    assert exact[0] == 200 and (await verify(shaped, token))[0] == 401


async def test_revoke_all_still_takes_every_subject_but_another_spelling_of_a_user(
    shaped: Any, root: str
) -> None:
    """What revoke-all answered before stays: a user's exact name (tokens or not yet), any
    subject a token was issued to, and any other subject (tokens minted before the registry
    existed have no row, and must stay revocable); only a near miss of a user is the 404."""
    await create_user(shaped, root, "dora", PASSWORD)
    await minted(shaped, root, subject="Batch Job")

    answers = {
        subject: (await call(shaped, "POST", f"/v1/subjects/{quote(subject)}/revoke-all", root))[0]
        for subject in ("dora", "Batch Job", "batch job", "nobody-here", "Dora")
    }

    assert answers == {
        "dora": 200,
        "Batch Job": 200,
        "batch job": 200,
        "nobody-here": 200,
        "Dora": 404,
    }


@pytest.mark.parametrize(
    "subject",
    [
        *(" bob", "bob ", " ", "\u3000bob", "bob\u00a0", "\u2003"),
        # Invisible, and trimmed by some runtimes (JavaScript's trim() takes U+FEFF) (red team).
        *("bob\ufeff", "\u200bbob", "bob\u180e", "bob\u2060"),
    ],
)
async def test_a_subject_with_whitespace_at_either_end_is_refused(
    shaped: Any, root: str, subject: str
) -> None:
    """The reproduction: a token for `bob ` survived bob's revoke-all, password change and
    deletion, while forward-auth's `X-Auth-Subject: bob ` reached backends as `bob`."""
    status, body = await call(shaped, "POST", "/v1/tokens", root, json={"subject": subject})

    assert status == 400 and "whitespace" in body["error"]["message"], body


async def test_a_service_token_is_never_minted_for_a_users_name(shaped: Any, root: str) -> None:
    """Red team, the reverse order: a `users:write` delegate created the user `payments`
    first; the service token an admin later minted for that name was the delegate's to use (as
    the user) and, deleting the user, to kill. A service subject is no user's name."""
    users_only = attenuated(root, "allow users:write")
    made = await call(
        shaped, "POST", "/v1/users", users_only, json={"name": "payments", "password": PASSWORD}
    )

    status, body = await call(
        shaped, "POST", "/v1/tokens", root, json={"subject": "payments", "service": True}
    )
    other = await call(
        shaped, "POST", "/v1/tokens", root, json={"subject": "payments-svc", "service": True}
    )
    # An admin's service token for itself stays (docs/security.md: an MFA admin's automation).
    own = await call(shaped, "POST", "/v1/tokens", root, json={"subject": "admin", "service": True})

    assert made[0] == 201, made
    assert status == 409 and "user's name" in body["error"]["message"], body
    assert other[0] == 201, other
    assert own[0] == 201, own


async def test_the_bootstrap_admin_re_created_at_a_start_has_none_of_the_names_tokens(
    shaped: Any, root: str, shape_config: Any, clock: FakeClock, aiohttp_client: Any
) -> None:
    """Red team: `admin` deleted, a plain token minted for the free name, and at the next start
    the bootstrap re-created `admin` straight in the user table: the token spoke for the new
    admin (and could revoke its logins as "the same subject"), with no audit row. The bootstrap
    now creates through the user service: audited, the name's earlier tokens revoked."""
    from tests.conftest import ADMIN_PASSWORD
    from tests.served import ServedTestServer
    from tokensvc.web.app import create_app

    await create_user(shaped, root, "root2", PASSWORD, roles=["admin"])
    second = await login(shaped, "root2", PASSWORD)
    assert (await call(shaped, "DELETE", "/v1/users/admin", second))[0] == 204
    squatter = await minted(shaped, second, subject="admin")

    restarted = await aiohttp_client(ServedTestServer(create_app(shape_config, clock=clock)))
    fresh = await login(restarted, "admin", ADMIN_PASSWORD)
    status, trail = await call(
        restarted, "GET", "/v1/audit", fresh, params={"action": "user_created", "target": "admin"}
    )

    assert (await verify(restarted, squatter["token"]))[0] == 401
    assert (await verify(restarted, fresh))[0] == 200
    assert status == 200, trail
    assert trail["entries"][0]["actor"] == "local:(service start)"
    assert trail["entries"][0]["details"]["tokens_revoked"] is True


async def test_spaces_inside_a_subject_are_kept() -> None:
    """Only the ends are refused; and forward-auth encodes spaces at either end of a subject
    minted before that (header parsers strip them), so a backend reads back the exact name."""
    from tokensvc.web.handlers.forwardauth import _header_value

    assert _header_value("Batch Job") == "Batch Job"
    assert _header_value(" bob  ") == "%20bob%20%20"
    assert _header_value("50% of ü") == "50%25 of %C3%BC"


async def test_a_token_for_another_spelling_of_a_user_is_not_that_users_for_mfa(
    shaped: Any, root: str
) -> None:
    """The reproduction: a token for subject `DAVE` read and enrolled dave's second factor
    (with dave's password), leaving a factor row under `DAVE` no reset of dave's removed."""
    await create_user(shaped, root, "dave", PASSWORD)
    other = await legacy_token(shaped, "DAVE")
    own = await login(shaped, "dave", PASSWORD)

    status_other = await call(shaped, "GET", "/v1/mfa", other)
    enrol_other = await call(shaped, "POST", "/v1/mfa/enroll", other, json={"password": PASSWORD})
    status_own = await call(shaped, "GET", "/v1/mfa", own)

    assert status_other[0] == 403 and enrol_other[0] == 403, (status_other, enrol_other)
    assert status_own[0] == 200, status_own


async def test_the_lockout_status_names_the_identity_its_counters_are_kept_under(
    shaped: Any, root: str
) -> None:
    """`GET /v1/users/ＥＲＩＮ/lockout` shows erin's counters: it says `erin`, not the spelling."""
    status, body = await call(shaped, "GET", f"/v1/users/{quote('ＥＲＩＮ')}/lockout", root)

    assert status == 200 and body["name"] == "erin", body
