"""The core typed caveats. Their tags (0–7) and field order are the wire format: fixed forever."""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

from caveats.context import Context
from caveats.errors import CaveatError
from caveats.registry import caveat, check_fields
from caveats.result import SUCCESS, Failure, Result, clip

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The failures that carry no request data are built once.
_EXPIRED: Final = Failure("token expired", invalid=True)
_NOT_YET_VALID: Final = Failure("token not yet valid", invalid=True)
_REVOKED: Final = Failure("token revoked (subject generation)", invalid=True)
_NO_OPERATION: Final = Failure("the token is limited to some operations; the request names none")
_NO_RESOURCE: Final = Failure("the token is limited to some resources; the request names none")
_NO_AUDIENCE: Final = Failure("the token is limited to some audiences; the request names none")
#: What could take a resource matched by a prefix out of that prefix once the application
#: resolves it (Resources.check): a dot segment (`.`, `..`), its dots plain, percent-encoded,
#: double-encoded, overlong UTF-8 or fullwidth, ended by a separator or by what a backend cuts
#: a path at (`;`: Tomcat's `..;`, `?`, `#`, NUL or another control, whitespace: trimmed), plain
#: or encoded; or an encoded `/` or `\` anywhere (red team: `/docs/..%3b/admin`, `/docs/..?x`,
#: `/docs/..%00` and `/docs/%252e%252e/admin` passed a `/docs/*` token).
_DOT: Final = r"(?:\.|%2e|%252e|%c0%ae|\uff0e|%ef%bc%8e)"
_CUT: Final = r"(?:[/\\;?#\s\x00-\x1f\x7f]|%(?:2f|5c|3b|3f|23|00|25)|$)"
_CLIMBS: Final = re.compile(
    rf"(?:^|[/\\]|%2f|%5c){_DOT}{{1,2}}{_CUT}|%2f|%5c|%25(?:2f|5c)|%c0%af|%c1%9c"
    # IIS's `%u` escapes (four hex digits): no RFC 3986 client writes one, and a backend that
    # decodes them
    # reads `%u002e%u002e/` as `../` (red team, helper-65).
    r"|%u[0-9a-f]{4}",
    re.IGNORECASE,
)


_DECODINGS: Final = 3
#: What Windows' "best fit" conversion to an ANSI code page turns into a separator, which NFKC
#: leaves alone: `¥` and `₩` become `\\` (code pages 932 and 949), the division, fraction
#: and reverse-solidus-operator slashes `/` and `\\` (red team, helper-68: `/docs/..¥admin`
#: reaches /admin on an application using the ANSI file APIs).
_BEST_FIT: Final = str.maketrans(
    {"\u00a5": "\\", "\u20a9": "\\", "\u2215": "/", "\u2044": "/", "\u29f5": "\\"}
)


def _climbs(resource: str) -> bool:
    """Whether `resource` could leave a prefix once a backend decodes or normalises it.

    Besides the forms `_CLIMBS` names, a backend that percent-decodes and then NFKC-normalises
    (some Java and IIS stacks) reads every compatibility form of `.`, `/` and `\\` as the ASCII
    one: fullwidth `．．／`, U+2025 (two dots in one character), U+FE68 (a small `\\`), plain or
    percent-encoded as UTF-8 (red team, helper-65: `/docs/．．／admin` passed a `/docs/*` token).
    So a resource with `%` or anything outside ASCII is also checked in that reading, decoded
    as often as it changes (up to three times), with Windows' best-fit separators.
    """
    if _CLIMBS.search(resource) is not None:
        return True
    if resource.isascii() and "%" not in resource:
        return False
    decoded = resource
    for _ in range(_DECODINGS):  # as often as a backend might decode (helper-68: twice)
        try:
            once = unquote(decoded, errors="strict")
        except UnicodeDecodeError:
            # An escape that is no UTF-8: overlong forms (`%e0%80%ae` is `.` to old IIS and
            # Java decoders, helper-68) among them. No client sends one for a name.
            return True
        if once == decoded:
            break
        decoded = once
    else:
        if unquote(decoded) != decoded:
            return True  # encoded more often than any backend decodes: no name is (helper-72)
    normalised = unicodedata.normalize("NFKC", decoded).translate(_BEST_FIT)
    return normalised != resource and _CLIMBS.search(normalised) is not None


_NO_CLIENT_IP: Final = Failure(
    "the token is limited to some networks; the request has no client IP"
)


@caveat(tag=0)
@dataclass(frozen=True, slots=True)
class Expiry:
    """The token is valid until `expires_at` (unix seconds, exclusive)."""

    expires_at: int

    def __post_init__(self) -> None:
        check_fields(self)

    def check(self, ctx: Context) -> Result:
        """Invalid once `now` reaches `expires_at`."""
        return _EXPIRED if ctx.now >= self.expires_at else SUCCESS


@caveat(tag=1)
@dataclass(frozen=True, slots=True)
class NotBefore:
    """The token is valid from `not_before` (unix seconds, inclusive)."""

    not_before: int

    def __post_init__(self) -> None:
        check_fields(self)

    def check(self, ctx: Context) -> Result:
        """Invalid while `now` is before `not_before`."""
        return _NOT_YET_VALID if ctx.now < self.not_before else SUCCESS


@caveat(tag=2)
@dataclass(frozen=True, slots=True)
class Subject:
    """Whom the token speaks for; collected by the checker, never denies on its own."""

    subject: str

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.subject:
            raise CaveatError("Subject.subject must not be empty")

    def check(self, ctx: Context) -> Result:
        """Always holds; conflicting subjects are the checker's concern."""
        return SUCCESS


