"""Red team (helper-45): /v1/verify matched an explicit resource as given, so a service passing
its framework's path (`resource=request.path`) let a `/docs/*` token through for
`/docs/../admin/x`, which the service then served as /admin/x. Each test is that attack."""

from __future__ import annotations

from typing import Any

import pytest

from tests.security.attack import call, verify


@pytest.mark.parametrize(
    "resource",
    [
        "/docs/../admin/x",
        "/docs/%2e%2e/admin/x",
        "/docs/x/../../admin",
        "/docs/a%2F..%2Fadmin",
        # Red team (helper-56): a dot segment ended by what a backend cuts a path at, or whose
        # dots are double-encoded, overlong UTF-8 or fullwidth.
        "/docs/..?x",
        "/docs/..#x",
        "/docs/..%3b/admin",
        "/docs/..%3B/admin",
        "/docs/..%00",
        "/docs/..\u0000",
        "/docs/.. ",
        "/docs/..\t",
        "/docs/%252e%252e/admin",
        "/docs/%c0%ae%c0%ae/admin",
        "/docs/\uff0e\uff0e/admin",
        # Red team (helper-65): read as `../` by a backend that decodes `%u` escapes, or that
        # NFKC-normalises (fullwidth solidus).
        "/docs/..\uff0fadmin",
        "/docs/%u002e%u002e/admin",
    ],
)
async def test_verify_refuses_a_prefix_match_that_could_leave_the_prefix(
    shaped: Any, root: str, resource: str
) -> None:
    status, minted = await call(
        shaped, "POST", "/v1/tokens", root, json={"subject": "d", "resources": ["/docs/*"]}
    )
    assert status == 201, minted

    allowed_status, _ = await verify(shaped, minted["token"], resource="/docs/x")
    status, body = await verify(shaped, minted["token"], resource=resource)

    assert allowed_status == 200
    assert status == 403, body
    assert "outside the token's prefixes" in body["reason"]


@pytest.mark.parametrize(
    "resource", ["/docs/a.b", "/docs/.well-known/x", "/docs/v1.2/x", "/docs/a..b", "/docs/x?y=1"]
)
async def test_dots_and_queries_that_leave_nothing_still_match(
    shaped: Any, root: str, resource: str
) -> None:
    """The refusal is for dot segments, not for dots: names with dots, and a query after a
    name, stay inside the prefix and are allowed."""
    status, minted = await call(
        shaped, "POST", "/v1/tokens", root, json={"subject": "d", "resources": ["/docs/*"]}
    )
    assert status == 201, minted

    assert (await verify(shaped, minted["token"], resource=resource))[0] == 200


@pytest.mark.parametrize("cidr", ["fe80::1%eth0/128", "10.0.0.0/0.255.255.255"])
async def test_a_network_with_a_zone_or_a_netmask_is_refused_at_mint(
    shaped: Any, root: str, cidr: str
) -> None:
    """Red team (helper-56): the mint took these and the caveat then matched another network
    than the one written (any zone; a /8). A 400 now, by the caveat's own rule."""
    status, body = await call(
        shaped, "POST", "/v1/tokens", root, json={"subject": "d", "cidrs": [cidr]}
    )

    assert status == 400 and "not an IP network" in body["error"]["message"], body
