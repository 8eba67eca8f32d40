"""KEKs by id: the current one seals, the others open; re-seal moves rows, status counts them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from keystore_fakes import FakeClock
from sqlalchemy import insert, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

import tokensvc.tokens.registry  # noqa: F401 - declares the tokens table on TokensvcBase
from keystore import Base, KeyDecryptionError, KeyEncryptionKey, Keyring
from keystore.deployment_key import load_deployment_key
from keystore.discharger_key import load_discharger_key
from keystore.models import RootKeyRow
from keystore.reseal import SEALED_TABLES, kek_usage, reseal
from keystore.sealing import LocalKeks, Sealer, UnknownKek
from keystore.service_keys import ServiceKeys
from keystore.totp_secrets import TotpSecrets
from tokensvc.storage.base import Base as TokensvcBase


@pytest.fixture
def old() -> KeyEncryptionKey:
    """The KEK a deployment started with."""
    return KeyEncryptionKey.generate()


@pytest.fixture
def new() -> KeyEncryptionKey:
    """The KEK it rotates to."""
    return KeyEncryptionKey.generate()


async def _seal_everything(engine: AsyncEngine, kek: Sealer, clock: FakeClock) -> dict[str, object]:
    """One row in every sealed table, under `kek`; what each holds, to compare after."""
    ring = Keyring(engine, kek=kek, clock=clock)
    root = await ring.current()
    token_id = "ab" * 16
    async with engine.begin() as conn:
        await conn.execute(
            insert(TokensvcBase.metadata.tables["tokens"]).values(
                token_id=token_id,
                subject="svc",
                created_by="admin",
                created_at=clock(),
                expires_at=clock() + timedelta(days=30),
                admin=False,
                kind="service",
            )
        )
        service = ServiceKeys(engine, kek=kek, clock=clock)
        skey, values = service.new_key(token_id, expires_at=clock() + timedelta(days=30))
        await service.insert(conn, values, skey)
    discharger = await load_discharger_key(engine, kek=kek, clock=clock)
    deployment = await load_deployment_key(engine, kek=kek, clock=clock)
    await TotpSecrets(engine, kek=kek, clock=clock).put_pending("alice", b"totp secret of 20 b")
    return {
        "root": (root.id, root.secret.reveal()),
        "service": (skey.id, skey.secret.reveal()),
        "discharger": discharger.private.reveal(),
        "deployment": deployment.derive(b"probe"),
        "totp": b"totp secret of 20 b",
    }


async def _read_everything(
    engine: AsyncEngine, kek: Sealer, clock: FakeClock, seen: dict[str, object]
) -> dict[str, object]:
    """The same secrets, opened from the database afresh with `kek` (no cache)."""
    root_id, _ = seen["root"]  # type: ignore[misc]
    service_id, _ = seen["service"]  # type: ignore[misc]
    root = await Keyring(engine, kek=kek, clock=clock).get(root_id)
    skey = await ServiceKeys(engine, kek=kek, clock=clock).get(service_id)
    assert root is not None and skey is not None
    discharger = await load_discharger_key(engine, kek=kek, clock=clock)
    deployment = await load_deployment_key(engine, kek=kek, clock=clock)
    totp = await TotpSecrets(engine, kek=kek, clock=clock).get("alice")
    assert totp is not None
    return {
        "root": (root.id, root.secret.reveal()),
        "service": (skey.id, skey.secret.reveal()),
        "discharger": discharger.private.reveal(),
        "deployment": deployment.derive(b"probe"),
        "totp": totp.secret.reveal(),
    }


def test_every_table_with_a_kek_id_is_resealed() -> None:
    """A table that stores a kek_id column is in SEALED_TABLES, or rotation would leave it."""
    tables = {
        table.name
        for metadata in (Base.metadata, TokensvcBase.metadata)
        for table in metadata.tables.values()
        if "kek_id" in table.columns
    }

    assert tables == {sealed.name for sealed in SEALED_TABLES}


def test_the_current_kek_seals_and_every_configured_one_opens(
    old: KeyEncryptionKey, new: KeyEncryptionKey
) -> None:
    """Sealed under the current KEK, named by its id; a previous KEK's ciphertext still opens."""
    before = LocalKeks(old)
    after = LocalKeks(new, [old])
    sealed_before = before.seal(b"secret", aad=b"row")

    sealed_after = after.seal(b"secret", aad=b"row")

    assert sealed_before.kek_id == old.kek_id and sealed_after.kek_id == new.kek_id
    assert after.ids == (new.kek_id, old.kek_id)
    assert after.open(sealed_before, aad=b"row", what="x") == b"secret"
    assert after.open(sealed_after, aad=b"row", what="x") == b"secret"


def test_a_kek_not_configured_is_named_and_nothing_opens(
    old: KeyEncryptionKey, new: KeyEncryptionKey
) -> None:
    """A ciphertext under a KEK not given fails with UnknownKek naming both ids."""
    sealed = LocalKeks(old).seal(b"secret", aad=b"row")

    with pytest.raises(UnknownKek) as caught:
        LocalKeks(new).open(sealed, aad=b"row", what="root key 1")

    assert caught.value.kek_id == old.kek_id
    assert old.kek_id in str(caught.value) and new.kek_id in str(caught.value)


def test_a_forged_kek_id_does_not_make_a_ciphertext_open(
    old: KeyEncryptionKey, new: KeyEncryptionKey
) -> None:
    """Relabelling a row with the current KEK's id still fails: the AEAD decides, not the label."""
    sealed = LocalKeks(old).seal(b"secret", aad=b"row")

    with pytest.raises(KeyDecryptionError):
        LocalKeks(new, [old]).open(sealed._replace(kek_id=new.kek_id), aad=b"row", what="x")


