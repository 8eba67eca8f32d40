"""What a cached chain's Policy keeps: one copy of a predicate that many tokens share."""

from __future__ import annotations

from caveats import Audience, Operations, Subject, encode
from caveats.checker import Policy, clear_decode_cache


def test_policies_of_tokens_minted_alike_share_their_predicates_bytes() -> None:
    clear_decode_cache()
    scope = [encode(Operations(("read",))), encode(Audience(("files",)))]

    def fresh(predicate: bytes) -> bytes:
        return bytes(bytearray(predicate))  # equal, and a distinct object (as a parse gives)

    first = Policy([encode(Subject("alice")), *map(fresh, scope)])
    second = Policy([encode(Subject("bob")), *map(fresh, scope)])
    assert first.predicates[1:] == second.predicates[1:]
    assert all(a is b for a, b in zip(first.predicates[1:], second.predicates[1:], strict=True))
    assert first.predicates[0] != second.predicates[0]  # their own subjects, as before
    assert first.subject == "alice" and second.subject == "bob"


def test_the_decode_cache_is_bounded_by_what_its_predicates_decode_to() -> None:
    """Red team (helper-40): bounded by count (16,384) and predicate length (1 KB) only, the
    cache could hold ~680 MB of IPv6 networks (~65 KB decoded per 1 KB predicate). It is
    emptied once what it holds would pass CACHE_FOOTPRINT, estimated per network."""
    import json

    from caveats import checker

    checker.clear_decode_cache()
    peak = 0
    for n in range(400):
        networks = [f"2001:db8:{n:x}::{i:x}/128" for i in range(40)]
        checker.Policy([json.dumps([6, networks]).encode()])
        peak = max(peak, checker.decode_cache_footprint())

    assert 0 < peak <= checker.CACHE_FOOTPRINT
    assert len(checker._decoded) < 400
    checker.clear_decode_cache()
