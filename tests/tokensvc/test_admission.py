"""The priority queue in front of argon2: who gets a slot, who is shed first, and no one waits long."""

from __future__ import annotations

import asyncio

import pytest

from tokensvc.accounts.admission import CheckPriority, PriorityAdmission
from tokensvc.errors import Unavailable

NORMAL, SUSPECT, TRUSTED, SECOND = (
    CheckPriority.NORMAL,
    CheckPriority.SUSPECT,
    CheckPriority.TRUSTED,
    CheckPriority.SECOND_FACTOR,
)


async def queued(
    admission: PriorityAdmission, priority: CheckPriority, order: list[str], name: str
):  # type: ignore[no-untyped-def]
    """Acquire, note the name in `order` when the slot comes, hold it until released by the test."""
    try:
        await admission.acquire(priority)
    except Unavailable:
        order.append(f"shed {name}")
        return
    order.append(name)


async def test_a_freed_slot_goes_to_the_best_waiter_first_come_first_served_within() -> None:
    """Slots go to second-factor, then trusted, then normal, then suspect checks; FIFO within."""
    admission = PriorityAdmission(slots=1, max_waiting=10, timeout=5)
    await admission.acquire(NORMAL)  # the one slot is busy
    order: list[str] = []
    tasks = [
        asyncio.create_task(queued(admission, p, order, name))
        for p, name in [
            (SUSPECT, "suspect"),
            (NORMAL, "normal-1"),
            (TRUSTED, "trusted"),
            (NORMAL, "normal-2"),
            (SECOND, "mfa"),
        ]
    ]
    await asyncio.sleep(0)

    for _ in tasks:
        admission.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)

    assert order == ["mfa", "trusted", "normal-1", "normal-2", "suspect"]


async def test_a_full_queue_sheds_the_newest_of_the_worst_priority_first() -> None:
    """With the queue full, a trusted newcomer displaces the newest suspect, then the newest
    normal check; a normal newcomer facing only normal and better waiters is refused at once."""
    admission = PriorityAdmission(slots=1, max_waiting=3, timeout=5)
    await admission.acquire(NORMAL)
    order: list[str] = []
    waiting = [
        asyncio.create_task(queued(admission, p, order, name))
        for p, name in [(NORMAL, "normal-1"), (SUSPECT, "suspect"), (NORMAL, "normal-2")]
    ]
    await asyncio.sleep(0)

    first = asyncio.create_task(queued(admission, TRUSTED, order, "trusted-1"))
    await asyncio.sleep(0)
    second = asyncio.create_task(queued(admission, TRUSTED, order, "trusted-2"))
    await asyncio.sleep(0)
    with pytest.raises(Unavailable, match="too many password checks"):
        await admission.acquire(NORMAL)
    for _ in range(3):
        admission.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiting, first, second)

    assert order == ["shed suspect", "shed normal-2", "trusted-1", "trusted-2", "normal-1"]
    assert admission.refused == {
        ("displaced", SUSPECT): 1,
        ("displaced", NORMAL): 1,
        ("queue_full", NORMAL): 1,
    }


async def test_has_room_reflects_who_could_be_displaced() -> None:
    """With the queue full of normal checks, a trusted check has room and a normal one has not;
    check() refuses without queueing anything."""
    admission = PriorityAdmission(slots=1, max_waiting=1, timeout=5)
    await admission.acquire(NORMAL)
    waiter = asyncio.create_task(admission.acquire(NORMAL))
    await asyncio.sleep(0)

    room = {p: admission.has_room(p) for p in CheckPriority}
    with pytest.raises(Unavailable):
        admission.check(NORMAL)
    admission.check(TRUSTED)
    depth = admission.waiting
    waiter.cancel()

    assert room == {SECOND: True, TRUSTED: True, NORMAL: False, SUSPECT: False}
    assert depth == 1


async def test_no_one_waits_past_the_timeout() -> None:
    """A queued check that gets no slot within the timeout is refused, and leaves the queue."""
    admission = PriorityAdmission(slots=1, max_waiting=4, timeout=0.05)
    await admission.acquire(NORMAL)

    with pytest.raises(Unavailable):
        await admission.acquire(TRUSTED)

    assert admission.waiting == 0
    assert admission.refused == {("timeout", TRUSTED): 1}


async def test_a_cancelled_waiter_passes_a_handed_over_slot_on() -> None:
    """A waiter cancelled just as it was handed the slot passes it on: no slot is lost."""
    admission = PriorityAdmission(slots=1, max_waiting=4, timeout=5)
    await admission.acquire(NORMAL)
    first = asyncio.create_task(admission.acquire(NORMAL))
    second = asyncio.create_task(admission.acquire(NORMAL))
    await asyncio.sleep(0)

    admission.release()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it runs
    await asyncio.sleep(0)
    await asyncio.wait_for(second, 1)

    assert first.cancelled()
    assert admission.waiting == 0


async def test_reserved_slots_are_for_trusted_and_second_factor_checks_only() -> None:
    """With the ordinary slot held by a guess, a trusted check takes the reserved slot at once,
    while a normal check queues until the ordinary slot is free."""
    admission = PriorityAdmission(slots=1, max_waiting=4, timeout=5, reserved=1)
    await admission.acquire(NORMAL)

    normal = asyncio.create_task(admission.acquire(NORMAL))
    await asyncio.wait_for(admission.acquire(TRUSTED), 0.5)  # the reserved slot, at once
    await asyncio.sleep(0)
    queued_while_reserved_busy = not normal.done()
    admission.release()  # the trusted check is done: the reserved slot is not the normal one's
    await asyncio.sleep(0)
    still_queued = not normal.done()
    admission.release()  # the first guess is done: now the normal check runs
    await asyncio.wait_for(normal, 0.5)

    assert queued_while_reserved_busy and still_queued
    assert admission.capacity == 2
