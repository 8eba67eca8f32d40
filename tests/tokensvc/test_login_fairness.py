"""Fair password checks under a credential-stuffing storm: a real user at a known address gets in.

The login service, built from the real app (SQLite, the in-process lockout store, and on Redis),
in front of a hasher with one argon2 slot and a queue of four. The test holds the slot itself, so
who is queued, displaced and refused is deterministic; then it lets go and watches the order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FakeClock, make_config
from tokensvc.accounts.admission import CheckPriority
from tokensvc.accounts.passwords import CHEAP_FOR_TESTS, PasswordHasher
from tokensvc.errors import Unauthenticated, Unavailable
from tokensvc.services.login import LoginRequest, LoginService
from tokensvc.web import appkeys
from tokensvc.web.app import create_app

ALICE_PASSWORD = "her long lantern passphrase"
HOME = "192.0.2.7"
QUEUE = 4


@dataclass
class Rig:
    service: LoginService
    hasher: PasswordHasher
    app: Any


@pytest.fixture(params=["memory", "redis"])
async def rig(
    request: pytest.FixtureRequest,
    aiohttp_client: Any,
    sqlite_url: str,
    data_dir: Path,
    clock: FakeClock,
    redis_url: str,
    redis_prefix: str,
) -> AsyncIterator[Rig]:
    """Alice, who logged in once from HOME; a login service whose hasher has one slot."""
    overrides: dict[str, Any] = {}
    if request.param == "redis":
        overrides = {"redis_url": redis_url, "redis_prefix": redis_prefix}
    client = await aiohttp_client(
        create_app(
            make_config(database_url=sqlite_url, data_dir=data_dir, **overrides), clock=clock
        )
    )
    app = client.app
    hasher = PasswordHasher(
        profile=CHEAP_FOR_TESTS, max_concurrency=1, max_waiting=QUEUE, queue_timeout=5
    )
    service = login_service(app, hasher, clock)
    await app[appkeys.USERS].create(
        "alice", password_hash=await hasher.hash(ALICE_PASSWORD, username="alice")
    )
    await service.login(LoginRequest("alice", ALICE_PASSWORD, HOME))
    yield Rig(service, hasher, app)
    hasher.close()


def login_service(app: Any, hasher: PasswordHasher, clock: FakeClock, **options: Any) -> Any:
    return LoginService(
        users=app[appkeys.USERS],
        generations=app[appkeys.GENERATIONS],
        hasher=hasher,
        lockout=app[appkeys.LOCKOUT],
        minter=app[appkeys.MINTER],
        second_factors=app[appkeys.FACTORS],
        otp_lockout=app[appkeys.OTP_LOCKOUT],
        clock=clock,
        default_ttl=timedelta(hours=1),
        max_ttl=timedelta(hours=2),
        **options,
    )


async def storm(rig: Rig, count: int) -> list[asyncio.Task[Any]]:
    """`count` stuffing attempts (unknown names, each from its own address) with the slot held;
    returns once the queue is full and the rest have been refused."""
    tasks = [
        asyncio.create_task(
            rig.service.login(LoginRequest(f"stuff-{i}", f"guess number {i}", f"203.0.113.{i}"))
        )
        for i in range(count)
    ]
    for _ in range(1000):
        if rig.hasher.admission.waiting == QUEUE and sum(t.done() for t in tasks) == count - QUEUE:
            return tasks
        await asyncio.sleep(0.001)
    raise AssertionError("the storm never filled the queue")


async def test_a_trusted_login_gets_a_slot_while_untrusted_attempts_saturate_the_queue(
    rig: Rig,
) -> None:
    """With the one slot busy and the queue full of stuffing attempts, alice at her usual address
    displaces one of them and logs in first once the slot frees; the storm waits behind her."""
    admission = rig.hasher.admission
    await admission.acquire(CheckPriority.NORMAL)  # the slot: busy
    granted: list[CheckPriority] = []
    acquire = admission.acquire

    async def recording_acquire(priority: CheckPriority) -> None:
        await acquire(priority)
        granted.append(priority)

    setattr(admission, "acquire", recording_acquire)  # noqa: B010 - wraps this instance only
    attempts = await storm(rig, 10)
    refused_at_once = sum(isinstance(t.exception(), Unavailable) for t in attempts if t.done())
    trusted = asyncio.create_task(rig.service.login(LoginRequest("alice", ALICE_PASSWORD, HOME)))
    for _ in range(1000):
        if admission.refused.get(("displaced", CheckPriority.NORMAL)):
            break
        await asyncio.sleep(0.001)
    admission.release()
    token = await asyncio.wait_for(trusted, 5)
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)

    assert refused_at_once == 10 - QUEUE
    assert admission.refused[("displaced", CheckPriority.NORMAL)] == 1
    assert token.token_id
    assert granted == [CheckPriority.TRUSTED] + [CheckPriority.NORMAL] * (QUEUE - 1)
    assert sum(isinstance(o, Unauthenticated) for o in outcomes) == QUEUE - 1


async def test_untrusted_attempts_are_shed_alike_whether_the_user_exists_or_not(rig: Rig) -> None:
    """In a saturated queue, alice from a new address and a name no one has are both refused
    with the same 503 before any password check, and neither attempt is counted."""
    await rig.hasher.admission.acquire(CheckPriority.NORMAL)
    attempts = await storm(rig, QUEUE)
    refused: list[Unavailable] = []

    for name, password, ip in [
        ("alice", ALICE_PASSWORD, "198.51.100.9"),
        ("nobody", "her long lantern passphrase", "198.51.100.10"),
    ]:
        with pytest.raises(Unavailable) as shed:
            await rig.service.login(LoginRequest(name, password, ip))
        refused.append(shed.value)
    now = rig.app[appkeys.CLOCK]().timestamp()
    statuses = [await rig.app[appkeys.LOCKOUT].status(name, now) for name in ("alice", "nobody")]
    rig.hasher.admission.release()
    await asyncio.gather(*attempts, return_exceptions=True)

    assert [(str(e), e.retry_after) for e in refused] == [
        ("too many password checks in progress", 1)
    ] * 2
    assert [s.failures for s in statuses] == [0, 0]


async def test_a_trusted_login_is_still_judged_and_counted_when_wrong(rig: Rig) -> None:
    """Priority is not a pass: a wrong password from alice's usual address is a 401 and counts."""
    with pytest.raises(Unauthenticated):
        await rig.service.login(LoginRequest("alice", "not her lantern passphrase", HOME))
    now = rig.app[appkeys.CLOCK]().timestamp()

    status = await rig.app[appkeys.LOCKOUT].status("alice", now)

    assert sum(c.failures for c in status.counters) == 1


