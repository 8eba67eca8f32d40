# ruff: noqa: F811 - `rig` is the fairness rig fixture, imported, then named as a parameter
"""Red team: the login's argon2 slot (PasswordHasher.slot) and its priority queue.

Built on the fairness rig (tests.tokensvc.test_login_fairness): the real app (SQLite, the
in-process lockout store, and on Redis), a hasher with one argon2 slot and a queue of four,
alice who logged in once from HOME. A pass means the defence held; a failure is a finding.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.tokensvc.test_login_fairness import (  # noqa: F401 - `rig` is a fixture
    ALICE_PASSWORD,
    HOME,
    QUEUE,
    Rig,
    rig,
)
from tokensvc.accounts.admission import CheckPriority
from tokensvc.errors import SecondFactorNeeded, Unauthenticated
from tokensvc.services.login import LoginRequest
from tokensvc.web import appkeys

RECOVERY_SHAPED = "abcd-efgh-ijkl"  # any 12 of [a-z2-7]: the decoy runs argon2 for it


def share_hasher(rig: Rig) -> None:
    """As in production (tokensvc.composition: one PasswordHasher for logins and second
    factors), the rig's second factors check recovery codes on the rig's one-slot hasher."""
    rig.app[appkeys.FACTORS]._hasher = rig.hasher


async def decoy_challenge(rig: Rig, i: int) -> str:
    """What any unauthenticated caller gets for a wrong password of a name no one has."""
    with pytest.raises(SecondFactorNeeded) as needed:
        await rig.service.login(LoginRequest(f"ghost-{i}", "a wrong guess", f"203.0.113.{i}"))
    return needed.value.challenge


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(what)


# ---- (b) starving real users -------------------------------------------------------------------


async def test_decoy_second_steps_do_not_outrank_a_trusted_login(rig: Rig) -> None:
    """An attacker with decoy challenges (one wrong login each, no password known) sends
    recovery-code-shaped `otp`s, each from the address its challenge was issued to (from any
    other, an answer is refused before any check). Their argon2 checks queue no better than
    anonymous guesses (NORMAL: found by the red team at SECOND_FACTOR), so alice at her usual
    address displaces one and gets in."""
    share_hasher(rig)
    admission = rig.hasher.admission
    challenges = [await decoy_challenge(rig, i) for i in range(QUEUE)]
    await admission.acquire(CheckPriority.NORMAL)  # the slot: busy (a check running)
    decoys = [
        asyncio.create_task(
            rig.service.login(
                LoginRequest("", "", f"203.0.113.{i}", challenge=c, otp=RECOVERY_SHAPED)
            )
        )
        for i, c in enumerate(challenges)
    ]
    await wait_for(lambda: admission.waiting == QUEUE, "the decoys never queued")
    queued = {p: len(q) for p, q in admission._queues.items() if q}

    alice = asyncio.create_task(rig.service.login(LoginRequest("alice", ALICE_PASSWORD, HOME)))
    await asyncio.sleep(0.01)
    admission.release()
    outcome = (await asyncio.gather(alice, return_exceptions=True))[0]
    await asyncio.gather(*decoys, return_exceptions=True)

    assert queued == {CheckPriority.NORMAL: QUEUE}  # no better than an anonymous guess
    assert not isinstance(outcome, BaseException), (
        f"alice at her usual address was refused ({outcome!r}) behind {QUEUE} decoy "
        "second steps queued at SECOND_FACTOR by an attacker who knows no password"
    )


async def test_an_anonymous_one_call_attempt_gets_no_better_than_normal_priority(rig: Rig) -> None:
    """A stuffing attempt that adds a recovery-code-shaped `otp` to its password guess (one call,
    no challenge needed) buys no better place than NORMAL for either argon2 check (found at
    SECOND_FACTOR: the trusted pool, no nice 19, no rest). The code's check still runs after a
    wrong password: skipping it would answer a wrong password faster than a right one."""
    share_hasher(rig)
    admission = rig.hasher.admission
    granted: list[CheckPriority] = []
    acquire = admission.acquire

    async def recording_acquire(priority: CheckPriority) -> None:
        await acquire(priority)
        granted.append(priority)

    setattr(admission, "acquire", recording_acquire)  # noqa: B010 - this instance only
    with pytest.raises(Unauthenticated):
        await rig.service.login(
            LoginRequest("stuff-1", "a guess", "203.0.113.50", otp=RECOVERY_SHAPED)
        )

    assert granted == [CheckPriority.NORMAL, CheckPriority.NORMAL], granted


# ---- (c) leaking a slot ------------------------------------------------------------------------


async def test_cancelled_or_failing_reads_inside_the_slot_give_it_back(rig: Rig) -> None:
    """A login cancelled (client gone) while it reads the database inside its slot, one whose
    read raises, and one cancelled while queued: none keeps a permit, none stays counted."""
    admission = rig.hasher.admission
    generations = rig.app[appkeys.GENERATIONS]
    users = rig.app[appkeys.USERS]
    fetch, get = generations.fetch, users.get
    inside = asyncio.Event()

    async def stuck_fetch(subject: str) -> int:
        inside.set()
        await asyncio.Event().wait()
        return 0

    setattr(generations, "fetch", stuck_fetch)  # noqa: B010
    task = asyncio.create_task(rig.service.login(LoginRequest("alice", "wrong one", "192.0.2.99")))
    await asyncio.wait_for(inside.wait(), 5)
    assert admission._busy == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    setattr(generations, "fetch", fetch)  # noqa: B010
    assert admission._busy == 0

    async def failing_get(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database gone mid-login")

    setattr(users, "get", failing_get)  # noqa: B010
    with pytest.raises(RuntimeError):
        await rig.service.login(LoginRequest("alice", "wrong one", "192.0.2.99"))
    setattr(users, "get", get)  # noqa: B010
    assert admission._busy == 0

    await admission.acquire(CheckPriority.NORMAL)
    queued = asyncio.create_task(rig.service.login(LoginRequest("bob", "guess", "192.0.2.98")))
    await wait_for(lambda: admission.waiting == 1, "never queued")
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    admission.release()
    assert admission._busy == 0 and admission.waiting == 0

    now = rig.app[appkeys.CLOCK]().timestamp()
    status = await rig.app[appkeys.LOCKOUT].status("alice", now)
    assert sum(c.failures for c in status.counters) == 0  # nothing judged, nothing counted
    token = await rig.service.login(LoginRequest("alice", ALICE_PASSWORD, HOME))
    assert token.token_id


async def test_cancelled_during_argon2_the_slot_returns_when_the_thread_ends(rig: Rig) -> None:
    admission = rig.hasher.admission
    tasks = [
        asyncio.create_task(rig.service.login(LoginRequest(f"n{i}", "guess", f"192.0.2.{i}")))
        for i in range(3)
    ]
    await asyncio.sleep(0)
    for _ in range(20):
        await asyncio.sleep(0.001)
        for t in tasks:
            t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await wait_for(lambda: admission._busy == 0 and admission.waiting == 0, "a permit leaked")


async def test_shed_and_judged_unknown_and_known_answer_alike(rig: Rig) -> None:
    """(a) An unknown name, alice's wrong password, from new addresses: same error, same body
    length (the decoy challenge), nothing else to tell them apart."""
    answers = []
    for name, ip in (("nobody-here", "198.51.100.20"), ("alice", "198.51.100.21")):
        with pytest.raises(SecondFactorNeeded) as e:
            await rig.service.login(LoginRequest(name, "not the password", ip))
        answers.append((str(e.value), len(e.value.challenge)))
    assert answers[0] == answers[1]


async def test_reauth_cannot_be_used_as_a_trusted_queue_jump_when_wrong(rig: Rig) -> None:
    """(e) A wrong current password at re-authentication is counted like a failed login."""
    with pytest.raises(Unauthenticated):
        await rig.service.reauthenticate("alice", password="not it", client_ip=HOME)
    now = rig.app[appkeys.CLOCK]().timestamp()
    status = await rig.app[appkeys.LOCKOUT].status("alice", now)
    assert sum(c.failures for c in status.counters) == 1
