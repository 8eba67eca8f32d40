"""The registry of typed caveats: stable numeric tags and the compact `[tag, *fields]` wire form.

Tag ranges. A tag is the wire format: once released it is never reused or renumbered.
    0–999     tokensvc core caveats (caveats/standard.py; 0–7 are taken)
    1000+     future caveats and extensions

Field order is the wire format too. A caveat only ever gains fields at the end, each with a
default, so that every token minted before the change still decodes: a shorter field list is
filled with defaults, a longer one than this code knows is rejected (an old verifier must not
ignore a restriction it does not understand). `encode` leaves out trailing fields that hold their
default, so adding a field does not change the bytes of caveats that do not use it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol, TypeVar, get_type_hints

import orjson

from caveats.context import Context
from caveats.errors import CaveatError, UnknownCaveat
from caveats.result import Result

# Integers on the wire are signed 64-bit, the range every JSON implementation we meet agrees on.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1


class Caveat(Protocol):
    """A typed caveat: a frozen, slotted dataclass registered with `@caveat(tag=N)`."""

    def check(self, ctx: Context) -> Result:
        """`SUCCESS` if the caveat holds in `ctx`, else a `Failure` saying why not."""
        ...


class _Kind(enum.Enum):
    INT = "int"
    STR = "str"
    STRS = "tuple[str, ...]"


_KIND_OF_TYPE: Final[Mapping[object, _Kind]] = {
    int: _Kind.INT,
    str: _Kind.STR,
    tuple[str, ...]: _Kind.STRS,
}

_NO_DEFAULT: Final = object()


@dataclass(frozen=True, slots=True)
class _Spec:
    tag: int
    cls: type[Caveat]
    names: tuple[str, ...]
    kinds: tuple[_Kind, ...]
    defaults: tuple[object, ...]  # _NO_DEFAULT where the field is required
    required: int  # how many leading fields have no default


_BY_TAG: dict[int, _Spec] = {}
_BY_CLASS: dict[type, _Spec] = {}

_C = TypeVar("_C", bound=Caveat)


def caveat(*, tag: int) -> Callable[[type[_C]], type[_C]]:
    """Register a frozen, slotted dataclass as the typed caveat with wire tag `tag`.

    Apply it on top of `@dataclass(frozen=True, slots=True)`. Fields may be `int`, `str` or
    `tuple[str, ...]`. A tag or class registered twice raises `CaveatError` at import.
    """
    if type(tag) is not int or tag < 0:
        raise CaveatError(f"caveat tag must be a non-negative int, not {tag!r}")

    def register(cls: type[_C]) -> type[_C]:
        name = getattr(cls, "__qualname__", repr(cls))
        if tag in _BY_TAG:
            raise CaveatError(
                f"caveat tag {tag} of {name} is already registered to "
                f"{_BY_TAG[tag].cls.__qualname__}"
            )
        if cls in _BY_CLASS:
            raise CaveatError(f"{name} is already registered with tag {_BY_CLASS[cls].tag}")
        _BY_TAG[tag] = _BY_CLASS[cls] = _spec_of(cls, tag, name)
        return cls

    return register


def _spec_of(cls: type[Caveat], tag: int, name: str) -> _Spec:
    """The wire layout of `cls`, or `CaveatError` if it cannot be a typed caveat."""
    params = getattr(cls, "__dataclass_params__", None)
    if not dataclasses.is_dataclass(cls) or params is None or not params.frozen:
        raise CaveatError(f"{name} must be a frozen dataclass (put @caveat above @dataclass)")
    if "__slots__" not in cls.__dict__:
        raise CaveatError(f"{name} must be a slotted dataclass (put @caveat above @dataclass)")
    if not callable(getattr(cls, "check", None)):
        raise CaveatError(f"{name} must have a check(self, ctx) method")
    try:
        hints = get_type_hints(cls)
    except (NameError, TypeError) as exc:
        raise CaveatError(f"{name}: cannot resolve field types ({exc})") from None
    names: list[str] = []
    kinds: list[_Kind] = []
    defaults: list[object] = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue  # derived state (a parsed form, a cache), not on the wire
        kind = _KIND_OF_TYPE.get(hints[field.name])
        if kind is None:
            raise CaveatError(
                f"{name}.{field.name}: unsupported field type {hints[field.name]!r} "
                "(use int, str or tuple[str, ...])"
            )
        if field.default_factory is not dataclasses.MISSING:
            raise CaveatError(f"{name}.{field.name}: use a plain default, not a default_factory")
        names.append(field.name)
        kinds.append(kind)
        defaults.append(_NO_DEFAULT if field.default is dataclasses.MISSING else field.default)
    required = sum(1 for d in defaults if d is _NO_DEFAULT)
    # A default is what older tokens decode to, so it must be a valid wire value itself.
    for index in range(required, len(names)):
        _check_value(f"{name}.{names[index]} default", kinds[index], defaults[index])
    return _Spec(tag, cls, tuple(names), tuple(kinds), tuple(defaults), required)


def check_fields(instance: object) -> None:
    """Raise `CaveatError` unless every wire field of the registered caveat has its declared type.

    Caveats call this first in `__post_init__`, so a malformed caveat cannot be constructed.
    """
    spec = _BY_CLASS.get(type(instance))
    if spec is None:
        raise CaveatError(f"{type(instance).__qualname__} is not a registered caveat")
    names = spec.names
    if len(names) == 1:  # most caveats: one attribute, no list to build
        _check_values(spec, (getattr(instance, names[0]),))
    else:
        _check_values(spec, [getattr(instance, n) for n in names])


def _check_values(spec: _Spec, values: Sequence[object]) -> None:
    for name, kind, value in zip(spec.names, spec.kinds, values, strict=False):
        # The common good values inline: this runs for every field of every caveat decoded on an
        # uncached verify, and the field's name is only formatted when a value is refused.
        if kind is _Kind.INT:
            if type(value) is int and _INT_MIN <= value <= _INT_MAX:
                continue
        elif kind is _Kind.STR and type(value) is str and value.isascii():
            continue
        _check_value(f"{spec.cls.__qualname__}.{name}", kind, value)


def _check_value(where: str, kind: _Kind, value: object) -> None:
    if kind is _Kind.INT:
        # bool is an int subclass; True is not a timestamp.
        if type(value) is not int:
            raise CaveatError(f"{where} must be an int, not {type(value).__name__}")
        if not _INT_MIN <= value <= _INT_MAX:
            raise CaveatError(f"{where} is outside the signed 64-bit range")
    elif kind is _Kind.STR:
        _check_str(where, value)
    else:
        if type(value) is not tuple:
            raise CaveatError(f"{where} must be a tuple of str, not {type(value).__name__}")
        if not value:
            raise CaveatError(f"{where} must not be empty")
        for item in value:
            _check_str(where, item)
            if not item:
                raise CaveatError(f"{where} must not hold an empty string")


def _check_str(where: str, value: object) -> None:
    if type(value) is not str:
        raise CaveatError(f"{where} must be a str, not {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CaveatError(f"{where} is not encodable as UTF-8") from None


def encode(c: Caveat) -> bytes:
    """The wire form of a registered caveat: compact JSON `[tag, *fields]`."""
    spec = _BY_CLASS.get(type(c))
    if spec is None:
        raise CaveatError(f"{type(c).__qualname__} is not a registered caveat")
    values = [getattr(c, n) for n in spec.names]
    _check_values(spec, values)
    end = len(values)
    while end > spec.required and values[end - 1] == spec.defaults[end - 1]:
        end -= 1
    return orjson.dumps([spec.tag, *values[:end]])


def decode(predicate: bytes) -> Caveat:
    """The typed caveat that `predicate` encodes; `CaveatError` if it is malformed or unknown."""
    if not predicate.startswith(b"["):
        raise CaveatError("a typed caveat is a JSON array")
    try:
        raw = orjson.loads(predicate)
    except orjson.JSONDecodeError:
        raise CaveatError("a typed caveat is a JSON array") from None
    if type(raw) is not list or not raw:
        raise CaveatError("a typed caveat is a non-empty JSON array")
    tag = raw[0]
    if type(tag) is not int:
        raise CaveatError("a typed caveat starts with an integer tag")
    spec = _BY_TAG.get(tag)
    if spec is None:
        raise UnknownCaveat(f"unknown caveat tag {tag}")
    values = raw[1:]
    if list in map(type, values):  # JSON arrays are tuple fields
        values = [tuple(v) if type(v) is list else v for v in values]
    if not spec.required <= len(values) <= len(spec.names):
        most = len(spec.names)
        takes = str(most) if spec.required == most else f"{spec.required} to {most}"
        raise CaveatError(
            f"{spec.cls.__qualname__} takes {takes} field{'' if most == 1 else 's'}, "
            f"got {len(values)}"
        )
    _check_values(spec, values)
    try:
        return spec.cls(*values)
    except CaveatError:
        raise
    except (TypeError, ValueError) as exc:
        raise CaveatError(f"{spec.cls.__qualname__}: {exc}") from None


def registered() -> Mapping[int, type[Caveat]]:
    """Every registered caveat class by tag (a read-only view)."""
    return MappingProxyType({tag: spec.cls for tag, spec in sorted(_BY_TAG.items())})
