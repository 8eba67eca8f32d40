"""Red-team attacks on the zero-hop surfaces: POST /v1/verdict and GET /v1/revocations/stream.

Who may follow the stream (it names every revoked subject), whether a verdict outlives a
revocation, what the stream does with hostile cursors and subjects, and whether callers who may
not subscribe can take the bounded subscriber slots. Against the real app factory on PostgreSQL
and on SQLite (the `client` fixture), as `tokensvc serve` serves it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config
from tests.security.attack import attenuated
from tests.served import ServedTestServer
from tests.sse import SSEReader
from tokensvc.web.app import create_app

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.test_utils import TestClient

    Client = TestClient[web.Request, web.Application]

STREAM = "/v1/revocations/stream"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def mint(client: Client, admin: str, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/tokens", json=body, headers=bearer(admin))
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def service_token(client: Client, admin: str) -> str:
    """A service's token allowed to follow the stream (a service token: own root key)."""
    minted = await mint(client, admin, subject="svc", operations=["tokens:verdict"], service=True)
    return str(minted["token"])


async def verdict(client: Client, caller: str, token: str) -> tuple[int, Any]:
    resp = await client.post("/v1/verdict", json={"token": token}, headers=bearer(caller))
    return resp.status, await resp.json()


# ---- who may follow the stream ------------------------------------------------------------------


async def test_narrowed_tokens_follow_the_stream_only_within_their_caveats(
    client: Client, admin_token: str
) -> None:
    """A service token attenuated to another audience, to another client network, or to an
    expiry in the past cannot open the stream or ask a verdict; narrowed to exactly
    tokens:verdict it still can."""
    svc = await service_token(client, admin_token)
    narrowed = {
        "audience": attenuated(svc, "aud billing"),
        "cidr": attenuated(svc, "time-before 2000-01-01T00:00:00Z"),
        "ops": attenuated(svc, "allow tokens:verdict"),
    }

    other_audience = await client.get(STREAM + "?until=now", headers=bearer(narrowed["audience"]))
    expired = await client.get(STREAM + "?until=now", headers=bearer(narrowed["cidr"]))
    just_verdicts = await client.get(STREAM + "?until=now", headers=bearer(narrowed["ops"]))
    verdict_by_expired = await verdict(client, narrowed["cidr"], svc)

    assert other_audience.status in (401, 403), await other_audience.text()
    assert expired.status in (401, 403), await expired.text()
    assert just_verdicts.status == 200, await just_verdicts.text()
    assert verdict_by_expired[0] in (401, 403)


