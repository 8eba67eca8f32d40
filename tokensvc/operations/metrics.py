"""Prometheus metrics: every metric object of the service, declared in one place.

Works in two modes, chosen by prometheus-client itself when this module is first imported:

- one process (the default): values live in memory and `exposition()` renders the default registry;
- several worker processes (`tokensvc serve --workers N`): set `PROMETHEUS_MULTIPROC_DIR` to an
  empty directory writable by the service *before it starts*; every process then writes its values
  to memory-mapped files there and `exposition()` adds them up (counters and histograms summed,
  gauges as each one's `multiprocess_mode` says), so a scrape of any worker shows the whole server.
  Empty the directory on every (re)start, and call `mark_process_dead(pid)` when a worker exits.

Hot paths use pre-bound label children (`VERIFY_VALID.inc()`), never `.labels(...)` per request.
"""

from __future__ import annotations

import os
from bisect import bisect_left

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

MULTIPROCESS = bool(
    os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112 - the lower-case name prometheus-client still honours
)

# ---- HTTP ---------------------------------------------------------------------------------------

# Verify answers in well under a millisecond from cache; login is argon2-bound (tens of ms).
REQUEST_DURATION = Histogram(
    "tokensvc_http_request_duration_seconds",
    "Time from the request reaching the app to its response, by route template and status class.",
    ("route", "status_class"),
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


# ---- verification -------------------------------------------------------------------------------

VERIFY_OUTCOMES = Counter(
    "tokensvc_verify_total",
    "Token verifications answered by /v1/verify and forward-auth, by endpoint and outcome.",
    ("endpoint", "reason"),
)
VERIFY_REASONS = ("valid", "invalid", "denied", "bad_request", "error")

# route template → {status: pre-bound child}; statuses not listed count as "bad_request" (4xx)
# or "error" (5xx). Endpoints added here are counted by the request pipeline.
_VERIFY_ENDPOINTS = {"/v1/verify": "verify", "/v1/auth": "auth"}
_VERIFY_BY_STATUS = {200: "valid", 401: "invalid", 403: "denied"}
VERIFY_CHILDREN: dict[str, dict[int, Counter]] = {}
for _route, _endpoint in _VERIFY_ENDPOINTS.items():
    _children = {s: VERIFY_OUTCOMES.labels(_endpoint, r) for s, r in _VERIFY_BY_STATUS.items()}
    _children[400] = VERIFY_OUTCOMES.labels(_endpoint, "bad_request")
    _children[500] = VERIFY_OUTCOMES.labels(_endpoint, "error")
    VERIFY_CHILDREN[_route] = _children


def _verify_child(route: str, status: int) -> Counter | None:
    children = VERIFY_CHILDREN.get(route)
    if children is None:
        return None
    child = children.get(status)
    if child is None:
        child = children[500] if status >= 500 else children[400]
    return child


# Requests are tallied in plain Python per (route, status) and folded into the Prometheus metrics
# by flush_requests() — every second, before every scrape, and at shutdown. A histogram
# observation through prometheus-client takes a lock and, with several workers, writes to a
# memory-mapped file: about 5 % of a cached /v1/verify. A tally is one dict lookup, one bisect
# and two list updates. The price: a scrape of one worker sees the others' requests up to a
# second late.
_BOUNDS = tuple(REQUEST_DURATION._upper_bounds)  # ends with +Inf, as every histogram's does
# (route, status) → [sum of seconds, count per bucket...]; bounded by routes × status codes.
_tallies: dict[tuple[str, int], list[float]] = {}
# (route, status) → the label children a tally is folded into: the duration histogram's, and the
# verify outcome counter's on a verify endpoint. Bound once.
_request_children: dict[tuple[str, int], tuple[Histogram, Counter | None]] = {}


def observe_request(route: str, status: int, seconds: float) -> None:
    """Record one answered request: its duration, and its outcome if `route` verifies tokens."""
    tally = _tallies.get((route, status))
    if tally is None:
        tally = _tallies[(route, status)] = [0.0] * (len(_BOUNDS) + 1)
    tally[0] += seconds
    # The first bound >= seconds, as Histogram.observe picks it (`amount <= bound`).
    tally[bisect_left(_BOUNDS, seconds) + 1] += 1


def flush_requests() -> None:
    """Fold the tallies into the Prometheus metrics (cheap; call as often as convenient)."""
    if not _tallies:
        return
    tallies = list(_tallies.items())
    _tallies.clear()
    for key, tally in tallies:
        children = _request_children.get(key)
        if children is None:
            route, status = key
            status_class = _STATUS_CLASSES[status // 100 - 1] if 100 <= status < 600 else "other"
            children = _request_children[key] = (
                REQUEST_DURATION.labels(route, status_class),
                _verify_child(route, status),
            )
        duration, verify = children
        # prometheus-client has no bulk observe; these are the two values observe() increments.
        duration._sum.inc(tally[0])
        for bucket, count in zip(duration._buckets, tally[1:], strict=True):
            if count:
                bucket.inc(count)
        if verify is not None:
            verify.inc(sum(tally[1:]))


# ---- login and lockout --------------------------------------------------------------------------

LOGIN_OUTCOMES = Counter(
    "tokensvc_login_total",
    "Password logins by outcome: success, fail (a wrong password where the answer says so: "
    "re-authentication; a login answers one with a challenge, counted as mfa_challenge, so that "
    "this count does not tell a right password of an enrolled user from a wrong one), locked "
    "(refused by lockout, argon2 never ran), unavailable (lockout store unreachable: fails "
    "closed).",
    ("outcome",),
)
LOGIN_SUCCESS = LOGIN_OUTCOMES.labels("success")
LOGIN_FAIL = LOGIN_OUTCOMES.labels("fail")
LOGIN_LOCKED = LOGIN_OUTCOMES.labels("locked")
LOGIN_UNAVAILABLE = LOGIN_OUTCOMES.labels("unavailable")
# The second factor: a challenge handed out (real or decoy alike), a code refused, a lock.
LOGIN_MFA_CHALLENGE = LOGIN_OUTCOMES.labels("mfa_challenge")
LOGIN_MFA_FAIL = LOGIN_OUTCOMES.labels("mfa_fail")
LOGIN_MFA_LOCKED = LOGIN_OUTCOMES.labels("mfa_locked")

LOCKOUT_CLEARS = Counter(
    "tokensvc_lockout_clears_total",
    "Lockouts cleared by an admin (DELETE /v1/users/{name}/lockout).",
)

# ---- dependencies -------------------------------------------------------------------------------

DEPENDENCY_ERRORS = Counter(
    "tokensvc_dependency_errors_total",
    "Failed calls to the database or Redis (connection refused, timeouts, server errors).",
    ("dependency",),
)
DATABASE_ERRORS = DEPENDENCY_ERRORS.labels("database")
REDIS_ERRORS = DEPENDENCY_ERRORS.labels("redis")

# Set by tokensvc.operations.outages from every process's own view (probed every few seconds);
# across workers the lowest counts: a dependency is up when every live process reaches it.
DEPENDENCY_UP = Gauge(
    "tokensvc_dependency_up",
    "1 while this process reaches the dependency (database, redis), 0 during an outage.",
    ("dependency",),
    multiprocess_mode="livemin",
)
STREAM_SUBSCRIBERS = Gauge(
    "tokensvc_revocation_stream_subscribers",
    "Open GET /v1/revocations/stream connections (zero-hop clients following revocations).",
    multiprocess_mode="livesum",
)
STREAM_EVENTS = Counter(
    "tokensvc_revocation_events_total",
    "Revocation events this process read from the event log and applied (tokensvc.tokens.feed).",
)
READY = Gauge(
    "tokensvc_ready",
    "1 while this process can verify tokens (its database answers, or the root key it mints "
    "with is in memory), as GET /readyz answers; 0 when it cannot.",
    multiprocess_mode="livemin",
)


def count_database_error(exc: BaseException | None) -> None:
    """Count `exc` (or what caused it) if it is a database failure; anything else is ignored."""
    from sqlalchemy.exc import SQLAlchemyError  # imported late: this module loads first

    seen = 0
    while exc is not None and seen < 4:
        if type(exc).__module__.startswith("redis"):
            return  # counted as a Redis error where the lockout store catches it
        if isinstance(exc, (SQLAlchemyError, OSError, TimeoutError)):
            DATABASE_ERRORS.inc()
            return
        exc, seen = exc.__cause__ or exc.__context__, seen + 1


# ---- request governor (incremented by tokensvc's governor) --------------------------------------

GOVERNOR_IN_FLIGHT = Gauge(
    "tokensvc_governor_in_flight",
    "Requests being served now, by governor pool (login, default).",
    ("pool",),
    multiprocess_mode="livesum",
)
GOVERNOR_QUEUE_DEPTH = Gauge(
    "tokensvc_governor_queue_depth",
    "Requests waiting for a slot now, by governor pool.",
    ("pool",),
    multiprocess_mode="livesum",
)
GOVERNOR_REJECTIONS = Counter(
    "tokensvc_governor_rejections_total",
    "Requests turned away by the governor, by pool and reason (queue_full → 503/429 at once, "
    "timeout → waited the whole queue bound).",
    ("pool", "reason"),
)
GOVERNOR_QUEUE_WAIT = Histogram(
    "tokensvc_governor_queue_wait_seconds",
    "Time a request waited in the governor's queue before it got a slot, by pool.",
    ("pool",),
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

GOVERNOR_POOLS = ("default", "login")
GOVERNOR_REASONS = ("queue_full", "timeout")
# Series that exist from the start read as 0, so rate() and alerts work before the first overload.
for _pool in GOVERNOR_POOLS:
    GOVERNOR_IN_FLIGHT.labels(_pool)
    GOVERNOR_QUEUE_DEPTH.labels(_pool)
    GOVERNOR_QUEUE_WAIT.labels(_pool)
    for _reason in GOVERNOR_REASONS:
        GOVERNOR_REJECTIONS.labels(_pool, _reason)

# ---- state read on scrape -----------------------------------------------------------------------

ROOT_KEY_AGE = Gauge(
    "tokensvc_root_key_age_seconds",
    "Age of the root key this process mints with; it should stay below the generate interval "
    "(rotation stuck otherwise).",
    multiprocess_mode="livemax",
)
CHAIN_CACHE_ENTRIES = Gauge(
    "tokensvc_verify_chain_cache_entries",
    "Verified signature chains held in the verify cache.",
    multiprocess_mode="livesum",
)


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The metrics in the format the scraper's Accept header asks for, and its content type.

    Without one: the Prometheus text format 0.0.4, which every Prometheus version reads.
    """
    flush_requests()
    encoder, content_type = choose_encoder(accept or "")
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return encoder(registry), content_type
    return encoder(REGISTRY), content_type


def mark_process_dead(pid: int) -> None:
    """Forget an exited worker's live gauges (multiprocess mode; a no-op otherwise)."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
