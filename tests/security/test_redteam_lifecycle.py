"""Red team (helper-61): tokens over time — a stolen root key's forgeries, and a key revoked
after it expired. Each test is the attack; a pass means it failed."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from typing import Any

from caveats import Expiry, Generation, Subject, encode
from tests.conftest import FakeClock
from tests.security.attack import call, minted, token_id_of, verify


async def _forged(shaped: Any, clock: FakeClock, *, token_id: bytes, generation: int) -> str:
    """An admin token for `admin` signed with the current root key, as its thief would sign
    one: any id, a ten-year expiry, any generation; no registry row is written."""
    from tokensvc.macaroons import chain
    from tokensvc.macaroons.identifier import TokenIdentifier
    from tokensvc.macaroons.macaroon import Caveat
    from tokensvc.macaroons.tokenformat import encode_token
    from tokensvc.web import appkeys

    key = await shaped.app[appkeys.KEYRING].current()
    identifier = TokenIdentifier(key_id=key.id, token_id=token_id, admin=True, mfa=False)
    expiry = int((clock() + timedelta(days=3650)).timestamp())
    caveats = [encode(Subject("admin")), encode(Expiry(expiry)), encode(Generation(generation))]
    signed = chain.sign(
        derived_key=key.derived,
        identifier=identifier.encode(),
        caveats=[Caveat(p) for p in caveats],
        location=b"tokensvc",
    )
    return encode_token(signed)


async def test_a_token_signed_with_a_stolen_key_cannot_mint_or_write(
    shaped: Any, root: str, clock: FakeClock
) -> None:
    """With a stolen root key the thief signs an admin token with no registry row and a
    generation of a million. It verifies (the key signs it) until the key is revoked, but it
    minted children — a service token on a key of its own, at the forged generation — that
    survived the key's revocation, revoke-all and every password change. Now it may not write."""
    forged = await _forged(shaped, clock, token_id=secrets.token_bytes(16), generation=1_000_000)
    assert (await verify(shaped, forged))[0] == 200  # what a stolen key buys, until revoked

    status, body = await call(
        shaped, "POST", "/v1/tokens", forged,
        json={"subject": "admin", "admin": True, "service": True, "ttl": "55m"},
    )  # fmt: skip
    assert (status, body["error"]["message"]) == (401, "token not issued by this service")
    status, _ = await call(
        shaped, "POST", "/v1/users", forged,
        json={"name": "mallory", "password": "a long enough password 1", "roles": ["admin"]},
    )  # fmt: skip
    assert status in (401, 403)


async def test_a_forged_generation_on_a_real_tokens_id_cannot_write(
    shaped: Any, root: str, clock: FakeClock
) -> None:
    """The thief reuses the id of a genuine token (one with a registry row) with a generation
    the subject never reached, which its children would be born at, past every revoke-all."""
    real_id = bytes.fromhex(await token_id_of(shaped, root))
    forged = await _forged(shaped, clock, token_id=real_id, generation=1_000_000)

    status, body = await call(
        shaped, "POST", "/v1/tokens", forged, json={"subject": "admin", "ttl": "10m"}
    )
    assert (status, body["error"]["message"]) == (401, "token not issued by this service")
    assert (await minted(shaped, root, subject="admin", ttl="10m"))["token"]  # the real one can


async def test_an_expired_root_key_can_still_be_revoked_with_its_lineage(
    shaped: Any, root: str, clock: FakeClock
) -> None:
    """A key found compromised after its 24 h: its revocation was refused (404, "no such live
    root key"), so a 30-day service token minted with a token it signed kept working. Now the
    key is revoked, and the cascade reaches that token."""
    from tokensvc.macaroons.identifier import decode_identifier
    from tokensvc.macaroons.tokenformat import decode_token

    key_id = decode_identifier(
        decode_token(root, max_bytes=16384, max_caveats=64).identifier
    ).key_id
    child = await minted(shaped, root, subject="svc", service=True, ttl="30d", operations=["read"])
    clock.advance(hours=49)  # the key (24 h, made ahead) has expired; the child lives
    from tests.conftest import ADMIN_PASSWORD
    from tests.security.attack import login

    operator = await login(shaped, "admin", ADMIN_PASSWORD)
    assert (await verify(shaped, child["token"], operation="read"))[0] == 200

    status, body = await call(shaped, "POST", f"/v1/keys/{key_id}/revoke", operator)

    assert status in (200, 204), body
    assert (await verify(shaped, child["token"], operation="read"))[0] == 401
    status, _ = await call(shaped, "POST", f"/v1/keys/{'0' * 16}/revoke", operator)
    assert status == 404  # a key nothing on record was signed with is still unknown
    # Red team (helper-62): a key revoked already answered 204 again, each time with another
    # audit row; it is gone, as before.
    status, _ = await call(shaped, "POST", f"/v1/keys/{key_id}/revoke", operator)
    assert status == 404
    _, trail = await call(shaped, "GET", "/v1/audit?action=key_revoked", operator)
    assert [entry["target"] for entry in trail["entries"]] == [key_id]


async def test_revoking_one_key_at_once_from_many_requests_is_audited_once(
    shaped: Any, root: str
) -> None:
    """Red team (helper-64): four revocations of one key sent at once (over two replicas, or
    to one) each passed the "revoked already?" read before any had committed, and each wrote
    a `key_revoked` audit row and security event. The one that records the revocation writes
    them; the rest change nothing."""
    status, key = await call(shaped, "POST", "/v1/keys/rotate", root)
    assert status in (200, 201), key

    answers = await asyncio.gather(
        *(call(shaped, "POST", f"/v1/keys/{key['id']}/revoke", root) for _ in range(4))
    )

    assert {status for status, _ in answers} <= {204, 404}, answers
    _, trail = await call(shaped, "GET", "/v1/audit?action=key_revoked", root)
    assert [entry["target"] for entry in trail["entries"]] == [key["id"]]
