"""Counters of a TokensvcClient: cache hits and misses, fallbacks, decisions, stream state.

Plain integers on the hot path (an increment, nothing else); `register_prometheus` exports them
through a prometheus-client collector when that library is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

#: Stream states, in the order the gauge reports them.
STREAM_STATES = ("connecting", "catching_up", "live", "stale")


class ClientMetrics:
    """What one client did since it started."""

    __slots__ = (
        "checked_allowed",
        "checked_hits",
        "denied_401",
        "denied_403",
        "fallbacks",
        "misses",
        "reused",
        "stream_events",
        "stream_reconnects",
        "stream_resets",
        "stream_state_now",
        "unavailable",
        "uncacheable",
    )

    def __init__(self) -> None:
        # Decisions from a cached verdict are counted in two parts, so that a remembered allow
        # reused (TokensvcClient.allowed, the hot path) costs one increment: `hits` and
        # `allowed` are the sums.
        self.checked_hits = 0  # a cached verdict's caveats checked against the request
        self.reused = 0  # a remembered allow reused: a hit and an allow, nothing checked again
        self.misses = 0  # a verdict fetched from tokensvc
        # Fetched verdicts not cached (the stream behind their cursor, or not live).
        self.uncacheable = 0
        self.fallbacks = 0  # /v1/verify asked because the cache was not trusted
        self.checked_allowed = 0  # allows decided by a check (from the cache, or /v1/verify)
        self.denied_401 = 0
        self.denied_403 = 0
        self.unavailable = 0  # 503s: tokensvc unreachable, or failing closed
        self.stream_events = 0
        self.stream_reconnects = 0
        self.stream_resets = 0
        # Asked when read, so a stream gone quiet reads "stale" without an event to say so.
        self.stream_state_now: Callable[[], str] = lambda: "connecting"

    @property
    def hits(self) -> int:
        """Decisions made from a cached verdict: checked, or a remembered allow reused."""
        return self.checked_hits + self.reused

    @property
    def allowed(self) -> int:
        """Requests allowed: by a check, or a remembered allow reused."""
        return self.checked_allowed + self.reused

    @property
    def stream_state(self) -> str:
        """connecting, catching_up, live or stale (see STREAM_STATES)."""
        return self.stream_state_now()

    def snapshot(self) -> dict[str, int | str]:
        """Every counter by name, and the stream state (for logs, health pages and tests)."""
        out: dict[str, int | str] = {
            name: getattr(self, name) for name in self.__slots__ if name != "stream_state_now"
        }
        out["hits"] = self.hits
        out["allowed"] = self.allowed
        out["stream_state"] = self.stream_state
        return out


def register_prometheus(
    metrics: ClientMetrics, registry: Any = None, *, prefix: str = "tokensvc_client"
) -> Any:
    """Export `metrics` to prometheus-client's `registry` (its default one if None).

    Returns the collector; ImportError if prometheus-client is not installed
    (`pip install 'tokensvc-client[prometheus]'`).
    """
    from prometheus_client import REGISTRY
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Iterator[Any]:
            m = metrics
            for name, doc, value in (
                ("cache_hits", "Decisions made from a cached verdict", m.hits),
                ("cache_misses", "Verdicts fetched from tokensvc", m.misses),
                (
                    "fallbacks",
                    "Requests sent to /v1/verify while the cache was not trusted",
                    m.fallbacks,
                ),
                (
                    "unavailable",
                    "Requests answered 503 (tokensvc unreachable or failing closed)",
                    m.unavailable,
                ),
                ("stream_events", "Revocation stream events applied", m.stream_events),
                ("stream_reconnects", "Revocation stream reconnects", m.stream_reconnects),
                (
                    "stream_resets",
                    "Revocation stream resets (whole cache dropped)",
                    m.stream_resets,
                ),
            ):
                yield CounterMetricFamily(f"{prefix}_{name}", doc, value=value)
            decisions = CounterMetricFamily(
                f"{prefix}_decisions", "Decisions by outcome", labels=["outcome"]
            )
            decisions.add_metric(["allow"], m.allowed)
            decisions.add_metric(["401"], m.denied_401)
            decisions.add_metric(["403"], m.denied_403)
            yield decisions
            state = GaugeMetricFamily(
                f"{prefix}_stream_state", "1 for the stream's current state", labels=["state"]
            )
            for name in STREAM_STATES:
                state.add_metric([name], 1.0 if m.stream_state == name else 0.0)
            yield state

    collector = _Collector()
    (REGISTRY if registry is None else registry).register(collector)
    return collector
