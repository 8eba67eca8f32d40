"""A complete `POST /v1/verify` read straight from the bytes a connection received.

For tokensvc.web.fastverify: aiohttp's parser (llhttp, in C) is quick, but building its message,
header multidict, URL and body stream in Python costs ~4 µs a request, as much as the rest of a
cached verify. This reads only the plain case — what service clients with keep-alive send — and
answers None for anything else, which aiohttp's parser then reads as it always did. It accepts a
strict subset of what llhttp accepts and reads it the same way (a property test holds the two
together), so it can never see a different request than aiohttp would:

- the request line exactly `POST /v1/verify HTTP/1.1` (no query, no other version);
- header lines `name: value`, the name an RFC 9110 token, the value free of control characters,
  no obsolete line folding; at most MAX_FIELDS bytes of them;
- exactly one `Host` (HTTP/1.1 asks for it, and aiohttp refuses a request without);
- exactly one `Content-Length`, ASCII digits, within the body limit, and the whole body present;
- no `Transfer-Encoding`, `Content-Encoding`, `Expect` or `Upgrade`, and `Connection`, if sent,
  only `keep-alive` (ending or upgrading a connection is aiohttp's business);
- no header twice (aiohttp refuses some repeated ones); `X-Request-ID` and `X-Forwarded-For`,
  the two headers the answer reads, ASCII. So the one X-Forwarded-For line read here is the
  whole list; a request with several lines is aiohttp's, whose reading joins them all
  (tokensvc.web.auth.joined_forwarded_for), and both then take the same client address.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

REQUEST_LINE: Final = b"POST /v1/verify HTTP/1.1\r\n"
MAX_FIELDS: Final = 8190  # aiohttp's max_field_size; here the bound of all header lines together
_MAX_LENGTH_DIGITS: Final = 10

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Controls but HTAB, and DEL: llhttp refuses them in values; here they send the request to it.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# The headers read here, and those that make a request aiohttp's: the ones that change how the
# message is framed or the connection handled.
_READ: Final = frozenset(
    (b"host", b"content-length", b"x-request-id", b"x-forwarded-for", b"connection")  # noqa: RUF005 - the two groups the comment names
    + (b"transfer-encoding", b"content-encoding", b"expect", b"upgrade", b"te", b"trailer")
)


class VerifyRequest(NamedTuple):
    body: bytes
    request_id: str | None  # X-Request-ID as sent
    forwarded_for: str  # X-Forwarded-For as sent, "" without one
    end: int  # where the next request starts in the data


def read_verify_request(data: bytes, start: int, max_body: int) -> VerifyRequest | None:
    """The plain POST /v1/verify at `data[start:]`, complete, or None for aiohttp's parser."""
    if not data.startswith(REQUEST_LINE, start):
        return None
    fields_start = start + len(REQUEST_LINE)
    fields_end = data.find(b"\r\n\r\n", fields_start - 2)
    if fields_end < fields_start or fields_end - fields_start > MAX_FIELDS:
        return None  # incomplete, no header at all (so no Content-Length), or oversized
    length: int | None = None
    request_id: str | None = None
    forwarded_for: str | None = None
    host = False
    seen: set[bytes] = set()
    for line in data[fields_start:fields_end].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        # A name with white space (obsolete folding, `Name :`) or any other non-token is refused.
        if not colon or (not name.replace(b"-", b"").isalnum() and _TOKEN.fullmatch(name) is None):
            return None
        if _CONTROL.search(value) is not None:  # a stray CR or LF included
            return None
        name = name.lower()
        # No header twice: aiohttp refuses some repeated ones (Content-Type, User-Agent, …).
        if name in seen:
            return None
        seen.add(name)
        if name not in _READ:
            continue
        value = value.strip(b" \t")
        if name == b"content-length":
            if not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                return None
            length = int(value)
        elif name == b"host":
            host = True
        elif name == b"x-request-id":
            if not value.isascii():
                return None
            request_id = value.decode("ascii")
        elif name == b"x-forwarded-for":
            if not value.isascii():
                return None
            forwarded_for = value.decode("ascii")
        elif name != b"connection" or value.lower() != b"keep-alive":
            return None
    if length is None or length > max_body or not host:
        return None
    body_start = fields_end + 4
    end = body_start + length
    if end > len(data):
        return None
    return VerifyRequest(data[body_start:end], request_id, forwarded_for or "", end)
