"""The third-party conditions tokensvc discharges, and who the caller must be for each.

- `user-is NAME`: the caller authenticates as user NAME (HTTP Basic through the login path, with
  its lockout, or a tokensvc token); declares `username NAME`.
- `has-role ROLE`: the caller authenticates as an enabled user holding ROLE; declares `username`.
- `user-is-mfa NAME`, `has-role-mfa ROLE`: as `user-is` and `has-role`, and the caller
  authenticated with a second factor (a tokensvc token minted after MFA: the flag in its signed
  identifier; a password alone never qualifies); also declares `mfa true`.
- A user in a role that requires MFA (TOKENSVC_MFA_REQUIRED_ROLES) qualifies for none of these
  without a second factor, as tokensvc's own admin calls require.
- `account-active NAME`: user NAME exists, is enabled and is not locked out. The caller must
  authenticate as NAME itself or as an enabled admin user: were it open to anyone, it would tell
  anyone which accounts exist (an enumeration oracle). A caller who may not ask is refused before
  anything about NAME is looked up, with one message whatever NAME is; every other failure
  answers with another single message.

A condition that does not hold raises `ConditionRefused`; an unknown one `ConditionNotRecognized`.
The caller is authenticated only when a condition needs it, so `account-active` costs no argon2.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Final, Protocol

from tokensvc.accounts.lockout import LockoutStore
from tokensvc.accounts.users import User, UserStore, canonical_name
from tokensvc.bakery.errors import ConditionNotRecognized, ConditionRefused
from tokensvc.errors import BadRequest

USER_IS: Final = "user-is"
HAS_ROLE: Final = "has-role"
USER_IS_MFA: Final = "user-is-mfa"
HAS_ROLE_MFA: Final = "has-role-mfa"
ACCOUNT_ACTIVE: Final = "account-active"

USERNAME: Final = "username"
MFA: Final = "mfa"

_ROLE: Final = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
_INACTIVE: Final = "account-active: the account is not active"
_NOT_YOURS: Final = (
    "account-active: only the account itself or an admin may ask whether an account is active"
)


def clip(text: str, limit: int = 64) -> str:
    """Untrusted text quoted in a message: repr'd and cut, so it cannot forge log lines."""
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


class Caller(Protocol):
    """Whoever asks for the discharge; authenticated lazily, once."""

    async def authenticate(self) -> str:
        """The caller's user name (canonical); Unauthenticated, LockedOut or Unavailable otherwise."""
        ...

    async def used_second_factor(self) -> bool:
        """Whether the caller authenticated with a second factor (after `authenticate`)."""
        ...

    def not_after(self) -> float | None:
        """When the credential the caller authenticated with expires (unix seconds), if it
        expires: a discharge vouched on it ends no later. None when it did not authenticate,
        or authenticated with a password."""
        ...

    def token_id(self) -> str | None:
        """The id of the token the caller authenticated with (after `authenticate`); None
        when it authenticated with a password."""
        ...


