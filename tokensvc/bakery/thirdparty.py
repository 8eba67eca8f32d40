"""Adding third-party caveats addressed to other bakery dischargers, and learning their keys.

A discharger's public key and bakery version come from configuration, or from
`GET {location}/discharge/info` (falling back to `GET {location}/publickey`, as bakery clients do)
for locations on the allow-list only — never from a location a request merely names, so minting
cannot be used to make tokensvc fetch arbitrary URLs. Answers are cached for a while; concurrent
lookups of one location share a single fetch; redirects are not followed (they could lead off
the allow-list).

The caveat id is encoded in the newest format the discharger reads, but at most version 2: a
version 3 caveat keeps its payload beside the macaroon (bakery's `cdata`), which a token string
cannot carry, and every version 3 discharger also reads version 2.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from keystore.discharger_key import DischargerKey
from tokensvc.bakery.codec import (
    LATEST_VERSION,
    ROOT_KEY_BYTES,
    VERSION_1,
    VERSION_2,
    b64decode_any,
    encode_caveat,
)
from tokensvc.bakery.config import BakeryConfig, normalise_location
from tokensvc.bakery.errors import (
    MalformedCaveat,
    ThirdPartyNotAllowed,
    ThirdPartyUnavailable,
)
from tokensvc.errors import BadRequest
from tokensvc.macaroons import chain
from tokensvc.macaroons.macaroon import Macaroon

MAX_THIRD_PARTY_CAVEATS: Final = 8
MAX_CONDITION_CHARS: Final = 1024
MAX_INFO_BYTES: Final = 65536

# Printable text that does not start with a space: a bakery condition is `name[ arg]`.
_CONDITION: Final = re.compile(r"[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*")
_PROTOCOL_HEADER: Final = "Bakery-Protocol-Version"


@dataclass(frozen=True, slots=True)
class ThirdPartyRequest:
    """Ask for a caveat that the discharger at `location` must discharge for `condition`."""

    location: str
    condition: str

    def validated(self) -> ThirdPartyRequest:
        """The same request with its location normalised; BadRequest if malformed."""
        if not isinstance(self.location, str) or not isinstance(self.condition, str):
            raise BadRequest("a third-party caveat has a string location and condition")
        location = normalise_location(self.location)
        if not location or len(location) > 512 or any(ord(c) < 0x21 for c in location):
            raise BadRequest("a third-party location is a URL of at most 512 characters")
        if len(self.condition) > MAX_CONDITION_CHARS or not _CONDITION.fullmatch(self.condition):
            raise BadRequest(
                f"a third-party condition is 1 to {MAX_CONDITION_CHARS} printable characters"
            )
        return ThirdPartyRequest(location, self.condition)


def parse_third_party(value: Any) -> tuple[ThirdPartyRequest, ...]:
    """The `third_party` field of a mint request: `[{"location": …, "condition": …}, …]`."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_THIRD_PARTY_CAVEATS:
        raise BadRequest(f"third_party must be a list of at most {MAX_THIRD_PARTY_CAVEATS} objects")
    requests = []
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"location", "condition"}:
            raise BadRequest("each third_party entry is an object with location and condition")
        requests.append(ThirdPartyRequest(entry["location"], entry["condition"]).validated())
    return tuple(requests)


@dataclass(frozen=True, slots=True)
class ThirdPartyInfo:
    """A discharger's public key and the newest bakery version it speaks."""

    public_key: bytes
    version: int


@dataclass(slots=True)
class _Entry:
    info: ThirdPartyInfo
    expires: float = field(compare=False)


