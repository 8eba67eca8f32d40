"""Verdicts for zero-hop clients: cacheable, signature-checked token facts, and the revocation stream.

A protected service's client package (issue 20) asks once per token for a verdict — the facts the
signature chain proves, every first-party caveat of the token and its bound discharges, and how
long it may keep them — then decides each request locally with `caveats.decide`, the rule
/v1/verify applies. The revocation stream tells it what to drop. Root keys never leave tokensvc.

Who may ask: a caller whose own token allows `tokens:verdict` on this API. The stream also needs
that token to be a service token (or an enabled admin's admin token): it names every subject
whose tokens are revoked, which no ordinary user may watch. What a verdict tells is no more than
the token's holder can read: the caveats are in the token
itself, the key id and token id in its identifier, the subject's current generation only in the
form "this token is still live" (a verdict is refused once it is not); nothing of the registry
(description, creator, use) and nothing of the root key but its expiry, which bounds the token's.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from datetime import timedelta
from typing import Any, Final, NamedTuple

from tokensvc.errors import CaveatDenied, Forbidden, InvalidToken
from tokensvc.macaroons.describe import caveat_object
from tokensvc.services.authorization import Authorizer
from tokensvc.services.boundary import service
from tokensvc.services.principals import Principal
from tokensvc.tokens.events import RevocationEvent, parse_cursor
from tokensvc.tokens.feed import RevocationFeed
from tokensvc.tokens.verification import Verifier

#: The operation a caller's token must allow to ask for verdicts and follow the stream.
VERDICT_OPERATION: Final = "tokens:verdict"

log = logging.getLogger("tokensvc.services.verdicts")


class Refused(NamedTuple):
    """The token asked about is not genuine, or no longer live (→ 401 {"valid": false})."""

    reason: str


class Subscription(NamedTuple):
    """An authorised stream: where it starts, why it must reset first (or None), its events,
    and the subscriber slot it holds (`with subscription.slot:` around the stream frees it)."""

    start: int
    newest: int
    reset: str | None
    heartbeat: float
    batches: AsyncGenerator[list[RevocationEvent], None]
    slot: contextlib.ExitStack


def b64(predicate: bytes) -> str:
    """base64url without padding, as the verdict's `caveats` carries each predicate."""
    return base64.urlsafe_b64encode(predicate).rstrip(b"=").decode("ascii")


@service
class VerdictService:
    def __init__(
        self,
        *,
        authorizer: Authorizer,
        verifier: Verifier,
        feed: RevocationFeed,
        max_cache_ttl: timedelta,
    ) -> None:
        self._authz = authorizer
        self._verifier = verifier
        self._feed = feed
        self._max_ttl = max_cache_ttl.total_seconds()

    async def verdict(
        self, who: Principal, token: str, discharges: list[str]
    ) -> dict[str, Any] | Refused:
        """The cacheable verdict on `token` with `discharges`, or why it is refused.

        Raises:
            InvalidToken, CaveatDenied: the caller's own token is bad or does not allow
                `tokens:verdict` on this API.
            BadRequest, PayloadTooLarge: too many discharges, or a token past the size limits.
            Unavailable: the key store is down and the token's key is not cached, or this
                process cannot read the revocation log (tokensvc.tokens.feed, `fresh`).
        """
        await self._authz.holder(who, VERDICT_OPERATION)
        # A process that cannot read the revocation log cannot vouch for a cacheable verdict.
        self._feed.check_fresh()
        # Read before the check: every event up to it is already applied in this process
        # (tokensvc.tokens.feed), so the verdict reflects them; later ones reach the client by
        # the stream after this cursor.
        cursor = self._feed.cursor
        try:
            vouched = await self._verifier.vouch(token, discharges)
        except InvalidToken as exc:
            return Refused(exc.message)
        policy = vouched.policy
        now = vouched.now
        ttl = min(self._max_ttl, vouched.key_expires_at - now)
        if policy.expires_at is not None:
            # A passed bakery time-before denies (403) rather than invalidates: the verdict
            # stands, but it may not be cached at all; the client decides it as /v1/verify would.
            ttl = min(ttl, policy.expires_at - now)
        predicates = [p if isinstance(p, bytes) else p.encode() for p in policy.predicates]
        return {
            "verdict": {
                "subject": vouched.subject,
                "token_id": vouched.token_id,
                "key_id": vouched.key_id,
                "admin": vouched.admin,
                "mfa": vouched.mfa,
                "generation": vouched.generation,
                "expires_at": policy.expires_at,
                "key_expires_at": vouched.key_expires_at,
                "caveats": [b64(p) for p in predicates],
                "described": [caveat_object(p) for p in predicates],
            },
            "cache_ttl": max(0, int(ttl)),
            "cursor": str(cursor),
        }

    async def subscribe(
        self,
        who: Principal,
        cursor: str | None,
        *,
        wait: bool = True,
        connected: Callable[[], bool] = lambda: True,
    ) -> Subscription:
        """Authorise a stream subscriber and place it: resumed after `cursor`, or from now.

        Iterate `batches` inside `with subscription.slot:`. `wait=False`: the batches end once
        the subscriber has everything up to the newest event (a catch-up poll, not a stream).
        `connected`: whether the subscriber is still there; the stream ends within a second
        of its leaving, and frees its slot (RevocationFeed.follow).

        The slot is taken before the revocation log is read (red team: a caller refused for want
        of a slot still cost a log query each, past the request governor), and one subject holds
        at most `max_per_subject` of them (red team: one service token took every slot).

        Raises:
            InvalidToken, CaveatDenied: the caller's token is bad or lacks `tokens:verdict`.
            Forbidden: neither a service token nor an enabled admin's (the stream names subjects).
            Unavailable: no slot is free (for anyone, or for this subject); or the database is
                down (this process cannot read the revocation log, or a resume is older than
                the in-memory ring).
        """
        actor = await self._authz.service(who, VERDICT_OPERATION)
        slot = contextlib.ExitStack()
        slot.enter_context(self._feed.slot(actor.name))
        try:
            if not wait:  # "everything committed until now", not only what this process read
                await self._feed.catch_up()
            start, reset = await self._feed.start(parse_cursor(cursor))
        except BaseException:
            slot.close()
            raise
        newest = self._feed.cursor
        return Subscription(
            start=start,
            newest=newest,
            reset=reset,
            heartbeat=self._feed.heartbeat,
            batches=self._while_allowed(
                who,
                actor.name,
                self._feed.follow(start, until=None if wait else newest, connected=connected),
            ),
            slot=slot,
        )

    async def _while_allowed(
        self,
        who: Principal,
        name: str,
        batches: AsyncGenerator[list[RevocationEvent], None],
    ) -> AsyncGenerator[list[RevocationEvent], None]:
        """`batches`, each (events or a ping) only while the subscriber's token still passes
        the check it passed at connect; the stream ends the first time it does not.

        Red team (helper-59): the token was checked once, at connect, so a stream outlived its
        token's revocation, its expiry, a lifetime its holder had narrowed offline and its
        admin's lost role, and went on naming every subject revoked since. The check before
        each batch is the in-memory verify (revocations, generations, keys, expiry), plus the
        admin's user row for an admin's token; the batch that revokes the token itself is
        never sent, and at most a heartbeat of pings follows an expiry."""
        async with contextlib.aclosing(batches):
            async for batch in batches:
                try:
                    await self._authz.service(who, VERDICT_OPERATION)
                except (InvalidToken, CaveatDenied, Forbidden) as exc:
                    log.info("revocation stream of %s ended: %s", name[:64], exc)
                    return
                yield batch
