"""Schemathesis hooks for test_schema_fuzz.py, loaded by the `schemathesis run` process it starts.

The test passes what they need in the environment: the name and token id of the admin the run
authenticates as, the service's TTL limits and allow-listed discharger, and the file each
answered call is logged to (one JSON line per call).

Each hook adapts generated requests to this deployment where openapi.yaml cannot say what the
server accepts (configuration, a sum of parts), and says why; none of them hides an answer.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from datetime import timedelta
from typing import Any

import schemathesis
from hypothesis import strategies as st

from tokensvc.accounts.password_policy import DEFAULT_POLICY
from tokensvc.accounts.users import spelling_of
from tokensvc.errors import BadRequest
from tokensvc.web.handlers.tokens import parse_ttl

# openapi.yaml's Ttl string pattern once the whitespace around is stripped (as the server does).
_DURATION = re.compile(r"[0-9]+|(?:[0-9]+d)?(?:[0-9]+h)?(?:[0-9]+m)?(?:[0-9]+s)?")

GUARDED_NAME = os.environ["TOKENSVC_FUZZ_ADMIN"]
GUARDED_TOKEN_ID = os.environ["TOKENSVC_FUZZ_TOKEN_ID"]
CALL_LOG = os.environ["TOKENSVC_FUZZ_CALL_LOG"]
MAX_TTL = timedelta(seconds=int(os.environ["TOKENSVC_FUZZ_MAX_TTL"]))
MAX_SERVICE_TTL = timedelta(seconds=int(os.environ["TOKENSVC_FUZZ_MAX_SERVICE_TTL"]))
DISCHARGER = os.environ["TOKENSVC_FUZZ_DISCHARGER"]

# Where a self-destructive request is sent instead: a user, subject and token id nobody has.
DECOY_NAME = "fuzz-decoy"
DECOY_TOKEN_ID = "0" * 32

# The operations that would end the run's own credentials when aimed at them, by the path
# parameter that aims them: changing or deleting the user (a password change, disable or role
# loss raises its generation), revoking all of its tokens, revoking its token by id.
_SELF_DESTRUCTIVE = {
    ("PATCH", "/v1/users/{name}"): "name",
    ("DELETE", "/v1/users/{name}"): "name",
    ("POST", "/v1/subjects/{subject}/revoke-all"): "subject",
    ("DELETE", "/v1/tokens/{id}"): "id",
}

# Cases sent somewhere else than generated: what the checks say about them is not the API's.
_redirected: set[str] = set()


def _networks() -> st.SearchStrategy[str]:
    """What `format: cidr` names: an IPv4 or IPv6 address, or a network with host bits."""
    v4 = st.tuples(st.ip_addresses(v=4), st.integers(0, 32))
    v6 = st.tuples(st.ip_addresses(v=6), st.integers(0, 128))
    networks = st.one_of(v4, v6).map(lambda pair: f"{pair[0]}/{pair[1]}")
    return st.one_of(networks, st.ip_addresses().map(str))


schemathesis.openapi.format("cidr", _networks())


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Adapt a generated request to this deployment; see each helper for what and why."""
    key = (case.method.upper(), case.operation.path)
    if key == ("GET", "/v1/revocations/stream"):
        # A followed stream never ends, and a fuzzer reads each response to its end: the
        # catch-up form answers the same way, then ends.
        case.query = {**(case.query or {}), "until": "now"}
    elif key in _SELF_DESTRUCTIVE:
        _spare_the_run_admin(case, _SELF_DESTRUCTIVE[key])
    if key in (("POST", "/v1/users"), ("PATCH", "/v1/users/{name}")) and isinstance(
        case.body, dict
    ):
        _acceptable_password(case)
    elif key in (("POST", "/v1/tokens"), ("POST", "/v1/login")) and isinstance(case.body, dict):
        _within_ttl_limit(case.body, login=key[1] == "/v1/login")
        if key[1] == "/v1/tokens":
            _allow_listed_discharger(case.body)
            _one_spelling(case.body)
        else:
            _one_kind_of_credentials(case)


def _acceptable_password(case: Any) -> None:
    """Replace a password of the schema's length that the policy refuses for another reason.

    The policy (tokensvc.accounts.password_policy) also refuses common passwords, the user's
    name, the service's and easily guessed patterns: openapi.yaml says so in words, as no JSON
    Schema can express a blocklist. Lengths outside the schema's are left for the negative checks.
    """
    password = case.body.get("password")
    if not isinstance(password, str):
        return
    try:
        DEFAULT_POLICY.check_length(password)
    except BadRequest:
        return
    name = case.body.get("name") or (case.path_parameters or {}).get("name")
    username = name if isinstance(name, str) else None
    for _ in range(10):
        try:
            DEFAULT_POLICY.check(password, username=username)
        except BadRequest:
            password = secrets.token_urlsafe(24)  # 32 random characters, not the name's
        else:
            case.body["password"] = password
            return


