"""PasswordHasher: argon2id profiles, pepper, rehash, dummy verification and bounded concurrency."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator

import argon2
import pytest

from tokensvc.accounts.admission import CheckPriority
from tokensvc.accounts.passwords import (
    CHEAP_FOR_TESTS,
    HASHING_NICE,
    OWASP,
    PasswordHasher,
    VerifyResult,
    check_policy,
    profile_by_name,
)
from tokensvc.errors import BadRequest, Unavailable

PASSWORD = "correct horse battery staple"
PEPPER = b"pepper-from-config-0123456789abcdef"
# Cheap enough for 100 checks in a test, dear enough (a few ms) for timing to be measurable.
MODERATE = argon2.Parameters(
    type=argon2.Type.ID,
    version=19,
    salt_len=16,
    hash_len=32,
    time_cost=2,
    memory_cost=4096,
    parallelism=1,
)


@pytest.fixture
async def hasher() -> AsyncIterator[PasswordHasher]:
    hasher = PasswordHasher(profile=CHEAP_FOR_TESTS, pepper=None, max_concurrency=2, max_waiting=8)
    yield hasher
    hasher.close()


def test_owasp_profile_is_the_owasp_minimum() -> None:
    """The OWASP profile is argon2id with m=19456 KiB, t=2, p=1."""
    assert (OWASP.type, OWASP.memory_cost, OWASP.time_cost, OWASP.parallelism) == (
        argon2.Type.ID,
        19456,
        2,
        1,
    )
    assert profile_by_name("owasp") is OWASP
    with pytest.raises(ValueError, match="unknown password profile"):
        profile_by_name("fast")


async def test_hash_then_verify(hasher: PasswordHasher) -> None:
    """A hash verifies with its password and not with another, and needs no rehash."""
    stored = await hasher.hash(PASSWORD)

    right = await hasher.verify(stored, PASSWORD)
    wrong = await hasher.verify(stored, PASSWORD + "!")

    assert stored.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert right == VerifyResult(ok=True, needs_rehash=False)
    assert wrong == VerifyResult(ok=False, needs_rehash=False)


async def test_weaker_hash_needs_rehash(hasher: PasswordHasher) -> None:
    """A hash made with weaker parameters verifies under a stronger profile and asks for a rehash."""
    old = await hasher.hash(PASSWORD)
    stronger = PasswordHasher(profile=MODERATE, pepper=None, max_concurrency=1, max_waiting=1)

    result = await stronger.verify(old, PASSWORD)
    rehashed = await stronger.verify(await stronger.hash(PASSWORD), PASSWORD)
    stronger.close()

    assert result == VerifyResult(ok=True, needs_rehash=True)
    assert rehashed == VerifyResult(ok=True, needs_rehash=False)


async def test_unknown_user_path_fails(hasher: PasswordHasher) -> None:
    """With no stored hash, verification runs against the dummy hash and fails."""
    result = await hasher.verify(None, PASSWORD)

    assert result == VerifyResult(ok=False)


async def test_corrupt_hash_fails_without_raising(hasher: PasswordHasher) -> None:
    """A stored value that is not an argon2 hash is a failed check, not an exception."""
    result = await hasher.verify("$argon2id$garbage", PASSWORD)

    assert not result.ok


async def test_pepper_is_required_to_verify() -> None:
    """A peppered hash verifies only with the same pepper: the pepper changes what is hashed."""
    peppered = PasswordHasher(
        profile=CHEAP_FOR_TESTS, pepper=PEPPER, max_concurrency=1, max_waiting=4
    )
    unpeppered = PasswordHasher(
        profile=CHEAP_FOR_TESTS, pepper=None, max_concurrency=1, max_waiting=4
    )
    other = PasswordHasher(
        profile=CHEAP_FOR_TESTS, pepper=PEPPER[::-1], max_concurrency=1, max_waiting=4
    )
    stored = await peppered.hash(PASSWORD)

    outcomes = [(await h.verify(stored, PASSWORD)).ok for h in (peppered, unpeppered, other)]
    plain_hash_with_pepper = await peppered.verify(await unpeppered.hash(PASSWORD), PASSWORD)
    for h in (peppered, unpeppered, other):
        h.close()

    assert outcomes == [True, False, False]
    assert not plain_hash_with_pepper.ok


async def test_password_policy_is_enforced_without_echo(hasher: PasswordHasher) -> None:
    """Too short, too long or not valid Unicode is a BadRequest that never contains the password."""
    for password in ("s3cr3t!", "ä" * 513, "lone\ud800surrogate"):
        with pytest.raises(BadRequest) as refused:
            await hasher.hash(password)
        assert password not in str(refused.value)
        assert password not in repr(refused.value)
    check_policy("lantern river quiet")
    check_policy(("lantern river quiet " * 52)[:1024])


@pytest.mark.parametrize(
    "password",
    ["¾«Ck\U000957ef9", "ﬀ" * 1025],
    ids=["short-as-sent-long-after-nfkc", "1025-characters-shorter-bytes-after-nfkc"],
)
def test_length_holds_as_sent_and_after_normalisation(password: str) -> None:
    """openapi.yaml's minLength/maxLength count the text as sent; NFKC can lengthen it ("¾" is
    "3⁄4") or shorten it: the policy holds both counts, so what the schema refuses is refused."""
    with pytest.raises(BadRequest):
        check_policy(password)


async def test_passwords_are_nfkc_normalised(hasher: PasswordHasher) -> None:
    """The same password typed as full-width or composed characters is one password."""
    stored = await hasher.hash("ｌａｎｔｅｒｎ ｒｉｖｅｒ ｑｕｉｅｔ ２")  # full-width forms

    result = await hasher.verify(stored, "lantern river quiet 2")

    assert result.ok


async def test_overlong_password_fails_verification(hasher: PasswordHasher) -> None:
    """A password longer than any that could be set fails verification instead of raising."""
    stored = await hasher.hash(PASSWORD)

    result = await hasher.verify(stored, "x" * 100_000)

    assert not result.ok


def test_verify_result_has_no_truth_value() -> None:
    """`if result:` is a bug waiting to happen, so it raises instead of always being true."""
    with pytest.raises(TypeError):
        bool(VerifyResult(ok=False))


def test_repr_holds_no_pepper() -> None:
    """The hasher's repr shows its parameters, never its pepper."""
    hasher = PasswordHasher(
        profile=CHEAP_FOR_TESTS, pepper=PEPPER, max_concurrency=1, max_waiting=1
    )

    text = repr(hasher)
    hasher.close()

    assert "pepper" in text
    assert PEPPER.decode() not in text


