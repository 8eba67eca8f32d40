"""Attacks on the audit trail: forging a line of it, hiding an action under an alias, passing as
a local operator, and losing a record to a byte PostgreSQL refuses (red team, helper-28).

Each test runs on the embedded shape and on PostgreSQL + Redis.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.security.attack import call


async def audit(client: Any, admin: str, **query: str) -> list[dict[str, Any]]:
    status, body = await call(client, "GET", "/v1/audit", admin, params=query)
    assert status == 200, body
    return list(body["entries"])


@pytest.mark.parametrize(
    "identity",
    [
        "bob%0A2026-12-07T10%3A40%3A00Z%20local%3Aroot%20%20key_revoked%20%2000000000",
        "%00",
        "bob%1B%5B2J",  # ESC: a terminal escape sequence
        "%EF%B7%BA" * 256,  # U+FDFA: 256 characters, 4,608 once NFKC-normalised
    ],
)
async def test_a_lockout_identity_cannot_forge_or_lose_an_audit_line(
    shaped: Any, root: str, identity: str
) -> None:
    """A newline in the identity printed a forged entry in `tokensvc audit`; a NUL made
    PostgreSQL refuse the best-effort audit row, so the clear went unrecorded. Such identities
    are no identity a login counts under: 400, and nothing happens."""
    before = len(await audit(shaped, root, action="lockout_cleared"))

    status, body = await call(shaped, "DELETE", f"/v1/users/{identity}/lockout", root)
    looked, _ = await call(shaped, "GET", f"/v1/users/{identity}/lockout", root)

    assert (status, looked) == (400, 400), body
    assert len(await audit(shaped, root, action="lockout_cleared")) == before


async def test_a_lockout_cleared_under_an_alias_is_audited_under_the_identity(
    shaped: Any, root: str
) -> None:
    """The lockout counts `ＡＤＭＩＮ` (full-width, padded) as `admin`, so clearing it under that
    spelling unlocked `admin`; the audit recorded the spelling, and a search for `admin` found
    nothing. The audit now names the identity the counters are kept under."""
    for _ in range(6):
        await shaped.post("/v1/login", auth=None, json={"username": "admin", "password": "no"})
    alias = "%E3%80%80%EF%BC%A1%EF%BC%A4%EF%BC%AD%EF%BC%A9%EF%BC%AE"

    assert (await call(shaped, "DELETE", f"/v1/users/{alias}/lockout", root))[0] == 204

    entries = await audit(shaped, root, action="lockout_cleared", target="admin")
    assert len(entries) == 1


async def test_a_lockout_cleared_for_a_256_character_name_is_audited_whole(
    shaped: Any, root: str
) -> None:
    """Red team: a login name may be 256 characters, the audit target 255, so clearing the
    lockout of `x` * 255 + `y` was audited as the other identity `x` * 255, and no search
    could find the right one. The whole identity is in the details."""
    long_name = "x" * 255 + "y"

    assert (await call(shaped, "DELETE", f"/v1/users/{long_name}/lockout", root))[0] == 204

    (entry,) = await audit(shaped, root, action="lockout_cleared")
    assert entry["details"]["identity"] == long_name


@pytest.mark.parametrize(
    "subject",
    ["local:root", "admin\u009b", "admin\u2028x", "ops\u0085"],
)
async def test_no_token_is_minted_for_an_operators_name_or_a_control(
    shaped: Any, root: str, subject: str
) -> None:
    """A non-admin token for subject `local:root` revoked itself, and the audit showed
    `local:root` as the actor, like a break-glass operator; C1 controls and U+2028 passed the
    subject rule and reached terminals raw. Refused at mint (400)."""
    status, body = await call(
        shaped, "POST", "/v1/tokens", root, json={"subject": subject, "ttl": "5m"}
    )

    assert status == 400, body


async def test_a_nul_in_a_description_is_a_clean_400(shaped: Any, root: str) -> None:
    """PostgreSQL refuses NUL in text: a description holding one was a 500 there (and 201 on
    SQLite). It is refused alike on both; tab and newline stay allowed."""
    bad, body = await call(
        shaped, "POST", "/v1/tokens", root, json={"description": "a\u0000b", "ttl": "1m"}
    )
    good, _ = await call(
        shaped, "POST", "/v1/tokens", root, json={"description": "deploy\tbot\nci", "ttl": "1m"}
    )

    assert (bad, good) == (400, 201), body


async def test_the_cli_table_shows_what_cannot_be_printed_escaped() -> None:
    """`tokensvc audit` printed stored text raw: a newline forged a row, a zero-width space
    made `admin\u200b` pass for `admin`. Every unprintable character is shown escaped."""
    from tokensvc.cli.render import audit_table

    table = audit_table(
        [
            {
                "at": "2026-12-07T10:00:00Z",
                "actor": "admin\u200b",
                "action": "lockout_cleared",
                "target": "bob\n2026-12-07T10:40:00Z local:root key_revoked",
            }
        ]
    )

    assert len(table.splitlines()) == 2
    assert "admin\\u200b" in table and "bob\\n2026" in table
