"""The core typed caveats: what each one allows, denies or invalidates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caveats import (
    SUCCESS,
    Audience,
    CaveatError,
    ClientCIDR,
    Context,
    Expiry,
    Failure,
    Generation,
    NotBefore,
    Operations,
    Resources,
    Subject,
    Success,
)

NOW = 1763760000.0


def ctx(**fields: object) -> Context:
    """A context at NOW with the given fields."""
    return Context(now=fields.pop("now", NOW), **fields)  # type: ignore[arg-type]


def test_success_is_truthy_and_failure_falsy() -> None:
    """`if result:` can never mistake a Failure for a Success."""

    failure = Failure("no")

    assert SUCCESS
    assert Success() == SUCCESS
    assert not failure
    assert failure.invalid is False


def test_expiry_holds_before_expiry() -> None:
    """A token is valid up to, not including, its expiry second."""

    result = Expiry(1763763600).check(ctx(now=1763763599.999))

    assert result is SUCCESS


@pytest.mark.parametrize("now", [1763763600.0, 1763763600.5, 1863763600.0])
def test_expiry_invalidates_at_and_after_expiry(now: float) -> None:
    """From the expiry second on the token is expired everywhere (invalid, 401)."""

    result = Expiry(1763763600).check(ctx(now=now))

    assert result == Failure("token expired", invalid=True)


@given(st.integers(0, 2**40), st.floats(0, 2**40, allow_nan=False))
def test_expiry_fails_exactly_when_now_reaches_it(expires_at: int, now: float) -> None:
    """Expiry fails if and only if now >= expires_at."""

    result = Expiry(expires_at).check(ctx(now=now))

    assert (result is SUCCESS) == (now < expires_at)


def test_not_before_invalidates_early_use() -> None:
    """Before not_before the token is not yet valid anywhere (invalid, 401)."""

    result = NotBefore(1763760001).check(ctx(now=1763760000.999))

    assert result == Failure("token not yet valid", invalid=True)


def test_not_before_holds_from_its_second() -> None:
    """At and after not_before the caveat holds."""

    results = [NotBefore(1763760000).check(ctx(now=t)) for t in (1763760000.0, 1763769999.0)]

    assert results == [SUCCESS, SUCCESS]


def test_subject_always_holds() -> None:
    """Subject only names the bearer; it never denies on its own."""

    result = Subject("bob").check(ctx())

    assert result is SUCCESS


def test_operations_allows_listed_operation() -> None:
    """A listed operation passes."""

    result = Operations(("read", "write")).check(ctx(operation="write"))

    assert result is SUCCESS


def test_operations_denies_unlisted_operation() -> None:
    """An unlisted operation is a context denial (403), naming the operation."""

    result = Operations(("read",)).check(ctx(operation="delete"))

    assert isinstance(result, Failure)
    assert result.invalid is False
    assert "'delete'" in result.reason


def test_operations_denies_missing_operation() -> None:
    """A request that names no operation cannot satisfy an operations restriction."""

    result = Operations(("read",)).check(ctx())

    assert isinstance(result, Failure)
    assert not result.invalid


def test_operations_are_case_sensitive() -> None:
    """Operations compare exactly; `READ` is not `read`."""

    result = Operations(("read",)).check(ctx(operation="READ"))

    assert isinstance(result, Failure)


@pytest.mark.parametrize(
    ("entries", "resource"),
    [
        (("/docs/1",), "/docs/1"),
        (("/docs/*",), "/docs/1"),
        (("/docs/*",), "/docs/"),
        (("/docs/*",), "/docs/a/b/c"),
        (("/a", "/docs/*"), "/docs/x"),
        (("*",), "/anything"),
        (("/a*/b",), "/a*/b"),
    ],
)
def test_resources_allow_exact_and_prefix_matches(entries: tuple[str, ...], resource: str) -> None:
    """A resource passes when it equals an entry or starts with an entry's text before a final *."""

    result = Resources(entries).check(ctx(resource=resource))

    assert result is SUCCESS


@pytest.mark.parametrize(
    ("entries", "resource"),
    [
        (("/docs/1",), "/docs/10"),
        (("/docs",), "/docs/1"),
        (("/docs/*",), "/docs"),
        (("/docs/*",), "/doc"),
        (("/a*/b",), "/ab/b"),
        (("/docs/*",), "/other/docs/1"),
    ],
)
def test_resources_deny_everything_else(entries: tuple[str, ...], resource: str) -> None:
    """No entry without a final * matches by prefix, and a * only counts at the end."""

    result = Resources(entries).check(ctx(resource=resource))

    assert isinstance(result, Failure)
    assert not result.invalid


