"""Logging: one JSON object per line (structlog), security events in the OWASP vocabulary,
and redaction of anything that looks like a secret before it is written.

Security events use the names of the OWASP Logging Vocabulary Cheat Sheet (`authn_login_success`,
`authn_login_fail`, `authn_login_lock`, `authz_fail`, `user_created`, …) as the `event` field.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from tokensvc.tokenformat import TOKEN_PATTERN

# Field names whose values are never written, whatever they hold.
_SECRET_KEYS = frozenset(
    ("password", "token", "authorization", "secret", "key", "kek", "pepper", "discharges")
)
# pymacaroons-style base64 macaroons and database URLs with credentials inside free text.
_LONG_B64 = re.compile(r"[A-Za-z0-9_\-+/]{80,}={0,2}")
_URL_CREDENTIALS = re.compile(r"(\w+://[^:/@\s]+):[^@\s]+@")


def scrub(text: str) -> str:
    """Mask tokens, long base64 blobs and URL passwords inside free text."""
    text = TOKEN_PATTERN.sub("tsv1_[REDACTED]", text)
    text = _LONG_B64.sub("[REDACTED]", text)
    return _URL_CREDENTIALS.sub(r"\1:***@", text)


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in list(event_dict):
        value = event_dict[name]
        if name.lower() in _SECRET_KEYS:
            event_dict[name] = "[REDACTED]"
        elif isinstance(value, str):
            event_dict[name] = scrub(value)
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
    # Alembic and aiohttp's access log are chatty at INFO; keep them at WARNING.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def security_event(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one OWASP-vocabulary security event; never pass secrets (they are redacted anyway)."""
    structlog.get_logger("tokensvc.security").log(level, event, security=True, **fields)
