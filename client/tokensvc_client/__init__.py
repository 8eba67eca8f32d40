"""tokensvc-client: zero-hop token checks for services protected by tokensvc.

Cached, signature-checked verdicts from tokensvc (POST /v1/verdict), the caveats decided locally
with tokensvc's own `caveats` package, and revocations pushed over a Server-Sent Events stream
(GET /v1/revocations/stream). It never holds root keys. See client/README.md.
"""

from tokensvc_client.client import TokensvcClient, WhenStale
from tokensvc_client.errors import (
    BadRequest,
    CaveatDenied,
    Denied,
    InvalidToken,
    TokensvcClientError,
    Unavailable,
)
from tokensvc_client.mapping import PUBLIC, Requirement
from tokensvc_client.metrics import ClientMetrics, register_prometheus
from tokensvc_client.verdicts import Principal

__all__ = [
    "PUBLIC",
    "BadRequest",
    "CaveatDenied",
    "ClientMetrics",
    "Denied",
    "InvalidToken",
    "Principal",
    "Requirement",
    "TokensvcClient",
    "TokensvcClientError",
    "Unavailable",
    "WhenStale",
    "register_prometheus",
]
