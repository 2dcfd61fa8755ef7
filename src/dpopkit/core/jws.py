"""A strict compact-JWS layer on ``cryptography`` (RFC 7515, RFC 7517, RFC 7518).

Narrower than a general JOSE library on purpose: compact serialization only,
sizes checked before any decoding, strict base64url (alphabet, no padding,
canonical trailing bits), JSON objects without duplicate members or
non-finite numbers, ``crit`` refused unless understood, public JWKs of the EC,
OKP and RSA types only, EC points validated, RSA at least 2048 bits.

Every failure raises :class:`JWSError` carrying a :class:`~dpopkit.errors.Reason`;
callers turn it into the error of their context (proof or access token).
"""

from __future__ import annotations

import binascii
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from dpopkit.core.algorithms import EC_CURVES, AlgSpec, PublicKey, spec_for
from dpopkit.errors import Reason

__all__ = [
    "PRIVATE_JWK_MEMBERS",
    "CompactJWS",
    "JWSError",
    "b64url_decode",
    "b64url_encode",
    "json_dumps",
    "json_loads_object",
    "numeric_date",
    "public_key_from_jwk",
    "sign_compact",
    "split_compact",
    "split_segments",
]

#: Members that make a JWK private (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2) or symmetric.
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192

_ED25519_P = 2**255 - 19
_ED25519_Y8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
#: y-coordinates of the eight points of order 1, 2, 4 and 8 on edwards25519 (RFC 8032 §5.1).
_ED25519_SMALL_ORDER_Y = frozenset({0, 1, _ED25519_P - 1, _ED25519_Y8, _ED25519_P - _ED25519_Y8})


class JWSError(Exception):
    """A JWS or JWK failed a check; ``reason`` says which."""

    def __init__(self, reason: Reason, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


# --- base64url (RFC 7515 §2, RFC 4648 §5, no padding) --------------------------------------

# Map the URL-safe alphabet onto the standard one, and everything a base64url
# string must not contain ('+', '/', '=') onto a byte strict decoding refuses.
# bytes.translate with a 256-byte table is several times faster than str.translate.
_TO_STD = bytes.maketrans(b"-_+/=", b"+/!!!")
_FROM_STD = bytes.maketrans(b"+/", b"-_")
# Padding to append for each length remainder (1 is impossible and refused first).
_PADDING = (b"", b"", b"==", b"=")
# With 2 or 3 characters in the last quantum, the final character carries unused
# bits that must be zero (canonical encoding, RFC 4648 §3.5); as byte values.
_CANONICAL_LAST = {
    2: frozenset(b"AQgw"),
    3: frozenset(b"AEIMQUYcgkosw048"),
}


def b64url_encode(data: bytes) -> str:
    """Encode ``data`` as base64url without padding."""
    # translate's second argument deletes the padding in the same pass.
    return binascii.b2a_base64(data, newline=False).translate(_FROM_STD, b"=").decode()


def b64url_decode(value: str) -> bytes:
    """Decode strict, canonical, unpadded base64url.

    Raises:
        JWSError: (MALFORMED) on any character outside the alphabet, padding,
            an impossible length or non-zero unused bits.
    """
    # (About 40 ns less per call than checking isascii() and the last character first.)
    rem = len(value) % 4
    try:
        std = value.encode("ascii").translate(_TO_STD)  # non-ASCII: UnicodeEncodeError
        if rem:
            if rem == 1:
                raise JWSError(Reason.MALFORMED, "invalid base64url")
            if std[-1] not in _CANONICAL_LAST[rem]:
                raise JWSError(Reason.MALFORMED, "non-canonical base64url")
            std += _PADDING[rem]
        return binascii.a2b_base64(std, strict_mode=True)
    except (binascii.Error, ValueError):
        raise JWSError(Reason.MALFORMED, "invalid base64url") from None


# --- strict JSON ----------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("non-finite number")
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_object, parse_constant=_no_constant, parse_float=_finite_float
)
# The C scanner behind _DECODER.decode, called directly for a text that starts with "{"
# (skips two regex whitespace matches and a Python frame per parse).
_SCAN_ONCE = _DECODER.scan_once  # type: ignore[attr-defined]
# The same scanner without the duplicate-detecting hook, for flat objects (see below).
_FLAT_SCAN_ONCE = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float).scan_once  # type: ignore[attr-defined]
_JSON_WS = " \t\n\r"  # RFC 8259 §2 insignificant whitespace
_MAX_DEPTH = 32