async def test_reseal_moves_every_table_to_the_current_kek_and_keeps_every_secret(
    engine: AsyncEngine, old: KeyEncryptionKey, new: KeyEncryptionKey, clock: FakeClock
) -> None:
    """After a re-seal, every row names the new KEK, the new KEK alone opens them, and every
    secret inside (root, service, discharger, deployment key, a TOTP secret) is unchanged."""
    seen = await _seal_everything(engine, LocalKeks(old), clock)
    rotating = LocalKeks(new, [old])
    before = await kek_usage(engine, rotating, now=clock())

    result = await reseal(engine, rotating, now=clock())
    after = await kek_usage(engine, rotating, now=clock())

    assert before.not_current == 5 and before.by_kek() == {old.kek_id: 5}
    assert result.total == 5 and not result.unopened and not result.damaged
    assert result.resealed == {
        "root_keys": 1,
        "service_keys": 1,
        "discharger_keys": 1,
        "sealed_secrets": 1,
        "totp_secrets": 1,
    }
    assert after.not_current == 0 and after.by_kek() == {new.kek_id: 5}
    assert await _read_everything(engine, LocalKeks(new), clock, seen) == seen


async def test_reseal_twice_changes_nothing_the_second_time(
    engine: AsyncEngine, old: KeyEncryptionKey, new: KeyEncryptionKey, clock: FakeClock
) -> None:
    """A repeated re-seal (or one overlapping another) finds nothing left to move."""
    await _seal_everything(engine, LocalKeks(old), clock)
    rotating = LocalKeks(new, [old])
    await reseal(engine, rotating, now=clock())

    again = await reseal(engine, rotating, now=clock())

    assert again.total == 0


async def test_rows_under_an_unknown_kek_are_reported_and_left(
    engine: AsyncEngine, old: KeyEncryptionKey, new: KeyEncryptionKey, clock: FakeClock
) -> None:
    """Status and re-seal name a KEK that is not configured and leave its rows untouched."""
    seen = await _seal_everything(engine, LocalKeks(old), clock)
    forgetful = LocalKeks(new)

    usage = await kek_usage(engine, forgetful, now=clock())
    result = await reseal(engine, forgetful, now=clock())

    assert usage.unknown == {old.kek_id: 5}
    assert usage.as_dict()["keks"][-1] == {
        "id": old.kek_id,
        "role": "unknown",
        "keys": 5,
        "tables": {
            "discharger_keys": 1,
            "root_keys": 1,
            "sealed_secrets": 1,
            "service_keys": 1,
            "totp_secrets": 1,
        },
    }
    assert result.total == 0 and sum(result.unopened.values()) == 5
    assert await _read_everything(engine, LocalKeks(old), clock, seen) == seen


async def test_a_tampered_row_is_reported_not_laundered(
    engine: AsyncEngine, old: KeyEncryptionKey, new: KeyEncryptionKey, clock: FakeClock
) -> None:
    """A root key whose expiry was extended in the table (so its AAD no longer matches) is
    reported as damaged and keeps its old seal: re-sealing must not make a forged row valid."""
    seen = await _seal_everything(engine, LocalKeks(old), clock)
    root_id, _ = seen["root"]  # type: ignore[misc]
    async with engine.begin() as conn:
        await conn.execute(
            update(RootKeyRow.__table__)
            .where(RootKeyRow.__table__.c.id == root_id)
            .values(expires_at=clock() + timedelta(days=365))
        )

    result = await reseal(engine, LocalKeks(new, [old]), now=clock())

    assert result.damaged == [f"root key {root_id}"]
    assert result.total == 4
    async with engine.connect() as conn:
        kek_id = (
            await conn.execute(text("SELECT kek_id FROM root_keys WHERE id = :id"), {"id": root_id})
        ).scalar_one()
    assert kek_id == old.kek_id


async def test_expired_rows_are_neither_counted_nor_resealed(
    engine: AsyncEngine, old: KeyEncryptionKey, new: KeyEncryptionKey, clock: FakeClock
) -> None:
    """A root key past its expiry is dead material for key maintenance to purge, not to move."""
    await _seal_everything(engine, LocalKeks(old), clock)
    clock.advance(timedelta(days=2))  # the root key (24 h) expires; the service key (30 d) not

    usage = await kek_usage(engine, LocalKeks(new, [old]), now=clock())
    result = await reseal(engine, LocalKeks(new, [old]), now=clock())

    assert usage.rows.get(("root_keys", old.kek_id)) is None
    assert result.resealed["root_keys"] == 0 and result.total == 4


async def test_a_keyring_with_both_keks_serves_rows_in_either_state(
    engine: AsyncEngine, old: KeyEncryptionKey, new: KeyEncryptionKey, clock: FakeClock
) -> None:
    """A replica holding both KEKs opens a key sealed under the old one and, after a re-seal by
    someone else, the same key under the new one: nothing it serves changes mid-rotation."""
    seen = await _seal_everything(engine, LocalKeks(old), clock)
    both = LocalKeks(old, [new])  # the next KEK given as open-only first: the safe rollout order

    before = await _read_everything(engine, both, clock, seen)
    await reseal(engine, LocalKeks(new, [old]), now=clock())
    after = await _read_everything(engine, both, clock, seen)

    assert before == after == seen
