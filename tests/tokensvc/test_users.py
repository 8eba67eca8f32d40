"""UserStore on PostgreSQL and SQLite: CRUD, conflicts and name rules (revocation is the service's:
tests/tokensvc/test_services_users.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from keystore.db import create_engine
from tokensvc.accounts.users import User, UserStore, canonical_name
from tokensvc.errors import BadRequest, Conflict, NotFound
from tokensvc.storage import migrate
from tokensvc.storage.base import Base

HASH_A = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo"
HASH_B = "$argon2id$v=19$m=8,t=1,p=1$cGVwcGVycGVwcGVy$b3RoZXJvdGhlcm90aGVyb3RoZXJvdGhlcg"
T0 = datetime(2025, 11, 21, 22, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh database of the parametrised kind."""
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def users(engine: AsyncEngine, clock: Clock) -> UserStore:
    return UserStore(engine, clock=clock)


async def test_migration_matches_the_model(engine: AsyncEngine) -> None:
    """After the migrations, the users table is exactly what UserRow declares."""
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
            )
        )

    assert [d for d in diff if "users" in repr(d)] == []


async def test_create_then_get(users: UserStore) -> None:
    """A created user reads back with its roles and timestamps."""
    created = await users.create("alice", password_hash=HASH_A, roles=["admin", "dev", "admin"])

    fetched = await users.get("alice")

    assert fetched == created
    assert fetched == User(
        name="alice",
        roles=("admin", "dev"),
        disabled=False,
        created_at=T0,
        updated_at=T0,
        password_hash=HASH_A,
    )
    assert fetched.is_admin


async def test_names_are_case_insensitive(users: UserStore) -> None:
    """Names are stored lowercase and found whatever their case."""
    await users.create("Bob.Smith", password_hash=HASH_A)

    fetched = await users.get("BOB.SMITH")

    assert fetched is not None
    assert fetched.name == "bob.smith"


async def test_get_unknown_or_impossible_name_is_none(users: UserStore) -> None:
    """Unknown names, and names no user could have, read as None rather than raising."""
    assert await users.get("nobody") is None
    assert await users.get("") is None
    assert await users.get("x" * 500) is None


async def test_duplicate_is_a_conflict(users: UserStore) -> None:
    """Creating a user whose name is taken, in any case, raises Conflict."""
    await users.create("alice", password_hash=HASH_A)

    with pytest.raises(Conflict):
        await users.create("ALICE", password_hash=HASH_B)


@pytest.mark.parametrize(
    "name", ["", "-alice", ".alice", "al ice", "alice!", "ålice", "a" * 65, "alice\n"]
)
def test_bad_names_are_rejected(name: str) -> None:
    """Names must be 1-64 characters of [a-z0-9._-], starting with a letter or digit."""
    with pytest.raises(BadRequest):
        canonical_name(name)


@pytest.mark.parametrize("name", ["a", "0", "alice", "a.b-c_d", "9lives", "a" * 64])
def test_good_names_are_accepted(name: str) -> None:
    """Names within the rules are kept as they are."""
    assert canonical_name(name) == name


async def test_plaintext_is_never_stored(users: UserStore) -> None:
    """A value that is not an argon2 hash is refused, and is not echoed in the error."""
    with pytest.raises(ValueError, match="must be an argon2 hash") as refused:
        await users.create("alice", password_hash="hunter2hunter2")

    assert "hunter2" not in str(refused.value)
    assert await users.get("alice") is None


async def test_set_password_stores_the_hash(users: UserStore, clock: Clock) -> None:
    """Changing the password stores the new hash and moves updated_at."""
    await users.create("alice", password_hash=HASH_A)
    clock.now = T0 + timedelta(minutes=5)

    changed = await users.set_password("alice", HASH_B)

    assert changed.password_hash == HASH_B
    assert (changed.created_at, changed.updated_at) == (T0, clock.now)
    assert await users.get("alice") == changed