def _spare_the_run_admin(case: Any, parameter: str) -> None:
    """Send a request that would revoke the run's own admin token to a decoy target instead.

    Schemathesis reuses values it saw in responses (GET /v1/users lists the run's admin, GET
    /v1/tokens its token id), so sooner or later it deletes the very admin it authenticates as;
    every later case would then stop at the 401 of the auth check and test nothing behind it.
    Only these exact combinations are redirected: the same operations run on every other
    target, the bootstrap `admin` included, and the token is a service token on a root key of
    its own, so revoking any rotating key (POST /v1/keys/{id}/revoke) cannot end it either.
    """
    value = (case.path_parameters or {}).get(parameter)
    if not isinstance(value, str):
        return
    if parameter == "id" and value.lower() == GUARDED_TOKEN_ID:
        case.path_parameters[parameter] = DECOY_TOKEN_ID
    elif parameter != "id" and value.lower() == GUARDED_NAME:
        case.path_parameters[parameter] = DECOY_NAME
    else:
        return
    _redirected.add(case.id)


def _within_ttl_limit(body: dict[str, Any], *, login: bool) -> None:
    """Bring a valid `ttl` above this deployment's limit down to the limit.

    The limit depends on configuration and on the token kind, and for a duration string on the
    sum of its parts: no JSON Schema states that, so openapi.yaml says it in words (and that
    longer is a 400). A ttl the server could not parse at all is left as generated.
    """
    try:
        ttl = parse_ttl(body.get("ttl"))
    except BadRequest:
        if not _duration_shaped(body.get("ttl")):
            return
        ttl = timedelta.max  # a duration of the documented shape, too long to even compute
    if ttl is None:
        return  # the default, which is within the limit
    limit = MAX_SERVICE_TTL if body.get("service") is True and not login else MAX_TTL
    if ttl > limit:
        seconds = int(limit.total_seconds())
        body["ttl"] = f"{seconds}s" if isinstance(body["ttl"], str) else seconds


def _duration_shaped(value: object) -> bool:
    """Whether `value` is a duration string as openapi.yaml's Ttl pattern describes one."""
    if not isinstance(value, str) or len(value) > 32:
        return False
    text = value.strip()
    return (
        text.isascii() and bool(_DURATION.fullmatch(text)) and any(c in "123456789" for c in text)
    )


def _allow_listed_discharger(body: dict[str, Any]) -> None:
    """Aim well-formed third-party caveats at the discharger this deployment allows.

    Which locations are allowed is configuration (TOKENSVC_THIRD_PARTY_*), which no schema can
    list; every other location is a documented 400. Conditions stay as generated.
    """
    entries = body.get("third_party")
    if not isinstance(entries, list):
        return
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("location"), str):
            entry["location"] = DISCHARGER


def _one_spelling(body: dict[str, Any]) -> None:
    """Write a subject that is another spelling of a possible user name as that name.

    The mint refuses `Ledger` or `ļ` (400, naming `ledger` or `l`): spellings compare as a
    collation does, case, width, accents and invisible characters aside, which no JSON Schema
    pattern can state, so openapi.yaml says it in words. Every other subject stays as generated.
    """
    subject = body.get("subject")
    if isinstance(subject, str) and (spelled := spelling_of(subject)) is not None:
        body["subject"] = spelled


def _one_kind_of_credentials(case: Any) -> None:
    """Send a login whose body carries credentials without HTTP Basic.

    openapi.yaml offers Basic or none (`security: [{basic: []}, {}]`), and credentials in the
    body only without Basic (both at once is a 400, documented); schemathesis applies the
    configured Basic to every case, so a body with credentials is sent as the `{}` option.
    """
    with_credentials = any(case.body.get(field) is not None for field in ("username", "password"))
    if with_credentials and case.headers:
        case.headers.pop("Authorization", None)


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but those of a request _spare_the_run_admin redirected."""
    return case.id not in _redirected


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """Log which operation answered what, for the test's coverage assertions."""
    line = {"operation": case.operation.label, "status": response.status_code}
    with open(CALL_LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")