class Conditions:
    """Checks a condition for a caller; returns the attributes the discharge declares."""

    def __init__(
        self,
        *,
        users: UserStore,
        lockout: LockoutStore,
        clock: Callable[[], datetime],
        issuer_of: Callable[[str], Awaitable[str | None]],
        mfa_required_roles: frozenset[str] = frozenset(),
    ) -> None:
        """`issuer_of`: who a token id was issued by (its registry row's `created_by`: the
        subject itself for a login), None for an id the registry does not hold.
        `mfa_required_roles`: TOKENSVC_MFA_REQUIRED_ROLES; a member is vouched for only when
        authenticated with a second factor, whatever the condition (as admin calls require)."""
        self._issuer_of = issuer_of
        self._users = users
        self._lockout = lockout
        self._clock = clock
        self._mfa_roles = mfa_required_roles

    async def check(self, condition: str, caller: Caller) -> dict[str, str]:
        """Raise ConditionRefused / ConditionNotRecognized, or return what to declare."""
        name, _, arg = condition.partition(" ")
        if name == USER_IS:
            return await self._user_is(arg, caller)
        if name == HAS_ROLE:
            return await self._has_role(arg, caller)
        if name == USER_IS_MFA:
            return await self._with_mfa(USER_IS_MFA, await self._user_is(arg, caller), caller)
        if name == HAS_ROLE_MFA:
            return await self._with_mfa(HAS_ROLE_MFA, await self._has_role(arg, caller), caller)
        if name == ACCOUNT_ACTIVE:
            await self._account_active(arg, caller)
            return {}
        raise ConditionNotRecognized(f"caveat not recognized: {clip(condition)}")

    async def _caller(self, caller: Caller, condition: str) -> User:
        who = await caller.authenticate()
        user = await self._users.get(who)
        # A token's subject need not be a user (admins mint for services): only users qualify,
        # and only by their exact name — a token for subject `BOB` is not user `bob`'s (its
        # generation is `BOB`'s, which bob's password change does not raise).
        if user is None or user.name != who or user.disabled:
            raise ConditionRefused(f"{condition}: the caller is not an enabled user")
        # Only the user's own credential vouches for them: their password, or a token issued to
        # them by themselves (a login, or minted with one of their tokens). A token an admin
        # minted for a user names that user at /v1/verify but is not their login: a narrowed
        # admin token, which may not take over a role-holder, could otherwise mint one for any
        # admin or role-holder and be vouched for as them here (red team). It also keeps a token
        # minted for a name before a user had it from speaking for that user.
        token_id = caller.token_id()
        if token_id is not None and await self._issuer_of(token_id) != user.name:
            raise ConditionRefused(
                f"{condition}: this token was issued to {clip(user.name)} by someone else;"
                " authenticate with their own login (password, or a token from `tokensvc login`)"
            )
        # A role that requires MFA is vouched for (by any condition: the discharge names the
        # user, and `has-role` reads their roles) only for a caller who used one: an admin token
        # minted without it (before the policy) is refused here as by admin calls.
        if self._mfa_roles.intersection(user.roles) and not await caller.used_second_factor():
            raise ConditionRefused(
                f"{condition}: this user's role requires MFA; authenticate with a token minted"
                " after a second factor"
            )
        return user

    @staticmethod
    async def _with_mfa(condition: str, declared: dict[str, str], caller: Caller) -> dict[str, str]:
        if not await caller.used_second_factor():
            raise ConditionRefused(
                f"{condition}: authenticate with a token minted after a second factor"
            )
        return {**declared, MFA: "true"}

    async def _user_is(self, arg: str, caller: Caller) -> dict[str, str]:
        try:
            wanted = canonical_name(arg)
        except BadRequest:
            raise ConditionRefused(f"user-is: {clip(arg)} is not a user name") from None
        user = await self._caller(caller, USER_IS)
        if user.name != wanted:
            raise ConditionRefused(
                f"user-is: authenticated as {clip(user.name)}, not {clip(wanted)}"
            )
        return {USERNAME: user.name}

    async def _has_role(self, arg: str, caller: Caller) -> dict[str, str]:
        if _ROLE.fullmatch(arg) is None:
            raise ConditionRefused(f"has-role: {clip(arg)} is not a role name")
        user = await self._caller(caller, HAS_ROLE)
        if arg not in user.roles:
            raise ConditionRefused(f"has-role: {clip(user.name)} does not have role {clip(arg)}")
        return {USERNAME: user.name}

    async def _account_active(self, arg: str, caller: Caller) -> None:
        # Who asks first, before anything about `arg` is read: the answer to a caller who may not
        # ask (and its timing) must not depend on whether the account exists.
        asking = await self._caller(caller, ACCOUNT_ACTIVE)
        try:
            name = canonical_name(arg)
        except BadRequest:
            name = None
        if name != asking.name and not asking.is_admin:
            raise ConditionRefused(_NOT_YOURS)
        if name is None:
            raise ConditionRefused(_INACTIVE)
        user = await self._users.get(name)
        if user is None or user.disabled:
            raise ConditionRefused(_INACTIVE)
        status = await self._lockout.status(name, self._clock().timestamp())
        # The identity-wide lock, not per-IP ones: failures from one address lock that address
        # out of the account, and must not make the account itself look inactive elsewhere.
        if status.locked_until is not None:
            raise ConditionRefused(_INACTIVE)
