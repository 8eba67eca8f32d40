"""Logging: one JSON object per line (structlog), security events in the OWASP vocabulary,
and redaction of anything that looks like a secret before it is written.

Security events use the names of the OWASP Logging Vocabulary Cheat Sheet (`authn_login_success`,
`authn_login_fail`, `authn_login_lock`, `authz_fail`, `user_created`, …) as the `event` field.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from tokensvc.macaroons.tokenformat import TOKEN_PATTERN

# Field names whose values are never written, whatever they hold.
_SECRET_KEYS = frozenset(
    ("password", "token", "authorization", "secret", "key", "kek", "pepper", "discharges")
)
# pymacaroons-style base64 macaroons and database URLs with credentials inside free text.
_LONG_B64 = re.compile(r"[A-Za-z0-9_\-+/]{80,}={0,2}")
# The password part runs to the last `@` before the host, so an unencoded `@` in it is covered;
# the user part may be empty (`redis://:password@host`).
_URL_CREDENTIALS = re.compile(r"(\w+://[^:/@\s]*):[^\s/]*@")
# `Authorization: Basic …`, `Bearer …`, `Macaroon …` credentials quoted inside free text.
_AUTH_SCHEMES = re.compile(r"(?i)\b(basic|bearer|macaroon)\s+[A-Za-z0-9._~+/=-]{8,}")
_AUTH_HEADER = re.compile(r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,}]+")
# `password=…`, `"token": "…"` and the like in query strings, DSNs, key=value text and JSON;
# a bare `token:` is left alone, as error reasons say "invalid token: …".
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(password|passwd|pwd|pass|secret|token|api[_-]?key|kek|pepper)(\s*=\s*[\"']?|[\"']\s*:\s*[\"'])"
    r"(?!\[REDACTED\])[^\s&;,\"'}]+"
)
_MAX_DEPTH = 4


# One search that every pattern below needs to match first; most log strings (methods, routes,
# ids, reasons) fail it, and then cost one regex search instead of six substitutions.
_SUSPECT = re.compile(
    r"tsv1_|://|[A-Za-z0-9_\-+/]{80}|(?i:authorization|(?:basic|bearer|macaroon)\s"
    r"|(?:passw\w*|pwd|pass|secret|token|api[_-]?key|kek|pepper)[\"']?\s*[=:])"
)


def scrub(text: str) -> str:
    """Mask tokens, long base64 blobs, Authorization values and URL passwords in free text."""
    if len(text) < 8 or _SUSPECT.search(text) is None:
        return text
    text = TOKEN_PATTERN.sub("tsv1_[REDACTED]", text)
    text = _LONG_B64.sub("[REDACTED]", text)
    text = _URL_CREDENTIALS.sub(r"\1:***@", text)
    text = _AUTH_HEADER.sub(r"\1[REDACTED]", text)
    text = _AUTH_SCHEMES.sub(r"\1 [REDACTED]", text)
    return _SECRET_ASSIGNMENT.sub(r"\1\2[REDACTED]", text)


def _redact_value(value: Any, depth: int = 0) -> Any:
    """Strings scrubbed; dicts, lists and tuples walked (secret-named keys masked), a few deep."""
    if isinstance(value, str):
        return scrub(value)
    if depth >= _MAX_DEPTH:
        return value if isinstance(value, (int, float, bool, type(None))) else "[REDACTED]"
    if isinstance(value, dict):
        return {
            k: "[REDACTED]"
            if isinstance(k, str) and k.lower() in _SECRET_KEYS
            else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact_value(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return "[REDACTED]"  # raw bytes in a log line are key material more often than not
    return value


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in list(event_dict):
        value = event_dict[name]
        if name.lower() in _SECRET_KEYS:
            event_dict[name] = "[REDACTED]"
        elif isinstance(value, (str, dict, list, tuple, bytes)):
            event_dict[name] = _redact_value(value)
    return event_dict


# The id of the request being handled, on every line logged while handling it. One ContextVar
# set per request (structlog's bind_contextvars costs several times as much on the hot path).
REQUEST_ID: ContextVar[str | None] = ContextVar("tokensvc_request_id", default=None)


def _add_request_id(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


_STDLIB_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}


def _stdlib_extra(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Lift `extra={...}` fields of stdlib log calls into the JSON object."""
    record = event_dict.get("_record")
    if record is not None:
        for name, value in vars(record).items():
            if name not in _STDLIB_ATTRS and not name.startswith("_"):
                event_dict.setdefault(name, value)
    return event_dict


