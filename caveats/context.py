"""The request context that caveats are checked against."""

from __future__ import annotations

from dataclasses import dataclass


# Not frozen: one is built per /verify, and a frozen dataclass's __init__ costs about three
# times as much. Checks only read it. Positional arguments are allowed because the verify path
# passes all six by position (keywords cost twice as much); other callers name them.
@dataclass(slots=True)
class Context:
    """What a verifier knows about one request; `now` is unix seconds, supplied by the caller.

    `generation` is the current token generation of the token's subject (bumped by revoke-all);
    a token minted with an older generation is revoked. Fields left `None` are unknown, and a
    caveat that needs an unknown field denies.
    """

    now: float
    operation: str | None = None
    resource: str | None = None
    audience: str | None = None
    client_ip: str | None = None
    generation: int = 0
