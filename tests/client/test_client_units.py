"""tokensvc_client's pure parts: the event-stream parser, the revocation state, the verdict cache
and the request mapping (held to forward-auth's)."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from caveats import Operations, Subject, encode
from tokensvc.errors import Forbidden
from tokensvc.web.handlers import forwardauth
from tokensvc_client.errors import CaveatDenied, InvalidToken
from tokensvc_client.mapping import discharges_from, operation_for, resource_of, token_from
from tokensvc_client.revocations import RevocationState, cursor_reached
from tokensvc_client.sse import EventStreamParser, split_lines
from tokensvc_client.verdicts import VerdictCache, VerdictError, parse_verdict

# ---- the event-stream parser ----------------------------------------------------------------------


def parse_all(text: str) -> list[tuple[str, str, str | None]]:
    parser = EventStreamParser()
    lines, rest = split_lines(text)
    assert rest == ""
    events = [parser.feed_line(line) for line in lines]
    return [(e.type, e.data, e.id) for e in events if e is not None]


def test_sse_events_comments_and_ids() -> None:
    """Events dispatch on a blank line with their type, joined data and the last id; comments are skipped."""
    text = (
        ": ping\n\n"
        'event: hello\ndata: {"cursor": "7"}\n\n'
        "id: 8\nevent: token\ndata: a\ndata: b\n\n"
        "data:no-space\n\n"
    )

    events = parse_all(text)

    assert events == [
        ("hello", '{"cursor": "7"}', None),
        ("token", "a\nb", "8"),
        ("message", "no-space", "8"),
    ]


def test_sse_all_line_endings_and_split_chunks() -> None:
    """CRLF, CR and LF all end lines, even when a chunk ends between the CR and the LF."""
    parser = EventStreamParser()
    events = []
    rest = ""
    for chunk in ("id: 1\r", "\nevent: key\rdata: x\r\n", "\r", "\n"):
        lines, rest = split_lines(rest + chunk)
        events += [parser.feed_line(line) for line in lines]

    found = [e for e in events if e is not None]

    assert [(e.type, e.data, e.id) for e in found] == [("key", "x", "1")]
    assert rest == ""


def test_sse_id_without_data_still_counts_and_nul_ids_are_ignored() -> None:
    """An id with no data updates the last event id; an id containing NUL does not."""
    parser = EventStreamParser("3")

    for line in ("id: 4", "", "id: 5\0", ""):
        assert parser.feed_line(line) is None

    assert parser.last_event_id == "4"


@given(st.lists(st.text(alphabet="abc:\n\r ", max_size=30), max_size=10))
def test_sse_parser_never_raises(chunks: list[str]) -> None:
    """Whatever bytes the stream carries, the parser returns events or nothing, never raises."""
    parser = EventStreamParser()
    rest = ""
    for chunk in chunks:
        lines, rest = split_lines(rest + chunk)
        for line in lines:
            parser.feed_line(line)


# ---- revocation state ----------------------------------------------------------------------------


def test_cursor_order_numeric_and_opaque() -> None:
    """Decimal cursors compare as numbers (10 after 9); nothing is reached from no cursor."""
    assert cursor_reached("10", "9")
    assert not cursor_reached("9", "10")
    assert cursor_reached("b", "a")
    assert not cursor_reached(None, "1")


def test_state_applies_events_and_rejects_malformed_ones() -> None:
    """Token, generation and key events land in the state; wrong shapes are refused."""
    state = RevocationState()

    assert state.apply("token", {"token_id": "ab", "expires_at": 100.0}, now=0)
    assert state.apply("generation", {"subject": "alice", "generation": 3}, now=0)
    assert state.apply("generation", {"subject": "alice", "generation": 2}, now=0)
    assert state.apply("key", {"key_id": "k1"}, now=0)
    assert not state.apply("token", {"token_id": 5}, now=0)
    assert not state.apply("generation", {"subject": "bob", "generation": True}, now=0)
    assert not state.apply("bogus", {}, now=0)

    assert state.revoked_tokens == {"ab": 100.0}
    assert state.generation("alice", 1) == 3
    assert state.generation("alice", 5) == 5
    assert state.revoked_keys == {"k1"}


def test_revoked_ids_are_forgotten_after_their_tokens_expire() -> None:
    """Pruning keeps revoked ids of live tokens and drops those of expired ones."""
    state = RevocationState()
    state.revoke_token("old", 10.0, now=0)
    state.revoke_token("new", 1000.0, now=0)

    state.prune(now=500.0)

    assert set(state.revoked_tokens) == {"new"}


def test_cursor_never_moves_backwards() -> None:
    """Replayed events (a resume from an older id) leave the cursor where it was."""
    state = RevocationState()
    state.advance("12")

    state.advance("11")

    assert state.cursor == "12"


# ---- verdicts and the cache ------------------------------------------------------------------------


def verdict_body(caveats: list[bytes] | None = None, ttl: float = 60) -> dict:
    caveats = caveats if caveats is not None else [encode(Subject("alice"))]
    return {
        "verdict": {
            "subject": "alice",
            "token_id": "aa",
            "key_id": "key-1",
            "admin": False,
            "mfa": False,
            "generation": 0,
            "expires_at": None,
            "key_expires_at": 10_000.0,
            "caveats": [base64.urlsafe_b64encode(c).rstrip(b"=").decode() for c in caveats],
            "described": [],
        },
        "cache_ttl": ttl,
        "cursor": "5",
    }


def test_parse_verdict_decodes_caveats_into_a_policy() -> None:
    """The base64url caveats become the Policy the decision runs on; ttl counts from now."""
    body = verdict_body(caveats=[encode(Subject("alice")), encode(Operations(("read",)))])

    verdict = parse_verdict(orjson.loads(orjson.dumps(body)), now=100.0, key_bytes=10)

    assert verdict.policy.subject == "alice"
    assert len(verdict.policy.predicates) == 2
    assert verdict.cached_until == 160.0


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.pop("cursor"),
        lambda b: b["verdict"].update(caveats=["!!!"]),
        lambda b: b["verdict"].update(generation="1"),
        lambda b: b["verdict"].update(key_expires_at=None),
        lambda b: b["verdict"].update(mfa="true"),  # strictly a JSON boolean
        lambda b: b["verdict"].update(mfa=1),
        lambda b: b["verdict"].update(mfa=None),
    ],
)
def test_parse_verdict_refuses_malformed_bodies(mutate) -> None:  # type: ignore[no-untyped-def]
    """A body that breaks the contract is a VerdictError, never a verdict."""
    body = verdict_body()
    mutate(body)

    with pytest.raises(VerdictError):
        parse_verdict(body, now=0, key_bytes=1)


@pytest.mark.parametrize(("sent", "parsed"), [(True, True), (False, False), ("absent", False)])
def test_parse_verdict_reads_the_mfa_flag(sent: object, parsed: bool) -> None:
    """`mfa` reaches the Verdict and its Principal; a verdict without it (a tokensvc older than
    MFA) counts as no second factor, so an MFA route refuses rather than admits."""
    body = verdict_body()
    if sent != "absent":
        body["verdict"]["mfa"] = sent

    verdict = parse_verdict(body, now=0, key_bytes=1)

    assert verdict.mfa is parsed and verdict.principal.mfa is parsed


def test_cache_bounded_by_entries_and_by_bytes() -> None:
    """The LRU evicts the oldest entries past either bound, and its byte count stays exact."""
    one = parse_verdict(verdict_body(), now=0, key_bytes=100)
    by_entries = VerdictCache(max_entries=3, max_bytes=10**9)
    by_bytes = VerdictCache(max_entries=1000, max_bytes=one.size * 2 + 1)

    for i in range(10):
        by_entries.put(f"t{i}", one)
        by_bytes.put(f"t{i}", one)

    assert len(by_entries) == 3 and by_entries.get("t9") is one and by_entries.get("t0") is None
    assert len(by_bytes) == 2 and by_bytes.bytes == one.size * 2


def test_cache_forgets_every_verdict_of_a_revoked_key() -> None:
    """forget_key drops the verdicts signed by that root key and nothing else."""
    v = parse_verdict(verdict_body(), now=0, key_bytes=1)
    cache = VerdictCache(max_entries=10, max_bytes=10**9)
    cache.put("a", v)

    cache.forget_key("other")
    assert len(cache) == 1
    cache.forget_key("key-1")

    assert len(cache) == 0 and cache.bytes == 0


# ---- request mapping ------------------------------------------------------------------------------


# \udcff: a raw non-UTF-8 byte, as aiohttp hands it over (surrogateescape; red team: it raised).
@given(st.text(alphabet="/.a%2e0fF5cC3bB;\\?#:é\x01\udcff", max_size=40).map(lambda s: "/" + s))
def test_resource_mapping_equals_forward_auth(path: str) -> None:
    """The middleware maps a path to the resource exactly as GET /v1/auth does (or denies alike)."""
    try:
        expected: str | None = forwardauth.resource_of(path)
    except Forbidden:
        expected = None

    try:
        found: str | None = resource_of(path)
    except CaveatDenied:
        found = None

    assert found == expected


@pytest.mark.parametrize(
    "path",
    [
        "/admin/x%2F..%2F..%2Fdocs%2Fy",  # aiohttp routes on %2F encoded: /admin/{name}
        "/admin/..%2fdocs",
        "/admin/%2E%2E/docs/y",
        "/admin//../docs/y",  # yarl drops the empty segment with `..`; forward-auth merged it
        "/admin/../docs/y",  # an ASGI server hands `..` to the app unresolved
        "/docs/./y",
        "/docs/y/..",
        "/docs%5cy",
        "/docs\\..\\admin",  # a backslash: a separator to some servers
        "/docs/..;/admin",  # Tomcat reads `..;` as `..`
        "/docs/x#/../../admin",  # uvicorn (h11) keeps `#` in the path
    ],
)
def test_paths_the_router_could_read_otherwise_are_refused(path: str) -> None:
    """The app's router, or a proxy's backend, may read such a path otherwise than the resource
    it would name: refused (403), never resolved into a resource the token may hold."""
    with pytest.raises(CaveatDenied, match="could differ"):
        resource_of(path)
    assert resource_of("/.well-known/x") == "/.well-known/x"
    assert resource_of("/docs/%41?q=/../#x") == "/docs/A"


def test_operation_and_token_headers() -> None:
    """Methods map to read/write; Bearer and Macaroon schemes carry the token; discharges split."""
    assert operation_for("HEAD") == "read" and operation_for("PATCH") == "write"
    assert token_from("Macaroon abc") == "abc"
    assert discharges_from("d1, d2") == ("d1", "d2")
    with pytest.raises(InvalidToken):
        token_from("Basic abc")


def test_metrics_export_to_a_prometheus_registry() -> None:
    """The plain counters are exported through a collector, with the stream state as a gauge."""
    from prometheus_client import CollectorRegistry, generate_latest

    from tokensvc_client import ClientMetrics, register_prometheus

    metrics = ClientMetrics()
    registry = CollectorRegistry()
    register_prometheus(metrics, registry)
    metrics.checked_hits = 7
    metrics.stream_state_now = lambda: "live"

    text = generate_latest(registry).decode()

    assert "tokensvc_client_cache_hits_total 7.0" in text
    assert 'tokensvc_client_stream_state{state="live"} 1.0' in text
    assert 'tokensvc_client_stream_state{state="stale"} 0.0' in text
