"""The one exception family caveats/ raises."""

from __future__ import annotations


class CaveatError(ValueError):
    """A caveat is malformed (encoding, field types, field count) or the registry is misused."""


class UnknownCaveat(CaveatError):
    """A well-formed typed caveat names a tag that no registered caveat has."""
