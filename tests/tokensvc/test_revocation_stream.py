"""GET /v1/revocations/stream: every kind of revocation becomes an event, resumable by id.

Against the real app factory on PostgreSQL and on SQLite (replicas: tests/tokensvc/
test_revocation_stream_replicas.py).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import ADMIN_PASSWORD, FakeClock, basic_auth, make_config
from tests.served import ServedTestServer
from tests.sse import SSEReader
from tokensvc.tokens.events import EventLog
from tokensvc.web import appkeys
from tokensvc.web.app import create_app

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp import web
    from aiohttp.test_utils import TestClient

    from tokensvc.operations.config import Config

    Client = TestClient[web.Request, web.Application]

STREAM = "/v1/revocations/stream"
SUBSCRIBERS_GAUGE = "tokensvc_revocation_stream_subscribers"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def mint(client: Client, admin_token: str, **body: Any) -> dict[str, Any]:
    resp = await client.post("/v1/tokens", json=body, headers=bearer(admin_token))
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


@pytest.fixture
async def caller(client: Client, admin_token: str) -> str:
    """A service's token that may follow the stream (a service token: own root key)."""
    minted = await mint(
        client, admin_token, subject="svc", operations=["tokens:verdict"], service=True
    )
    return str(minted["token"])


async def subscribe(
    client: Client, caller: str, *, last_event_id: str | None = None, query: str = ""
) -> SSEReader:
    headers = bearer(caller)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    resp = await client.get(STREAM + query, headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return SSEReader(resp)


async def revoke_all(client: Client, admin_token: str, subject: str) -> None:
    """POST /v1/subjects/{subject}/revoke-all as the admin (the subject has tokens)."""
    resp = await client.post(f"/v1/subjects/{subject}/revoke-all", headers=bearer(admin_token))
    assert resp.status == 200, await resp.text()


async def an_event(client: Client, admin_token: str) -> None:
    """Something for the stream to send (bob's tokens revoked), so it runs its check again."""
    await mint(client, admin_token, subject="bob")
    await revoke_all(client, admin_token, "bob")


async def revoke(client: Client, admin_token: str, token_id: str) -> None:
    resp = await client.delete(f"/v1/tokens/{token_id}", headers=bearer(admin_token))
    assert resp.status == 204, await resp.text()


async def test_hello_then_one_event_per_kind_of_revocation(
    client: Client, admin_token: str, caller: str
) -> None:
    """Revoking a token, burning one, revoke-all, disabling a user and revoking a root key each
    send their event, with increasing ids, after a hello naming the cursor."""
    by_id = await mint(client, admin_token, subject="alice")
    burnt = await mint(client, admin_token, subject="alice")
    await mint(client, admin_token, subject="bob")  # revoke-all takes subjects tokens exist for
    resp = await client.post(
        "/v1/users",
        json={"name": "dave", "password": "a long enough password 1"},
        headers=bearer(admin_token),
    )
    assert resp.status == 201, await resp.text()
    rotated = await client.post("/v1/keys/rotate", headers=bearer(admin_token))
    assert rotated.status in (200, 201), await rotated.text()
    new_key = (await rotated.json())["id"]
    stream = await subscribe(client, caller)
    hello = await stream.next_event()

    await revoke(client, admin_token, by_id["token_id"])
    token_event = await stream.next_event()
    resp = await client.post("/v1/tokens/revoke", json={"token": burnt["token"]})
    assert resp.status == 204
    burn_event = await stream.next_event()
    resp = await client.post("/v1/subjects/bob/revoke-all", headers=bearer(admin_token))
    assert resp.status == 200
    all_event = await stream.next_event()
    resp = await client.patch(
        "/v1/users/dave", json={"disabled": True}, headers=bearer(admin_token)
    )
    assert resp.status == 200, await resp.text()
    disabled_event = await stream.next_event()
    resp = await client.post(f"/v1/keys/{new_key}/revoke", headers=bearer(admin_token))
    assert resp.status in (200, 204), await resp.text()
    key_event = await stream.next_event()

    assert hello.kind == "hello"
    assert hello.data["cursor"].isdigit()
    assert hello.data["heartbeat"] == 5
    assert (token_event.kind, token_event.data["token_id"]) == ("token", by_id["token_id"])
    assert token_event.data["expires_at"] > datetime.now(UTC).timestamp()
    assert (burn_event.kind, burn_event.data["token_id"]) == ("token", burnt["token_id"])
    assert (all_event.kind, all_event.data) == ("generation", {"subject": "bob", "generation": 1})
    assert (disabled_event.kind, disabled_event.data) == (
        "generation",
        {"subject": "dave", "generation": 1},
    )
    assert (key_event.kind, key_event.data) == ("key", {"key_id": new_key})
    ids = [int(e.id or 0) for e in (token_event, burn_event, all_event, disabled_event, key_event)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert ids[0] > int(hello.data["cursor"])


async def test_revoking_twice_sends_one_event(
    client: Client, admin_token: str, caller: str
) -> None:
    """A revocation already made changes nothing, so it sends nothing."""
    first = await mint(client, admin_token, subject="alice")
    second = await mint(client, admin_token, subject="alice")
    stream = await subscribe(client, caller)
    await stream.next_event()

    await revoke(client, admin_token, first["token_id"])
    await revoke(client, admin_token, first["token_id"])
    await revoke(client, admin_token, second["token_id"])

    assert (await stream.next_event()).data["token_id"] == first["token_id"]
    assert (await stream.next_event()).data["token_id"] == second["token_id"]


async def test_resume_after_reconnect_misses_nothing(
    client: Client, admin_token: str, caller: str
) -> None:
    """Reconnecting with Last-Event-ID (or ?cursor=) replays exactly what came after it."""
    tokens = [await mint(client, admin_token, subject="alice") for _ in range(4)]
    stream = await subscribe(client, caller)
    hello = await stream.next_event()
    stream.response.close()

    for minted in tokens[:3]:
        await revoke(client, admin_token, minted["token_id"])
    resumed = await subscribe(client, caller, last_event_id=hello.id)
    await resumed.next_event()  # hello
    replayed = [await resumed.next_event() for _ in range(3)]
    by_query = await subscribe(client, caller, query=f"?cursor={replayed[0].id}")
    await by_query.next_event()  # hello
    await revoke(client, admin_token, tokens[3]["token_id"])
    rest = [await by_query.next_event() for _ in range(3)]

    assert [e.data["token_id"] for e in replayed] == [t["token_id"] for t in tokens[:3]]
    assert [e.data["token_id"] for e in rest] == [t["token_id"] for t in tokens[1:4]]


@pytest.mark.parametrize("cursor", ["not-a-cursor", "99999999999", "-3"])
async def test_unknown_cursor_is_told_to_reset(caller: str, client: Client, cursor: str) -> None:
    """A cursor this log never had gets a reset right after hello: the client drops its cache."""
    stream = await subscribe(client, caller, last_event_id=cursor)

    hello = await stream.next_event()
    reset = await stream.next_event()

    assert hello.kind == "hello"
    assert reset.kind == "reset"
    assert "unknown cursor" in reset.data["reason"]


async def test_pruned_cursor_is_told_to_reset(
    aiohttp_client: Any,
    client: Client,
    admin_token: str,
    caller: str,
    app_config: Config,
    clock: FakeClock,
) -> None:
    """A cursor whose successors were pruned from the log gets a reset, not a silent gap, from a
    replica that never held them in memory; the one that still does replays them."""
    tokens = [await mint(client, admin_token, subject="alice") for _ in range(3)]
    stream = await subscribe(client, caller)
    hello = await stream.next_event()
    stream.response.close()
    for minted in tokens:
        await revoke(client, admin_token, minted["token_id"])
    app = client.server.app
    assert app is not None
    pruned = await EventLog(app[appkeys.ENGINE]).prune(datetime.now(UTC) + timedelta(days=1))
    replica = await aiohttp_client(create_app(app_config, clock=clock))

    from_replica = await subscribe(replica, caller, last_event_id=hello.id)
    replica_events = [await from_replica.next_event(), await from_replica.next_event()]
    from_memory = await subscribe(client, caller, last_event_id=hello.id)
    memory_events = [await from_memory.next_event() for _ in range(4)]

    assert pruned == 2  # the newest event stays: the floor of the id sequence
    assert [e.kind for e in replica_events] == ["hello", "reset"]
    assert "older than the retained" in replica_events[1].data["reason"]
    assert [e.kind for e in memory_events] == ["hello", "token", "token", "token"]


async def test_stream_needs_a_service_or_admin_token_allowing_tokens_verdict(
    client: Client, admin_token: str
) -> None:
    """No token is a 401; a service token without tokens:verdict, and a user's ordinary token
    that allows it (it could have narrowed itself to it), are 403: the stream names other
    subjects. An admin's own token may follow it."""
    reader = await mint(client, admin_token, subject="svc", operations=["read"], service=True)
    users = await mint(client, admin_token, subject="mallory", operations=["tokens:verdict"])

    anonymous = await client.get(STREAM)
    forbidden = await client.get(STREAM, headers=bearer(reader["token"]))
    ordinary = await client.get(STREAM, headers=bearer(users["token"]))
    admin = await client.get(STREAM + "?until=now", headers=bearer(admin_token))

    assert anonymous.status == 401
    assert "error" in await anonymous.json()
    for resp in (forbidden, ordinary):
        assert resp.status == 403
        assert "error" in await resp.json()
    assert admin.status == 200
    assert "event: hello" in await admin.text()


async def test_verdict_cursor_covers_earlier_revocations(
    client: Client, admin_token: str, caller: str
) -> None:
    """A verdict's cursor is at or past every revocation made before it was asked for."""
    stream = await subscribe(client, caller)
    await stream.next_event()
    gone = await mint(client, admin_token, subject="alice")
    live = await mint(client, admin_token, subject="alice")
    await revoke(client, admin_token, gone["token_id"])
    event = await stream.next_event()

    resp = await client.post("/v1/verdict", json={"token": live["token"]}, headers=bearer(caller))

    assert resp.status == 200
    assert int((await resp.json())["cursor"]) >= int(event.id or 0)


async def _app_client(
    aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock, **overrides: Any
) -> tuple[Client, str, str]:
    config = make_config(database_url=pg_url, data_dir=data_dir, **overrides)
    client = await aiohttp_client(ServedTestServer(create_app(config, clock=clock)))
    login = await client.post("/v1/login", headers=basic_auth("admin", ADMIN_PASSWORD))
    admin = str((await login.json())["token"])
    svc = (await mint(client, admin, subject="svc", operations=["tokens:verdict"], service=True))[
        "token"
    ]
    return client, admin, svc


async def test_heartbeat_pings_an_idle_stream(
    aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """With nothing revoked, a `: ping` comes every heartbeat, so a client can tell it is alive."""
    client, _admin, svc = await _app_client(
        aiohttp_client, pg_url, data_dir, clock, revocation_stream_heartbeat=0.2
    )
    stream = await subscribe(client, svc)
    hello = await stream.next()

    pings = [await stream.next(within=1.0) for _ in range(2)]

    assert hello.data["heartbeat"] == 0.2
    assert [p.kind for p in pings] == ["ping", "ping"]


async def test_subscribers_are_bounded(
    aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """Past TOKENSVC_REVOCATION_STREAM_MAX_SUBSCRIBERS a subscriber gets 503 + Retry-After;
    a slot freed by a leaving client is taken again."""
    client, _admin, svc = await _app_client(
        aiohttp_client, pg_url, data_dir, clock, revocation_stream_max_subscribers=1
    )
    first = await subscribe(client, svc)
    await first.next()

    refused = await client.get(STREAM, headers=bearer(svc))
    first.response.close()
    again = None
    for _ in range(100):
        again = await client.get(STREAM, headers=bearer(svc))
        if again.status == 200:
            break
        again.release()
        await asyncio.sleep(0.02)

    assert refused.status == 503
    assert "Retry-After" in refused.headers
    assert "error" in await refused.json()
    assert again is not None
    assert again.status == 200


async def test_one_subject_cannot_take_every_slot(
    aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """Red team (helper-46): every slot was open to one caller, so one service (or one leaked
    service token) could hold them all and leave every other service's clients on /v1/verify.
    Past TOKENSVC_REVOCATION_STREAM_MAX_PER_SUBJECT a subject gets 503, catch-up polls too,
    while another subject still gets a stream; a slot freed is the subject's again."""
    client, admin, svc = await _app_client(
        aiohttp_client,
        pg_url,
        data_dir,
        clock,
        revocation_stream_max_subscribers=3,
        revocation_stream_max_per_subject=1,
    )
    other = await mint(client, admin, subject="svc-2", operations=["tokens:verdict"], service=True)
    first = await subscribe(client, svc)
    await first.next()

    again = await client.get(STREAM, headers=bearer(svc))
    poll = await client.get(STREAM + "?until=now", headers=bearer(svc))
    second_service = await subscribe(client, other["token"])
    hello = await second_service.next()

    assert again.status == 503 and "Retry-After" in again.headers
    assert poll.status == 503
    assert hello.kind == "hello"
    first.response.close()
    for _ in range(100):
        freed = await client.get(STREAM + "?until=now", headers=bearer(svc))
        await freed.read()
        if freed.status == 200:
            break
        await asyncio.sleep(0.02)
    assert freed.status == 200


async def test_until_now_catches_up_and_ends(client: Client, admin_token: str, caller: str) -> None:
    """?until=now sends hello and every event after the cursor up to the newest, then ends."""
    tokens = [await mint(client, admin_token, subject="alice") for _ in range(2)]
    stream = await subscribe(client, caller)
    hello = await stream.next_event()
    stream.response.close()
    for minted in tokens:
        await revoke(client, admin_token, minted["token_id"])

    resp = await client.get(STREAM + f"?until=now&cursor={hello.id}", headers=bearer(caller))
    text = await asyncio.wait_for(resp.text(), 5)
    bad = await client.get(STREAM + "?until=later", headers=bearer(caller))
    long = await client.get(STREAM, headers={**bearer(caller), "Last-Event-ID": "1" * 65})
    # The query's cursor is checked too when a Last-Event-ID wins (schemathesis found it unread).
    long_query = await client.get(
        STREAM + "?until=now&cursor=" + "1" * 65, headers={**bearer(caller), "Last-Event-ID": "1"}
    )

    assert resp.status == 200
    assert text.count("event: token") == 2
    assert text.startswith(f"id: {hello.id}\nevent: hello\n")
    assert bad.status == 400
    assert long.status == 400
    assert long_query.status == 400


async def test_a_replica_started_later_replays_older_events_from_the_database(
    aiohttp_client: Any,
    client: Client,
    admin_token: str,
    caller: str,
    app_config: Config,
    clock: FakeClock,
) -> None:
    """A cursor older than what a replica holds in memory is resumed from the event log."""
    tokens = [await mint(client, admin_token, subject="alice") for _ in range(3)]
    stream = await subscribe(client, caller)
    hello = await stream.next_event()
    stream.response.close()
    for minted in tokens:
        await revoke(client, admin_token, minted["token_id"])
    replica = await aiohttp_client(create_app(app_config, clock=clock))

    resumed = await subscribe(replica, caller, last_event_id=hello.id)
    events = [await resumed.next_event() for _ in range(4)]

    assert [e.kind for e in events] == ["hello", "token", "token", "token"]
    assert [e.data["token_id"] for e in events[1:]] == [t["token_id"] for t in tokens]


async def test_metrics_count_subscribers_and_events(
    client: Client, admin_token: str, caller: str
) -> None:
    """/metrics shows the open streams and counts the events applied."""
    minted = await mint(client, admin_token, subject="alice")
    stream = await subscribe(client, caller)
    await stream.next_event()
    await revoke(client, admin_token, minted["token_id"])
    await stream.next_event()

    text = await (await client.get("/metrics")).text()

    lines = {line.split(" ")[0]: line.split(" ")[1] for line in text.splitlines() if " " in line}
    assert float(lines["tokensvc_revocation_stream_subscribers"]) >= 1
    assert float(lines["tokensvc_revocation_events_total"]) >= 1


# ---- red team (helper-59): a stream lived on after its token --------------------------------


async def test_a_stream_ends_when_its_own_token_is_revoked(
    client: Client, admin_token: str
) -> None:
    """Events reach a stream only while its token would still be let in: the revocation of the
    token itself ends it, and nothing revoked later is sent (it named every subject revoked
    since, to a token the service no longer honoured)."""
    minted = await mint(
        client, admin_token, subject="svc", operations=["tokens:verdict"], service=True
    )
    other = await mint(client, admin_token, subject="alice")
    await mint(client, admin_token, subject="bob")
    stream = await subscribe(client, str(minted["token"]))
    assert (await stream.next_event()).kind == "hello"
    await revoke(client, admin_token, other["token_id"])
    assert (await stream.next_event()).data["token_id"] == other["token_id"]

    await revoke(client, admin_token, minted["token_id"])
    await revoke_all(client, admin_token, "bob")

    with pytest.raises(EOFError):
        await stream.next(within=5.0)


async def test_a_stream_ends_once_its_token_has_expired(
    aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """A copy its holder narrowed offline to a minute streams for that minute: after it, the
    next heartbeat ends the stream instead of pinging, and no event is sent."""
    from tests.security.attack import attenuated

    client, admin, svc = await _app_client(
        aiohttp_client, pg_url, data_dir, clock, revocation_stream_heartbeat=0.2
    )
    until = datetime.fromtimestamp(clock().timestamp() + 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    stream = await subscribe(client, attenuated(svc, f"time-before {until}"))
    assert (await stream.next()).kind == "hello"
    assert (await stream.next(within=2.0)).kind == "ping"

    clock.advance(seconds=61)
    await an_event(client, admin)

    async def kinds_until_the_end() -> list[str]:
        seen = []
        try:
            while True:
                seen.append((await stream.next(within=2.0)).kind)
        except EOFError:
            return seen

    assert set(await kinds_until_the_end()) <= {"ping"}  # at most the ping already on its way


async def test_an_admins_stream_ends_when_the_admin_is_disabled(
    client: Client, admin_token: str
) -> None:
    """An admin's own token may follow the stream while the admin is one: disabling the user
    raises their generation, and the batch saying so is the stream's last check."""
    resp = await client.post(
        "/v1/users",
        json={"name": "root2", "password": "a long enough password 1", "roles": ["admin"]},
        headers=bearer(admin_token),
    )
    assert resp.status == 201, await resp.text()
    login = await client.post("/v1/login", headers=basic_auth("root2", "a long enough password 1"))
    assert login.status == 200, await login.text()
    stream = await subscribe(client, str((await login.json())["token"]))
    assert (await stream.next_event()).kind == "hello"

    resp = await client.patch(
        "/v1/users/root2", json={"disabled": True}, headers=bearer(admin_token)
    )
    assert resp.status == 200, await resp.text()
    await an_event(client, admin_token)

    with pytest.raises(EOFError):
        await stream.next(within=5.0)


async def test_a_departed_subscribers_slot_is_free_before_its_next_heartbeat(
    tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    """Red team (helper-59): a stream whose client left held its slot until its next write, a
    heartbeat away, so a service's fleet reconnecting after a network blip got 503s for that
    long. At the limit, slots whose clients are gone are not counted. (Against `tokensvc
    serve` itself: aiohttp's test server cancels a handler whose client leaves, which hides
    this; the production server does not.)"""
    import aiohttp

    from tests.client.served_tokensvc import serve_tokensvc

    async with (
        serve_tokensvc(
            tmp_path,
            pg_url=pg_url,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
            TOKENSVC_REVOCATION_STREAM_HEARTBEAT="60",
            TOKENSVC_REVOCATION_STREAM_MAX_PER_SUBJECT="2",
        ) as served,
        aiohttp.ClientSession() as session,
    ):
        url, auth = served.base + STREAM, bearer(served.service_token)
        streams = [await session.get(url, headers=auth) for _ in range(2)]
        for stream in streams:
            assert stream.status == 200
            await SSEReader(stream).next()
        async with session.get(url, headers=auth) as refused:
            assert refused.status == 503

        for stream in streams:
            stream.close()
        statuses = []
        for _ in range(60):  # each stream looks every second whether its client is there
            async with session.get(url, headers=auth) as again:
                statuses.append(again.status)
            if statuses[-1] == 200:
                break
            await asyncio.sleep(0.05)
        assert statuses[-1] == 200, statuses  # well before the 60 s heartbeat

        # Red team (helper-60): connecting and leaving in a loop must not pile up streams past
        # the limits (a first fix stopped counting departed streams, and 60 cycles left 60).
        peak = 0.0
        for _ in range(20):
            async with session.get(url, headers=auth) as cycled:
                if cycled.status == 200:
                    await SSEReader(cycled).next()
            async with session.get(served.base + "/metrics") as metrics:
                text = await metrics.text()
            (line,) = [row for row in text.splitlines() if row.startswith(SUBSCRIBERS_GAUGE + " ")]
            peak = max(peak, float(line.split()[1]))
        assert peak <= 2


async def test_a_subscriber_that_stops_reading_loses_its_slot(
    aiohttp_client: Any, pg_url: str, data_dir: Path, clock: FakeClock
) -> None:
    """Red team (helper-59): a client that subscribes and never reads blocks the stream's
    writes once the buffers fill, and held its slot for as long as it kept the connection
    open. A write that takes more than three heartbeats ends the stream and frees the slot."""
    import socket

    from tokensvc.tokens import events

    client, _admin, svc = await _app_client(
        aiohttp_client,
        pg_url,
        data_dir,
        clock,
        revocation_stream_heartbeat=0.3,
        revocation_stream_max_per_subject=1,
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast
    sock.connect((client.host, client.port))
    sock.sendall(
        f"GET {STREAM} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {svc}\r\n\r\n".encode()
    )
    try:
        sock.settimeout(5)
        seen = b""
        while b"event: hello" not in seen:  # subscribed; from here on it reads nothing
            seen += await asyncio.to_thread(sock.recv, 4096)
        busy = await client.get(STREAM, headers=bearer(svc))  # the one slot is taken
        busy.release()
        assert busy.status == 503
        engine = client.app[appkeys.ENGINE]
        # ~16 MB the reader will never take (more than the kernel buffers on loopback hold:
        # their autotuning takes a few MB without a pause); large events keep the rows few.
        padding = "0" * 16_000
        async with engine.begin() as conn:
            for n in range(1000):
                await events.append(
                    conn, "token", {"token_id": f"{n:032x}{padding}", "expires_at": 1}, at=clock()
                )

        statuses = []
        for _ in range(150):  # the writes stall, then time out after 0.9 s
            again = await client.get(STREAM + "?until=now", headers=bearer(svc))
            statuses.append(again.status)
            await again.read()
            if again.status == 200:
                break
            await asyncio.sleep(0.1)
        assert statuses[-1] == 200, statuses
    finally:
        sock.close()