@pytest.mark.serial  # wall-clock bound: run alone
async def test_queue_bound_refuses_at_once() -> None:
    """With every worker busy and max_waiting callers queued, the next call is refused at once."""
    hasher = PasswordHasher(profile=OWASP, pepper=None, max_concurrency=1, max_waiting=2)
    stored = await hasher.hash(PASSWORD)
    queued = [asyncio.create_task(hasher.verify(stored, PASSWORD)) for _ in range(3)]
    await asyncio.sleep(0)
    started = time.monotonic()

    with pytest.raises(Unavailable) as refused:
        await hasher.verify(stored, PASSWORD)
    elapsed = time.monotonic() - started
    results = await asyncio.gather(*queued)
    hasher.close()

    assert refused.value.retry_after == 1
    assert elapsed < 0.05
    assert [r.ok for r in results] == [True, True, True]


@pytest.mark.serial  # wall-clock bound: run alone
async def test_event_loop_stays_responsive_during_a_hashing_storm() -> None:
    """While 32 OWASP hashes run, the event loop keeps ticking every few milliseconds."""
    hasher = PasswordHasher(
        profile=OWASP, pepper=None, max_concurrency=2, max_waiting=64, queue_timeout=60
    )
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - before - 0.005)

    ticking = asyncio.create_task(ticker())
    await asyncio.gather(*(hasher.hash(f"{PASSWORD}{n}") for n in range(32)))
    ticking.cancel()
    hasher.close()

    print(
        f"\nloop lag during storm: median {statistics.median(lags) * 1e3:.2f} ms,"
        f" max {max(lags) * 1e3:.2f} ms over {len(lags)} ticks"
    )
    assert len(lags) > 20
    assert statistics.median(lags) < 0.025  # one OWASP hash on the loop would block ~50-100 ms