async def test_a_non_mfa_admin_cannot_follow_the_stream_when_the_role_requires_mfa(
    aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """With TOKENSVC_MFA_REQUIRED_ROLES=admin, an admin token minted without a second factor
    (before the policy) is refused by the stream, which names every revoked subject."""
    before = make_config(database_url=pg_url, data_dir=data_dir)
    old_app = await aiohttp_client(ServedTestServer(create_app(before, clock=clock)))
    login = await old_app.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    old_admin = str((await login.json())["token"])
    await old_app.close()
    after = before.model_copy(update={"mfa_required_roles": frozenset({"admin"})})
    client = await aiohttp_client(ServedTestServer(create_app(after, clock=clock)))

    stream = await client.get(STREAM + "?until=now", headers=bearer(old_admin))
    narrowed = await client.get(
        STREAM + "?until=now", headers=bearer(attenuated(old_admin, "allow tokens:verdict"))
    )

    assert stream.status == 403, await stream.text()
    assert narrowed.status == 403, await narrowed.text()


# ---- a verdict never outlives a revocation -------------------------------------------------------


async def test_no_verdict_for_a_token_dead_in_any_way(
    client: Client, admin_token: str, clock: FakeClock
) -> None:
    """A verdict is refused (401 valid:false) for a revoked token, a self-burnt one, one whose
    subject's generation was raised, a forged MFA flag, and an unbound discharge."""
    svc = await service_token(client, admin_token)
    revoked = await mint(client, admin_token, subject="alice", ttl=600)
    burnt = await mint(client, admin_token, subject="alice", ttl=600)
    by_generation = await mint(client, admin_token, subject="bob", ttl=600)
    await client.delete(f"/v1/tokens/{revoked['token_id']}", headers=bearer(admin_token))
    await client.post("/v1/tokens/revoke", json={"token": burnt["token"]})
    raised = await client.post("/v1/subjects/bob/revoke-all", headers=bearer(admin_token))
    forged = _flip_mfa(str(revoked["token"]))
    live = await mint(client, admin_token, subject="carol", ttl=600)
    other = await mint(client, admin_token, subject="dave", ttl=600)

    answers = [
        await verdict(client, svc, revoked["token"]),
        await verdict(client, svc, burnt["token"]),
        await verdict(client, svc, by_generation["token"]),
        await verdict(client, svc, forged),
    ]
    unbound = await client.post(
        "/v1/verdict",
        json={"token": live["token"], "discharges": [other["token"]]},
        headers=bearer(svc),
    )

    assert raised.status in (200, 204), await raised.text()
    for status, body in answers:
        assert status == 401 and body["valid"] is False, body
    assert unbound.status in (400, 401), await unbound.text()


def _flip_mfa(token: str) -> str:
    """`token` with the identifier's MFA flag set by its holder (the signature not redone)."""
    from tokensvc.macaroons.identifier import FLAG_MFA
    from tokensvc.macaroons.macaroon import Macaroon
    from tokensvc.macaroons.tokenformat import decode_token, encode_token

    macaroon = decode_token(token, max_bytes=1 << 16, max_caveats=128)
    identifier = bytearray(macaroon.identifier)
    identifier[1] |= FLAG_MFA  # the flags byte, after the version (as test_api_mfa flips it)
    return encode_token(
        Macaroon(bytes(identifier), macaroon.caveats, macaroon.signature, macaroon.location)
    )


# ---- hostile cursors and subjects -------------------------------------------------------------


@pytest.mark.parametrize(
    "cursor",
    [
        "²",  # a Unicode digit that int() refuses
        "١٢",  # Arabic-Indic digits int() accepts
        "１２",  # fullwidth digits
        "9" * 19,
        "9" * 20,
        "-1",
        "0x10",
        "1e3",
        " 1",
        "1\u00a0",
        "",
    ],
)
async def test_hostile_cursors_get_a_stream_or_a_4xx(
    client: Client, admin_token: str, cursor: str
) -> None:
    """Any cursor in ?cursor= is answered with a stream (a reset when it is not one of ours) or
    a 4xx JSON error: never a 500."""
    svc = await service_token(client, admin_token)

    resp = await client.get(f"{STREAM}?until=now&cursor={quote(cursor)}", headers=bearer(svc))
    text = await resp.text()

    assert resp.status == 200 or 400 <= resp.status < 500, (resp.status, text)
    if resp.status == 200:
        assert text.startswith("id: ") and "event: hello" in text
    else:
        assert resp.content_type == "application/json"


async def test_hostile_last_event_id_headers_get_a_stream_or_a_4xx(
    client: Client, admin_token: str
) -> None:
    """Non-ASCII, control-laden and oversized Last-Event-ID headers: a stream or a 4xx, no 500."""
    svc = await service_token(client, admin_token)
    values = ["²", "1\t2", "9" * 64, "9" * 65, "١", "\u00b9\u00b2"]

    statuses = []
    for value in values:
        raw = {"Authorization": f"Bearer {svc}", "Last-Event-ID": value}
        resp = await client.get(STREAM + "?until=now", headers=raw)
        statuses.append(resp.status)
        await resp.read()

    assert all(s == 200 or 400 <= s < 500 for s in statuses), statuses


async def test_subject_names_cannot_inject_stream_events(client: Client, admin_token: str) -> None:
    """Revoke-all for subjects carrying line breaks, `event:` and `id:` text sends (at most) one
    generation event each whose data is the subject as given: no forged event, id or field."""
    svc = await service_token(client, admin_token)
    start = await client.get(STREAM + "?until=now", headers=bearer(svc))
    first_text = await start.text()
    cursor = first_text.split("\n", 1)[0].removeprefix("id: ")
    subjects = [
        "x\nevent: token\ndata: {}",
        "x\rid: 999999",
        "x\u2028event: key",
        "x\u0085y",
        'x"}\n\nevent: reset',
    ]

    accepted = []
    for subject in subjects:
        resp = await client.post(
            f"/v1/subjects/{quote(subject, safe='')}/revoke-all", headers=bearer(admin_token)
        )
        assert resp.status < 500, await resp.text()
        if resp.status in (200, 204):
            accepted.append(subject)
    after = await client.get(
        STREAM + "?until=now", headers={**bearer(svc), "Last-Event-ID": cursor}
    )
    events = []
    reader = SSEReader(after)
    while True:
        try:
            events.append(await reader.next_event(within=2.0))
        except EOFError:
            break

    kinds = [e.kind for e in events]
    assert kinds == ["hello"] + ["generation"] * len(accepted), kinds
    assert [e.data["subject"] for e in events[1:]] == accepted


# ---- subscriber slots ---------------------------------------------------------------------------


async def test_callers_who_may_not_subscribe_take_no_slot(
    aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """With one slot held by a service, anonymous callers, users' own tokens and garbage tokens
    get 401/403 (not 503: they never reach the slots); the holder's reconnect is not starved."""
    config = make_config(
        database_url=pg_url, data_dir=data_dir, revocation_stream_max_subscribers=1
    )
    client = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    login = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    admin = str((await login.json())["token"])
    svc = await service_token(client, admin)
    user = (await mint(client, admin, subject="mallory", operations=["tokens:verdict"]))["token"]
    held = await client.get(STREAM, headers=bearer(svc))
    assert held.status == 200
    await SSEReader(held).next()

    statuses = await asyncio.gather(
        *(client.get(STREAM) for _ in range(10)),
        *(client.get(STREAM, headers=bearer(user)) for _ in range(10)),
        *(client.get(STREAM, headers=bearer("tsv_garbage")) for _ in range(10)),
    )
    second = await client.get(STREAM, headers=bearer(svc))
    held.close()

    assert {r.status for r in statuses} <= {401, 403}, [r.status for r in statuses]
    assert second.status == 503 and "Retry-After" in second.headers


# ---- bad input --------------------------------------------------------------------------------


async def test_hostile_verdict_bodies_are_clean_4xx(client: Client, admin_token: str) -> None:
    """Mistyped, oversized and garbage verdict requests get a 4xx JSON error, never a 500."""
    svc = await service_token(client, admin_token)
    live = (await mint(client, admin_token, subject="alice", ttl=600))["token"]
    bodies: list[Any] = [
        {"token": live, "discharges": "not-a-list"},
        {"token": live, "discharges": [1, 2]},
        {"token": live, "discharges": [live] * 1025},
        {"token": live, "discharges": ["x" * 70_000]},
        {"token": "tsv_" + "A" * 300_000},
        {"token": "\x00\xff"},
        {"token": live[:-1] + ("A" if live[-1] != "A" else "B")},
        {"token": ["a"]},
        {"token": live, "context": {"operation": "read"}},
        ["token", live],
        "a string",
        None,
    ]

    answers = []
    for body in bodies:
        resp = await client.post("/v1/verdict", json=body, headers=bearer(svc))
        answers.append((resp.status, resp.content_type))
    raw = await client.post(
        "/v1/verdict",
        data=b'{"token": ',
        headers={**bearer(svc), "Content-Type": "application/json"},
    )

    for (status, content_type), body in zip(answers, bodies, strict=True):
        assert 400 <= status < 500, (str(body)[:80], status)
        assert content_type == "application/json", str(body)[:80]
    assert raw.status == 400


async def test_require_mfa_is_not_skipped_by_a_cached_allow(
    client: Client, admin_token: str
) -> None:
    """A token allowed a moment ago without require_mfa (the verify path caches verdicts) is
    still refused when the next request requires MFA; forward-auth likewise."""
    weak = (await mint(client, admin_token, subject="alice", ttl=600))["token"]

    first = await client.post("/v1/verify", json={"token": weak, "context": {}})
    second = await client.post("/v1/verify", json={"token": weak, "context": {"require_mfa": True}})
    auth_first = await client.get("/v1/auth", headers=bearer(weak))
    auth_second = await client.get(
        "/v1/auth", headers={**bearer(weak), "X-Auth-Require-MFA": "true"}
    )

    assert (first.status, second.status) == (200, 403)
    assert (auth_first.status, auth_second.status) == (200, 403)