def json_loads_object(data: bytes) -> dict[str, Any]:
    """Parse UTF-8 JSON that must be an object (RFC 7515 §5.2 steps 3, 8; RFC 7519 §7.2).

    Rejects duplicate member names, ``NaN``/``Infinity``, numbers that overflow
    to infinity, invalid UTF-8 (including lone surrogates in escapes), nesting
    deeper than 32 levels and any top-level value other than an object.

    Raises:
        JWSError: (MALFORMED).
    """
    try:
        text = data.decode("utf-8")
        flat = False
        if text[:1] != "{":
            obj = _DECODER.decode(text)
            end = len(text)
        elif text.count("{") == 1 and "[" not in text:
            flat = True
            # A flat object (a DPoP payload): parsed without the hook. Each member but
            # the first adds one ',' and a ',' inside a string only adds more, so
            # len(obj) == count(',') + 1 proves there was no duplicate member name;
            # otherwise the hook decides.
            obj, end = _FLAT_SCAN_ONCE(text, 0)
            if len(obj) != text.count(",") + 1:
                obj, end = _SCAN_ONCE(text, 0)
        else:
            obj, end = _SCAN_ONCE(text, 0)
        if end != len(text) and text[end:].strip(_JSON_WS):
            raise ValueError("extra data after the JSON object")
        if not isinstance(obj, dict):
            raise JWSError(Reason.MALFORMED, "JSON value is not an object")
        # Strict UTF-8 decoding leaves no surrogates, so lone surrogates can only come
        # from \\u escapes; with no escape and fewer brackets than the depth limit
        # the walk below cannot fail and is skipped.
        if "\\u" in text or (not flat and text.count("{") + text.count("[") > _MAX_DEPTH):
            _check_strings(obj)
    except JWSError:
        raise
    except (ValueError, RecursionError, StopIteration):
        raise JWSError(Reason.MALFORMED, "invalid JSON") from None
    return obj


def _check_strings(value: object, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("too deeply nested")
    if isinstance(value, str):
        value.encode("utf-8")  # lone surrogates raise UnicodeEncodeError (a ValueError)
    elif isinstance(value, dict):
        for key, item in value.items():
            key.encode("utf-8")
            _check_strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, depth + 1)


def numeric_date(value: object) -> float | None:
    """Read a NumericDate claim (RFC 7519 §2) from parsed JSON: a finite number as a float.

    The strict parser above already refuses ``NaN``, ``Infinity`` and floats that
    overflow; an integer has no such bound in Python (``1e400`` written as 401
    digits), so it is converted here, where the overflow is caught.

    Returns:
        The value as a float, or None for a boolean, a non-number or an integer
        beyond the float range (the caller turns None into its own error).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def json_dumps(value: Mapping[str, Any]) -> bytes:
    """Serialize compactly (no spaces), rejecting non-finite numbers."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


# --- JWK import -----------------------------------------------------------------------------


def _member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JWSError(Reason.BAD_JWK, f"jwk member {name} missing or not a string")
    try:
        return b64url_decode(value)
    except JWSError:
        raise JWSError(Reason.BAD_JWK, f"jwk member {name} is not base64url") from None


def public_key_from_jwk(
    jwk: object,
    spec: AlgSpec,
    *,
    min_rsa_bits: int = MIN_RSA_BITS,
    max_rsa_bits: int = MAX_RSA_BITS,
) -> PublicKey:
    """Import a public JWK that must fit ``spec`` (RFC 7517, RFC 7518 §6, RFC 8037).

    Checks: a JSON object; no private or symmetric members (RFC 9449 §4.3 (7));
    ``kty``/``crv`` fit the algorithm (§4.3 (5)); optional ``alg`` equals it and
    optional ``use`` is ``sig``; coordinates of exact length and on the curve;
    an Ed25519 key not of small order (its signatures could be forged);
    RSA modulus within ``[min_rsa_bits, max_rsa_bits]`` and a sane exponent.

    Raises:
        JWSError: PRIVATE_JWK, BAD_JWK or UNSUPPORTED_ALG.
    """
    if not isinstance(jwk, dict):
        raise JWSError(Reason.BAD_JWK, "jwk is not a JSON object")
    if not PRIVATE_JWK_MEMBERS.isdisjoint(jwk):
        raise JWSError(Reason.PRIVATE_JWK, "jwk contains private key material")
    kty = jwk.get("kty")
    if kty != spec.kty:
        raise JWSError(Reason.BAD_JWK, "jwk kty does not fit alg")
    jwk_alg = jwk.get("alg")
    if jwk_alg is not None and jwk_alg != spec.name:
        raise JWSError(Reason.BAD_JWK, "jwk alg does not match header alg")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise JWSError(Reason.BAD_JWK, "jwk use is not sig")
    if spec.kty == "EC":
        if jwk.get("crv") != spec.crv:
            raise JWSError(Reason.BAD_JWK, "jwk crv does not fit alg")
        curve, size = EC_CURVES[jwk["crv"]]
        x, y = _member(jwk, "x"), _member(jwk, "y")
        if len(x) != size or len(y) != size:
            raise JWSError(Reason.BAD_JWK, "EC coordinate of wrong length")
        try:
            # from_encoded_point checks that the point lies on the curve.
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)
        except ValueError:
            raise JWSError(Reason.BAD_JWK, "EC point is not on the curve") from None
    if spec.kty == "OKP":
        if jwk.get("crv") != "Ed25519":
            raise JWSError(Reason.BAD_JWK, "jwk crv does not fit alg")
        x = _member(jwk, "x")
        if len(x) != 32:
            raise JWSError(Reason.BAD_JWK, "Ed25519 key of wrong length")
        # A small-order point (e.g. the identity) lets anyone forge signatures without a
        # private key (OpenSSL verifies R=identity, S=0 for the identity key): refuse them,
        # whatever the sign bit and including non-canonical encodings of y.
        if int.from_bytes(x, "little") % (1 << 255) % _ED25519_P in _ED25519_SMALL_ORDER_Y:
            raise JWSError(Reason.BAD_JWK, "Ed25519 key is a small-order point")
        return ed25519.Ed25519PublicKey.from_public_bytes(x)
    n_bytes, e_bytes = _member(jwk, "n"), _member(jwk, "e")
    if n_bytes[0] == 0 or e_bytes[0] == 0:
        raise JWSError(Reason.BAD_JWK, "RSA integer with leading zero octet")
    n, e = int.from_bytes(n_bytes, "big"), int.from_bytes(e_bytes, "big")
    bits = n.bit_length()
    if bits < min_rsa_bits:
        raise JWSError(Reason.BAD_JWK, "RSA key too small")
    if bits > max_rsa_bits:
        raise JWSError(Reason.BAD_JWK, "RSA key too large")
    if e < 3 or e % 2 == 0 or e.bit_length() > 32 or n % 2 == 0:
        raise JWSError(Reason.BAD_JWK, "RSA exponent or modulus invalid")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:  # pragma: no cover - cryptography's checks (odd e >= 3, e < n) made above
        raise JWSError(Reason.BAD_JWK, "invalid RSA key") from None