class ThirdPartyLocator:
    """Public keys of the third parties we may address caveats to (configured or fetched)."""

    def __init__(
        self,
        config: BakeryConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._static = {
            key.location: ThirdPartyInfo(key.public_key, key.version)
            for key in config.third_party_keys
        }
        self._allowed = frozenset(config.third_party_locations)
        self._ttl = config.info_cache_ttl.total_seconds()
        self._timeout = aiohttp.ClientTimeout(total=config.fetch_timeout)
        self._session = session
        self._owns_session = session is None
        self._monotonic = monotonic
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[ThirdPartyInfo]] = {}

    def check_allowed(self, location: str) -> str:
        """The normalised location; ThirdPartyNotAllowed unless configured or allow-listed."""
        normalised = normalise_location(location)
        if normalised not in self._static and normalised not in self._allowed:
            raise ThirdPartyNotAllowed(
                f"third-party location {normalised[:200]!r} is not allowed (configure it in"
                " TOKENSVC_THIRD_PARTY_LOCATIONS or TOKENSVC_THIRD_PARTY_KEYS)"
            )
        return normalised

    async def info(self, location: str) -> ThirdPartyInfo:
        """The discharger's key and version; ThirdPartyNotAllowed / ThirdPartyUnavailable."""
        location = self.check_allowed(location)
        static = self._static.get(location)
        if static is not None:
            return static
        entry = self._cache.get(location)
        if entry is not None and entry.expires > self._monotonic():
            return entry.info
        task = self._inflight.get(location)
        if task is None:
            task = asyncio.create_task(self._fetch(location))
            self._inflight[location] = task
            task.add_done_callback(lambda _: self._inflight.pop(location, None))
        # Shielded: one caller giving up must not cancel the fetch the others are waiting for.
        return await asyncio.shield(task)

    def forget(self, location: str) -> None:
        """Drop a cached answer (a discharger rotated its key)."""
        self._cache.pop(normalise_location(location), None)

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def _fetch(self, location: str) -> ThirdPartyInfo:
        status, body = await self._get(location + "/discharge/info")
        if status == 404:
            status, body = await self._get(location + "/publickey")
        if status != 200:
            raise ThirdPartyUnavailable(
                f"the discharger at {location[:200]!r} answered HTTP {status} for its public key"
            )
        info = _parse_info(body, location)
        self._cache[location] = _Entry(info, self._monotonic() + self._ttl)
        return info

    async def _get(self, url: str) -> tuple[int, bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(
                url,
                allow_redirects=False,
                timeout=self._timeout,
                headers={_PROTOCOL_HEADER: str(LATEST_VERSION), "Accept": "application/json"},
            ) as resp:
                body = bytearray()
                async for chunk in resp.content.iter_chunked(8192):
                    body += chunk
                    if len(body) > MAX_INFO_BYTES:
                        break
                return resp.status, bytes(body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ThirdPartyUnavailable(
                f"cannot reach the discharger at {url[:200]!r} ({type(exc).__name__})"
            ) from None


def _parse_info(body: bytes, location: str) -> ThirdPartyInfo:
    where = f"the discharger at {location[:200]!r}"
    if len(body) > MAX_INFO_BYTES:
        raise ThirdPartyUnavailable(f"{where} sent an oversized public key answer")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ThirdPartyUnavailable(f"{where} did not answer JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("PublicKey"), str):
        raise ThirdPartyUnavailable(f"{where} sent no PublicKey")
    try:
        public_key = b64decode_any(data["PublicKey"], what="PublicKey")
    except MalformedCaveat:
        raise ThirdPartyUnavailable(f"{where} sent a PublicKey that is not base64") from None
    if len(public_key) != 32:
        raise ThirdPartyUnavailable(f"{where} sent a PublicKey that is not 32 bytes")
    # Bakery clients read a missing Version as version 1, and use what they know of a newer one.
    version = data.get("Version", VERSION_1)
    if isinstance(version, bool) or not isinstance(version, int) or version < VERSION_1:
        raise ThirdPartyUnavailable(f"{where} sent an invalid Version")
    return ThirdPartyInfo(public_key, min(version, LATEST_VERSION))


async def add_third_party_caveats(
    macaroon: Macaroon,
    caveats: Sequence[ThirdPartyRequest],
    *,
    locator: ThirdPartyLocator,
    key: DischargerKey,
) -> Macaroon:
    """`macaroon` with one third-party caveat per request appended, in order.

    Every request is validated and allow-listed before any discharger is contacted, and all
    the dischargers' keys are learnt before the macaroon is touched, so a failure adds nothing.
    """
    if len(caveats) > MAX_THIRD_PARTY_CAVEATS:
        raise BadRequest(f"at most {MAX_THIRD_PARTY_CAVEATS} third-party caveats")
    requests = [request.validated() for request in caveats]
    locations = list(dict.fromkeys(locator.check_allowed(r.location) for r in requests))
    infos = dict(zip(locations, await asyncio.gather(*map(locator.info, locations)), strict=True))
    for request in requests:
        info = infos[request.location]
        root_key = secrets.token_bytes(ROOT_KEY_BYTES)
        caveat_id = encode_caveat(
            request.condition,
            root_key,
            version=min(info.version, VERSION_2),
            third_party_public_key=info.public_key,
            key=key,
        )
        macaroon = chain.add_third_party(
            macaroon,
            caveat_key=root_key,
            caveat_id=caveat_id,
            location=request.location.encode(),
            nonce=secrets.token_bytes(24),
        )
    return macaroon