@caveat(tag=3)
@dataclass(frozen=True, slots=True)
class Operations:
    """The request's operation must be one of `operations`."""

    operations: tuple[str, ...]

    def __post_init__(self) -> None:
        check_fields(self)

    def check(self, ctx: Context) -> Result:
        """Holds when the context names an operation that is listed."""
        if ctx.operation is None:
            return _NO_OPERATION
        if ctx.operation in self.operations:
            return SUCCESS
        return Failure(f"operation {clip(ctx.operation)} is not allowed by the token")


@caveat(tag=4)
@dataclass(frozen=True, slots=True)
class Resources:
    """The request's resource must equal an entry, or start with an entry's text before a final `*`.

    Resources are compared as given: the caller normalises them (paths, case) before checking.
    One exception, because callers of /v1/verify pass paths as their framework gives them: a
    resource matched by a prefix must not be able to leave it, so one with a dot segment or an
    encoded `/` or `\\` fails (red team: `/docs/../admin/x` passed a `/docs/*` token, and the
    application served /admin/x). A bare `*` matches everything, so nothing is left there.
    """

    resources: tuple[str, ...]
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _anything: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "_exact", frozenset(r for r in self.resources if r[-1] != "*"))
        object.__setattr__(self, "_prefixes", tuple(r[:-1] for r in self.resources if r[-1] == "*"))
        object.__setattr__(self, "_anything", "" in self._prefixes)

    def check(self, ctx: Context) -> Result:
        """Holds when the context names a resource that an entry matches."""
        resource = ctx.resource
        if resource is None:
            return _NO_RESOURCE
        if resource in self._exact:
            return SUCCESS
        if self._prefixes and resource.startswith(self._prefixes):
            # The common resource is ASCII with no `.`, `%` or `\\`: four cheap tests, no regex.
            if (
                self._anything
                or (
                    "." not in resource
                    and "%" not in resource
                    and "\\" not in resource
                    and resource.isascii()
                )
                or not _climbs(resource)
            ):
                return SUCCESS
            return Failure(
                f"resource {clip(resource)} has a dot segment or an encoded separator: it could "
                "name a resource outside the token's prefixes"
            )
        return Failure(f"resource {clip(resource)} is not allowed by the token")


@caveat(tag=5)
@dataclass(frozen=True, slots=True)
class Audience:
    """The service checking the token must be one of `audiences`."""

    audiences: tuple[str, ...]

    def __post_init__(self) -> None:
        check_fields(self)

    def check(self, ctx: Context) -> Result:
        """Holds when the context names an audience that is listed."""
        if ctx.audience is None:
            return _NO_AUDIENCE
        if ctx.audience in self.audiences:
            return SUCCESS
        return Failure(f"audience {clip(ctx.audience)} is not allowed by the token")


@caveat(tag=6)
@dataclass(frozen=True, slots=True)
class ClientCIDR:
    """The request must come from an address inside one of `cidrs` (IPv4 or IPv6 networks).

    Every entry must parse as a network (else `CaveatError`, so a typo never mints a token that
    silently matches nothing). Host bits are ignored (`10.0.0.5/24` means `10.0.0.0/24`), and
    IPv4-mapped IPv6 addresses and networks (`::ffff:10.0.0.5`) count as the IPv4 ones they carry.
    """

    cidrs: tuple[str, ...]
    _networks: tuple[_IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "_networks", _parse_networks(self.cidrs))

    def check(self, ctx: Context) -> Result:
        """Holds when the context's client IP lies in one of the networks."""
        if ctx.client_ip is None:
            return _NO_CLIENT_IP
        ip = _parse_ip(ctx.client_ip)
        if ip is None:
            return Failure(f"client IP {clip(ctx.client_ip)} is not an IP address")
        for network in self._networks:
            if ip in network:
                return SUCCESS
        return Failure(f"client IP {clip(ctx.client_ip)} is not allowed by the token")


@caveat(tag=7)
@dataclass(frozen=True, slots=True)
class Generation:
    """The token was minted at this generation of its subject; revoke-all bumps the generation."""

    generation: int

    def __post_init__(self) -> None:
        check_fields(self)

    def check(self, ctx: Context) -> Result:
        """Invalid once the subject's current generation has moved past the token's."""
        return _REVOKED if self.generation < ctx.generation else SUCCESS


def _parse_networks(cidrs: tuple[str, ...]) -> tuple[_IPNetwork, ...]:
    networks: list[_IPNetwork] = []
    for index, text in enumerate(cidrs):
        try:
            # `addr` or `addr/prefixlen` only: ipaddress also reads a zone (`fe80::1%eth0`),
            # which it then ignores, and a netmask (`10.0.0.0/0.255.255.255`), both a network
            # other than the one written (red team).
            if "%" in text or ("/" in text and not text.rpartition("/")[2].isdigit()):
                raise ValueError(text)
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise CaveatError(f"ClientCIDR.cidrs[{index}] is not an IP network") from None
        networks.append(_unmap_network(network))
    return tuple(networks)


_MAPPED_V4: Final = ipaddress.IPv6Network("::ffff:0:0/96")


def _unmap_network(network: _IPNetwork) -> _IPNetwork:
    """`::ffff:a.b.c.d/n` (n ≥ 96) as the IPv4 network `a.b.c.d/(n - 96)`; others unchanged."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED_V4):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None  # noqa: S101 - narrows the type; inside ::ffff:0:0/96
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


@functools.lru_cache(maxsize=4096)
def _parse_ip(text: str) -> _IPAddress | None:
    """The address in `text` (IPv4-mapped IPv6 as IPv4), or None; cached, clients repeat. An
    address with a zone (`fe80::1%eth0`) is none: a network caveat cannot name zones."""
    if "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