# --- compact serialization ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompactJWS:
    """The three segments of a compact JWS, still encoded."""

    header_b64: str
    payload_b64: str
    signature_b64: str

    @property
    def signing_input(self) -> bytes:
        """``ASCII(header_b64 '.' payload_b64)`` (RFC 7515 §5.1 step 6)."""
        return f"{self.header_b64}.{self.payload_b64}".encode("ascii")


def split_compact(token: object, *, max_length: int) -> CompactJWS:
    """Split a compact JWS after a size check, before any decoding (RFC 7515 §7.1).

    Raises:
        JWSError: TOO_LARGE, or MALFORMED when it is not a string of three parts.
    """
    header_b64, payload_b64, signature_b64 = split_segments(token, max_length=max_length)
    return CompactJWS(header_b64, payload_b64, signature_b64)


def split_segments(token: object, *, max_length: int) -> tuple[str, str, str]:
    """:func:`split_compact` returning a plain tuple (the verify hot path).

    Raises:
        JWSError: TOO_LARGE, or MALFORMED when it is not a string of three parts.
    """
    if not isinstance(token, str):
        raise JWSError(Reason.MALFORMED, "JWS is not a string")
    if len(token) > max_length:
        raise JWSError(Reason.TOO_LARGE, "JWS too large")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
        raise JWSError(Reason.MALFORMED, "not a compact JWS of three parts")
    return parts[0], parts[1], parts[2]


def check_crit(header: Mapping[str, Any], understood: Collection[str] = ()) -> None:
    """Refuse ``crit`` unless every listed extension is understood (RFC 7515 §4.1.11).

    Raises:
        JWSError: UNSUPPORTED_CRIT.
    """
    if "crit" not in header:
        return
    crit = header["crit"]
    if (
        not isinstance(crit, list)
        or not crit
        or len(set(map(str, crit))) != len(crit)
        or not all(isinstance(name, str) and name in understood and name in header for name in crit)
    ):
        raise JWSError(Reason.UNSUPPORTED_CRIT, "crit lists an extension that is not understood")


def sign_compact(header_b64: str, payload: Mapping[str, Any], spec: AlgSpec, sign: Any) -> str:
    """Produce ``header.payload.signature`` with a ready header segment.

    ``sign`` is a callable ``(bytes) -> bytes`` returning JWS signature bytes.
    """
    del spec  # the signer already knows its algorithm
    signing_input = f"{header_b64}.{b64url_encode(json_dumps(payload))}"
    signature = sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


def algorithm_spec(alg: object, allowed: Collection[str]) -> AlgSpec:
    """Return the spec of ``alg`` if it is a supported asymmetric algorithm in ``allowed``.

    Raises:
        JWSError: UNSUPPORTED_ALG (``none``, HS*, unknown, or not allowed by policy).
    """
    spec = spec_for(alg)
    if spec is None or spec.name not in allowed:
        raise JWSError(Reason.UNSUPPORTED_ALG, "alg not supported or not allowed")
    return spec