@pytest.mark.parametrize(
    "resource",
    [
        "/docs/../admin/x",
        "/docs/x/../../admin",
        "/docs/..",
        "/docs/%2e%2e/admin/x",
        "/docs/%2E./admin",
        "/docs/..;/admin",
        "/docs/./x",
        "/docs/a%2fb",
        "/docs/a%5C..%5Cadmin",
        "/docs/..\\admin",
        # Red team (helper-65): forms a backend that decodes, then NFKC-normalises, reads as `../`.
        "/docs/\uff0e\uff0e\uff0fadmin",
        "/docs/..\uff0fadmin",
        "/docs/\uff0e\uff0e\uff3cadmin",
        "/docs/\u2025/admin",
        "/docs/..\ufe68admin",
        "/docs/%ef%bc%8e%ef%bc%8e%ef%bc%8fadmin",
        "/docs/..%EF%BC%8Fadmin",
        "/docs/%e2%80%a5/admin",
        "/docs/%u002e%u002e/admin",
        "/docs/%uff0e./admin",
        # Bypasses (helper-68): 3-byte overlong UTF-8, Windows best-fit separators, and the
        # fullwidth form encoded twice.
        "/docs/%e0%80%ae%e0%80%ae/admin",
        "/docs/..%e0%80%afadmin",
        "/docs/..\u00a5admin",
        "/docs/..\u20a9admin",
        "/docs/%25ef%25bc%258e%25ef%25bc%258e%25ef%25bc%258fadmin",
        # Review (helper-72): a literal U+FFFD switched the no-UTF-8 check off, and a fourth
        # encoding outlasted the decoding.
        "/docs/\ufffd/%e0%80%ae%e0%80%ae/admin",
        "/docs/%252525EF%252525BC%2525258E%252525EF%252525BC%2525258E%252525EF%252525BC%2525258Fadmin",
        "/docs/%2525252e%2525252e/admin",
    ],
)
def test_resources_deny_a_prefix_match_that_could_leave_the_prefix(resource: str) -> None:
    """Red team (helper-45): /v1/verify callers pass paths as their framework gives them, and
    `/docs/../admin/x` passed a `/docs/*` token while the application served /admin/x. A resource
    matched by a prefix fails if a dot segment or an encoded separator could take it out."""

    result = Resources(("/docs/*",)).check(ctx(resource=resource))

    assert isinstance(result, Failure) and not result.invalid
    assert "outside the token's prefixes" in result.reason


@pytest.mark.parametrize(
    ("entries", "resource"),
    [
        (("/docs/*",), "/docs/.well-known"),
        (("/docs/*",), "/docs/report.v2.pdf"),
        (("/docs/*",), "/docs/..x"),
        (("/docs/*",), "/docs/100%25"),
        (("/docs/*",), "/docs/caf\u00e9/r\u00e9sum\u00e9.pdf"),
        (("/docs/*",), "/docs/caf%C3%A9/%EF%BC%A1"),
        (("/docs/*",), "/docs/\uff0e\uff0ex"),
        (("/docs/*",), "/docs/price\u00a5100"),
        (("/docs/*",), "/docs/100%2525"),
        (("*",), "/docs/../admin"),  # a bare * allows everything: nothing to leave
        (("/docs/../x",), "/docs/../x"),  # an exact entry is the token author's own choice
    ],
)
def test_resources_keep_dots_that_leave_nothing(entries: tuple[str, ...], resource: str) -> None:
    result = Resources(entries).check(ctx(resource=resource))

    assert result is SUCCESS


def test_resources_deny_missing_resource() -> None:
    """A request that names no resource cannot satisfy a resources restriction."""

    result = Resources(("*",)).check(ctx())

    assert isinstance(result, Failure)


def test_audience_allows_listed_service() -> None:
    """A listed audience passes."""

    result = Audience(("files", "mail")).check(ctx(audience="mail"))

    assert result is SUCCESS


@pytest.mark.parametrize("audience", ["billing", None])
def test_audience_denies_other_or_missing_service(audience: str | None) -> None:
    """A token for one service is denied at another, and where the service is unknown."""

    result = Audience(("files",)).check(ctx(audience=audience))

    assert isinstance(result, Failure)
    assert not result.invalid