def configure(level: str = "info", *, stream: Any = None) -> None:
    """Route stdlib logging and structlog through one JSON renderer on stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _stdlib_extra],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    global _access_stream, _access_binary  # noqa: PLW0603 - the access log's stream, set once at configuration
    _access_stream = handler.stream if root.isEnabledFor(logging.INFO) else None
    _access_binary = False
    if _access_stream is not None and getattr(_access_stream, "fileno", None) is not None:
        try:
            # Block-buffered and binary, flushed by flush_access_log() (every second and at
            # shutdown): a line-buffered stderr costs a write syscall per request, a text stream
            # a decode. At most ~1 s of access lines can be lost in a crash; security events
            # keep going through the handler.
            _access_stream = open(  # noqa: SIM115 - lives as long as the process
                _access_stream.fileno(), "wb", buffering=1 << 16, closefd=False
            )
            _access_binary = True
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
    # Alembic and aiohttp's access log are chatty at INFO; keep them at WARNING.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # aiosqlite logs every statement with its parameters at DEBUG: user names as typed at login
    # (a password, sometimes), password hashes. Never ours to write, whatever the level.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientParseErrors) for f in server_log.filters):
        server_log.addFilter(_ClientParseErrors())


class _ClientParseErrors(logging.Filter):
    """aiohttp logs a request it could not parse as an error, with a traceback whose message holds
    the bytes that did not parse: a misframed login's body, password and all. That is the
    client's mistake, not ours: one line naming the error's kind, no bytes, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "a request could not be parsed (%s)"
            record.args = (type(exc).__name__,)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# The per-request access line is the one log call on every request; through structlog's
# ProcessorFormatter it cost ~55 µs, most of a /verify. With logging configured, it is written
# directly as one orjson line with the same keys the formatter produces.
_access_stream: Any = None
_access_binary = False  # a binary stream takes orjson's bytes as they are


def flush_access_log() -> None:
    """Push buffered access lines out (called periodically and at shutdown)."""
    stream = _access_stream
    if stream is not None:
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


_millisecond = -1
_millisecond_text = ""
_second = -1
_second_text = ""


def _timestamp() -> str:
    """ISO 8601 UTC with milliseconds, rebuilt at most once a millisecond (and its date part once
    a second): many requests share one."""
    global _millisecond, _millisecond_text, _second, _second_text  # noqa: PLW0603 - the per-millisecond timestamp cache
    now = int(time.time() * 1000)
    if now != _millisecond:
        whole = now // 1000
        if whole != _second:
            _second = whole
            _second_text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _millisecond = now
        _millisecond_text = f"{_second_text}.{now % 1000:03d}Z"
    return _millisecond_text


def access_line(
    request_id: str,
    method: str,
    path: str,
    route: str,
    status: int,
    seconds: float,
    client_ip: str | None,
) -> bool:
    """Write one `http_request` line; False when logging is not configured (use stdlib logging).

    A path that is its route's template (no parameters: /v1/verify) cannot carry a secret and
    skips the scrub. The fields are one dict literal, in the order the formatter writes them:
    building a smaller dict and adding to it costs a resize on every request.
    """
    stream = _access_stream
    if stream is None:
        return False
    if path != route:
        path = scrub(path[:512])
    fields = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "route": route,
        "status": status,
        "duration_ms": int(seconds * 1_000_000) / 1000,  # µs precision, cheaper than round()
        "client_ip": client_ip,
        "event": "http_request",
        "level": "info",
        "logger": "tokensvc.access",
        "timestamp": _timestamp(),
    }
    if _access_binary:
        stream.write(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))
    else:
        stream.write(orjson.dumps(fields).decode() + "\n")
    return True


def security_event(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one OWASP-vocabulary security event; never pass secrets (they are redacted anyway)."""
    structlog.get_logger("tokensvc.security").log(level, event, security=True, **fields)