async def test_rehash_replaces_only_the_hash_it_was_given(users: UserStore) -> None:
    """A rehash on login replaces the hash, unless it changed meanwhile."""
    await users.create("alice", password_hash=HASH_A)

    replaced = await users.rehash("alice", old_hash=HASH_A, new_hash=HASH_B)
    stale = await users.rehash("alice", old_hash=HASH_A, new_hash=HASH_A)

    fetched = await users.get("alice")
    assert (replaced, stale) == (True, False)
    assert fetched is not None
    assert fetched.password_hash == HASH_B


async def test_disabling_and_enabling(users: UserStore) -> None:
    """Disabling and re-enabling are stored as asked."""
    await users.create("alice", password_hash=HASH_A)

    disabled = await users.set_disabled("alice", True)
    enabled = await users.set_disabled("alice", False)

    assert (disabled.disabled, enabled.disabled) == (True, False)


async def test_roles_are_replaced_sorted_and_unique(users: UserStore) -> None:
    """Setting roles replaces them, sorted and without repeats."""
    await users.create("alice", password_hash=HASH_A, roles=["dev"])

    promoted = await users.set_roles("alice", ["dev", "admin", "dev"])
    demoted = await users.set_roles("alice", ["dev"])

    assert (promoted.roles, demoted.roles) == (("admin", "dev"), ("dev",))
    assert await users.get("alice") == demoted


async def test_bad_roles_are_rejected(users: UserStore) -> None:
    """Roles must be short lowercase words."""
    await users.create("alice", password_hash=HASH_A)

    with pytest.raises(BadRequest):
        await users.set_roles("alice", ["Admin"])


async def test_list_pages_in_name_order(users: UserStore) -> None:
    """Users are listed by name, a page at a time after a given name."""
    for name in ["carol", "alice", "dave", "bob"]:
        await users.create(name, password_hash=HASH_A)

    first = await users.list(limit=2)
    second = await users.list(after=first[-1].name, limit=2)
    rest = await users.list(after="dave")

    assert [u.name for u in first] == ["alice", "bob"]
    assert [u.name for u in second] == ["carol", "dave"]
    assert rest == []


async def test_delete(users: UserStore) -> None:
    """A deleted user is gone; deleting again raises NotFound."""
    await users.create("alice", password_hash=HASH_A)

    await users.delete("alice")

    assert await users.get("alice") is None
    with pytest.raises(NotFound):
        await users.delete("alice")


async def test_updates_of_unknown_users_raise_not_found(users: UserStore) -> None:
    """Changing a user who does not exist raises NotFound."""
    with pytest.raises(NotFound):
        await users.set_password("ghost", HASH_A)
    with pytest.raises(NotFound):
        await users.set_disabled("ghost", True)
    with pytest.raises(NotFound):
        await users.set_roles("ghost", [])


def test_password_hash_stays_out_of_repr() -> None:
    """The password hash never shows in a User's repr."""
    user = User("alice", (), False, T0, T0, password_hash=HASH_A)

    assert HASH_A not in repr(user)
    assert "argon2" not in repr(user)


async def test_every_migrated_table_matches_a_model(engine: AsyncEngine) -> None:
    """After the migrations, autogenerate finds no difference at all between the database and the
    models of both bases (keystore's tables and tokensvc's): no table the models forget."""
    import keystore.discharger_key
    import keystore.models
    import keystore.service_keys  # noqa: F401
    import tokensvc.storage.audit
    import tokensvc.tokens.registry
    import tokensvc.tokens.revocation
    import tokensvc.tokens.subjects  # noqa: F401
    from keystore.db import Base as KeystoreBase

    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}),
                [KeystoreBase.metadata, Base.metadata],  # type: ignore[arg-type]
            )
        )

    # The one intended difference: service_keys.token_id references tokens ON DELETE CASCADE in
    # the database (deleting a registry row deletes its key), which keystore's model cannot
    # declare without importing tokensvc's table.
    intended = [d for d in diff if d[0] == "remove_fk" and d[1].table.name == "service_keys"]
    assert len(intended) == 1
    assert [d for d in diff if d not in intended] == []