@pytest.mark.parametrize(
    ("cidrs", "client_ip"),
    [
        (("10.0.0.0/8",), "10.0.0.5"),
        (("192.168.1.0/24", "10.0.0.0/8"), "10.255.255.255"),
        (("10.0.0.5/32",), "10.0.0.5"),
        (("10.0.0.5/24",), "10.0.0.200"),
        (("2001:db8::/32",), "2001:db8::1"),
        (("10.0.0.0/8",), "::ffff:10.0.0.5"),
        (("::ffff:10.0.0.0/104",), "10.1.2.3"),
        (("::ffff:10.0.0.0/104",), "::ffff:10.1.2.3"),
        (("0.0.0.0/0",), "203.0.113.9"),
    ],
)
def test_client_cidr_allows_addresses_inside(cidrs: tuple[str, ...], client_ip: str) -> None:
    """An address inside any listed network passes, IPv4-mapped IPv6 counted as IPv4."""

    result = ClientCIDR(cidrs).check(ctx(client_ip=client_ip))

    assert result is SUCCESS


@pytest.mark.parametrize(
    ("cidrs", "client_ip"),
    [
        (("10.0.0.0/8",), "11.0.0.1"),
        (("10.0.0.0/8",), "::ffff:11.0.0.1"),
        (("10.0.0.0/8",), "2001:db8::1"),
        (("2001:db8::/32",), "10.0.0.5"),
        (("0.0.0.0/0",), "::1"),
        (("10.0.0.0/8",), "10.0.0"),
        (("10.0.0.0/8",), "10.0.0.5/32"),
        (("10.0.0.0/8",), "not an ip"),
        (("10.0.0.0/8",), ""),
        (("10.0.0.0/8",), None),
    ],
)
def test_client_cidr_denies_everything_else(cidrs: tuple[str, ...], client_ip: str | None) -> None:
    """Addresses outside every network, unparsable addresses and a missing address are denied."""

    result = ClientCIDR(cidrs).check(ctx(client_ip=client_ip))

    assert isinstance(result, Failure)
    assert not result.invalid


def test_client_cidr_equality_follows_the_wire_form() -> None:
    """ClientCIDR caveats are equal when their wire text is, not when their networks are."""

    same = ClientCIDR(("10.0.0.0/8",)) == ClientCIDR(("10.0.0.0/8",))
    different = ClientCIDR(("10.0.0.0/8",)) == ClientCIDR(("10.0.0.1/8",))

    assert same
    assert not different


@pytest.mark.parametrize("current", [0, 3])
def test_generation_holds_while_current(current: int) -> None:
    """A token minted at the subject's current generation is valid."""

    result = Generation(3).check(ctx(generation=current))

    assert result is SUCCESS


def test_generation_revokes_older_tokens() -> None:
    """After revoke-all bumps the subject's generation, older tokens are invalid everywhere."""

    result = Generation(2).check(ctx(generation=3))

    assert result == Failure("token revoked (subject generation)", invalid=True)


def test_reasons_echo_only_a_bounded_part_of_request_data() -> None:
    """A huge request field is cut in the reason, so reasons stay log- and header-sized."""

    result = Operations(("read",)).check(ctx(operation="x" * 10_000))

    assert isinstance(result, Failure)
    assert len(result.reason) < 160


@pytest.mark.parametrize("cidr", ["fe80::1%eth0/128", "fe80::1%eth0", "10.0.0.0/0.255.255.255"])
def test_client_cidr_refuses_a_zone_or_a_netmask(cidr: str) -> None:
    """Red team (helper-56): ipaddress reads `fe80::1%eth0/128` and then matches any zone, and
    `10.0.0.0/0.255.255.255` as /8: networks other than the one written. Refused, as any typo."""
    with pytest.raises(CaveatError):
        ClientCIDR((cidr,))


@pytest.mark.parametrize("client_ip", ["fe80::1%eth0", "::ffff:10.0.0.1%eth0"])
def test_a_client_address_with_a_zone_is_no_address(client_ip: str) -> None:
    """`::ffff:10.0.0.1%eth0` matched as 10.0.0.1 while `10.0.0.1%eth0` was refused: a zoned
    address is refused alike (a network caveat names no zone)."""
    result = ClientCIDR(("10.0.0.0/8", "fe80::/10")).check(ctx(client_ip=client_ip))

    assert isinstance(result, Failure) and "not an IP address" in result.reason