async def test_attempts_wait_for_their_turn_before_reading_the_database(rig: Rig) -> None:
    """A login waits for its password check's turn before it reads anything: under a storm, the
    attempts refused or still queued have cost no database read, and the reads of those that
    go first never wait behind the reads of those that will be shed."""
    generations = rig.app[appkeys.GENERATIONS]
    fetch = generations.fetch
    reads: list[str] = []

    async def counting_fetch(subject: str) -> int:
        reads.append(subject)
        return int(await fetch(subject))

    setattr(generations, "fetch", counting_fetch)  # noqa: B010 - wraps this instance only
    await rig.hasher.admission.acquire(CheckPriority.NORMAL)  # the slot: busy
    attempts = await storm(rig, 10)
    read_while_queued = list(reads)
    rig.hasher.admission.release()
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)

    assert read_while_queued == []
    assert len(reads) == QUEUE  # only the attempts that got their turn
    assert sum(isinstance(o, Unauthenticated) for o in outcomes) == QUEUE


async def test_a_shed_attempt_is_answered_late_and_a_judged_one_is_not(
    rig: Rig, clock: FakeClock
) -> None:
    """With shed_delay, the 503 for an attempt the hasher has no room for comes that late (a
    stuffing tool that retries at once is slowed to the delay); a wrong password that was
    judged is answered as soon as it is judged."""
    service = login_service(rig.app, rig.hasher, clock, shed_delay=0.3)
    await rig.hasher.admission.acquire(CheckPriority.NORMAL)
    attempts = await storm(rig, QUEUE)

    started = asyncio.get_running_loop().time()
    with pytest.raises(Unavailable):
        await service.login(LoginRequest("nobody", "a guess at a password", "198.51.100.11"))
    shed_after = asyncio.get_running_loop().time() - started
    rig.hasher.admission.release()
    await asyncio.gather(*attempts, return_exceptions=True)
    started = asyncio.get_running_loop().time()
    with pytest.raises(Unauthenticated):
        await service.login(LoginRequest("alice", "not her lantern passphrase", HOME))
    judged_after = asyncio.get_running_loop().time() - started

    assert shed_after >= 0.3
    assert judged_after < 0.3
