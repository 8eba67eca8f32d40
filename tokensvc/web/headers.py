"""The security headers every answer carries (OWASP's set for an API that browsers never render).

JSON answers are built with them (tokensvc.web.jsonio); the request pipeline adds them to any
other answer and adds HSTS when this process terminates TLS itself.
"""

from __future__ import annotations

from collections.abc import Mapping

SECURITY_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    # Our name without a version (aiohttp would send `Python/3.11 aiohttp/3.14.5`): which
    # releases run here is of use only to someone choosing an exploit.
    "Server": "tokensvc",
}
# Present on an answer that already carries the whole set (every JSON answer).
MARKER = "X-Content-Type-Options"
# Two years, as the HSTS preload list asks; sent only when this process terminates TLS itself.
HSTS = "max-age=63072000"