@pytest.mark.serial  # wall-clock bound: run alone
async def test_unknown_users_take_as_long_as_wrong_passwords() -> None:
    """Median verify times for 50 wrong passwords and 50 unknown users differ by under 25 %."""
    hasher = PasswordHasher(profile=MODERATE, pepper=PEPPER, max_concurrency=1, max_waiting=4)
    stored = await hasher.hash(PASSWORD)
    await hasher.verify(None, PASSWORD)  # warm-up: the dummy hash is ready from here on
    wrong: list[float] = []
    unknown: list[float] = []

    for n in range(50):  # interleaved, so drift in machine load hits both alike
        started = time.perf_counter()
        assert not (await hasher.verify(stored, f"wrong password {n}")).ok
        wrong.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert not (await hasher.verify(None, f"wrong password {n}")).ok
        unknown.append(time.perf_counter() - started)
    hasher.close()

    wrong_median, unknown_median = statistics.median(wrong), statistics.median(unknown)
    difference = abs(wrong_median - unknown_median) / max(wrong_median, unknown_median)
    print(
        f"\nmedian verify: wrong password {wrong_median * 1e3:.3f} ms,"
        f" unknown user {unknown_median * 1e3:.3f} ms, difference {difference:.1%}"
    )
    assert difference < 0.25


async def test_hashing_threads_run_at_the_lowest_cpu_priority(hasher: PasswordHasher) -> None:
    """argon2 yields the cores to the event loop (and /v1/verify) when they compete (on Linux,
    where nice is per thread; elsewhere the pool keeps the loop's priority)."""

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    loop = asyncio.get_running_loop()
    in_pool = await loop.run_in_executor(hasher._executor, priority)

    assert in_pool == (HASHING_NICE if sys.platform == "linux" else priority())
    assert priority() < HASHING_NICE  # the loop's own thread is untouched


async def test_trusted_checks_run_above_anonymous_guesses(hasher: PasswordHasher) -> None:
    """A trusted or second-factor check runs at the process's CPU priority and an anonymous one
    at the lowest, so under a storm the scheduler gives a trusted login's argon2 the cores first
    (a slot alone is not CPU: the guesses already running would share it evenly)."""

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    own = priority()
    ran = {p: await hasher._run(priority, priority=p) for p in CheckPriority}

    assert ran[CheckPriority.SECOND_FACTOR] == own
    assert ran[CheckPriority.TRUSTED] == own
    lowest = HASHING_NICE if sys.platform == "linux" else own
    assert ran[CheckPriority.NORMAL] == lowest
    assert ran[CheckPriority.SUSPECT] == lowest


@pytest.mark.serial  # wall-clock bound: run alone
async def test_untrusted_checks_rest_their_thread_and_trusted_checks_do_not() -> None:
    """With untrusted_share 0.25, the thread rests three times a guess's check time after each:
    a second guess right after the first waits for that; a trusted login does not (it takes the
    reserved thread)."""
    hasher = PasswordHasher(
        profile=OWASP, max_concurrency=1, reserved_for_trusted=1, untrusted_share=0.25
    )
    stored = await hasher.hash(PASSWORD)
    spans: dict[str, float] = {}
    for name, priority in [
        ("first guess", CheckPriority.NORMAL),
        ("second guess", CheckPriority.NORMAL),
        ("trusted", CheckPriority.TRUSTED),
    ]:
        started = time.monotonic()
        await hasher.verify(stored, PASSWORD, priority=priority)
        spans[name] = time.monotonic() - started
    hasher.close()

    check = spans["first guess"]
    assert spans["second guess"] > 2.5 * check, spans  # ~3 × check of rest, then its own check
    assert spans["trusted"] < 2 * check, spans


def test_untrusted_share_must_be_a_share() -> None:
    for share in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="untrusted_share"):
            PasswordHasher(profile=CHEAP_FOR_TESTS, untrusted_share=share)
