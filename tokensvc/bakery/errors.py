"""What can go wrong with third-party caveats; each error maps to one HTTP status."""

from __future__ import annotations

from tokensvc.errors import BadRequest, Forbidden, Unavailable


class MalformedCaveat(BadRequest):
    """The third-party caveat id or its payload is malformed."""

    code = "malformed_caveat"


class CaveatNotForUs(MalformedCaveat):
    """The caveat is encrypted to another discharger's key, or was tampered with."""

    code = "caveat_not_for_this_discharger"


class ConditionRefused(Forbidden):
    """The condition of the third-party caveat does not hold for this caller."""

    code = "condition_refused"


class ConditionNotRecognized(ConditionRefused):
    """This discharger does not know the caveat's condition."""

    code = "condition_not_recognized"


class ThirdPartyNotAllowed(BadRequest):
    """The third-party location is neither allow-listed nor configured with a key."""

    code = "third_party_not_allowed"


class ThirdPartyUnavailable(Unavailable):
    """The third party's public key could not be learnt (unreachable, or a bad answer)."""

    code = "third_party_unavailable"
