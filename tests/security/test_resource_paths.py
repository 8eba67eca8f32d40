"""Red team (helper-45): /v1/verify matched an explicit resource as given, so a service passing
its framework's path (`resource=request.path`) let a `/docs/*` token through for
`/docs/../admin/x`, which the service then served as /admin/x. Each test is that attack."""

from __future__ import annotations

from typing import Any

import pytest

from tests.security.attack import call, verify


@pytest.mark.parametrize(
    "resource",
    ["/docs/../admin/x", "/docs/%2e%2e/admin/x", "/docs/x/../../admin", "/docs/a%2F..%2Fadmin"],
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
