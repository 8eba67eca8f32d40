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
