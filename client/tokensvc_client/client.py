"""TokensvcClient: decide per request from cached tokensvc verdicts, kept honest by the
revocation stream; ask /v1/verify (or fail closed) whenever the cache may not be trusted.

The decision itself is the server's: `caveats.decide` (tokensvc's Verifier calls the same function)
over the verdict's decoded caveats, with the stream's revocation facts applied on every call.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from datetime import datetime
from time import monotonic
from types import MappingProxyType
from typing import Any, Literal

import aiohttp
import orjson

from caveats import MFA_REQUIRED, Context, decide
from tokensvc_client.errors import (
    BadRequest,
    CaveatDenied,
    Denied,
    InvalidToken,
    Unavailable,
)
from tokensvc_client.metrics import ClientMetrics
from tokensvc_client.revocations import RevocationState
from tokensvc_client.stream import RevocationStream
from tokensvc_client.verdicts import (
    CacheKey,
    Principal,
    Verdict,
    VerdictCache,
    VerdictError,
    parse_verdict,
)

WhenStale = Literal["verify", "fail-closed"]

#: A remembered allow's own cost beyond its key's strings: the dict slot, the key and entry
#: tuples (an estimate that errs high keeps the bound honest).
_ENTRY_BYTES = 400
#: Keys holding more than this in strings (a padded header, a long query) are not remembered:
#: such requests are checked in full each time, and cannot crowd out the others.
_MAX_KEY_BYTES = 8192


def _key_bytes(key: Hashable) -> int:
    """The bytes of the strings a remembered allow's key holds (the rest is _ENTRY_BYTES)."""
    parts = key if isinstance(key, tuple) else (key,)
    return sum(sys.getsizeof(p) for p in parts if isinstance(p, str | bytes))


