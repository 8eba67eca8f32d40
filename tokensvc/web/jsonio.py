"""JSON in and out with orjson, and the one place request bodies are parsed and size-checked."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from tokensvc.errors import BadRequest, PayloadTooLarge
from tokensvc.web.headers import SECURITY_HEADERS

JSON = "application/json"

# Every JSON answer starts from a copy of these, which is cheaper than adding the security
# headers afterwards. web.Response makes its own copy of the headers it is given (a C-level
# copy of a CIMultiDict), so they are passed as they are; test_headers checks that it still does.
_JSON_HEADERS: CIMultiDict[str] = CIMultiDict({"Content-Type": JSON, **SECURITY_HEADERS})


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """`data` as a JSON answer, with the security headers and any `headers` given."""
    if headers:
        all_headers = _JSON_HEADERS.copy()
        all_headers.update(headers)
        return web.Response(body=orjson.dumps(data), status=status, headers=all_headers)
    return web.Response(body=orjson.dumps(data), status=status, headers=_JSON_HEADERS)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; anything else is a 400, anything too big a 413."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge("request body too large") from None
    return json_object(body)


def json_object(body: bytes) -> dict[str, Any]:
    """`body` parsed as a JSON object; BadRequest for anything else."""
    if not body:
        raise BadRequest("request body must be a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def optional_str(data: dict[str, Any], name: str, *, max_len: int = 1024) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise BadRequest(f"{name} must be a string of at most {max_len} characters")
    return value


def str_list(
    data: dict[str, Any], name: str, *, max_items: int = 64, single_ok: bool = False
) -> tuple[str, ...]:
    """A list of strings; a bare string only where the API documents it (`audience`)."""
    value = data.get(name)
    if value is None:
        return ()
    if isinstance(value, str) and single_ok:
        value = [value]
    if (
        not isinstance(value, list)
        or len(value) > max_items
        or not all(isinstance(v, str) for v in value)
    ):
        raise BadRequest(f"{name} must be a list of at most {max_items} strings")
    return tuple(value)


def reject_unknown(data: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest("unknown field(s): " + ", ".join(u[:40] for u in unknown[:5]))


def printable(value: str | None, name: str, *, max_len: int = 255) -> str | None:
    """A query or path value bound for the database: no control characters (PostgreSQL refuses
    NUL in text, which would otherwise surface as a 500), bounded length."""
    if value is None:
        return None
    if len(value) > max_len or not value.isprintable():
        raise BadRequest(f"{name} must be at most {max_len} printable characters")
    return value
