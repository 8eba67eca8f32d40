"""The second factor's parts on their own: TOTP steps, sealed challenges, the spent-code stores."""

from __future__ import annotations

import secrets

from tokensvc.accounts.mfa import (
    match_step,
    new_recovery_codes,
    new_totp_secret,
    normalise_recovery_code,
    totp_at,
)
from tokensvc.accounts.otpstate import ChallengeCodec, MemoryOnceStore, RedisOnceStore
from tokensvc.operations.redisconn import redis_client_from_url

NOW = 1_800_000_015.0  # 15 s into a step


def test_a_code_is_accepted_one_step_either_side_and_no_further() -> None:
    """Codes of the steps now-1, now and now+1 match their step; now±2 and junk do not."""
    secret = new_totp_secret()
    step = int(NOW) // 30

    matched = {d: match_step(secret, totp_at(secret, NOW + 30 * d), now=NOW) for d in range(-2, 3)}

    assert matched == {-2: None, -1: step - 1, 0: step, 1: step + 1, 2: None}
    assert match_step(secret, "12345", now=NOW) is None
    assert match_step(secret, "abcdef", now=NOW) is None


def test_recovery_codes_are_ten_distinct_and_read_however_typed() -> None:
    """Ten distinct codes; case, dashes and spaces do not matter; other shapes are not codes."""
    codes = new_recovery_codes()

    assert len(set(codes)) == 10
    assert normalise_recovery_code(codes[0].upper().replace("-", " ")) == codes[0].replace("-", "")
    assert normalise_recovery_code("123456") is None


def test_challenges_open_only_here_in_time_and_untampered() -> None:
    """A challenge opens with its key before its expiry; another key, a flipped character or a
    late answer opens nothing; a decoy and a real challenge have the same length."""
    codec = ChallengeCodec(secrets.token_bytes(32))
    fields = {"identity": "ab" * 16, "client_ip": "cd" * 16, "generation": 3}
    real = codec.issue(user="alice", expires_at=NOW + 300, **fields)
    decoy = codec.issue(user=None, expires_at=NOW + 300, **fields)
    flipped = real[:10] + ("A" if real[10] != "A" else "B") + real[11:]

    opened = codec.open(real, now=NOW)
    opened_decoy = codec.open(decoy, now=NOW)

    assert opened is not None and opened.user == "alice" and opened.generation == 3
    assert opened_decoy is not None and opened_decoy.user is None
    assert len(real) == len(decoy)
    assert ChallengeCodec(secrets.token_bytes(32)).open(real, now=NOW) is None
    assert codec.open(flipped, now=NOW) is None
    assert codec.open(real, now=NOW + 301) is None
    assert codec.open("not a challenge", now=NOW) is None


async def test_the_memory_store_claims_a_name_once_per_ttl() -> None:
    """A name is claimed once; again only after its TTL."""
    store = MemoryOnceStore()

    first = await store.claim("totp:x:1", ttl=90, now=NOW)
    again = await store.claim("totp:x:1", ttl=90, now=NOW + 89)
    later = await store.claim("totp:x:1", ttl=90, now=NOW + 91)

    assert (first, again, later) == (True, False, True)


async def test_the_memory_store_stays_bounded() -> None:
    """Past max_entries the oldest claims go first."""
    store = MemoryOnceStore(max_entries=100)

    for n in range(1000):
        await store.claim(f"n{n}", ttl=3600, now=NOW)

    assert len(store._until) <= 100


async def test_redis_claims_are_shared_by_every_replica(redis_url: str, redis_prefix: str) -> None:
    """Two stores on one Redis (two replicas): a name one claimed, the other cannot."""
    client = redis_client_from_url(redis_url)
    try:
        one = RedisOnceStore(client, prefix=redis_prefix + "mfa-once:")
        two = RedisOnceStore(client, prefix=redis_prefix + "mfa-once:")

        first = await one.claim("totp:y:7", ttl=90, now=NOW)
        other = await two.claim("totp:y:7", ttl=90, now=NOW)
    finally:
        await client.aclose()

    assert (first, other) == (True, False)
