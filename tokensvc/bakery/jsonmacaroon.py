"""Macaroons in the JSON shapes bakery clients and dischargers exchange.

- v1 (libmacaroons JSON): `{"location", "identifier", "caveats": [{"cid", "vid", "cl"}], "signature"}`
  with `identifier` and `cid` as text, `vid` base64url, `signature` hex;
- v2: `{"l", "i" | "i64", "c": [{"i" | "i64", "v" | "v64", "l"}], "s" | "s64"}`: a binary field
  is written as text when it is valid UTF-8, else base64url without padding under the `64` name;
- bakery v3: `{"m": <v2>, "v": 3, "ns": "std:", "cdata": {...}}`.

A discharge response from a discharger is `{"Macaroon": <one of these>}`. Parsing is strict and
bounded, and every malformed input raises `MalformedMacaroon`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from tokensvc.bakery.codec import VERSION_1, VERSION_3
from tokensvc.macaroons.macaroon import SIGNATURE_BYTES, Caveat, Macaroon, MalformedMacaroon

MAX_CAVEATS = 128
MAX_FIELD_BYTES = 16384


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _binary_field(out: dict[str, Any], name: str, data: bytes) -> None:
    try:
        out[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        out[name + "64"] = _b64url(data)


def to_json_v2(macaroon: Macaroon) -> dict[str, Any]:
    """The libmacaroons v2 JSON object, as pymacaroons and Go write it."""
    out: dict[str, Any] = {}
    caveats = []
    for caveat in macaroon.caveats:
        entry: dict[str, Any] = {}
        _binary_field(entry, "i", caveat.cid)
        if caveat.vid is not None:
            entry["v64"] = _b64url(caveat.vid)
        if caveat.location:
            entry["l"] = caveat.location.decode("utf-8", "replace")
        caveats.append(entry)
    if caveats:
        out["c"] = caveats
    if macaroon.location:
        out["l"] = macaroon.location.decode("utf-8", "replace")
    _binary_field(out, "i", macaroon.identifier)
    out["s64"] = _b64url(macaroon.signature)
    return out


def to_json_v1(macaroon: Macaroon) -> dict[str, Any]:
    """The libmacaroons v1 JSON object; ValueError when a field that must be text is binary."""
    try:
        out: dict[str, Any] = {
            "identifier": macaroon.identifier.decode("utf-8"),
            "signature": macaroon.signature.hex(),
        }
        if macaroon.location:
            out["location"] = macaroon.location.decode("utf-8")
        caveats = []
        for caveat in macaroon.caveats:
            entry: dict[str, Any] = {"cid": caveat.cid.decode("utf-8")}
            if caveat.vid is not None:
                entry["vid"] = _b64url(caveat.vid)
            if caveat.location:
                entry["cl"] = caveat.location.decode("utf-8")
            caveats.append(entry)
    except UnicodeDecodeError:
        raise ValueError("a version 1 JSON macaroon needs text ids") from None
    if caveats:
        out["caveats"] = caveats
    return out


def to_bakery_json(macaroon: Macaroon, *, version: int, namespace: str) -> dict[str, Any]:
    """What a bakery discharger answers for a caveat of `version`: v1/v2 JSON, or the v3 wrapper."""
    if version == VERSION_1:
        return to_json_v1(macaroon)
    if version < VERSION_3:
        return to_json_v2(macaroon)
    return {"m": to_json_v2(macaroon), "v": VERSION_3, "ns": namespace}


# ---- parsing ---------------------------------------------------------------------------------------


def _text(obj: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise MalformedMacaroon(f"malformed JSON macaroon: no {name}")
        return None
    if not isinstance(value, str) or len(value) > MAX_FIELD_BYTES:
        raise MalformedMacaroon(f"malformed JSON macaroon: {name} is not a string")
    return value


def _b64(value: str, name: str) -> bytes:
    raw = value.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return binascii.a2b_base64(raw + "=" * (-len(raw) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        raise MalformedMacaroon(f"malformed JSON macaroon: {name} is not base64") from None


def _v2_field(obj: dict[str, Any], name: str, *, required: bool) -> bytes | None:
    text = _text(obj, name, required=False)
    b64 = _text(obj, name + "64", required=False)
    if text is not None and b64 is not None:
        raise MalformedMacaroon(f"malformed JSON macaroon: both {name} and {name}64")
    if text is not None:
        return text.encode("utf-8", "surrogatepass")
    if b64 is not None:
        return _b64(b64, name + "64")
    if required:
        raise MalformedMacaroon(f"malformed JSON macaroon: no {name}")
    return None


def _caveat_list(obj: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = obj.get(name) or []
    if not isinstance(value, list) or len(value) > MAX_CAVEATS:
        raise MalformedMacaroon(f"malformed JSON macaroon: {name} is not a list of caveats")
    if not all(isinstance(c, dict) for c in value):
        raise MalformedMacaroon("malformed JSON macaroon: a caveat is not an object")
    return value


def _signature(sig: bytes) -> bytes:
    if len(sig) != SIGNATURE_BYTES:
        raise MalformedMacaroon("malformed JSON macaroon: signature is not 32 bytes")
    return sig


def _from_v2(obj: dict[str, Any]) -> Macaroon:
    caveats = []
    for entry in _caveat_list(obj, "c"):
        cid = _v2_field(entry, "i", required=True)
        assert cid is not None  # noqa: S101 - narrows the type; required=True raised otherwise
        vid = _v2_field(entry, "v", required=False)
        location = _v2_field(entry, "l", required=False)
        caveats.append(Caveat(cid, vid, location if vid is not None else None))
    identifier = _v2_field(obj, "i", required=True)
    signature = _v2_field(obj, "s", required=True)
    assert identifier is not None and signature is not None  # noqa: S101 - narrows the type; required=True raised otherwise
    return Macaroon(
        identifier, tuple(caveats), _signature(signature), _v2_field(obj, "l", required=False)
    )


def _from_v1(obj: dict[str, Any]) -> Macaroon:
    identifier = _text(obj, "identifier", required=True)
    signature_hex = _text(obj, "signature", required=True)
    assert identifier is not None and signature_hex is not None  # noqa: S101 - narrows the type; required=True raised otherwise
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        raise MalformedMacaroon("malformed JSON macaroon: signature is not hex") from None
    caveats = []
    for entry in _caveat_list(obj, "caveats"):
        cid = _text(entry, "cid", required=True)
        assert cid is not None  # noqa: S101 - narrows the type; required=True raised otherwise
        vid_text = _text(entry, "vid", required=False)
        location = _text(entry, "cl", required=False)
        vid = _b64(vid_text, "vid") if vid_text else None
        caveats.append(
            Caveat(
                cid.encode("utf-8", "surrogatepass"),
                vid,
                location.encode() if vid is not None and location else None,
            )
        )
    location = _text(obj, "location", required=False)
    return Macaroon(
        identifier.encode("utf-8", "surrogatepass"),
        tuple(caveats),
        _signature(signature),
        location.encode() if location else None,
    )


def from_bakery_json(obj: Any) -> Macaroon:
    """A macaroon from any of the JSON shapes above; MalformedMacaroon otherwise."""
    if not isinstance(obj, dict):
        raise MalformedMacaroon("malformed JSON macaroon: not an object")
    try:
        if "m" in obj:
            if obj.get("v") != VERSION_3 or not isinstance(obj["m"], dict):
                raise MalformedMacaroon("malformed JSON macaroon: unknown bakery version")
            if obj.get("cdata"):
                # Caveat payloads held beside the macaroon cannot travel inside a token.
                raise MalformedMacaroon("a discharge with external caveat data is not supported")
            return _from_v2(obj["m"])
        if "identifier" in obj:
            return _from_v1(obj)
        return _from_v2(obj)
    except UnicodeEncodeError:
        raise MalformedMacaroon("malformed JSON macaroon: bad text") from None
