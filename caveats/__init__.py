"""The caveat language of tokensvc: typed caveats, bakery text conditions, and checking them.

Pure: no I/O and no clock; the time arrives in `Context.now`. See docs/architecture.md.
"""

from caveats.bakery import (
    Allow,
    Condition,
    Declared,
    Deny,
    ErrorCondition,
    TimeBefore,
    format_rfc3339,
    parse_condition,
    parse_rfc3339,
    time_before,
)
from caveats.checker import Outcome, Policy, check_predicates, parse_predicate, subject_of
from caveats.context import Context
from caveats.decision import MFA_REQUIRED, TOKEN_REVOKED, decide
from caveats.errors import CaveatError, UnknownCaveat
from caveats.registry import Caveat, caveat, check_fields, decode, encode, registered
from caveats.result import SUCCESS, Failure, Result, Success
from caveats.standard import (
    Audience,
    ClientCIDR,
    Expiry,
    Generation,
    NotBefore,
    Operations,
    Resources,
    Subject,
)

__all__ = [
    "MFA_REQUIRED",
    "SUCCESS",
    "TOKEN_REVOKED",
    "Allow",
    "Audience",
    "Caveat",
    "CaveatError",
    "ClientCIDR",
    "Condition",
    "Context",
    "Declared",
    "Deny",
    "ErrorCondition",
    "Expiry",
    "Failure",
    "Generation",
    "NotBefore",
    "Operations",
    "Outcome",
    "Policy",
    "Resources",
    "Result",
    "Subject",
    "Success",
    "TimeBefore",
    "UnknownCaveat",
    "caveat",
    "check_fields",
    "check_predicates",
    "decide",
    "decode",
    "encode",
    "format_rfc3339",
    "parse_condition",
    "parse_predicate",
    "parse_rfc3339",
    "registered",
    "subject_of",
    "time_before",
]