class TokensvcClient:
    """Verifies tokens for a protected service, in microseconds on a cache hit.

    Use as `async with TokensvcClient(url, service_token) as client:` (or `await start()` /
    `await close()`); `subscribe=False` never trusts a cache: every request asks /v1/verify; `await client.check(token, operation=..., resource=...)` returns a
    Principal or raises InvalidToken (401), CaveatDenied (403), BadRequest (400) or Unavailable (503).
    """

    def __init__(
        self,
        url: str,
        service_token: str,
        *,
        verify_url: str | None = None,
        stale_after: float = 15.0,
        when_stale: WhenStale = "verify",
        max_entries: int = 10_000,
        max_bytes: int = 32 * 1024 * 1024,
        max_token_bytes: int = 16384,
        request_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        session: aiohttp.ClientSession | None = None,
        subscribe: bool = True,
    ) -> None:
        if when_stale not in ("verify", "fail-closed"):
            raise ValueError("when_stale must be 'verify' or 'fail-closed'")
        base = url.rstrip("/")
        self._verdict_url = base + "/v1/verdict"
        self._verify_url = (verify_url or base).rstrip("/") + "/v1/verify"
        self._auth = {"Authorization": f"Bearer {service_token}"}
        self._when_stale = when_stale
        self._max_token_bytes = max_token_bytes
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._clock = clock
        self._own_session = session is None
        self._session = session
        self._base = base
        self._service_token = service_token
        self._stale_after = stale_after
        # False: never subscribe, so the cache is never trusted and every request goes to
        # /v1/verify (the benchmark's per-request baseline; a service that cannot hold a stream).
        self._subscribe = subscribe
        self.metrics = ClientMetrics()
        # Any change to the revocation facts forgets every remembered allow (see `allowed`).
        self.state = RevocationState(on_change=self._forget_allowed)
        self.cache = VerdictCache(max_entries=max_entries, max_bytes=max_bytes)
        self.stream: RevocationStream | None = None
        self._inflight: dict[CacheKey, asyncio.Future[Verdict]] = {}
        # Allows that may be reused (see `allowed`): key -> (principal, until). Bounded like the
        # cache, by entries and estimated bytes; emptied when either is passed, and on every
        # change to the revocation facts. Only ever cleared, never replaced: the aiohttp
        # middleware holds this dict (its hit path is `allowed`, inline).
        self._allowed: dict[Hashable, tuple[Principal, float]] = {}
        self._allowed_bytes = 0
        self._max_allowed_entries = max_entries
        self._max_allowed_bytes = max_bytes // 4

    async def start(self) -> None:
        """Open the HTTP session and subscribe to the revocation stream."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        if self.stream is None and self._subscribe:
            self.stream = RevocationStream(
                session=self._session,
                url=self._base,
                service_token=self._service_token,
                state=self.state,
                metrics=self.metrics,
                on_reset=self._reset,
                on_key_revoked=self.cache.forget_key,
                stale_after=self._stale_after,
                clock=self._clock,
            )
            self.stream.start()

    def _reset(self) -> None:
        """The stream lost events: no cached verdict, and no remembered allow, may be used."""
        self.cache.clear()
        self.state.invalidate()  # which forgets the remembered allows

    def _forget_allowed(self) -> None:
        self._allowed.clear()
        self._allowed_bytes = 0

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.close()
            self.stream = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> TokensvcClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- deciding -----------------------------------------------------------------------------

    def allowed(self, key: Hashable) -> Principal | None:
        """The Principal of an allow that `check(..., reuse_as=key)` made and that still holds,
        else None (then call `check`). The caller's `key` must determine every input of that
        check but the client address: the exact token and discharge strings, the operation,
        resource and audience, and whether MFA was required. An allow is remembered only
        when no caveat of the token reads the client address or is a not-before (which a wall
        clock stepped back makes fail again; `caveats.Policy.reusable`), and holds while

        - the revocation stream is live, and has applied no event since (any revocation, of
          anything, and any reset, forgets every remembered allow: RevocationState's on_change);
        - the verdict it was decided from is valid and no expiry caveat of the token has passed
          (the other caveats of such a verdict give the same answer to the same request at any
          time).

        So its answer is `check`'s, for the cost of a dictionary lookup: the aiohttp and ASGI
        middleware ask it first.
        """
        entry = self._allowed.get(key)
        if entry is None:
            return None
        principal, until = entry
        if monotonic() >= self.state.trusted_until or self._clock() >= until:
            return None
        self.metrics.reused += 1
        return principal

    def _remember(self, key: Hashable, principal: Principal, until: float) -> None:
        # What the entry holds is mostly the key's strings (headers and path, as sent: padding
        # the parser ignores still counts); a key bigger than _MAX_KEY_BYTES is not remembered.
        size = _key_bytes(key)
        if size > _MAX_KEY_BYTES:
            return
        size += _ENTRY_BYTES
        if (
            len(self._allowed) >= self._max_allowed_entries
            or self._allowed_bytes + size > self._max_allowed_bytes
        ):
            self._allowed.clear()
            self._allowed_bytes = 0
        self._allowed[key] = (principal, until)
        self._allowed_bytes += size

    async def check(
        self,
        token: str,
        discharges: Sequence[str] = (),
        *,
        operation: str | None = None,
        resource: str | None = None,
        audience: str | None = None,
        client_ip: str | None = None,
        require_mfa: bool = False,
        reuse_as: Hashable | None = None,
    ) -> Principal:
        """Allow (the Principal) or raise: Denied (401/403/400) or Unavailable (503).

        `require_mfa`: only a token minted after a second factor may pass; any other is refused
        with CaveatDenied (403, `caveats.MFA_REQUIRED`) once its caveats allow the request —
        as /v1/verify decides, so a revoked or expired token stays a 401.

        `reuse_as`: remember an allow decided from a cached verdict under this key, for
        `allowed` (whose docstring says what the key must determine).
        """
        # state.trusted_until: the monotonic deadline of the stream's liveness (0.0 when there
        # is no stream, or it is not connected or not caught up).
        if monotonic() >= self.state.trusted_until:
            return await self._untrusted(
                token, discharges, operation, resource, audience, client_ip, require_mfa
            )
        key: CacheKey = (token, *discharges) if discharges else token
        now = self._clock()
        verdict = self.cache.get(key)
        if verdict is not None and now < verdict.valid_until:
            self.metrics.checked_hits += 1
            principal = self._decide(
                verdict, now, operation, resource, audience, client_ip, require_mfa
            )
            # Decided from the cache with the stream live, so the state is current: an allow
            # that does not depend on the client address may be reused (see `allowed`).
            if reuse_as is not None and verdict.reusable_until is not None:
                self._remember(reuse_as, principal, verdict.reusable_until)
            return principal
        if verdict is not None:
            self.cache.discard(key)
        verdict = await self._fetch(key, token, discharges)
        now = self._clock()
        return self._decide(verdict, now, operation, resource, audience, client_ip, require_mfa)

    def _decide(
        self,
        verdict: Verdict,
        now: float,
        operation: str | None,
        resource: str | None,
        audience: str | None,
        client_ip: str | None,
        require_mfa: bool,
    ) -> Principal:
        state = self.state
        metrics = self.metrics
        if verdict.key_id in state.revoked_keys:
            metrics.denied_401 += 1
            raise InvalidToken("root key revoked")
        # The subject's generation: the newer of the verdict's and the stream's (inline: hot path).
        generation = verdict.generation
        streamed = state.generations.get(verdict.subject)
        if streamed is not None and streamed > generation:
            generation = streamed
        # Positional: the field order of caveats.Context (now, operation, resource, audience,
        # client_ip, generation), as tokensvc's Verifier builds it.
        context = Context(now, operation, resource, audience, client_ip, generation)
        # caveats.decide is the rule; its allow (not revoked, every caveat holds) is tested here
        # first, as tokensvc's Verifier does, which saves a call per allowed request.
        policy = verdict.policy
        revoked = verdict.token_id in state.revoked_tokens
        if revoked or not policy.holds(context):
            failure = decide(policy, context, revoked)
            if failure is not None:
                if failure.invalid:
                    metrics.denied_401 += 1
                    raise InvalidToken(failure.reason)
                metrics.denied_403 += 1
                raise CaveatDenied(failure.reason)
        # After the caveats, where tokensvc's Verifier tests it: a revoked or expired token is a
        # 401 whatever the route asks. One truth test when the route does not ask for MFA.
        if require_mfa and not verdict.mfa:
            metrics.denied_403 += 1
            raise CaveatDenied(MFA_REQUIRED.reason)
        metrics.checked_allowed += 1
        return verdict.principal

    async def _fetch(self, key: CacheKey, token: str, discharges: Sequence[str]) -> Verdict:
        """The verdict for `key` from POST /v1/verdict; one request however many callers wait."""
        pending = self._inflight.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this request was cancelled, not the fetch it waited for
                # The request that was fetching went away: fetch for ourselves.
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            verdict = await self._post_verdict(key, token, discharges)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        else:
            future.set_result(verdict)
            return verdict
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    async def _post_verdict(self, key: CacheKey, token: str, discharges: Sequence[str]) -> Verdict:
        self.metrics.misses += 1
        self._check_sizes(token, discharges)
        status, body = await self._post(
            self._verdict_url, {"token": token, "discharges": list(discharges)}
        )
        if status != 200:
            raise self._refusal(status, body, "/v1/verdict")
        key_bytes = len(token) + sum(len(d) for d in discharges)
        try:
            verdict = parse_verdict(body, now=self._clock(), key_bytes=key_bytes)
        except VerdictError as exc:
            self.metrics.unavailable += 1
            raise Unavailable(f"tokensvc answered an unusable verdict ({exc})") from None
        # Cache only what the stream covers: a revocation between the stream's position and the
        # verdict's cursor, or between the verdict's cursor and where the stream started, would
        # otherwise be missed. Used for this request either way.
        stream = self.stream
        if stream is not None and stream.live() and self.state.covers(verdict.cursor):
            self.cache.put(key, verdict)
        else:
            self.metrics.uncacheable += 1
        return verdict

    async def _untrusted(
        self,
        token: str,
        discharges: Sequence[str],
        operation: str | None,
        resource: str | None,
        audience: str | None,
        client_ip: str | None,
        require_mfa: bool,
    ) -> Principal:
        """The stream is not live: ask /v1/verify, or fail closed."""
        if self._when_stale == "fail-closed":
            self.metrics.unavailable += 1
            raise Unavailable("the revocation stream is not live and the client fails closed")
        self.metrics.fallbacks += 1
        self._check_sizes(token, discharges)
        context: dict[str, str | bool | None] = {
            "operation": operation,
            "resource": resource,
            "audience": audience,
            "client_ip": client_ip,
        }
        if require_mfa:
            # Named only when asked: a tokensvc that predates MFA refuses an unknown context
            # field (400), which fails closed for MFA routes and leaves the others working.
            context["require_mfa"] = True
        status, body = await self._post(
            self._verify_url, {"token": token, "discharges": list(discharges), "context": context}
        )
        if status != 200:
            exc = self._refusal(status, body, "/v1/verify")
            if isinstance(exc, InvalidToken):
                self.metrics.denied_401 += 1
            elif isinstance(exc, CaveatDenied):
                self.metrics.denied_403 += 1
            raise exc
        try:
            expires = body["expires_at"]
            mfa = body.get("mfa", False)  # absent only from a tokensvc that predates MFA
            if not isinstance(mfa, bool) or (require_mfa and not mfa):
                # /v1/verify answered 200 to require_mfa for a token it does not call MFA:
                # not an answer to trust with an allow.
                raise ValueError("mfa")
            principal = Principal(
                body["subject"],
                body["token_id"],
                None if expires is None else datetime.fromisoformat(expires).timestamp(),
                MappingProxyType(dict(body.get("declared") or {})),
                mfa,
            )
        except (KeyError, TypeError, ValueError):
            self.metrics.unavailable += 1
            raise Unavailable("tokensvc answered an unusable /v1/verify body") from None
        self.metrics.checked_allowed += 1
        return principal

    def _check_sizes(self, token: str, discharges: Sequence[str]) -> None:
        if not token:
            raise InvalidToken("no token")
        if len(token) + sum(len(d) for d in discharges) > self._max_token_bytes * 4:
            raise BadRequest("token and discharges are too large")

    async def _post(self, url: str, payload: dict[str, Any]) -> tuple[int, Any]:
        session = self._session
        if session is None:
            raise RuntimeError("TokensvcClient used before start()")
        try:
            async with session.post(
                url,
                data=orjson.dumps(payload),
                headers={**self._auth, "Content-Type": "application/json"},
                timeout=self._timeout,
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After", "")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.metrics.unavailable += 1
            raise Unavailable(f"tokensvc is unreachable ({type(exc).__name__})") from None
        if status >= 500:
            self.metrics.unavailable += 1
            raise Unavailable(
                f"tokensvc answered {status}",
                retry_after=int(retry_after) if retry_after.isdecimal() else 2,
            )
        try:
            return status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.metrics.unavailable += 1
            raise Unavailable(f"tokensvc answered {status} without JSON") from None

    def _refusal(self, status: int, body: Any, path: str) -> Exception:
        """The exception for a non-200 answer of /v1/verdict or /v1/verify."""
        reason = _reason(body) or f"{path} answered {status}"
        if (
            status == 401
            and path == "/v1/verdict"
            and not (isinstance(body, dict) and "valid" in body)
        ):
            # An error body without `valid`: *our* service token was refused, not the request's.
            self.metrics.unavailable += 1
            return Unavailable(f"tokensvc refused the service token: {reason}")
        if status == 401:
            return InvalidToken(reason)
        if status == 403:
            if path == "/v1/verdict":
                # /v1/verdict answers 403 only about *our* service token (it lacks tokens:verdict):
                # a misconfiguration, never the request's fault.
                self.metrics.unavailable += 1
                return Unavailable(f"the service token may not ask for verdicts: {reason}")
            return CaveatDenied(reason)
        if status == 400:
            return BadRequest(reason)
        self.metrics.unavailable += 1
        return Unavailable(f"{path} answered {status}: {reason}")


def _reason(body: Any) -> str | None:
    if isinstance(body, dict):
        reason = body.get("reason")
        if isinstance(reason, str):
            return reason
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return None


__all__ = ["Denied", "Principal", "TokensvcClient", "WhenStale"]
