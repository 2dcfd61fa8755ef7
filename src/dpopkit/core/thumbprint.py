"""JWK SHA-256 thumbprints (RFC 7638) and the access-token hash ``ath`` (RFC 9449 §4.2).

Only the required members of the key type enter the hash (RFC 7638 §3.2):
EC ``crv,kty,x,y``; OKP ``crv,kty,x``; RSA ``e,kty,n``. Optional members such
as ``kid``, ``alg``, ``use``, ``key_ops`` or ``ext`` never do (checklist X-2).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from dpopkit.core.jws import b64url_encode

__all__ = ["access_token_hash", "jwk_thumbprint"]

# Values that can be written into JSON without escaping (RFC 7638 §3.3): printable
# ASCII except '"' and '\\'. Base64url values and curve names always qualify.
_PLAIN_JSON = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")

_REQUIRED = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}


def jwk_thumbprint(jwk: Mapping[str, object]) -> str:
    """Compute the RFC 7638 SHA-256 thumbprint (the ``jkt``) of a public or private JWK.

    RFC 7638 §3; RFC 9449 §6.1 (``cnf.jkt``) and §10 (``dpop_jkt``).

    Args:
        jwk: an EC, OKP or RSA JWK. Private members are ignored (RFC 7638 §3.2.1).

    Returns:
        The base64url (unpadded) SHA-256 digest of the canonical JSON: 43 characters.

    Raises:
        ValueError: an unsupported ``kty`` (``oct`` included), a missing required
            member, or a value that would need JSON escaping (RFC 7638 §3.3).
    """
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _REQUIRED:
        raise ValueError("jwk kty must be EC, OKP or RSA")
    parts = []
    for name in _REQUIRED[kty]:
        value = jwk.get(name)
        if not isinstance(value, str) or not _PLAIN_JSON.fullmatch(value):
            raise ValueError(f"jwk member {name} missing or not a plain string")
        parts.append(f'"{name}":"{value}"')
    canonical = "{" + ",".join(parts) + "}"
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def access_token_hash(access_token: str) -> str:
    """Compute ``ath``: base64url(SHA-256(the access token exactly as sent)) (RFC 9449 §4.2).

    The token is hashed as its ASCII octets, with no decoding and no scheme prefix.
    """
    return b64url_encode(hashlib.sha256(access_token.encode("utf-8")).digest())


def checked_jwk_thumbprint(kty: str, jwk: Mapping[str, object]) -> str:
    """:func:`jwk_thumbprint` of a JWK that :func:`~dpopkit.core.jws.public_key_from_jwk` accepted.

    That import already checked ``kty``, that ``crv`` comes from a fixed set and
    that ``x``/``y``/``n``/``e`` are strict base64url strings, none of which needs
    JSON escaping (RFC 7638 §3.3); so the canonical JSON (RFC 7638 §3.2, members
    in lexicographic order) is written directly, without re-checking each member
    (the verify hot path).
    """
    if kty == "EC":
        canonical = f'{{"crv":"{jwk["crv"]}","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'
    elif kty == "OKP":
        canonical = f'{{"crv":"{jwk["crv"]}","kty":"OKP","x":"{jwk["x"]}"}}'
    else:
        canonical = f'{{"e":"{jwk["e"]}","kty":"RSA","n":"{jwk["n"]}"}}'
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())
