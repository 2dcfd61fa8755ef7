"""Store DPoP keys in files and load them back (private JWK or PEM, 0600 permissions).

A DPoP private key is a credential: whoever holds it can use every token bound
to it (RFC 9449 §11.4, checklist C-23). :func:`save_key` therefore writes the
file atomically and readable by its owner only: the bytes go to a new file in
the same directory created with mode ``0600``, which then takes the final name
(``os.link`` when the name must not exist yet, ``os.replace`` to overwrite), so
a reader never sees a half-written key and the key is never world-readable,
not even for a moment.

Formats:

* ``jwk``: the private JWK as JSON (RFC 7517, RFC 7518 §6); never encrypted.
* ``pem``: PKCS#8 PEM, encrypted with the best available scheme when a password
  is given (use this format for a key at rest that needs a password).

:func:`load_key` recognises both, and :func:`load_public_jwk` also accepts
public keys (a public JWK or a ``PUBLIC KEY`` PEM), e.g. to compute a ``jkt``.
Only the standard library and the dpopkit core are used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from dpopkit._private import write_private_file
from dpopkit.core.algorithms import EC_CURVES, spec_for
from dpopkit.core.jws import JWSError, b64url_encode, json_loads_object, public_key_from_jwk
from dpopkit.core.keys import DPoPKey
from dpopkit.core.thumbprint import jwk_thumbprint

__all__ = ["KeyFormat", "load_key", "load_public_jwk", "save_key"]

KeyFormat = Literal["jwk", "pem"]

#: Larger files are refused before parsing (an 8192-bit RSA private JWK is ~6.5 KB).
MAX_KEY_FILE_SIZE = 64 * 1024

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
# A spec per key type, only to validate a public JWK: any alg of the type will do.
_CHECK_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA"}


def save_key(
    key: DPoPKey,
    path: str | os.PathLike[str],
    *,
    password: bytes | str | None = None,
    format: KeyFormat = "jwk",
    overwrite: bool = False,
) -> Path:
    """Write ``key``'s private half to ``path`` atomically, with ``0600`` permissions.

    Args:
        key: a :class:`~dpopkit.DPoPKey` holding its private key (not a signer).
        path: the file to create.
        password: encrypt the PEM with it (``format="pem"`` only; a JWK cannot be encrypted).
        format: ``"jwk"`` (private JWK JSON) or ``"pem"`` (PKCS#8).
        overwrite: replace an existing file; otherwise an existing ``path`` is refused.

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: an unknown format, a password with ``format="jwk"``, an empty
            password, or a key held by a signer (not exportable).
        OSError: the directory is missing or not writable.
    """
    if format not in ("jwk", "pem"):
        raise ValueError("format must be 'jwk' or 'pem'")
    if password is not None and format != "pem":
        raise ValueError("a private JWK cannot be encrypted; use format='pem' with a password")
    if password is not None and not password:
        raise ValueError("the password must not be empty")
    if format == "jwk":
        data = json.dumps(key.private_jwk(), indent=2).encode("utf-8") + b"\n"
    else:
        data = key.to_pem(password=password)
    target = Path(path)
    write_private_file(target, data, overwrite=overwrite)
    return target


def _read(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(MAX_KEY_FILE_SIZE + 1)
    if len(data) > MAX_KEY_FILE_SIZE:
        raise ValueError(f"the key file is larger than {MAX_KEY_FILE_SIZE} bytes")
    return data


def _parse_jwk(data: bytes) -> dict[str, Any]:
    try:
        return json_loads_object(data)
    except JWSError:
        raise ValueError("the key file looks like JSON but is not a JSON object") from None


def _is_encrypted_pem(data: bytes) -> bool:
    return b"ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def load_key(path: str | os.PathLike[str], *, password: bytes | str | None = None) -> DPoPKey:
    """Load a private key written by :func:`save_key` (or any private JWK or PEM).

    The format is detected: a JSON object is a private JWK (its ``alg`` member,
    when present, is kept); ``-----BEGIN`` starts a PEM private key.

    Args:
        path: the key file.
        password: the password of an encrypted PEM.

    Returns:
        The :class:`~dpopkit.DPoPKey`.

    Raises:
        ValueError: not a private key of a supported type, a public key only, an
            encrypted PEM without a password, a password for an unencrypted key,
            or a wrong password.
        OSError: the file cannot be read.
    """
    data = _read(path)
    stripped = data.lstrip()
    if stripped.startswith(b"{"):
        if password is not None:
            raise ValueError("a JWK file is not encrypted; do not give a password")
        jwk = _parse_jwk(stripped)
        if "d" not in jwk:
            raise ValueError("the JWK is a public key; a private key (with 'd') is needed")
        return DPoPKey.from_jwk(jwk)
    if stripped.startswith(b"-----BEGIN"):
        if b"PRIVATE KEY-----" not in stripped:
            raise ValueError("the PEM file holds no private key")
        encrypted = _is_encrypted_pem(stripped)
        if encrypted and password is None:
            raise ValueError("the PEM private key is encrypted; a password is needed")
        if not encrypted and password is not None:
            raise ValueError("the PEM private key is not encrypted; do not give a password")
        return DPoPKey.from_pem(stripped, password=password)
    raise ValueError("not a key file: expected a private JWK (JSON) or a PEM private key")


def load_public_jwk(
    path: str | os.PathLike[str], *, password: bytes | str | None = None
) -> dict[str, str]:
    """Load the public key of a key file as a JWK (required members only).

    Accepts a private or public JWK and a private (maybe encrypted) or public PEM.
    A public JWK is validated as a key (EC point on its curve, RSA >= 2048 bits).

    Raises:
        ValueError: not a supported key, or the reasons of :func:`load_key`.
        OSError: the file cannot be read.
    """
    data = _read(path).lstrip()
    if data.startswith(b"{"):
        jwk = _parse_jwk(data)
        if "d" in jwk:
            return load_key(path, password=password).public_jwk
        return _checked_public_jwk(jwk)
    if data.startswith(b"-----BEGIN PUBLIC KEY-----"):
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError:
            raise ValueError("cannot load the PEM public key") from None
        return _checked_public_jwk(_jwk_of_public_key(public))
    return load_key(path, password=password).public_jwk


def _checked_public_jwk(jwk: dict[str, Any]) -> dict[str, str]:
    kty = jwk.get("kty")
    declared = jwk.get("alg")
    if spec_for(declared) is not None:
        alg: object = declared  # e.g. PS256 or Ed25519: the key must fit it
    elif kty == "RSA":
        alg = "RS256"
    else:
        crv = jwk.get("crv")
        alg = _CHECK_ALG.get(crv) if isinstance(crv, str) else None
    spec = spec_for(alg)
    if spec is None:
        raise ValueError("unsupported key: EC P-256/384/521, OKP Ed25519 or RSA expected")
    try:
        public_key_from_jwk(jwk, spec)
        jwk_thumbprint(jwk)
    except JWSError as exc:
        raise ValueError(f"invalid public JWK: {exc.description}") from None
    names = ("kty", "crv", "x", "y") if kty != "RSA" else ("kty", "n", "e")
    return {name: jwk[name] for name in names if name in jwk}


def _int_b64(value: int, length: int) -> str:
    return b64url_encode(value.to_bytes(length, "big"))


def _jwk_of_public_key(public: object) -> dict[str, Any]:
    if isinstance(public, ec.EllipticCurvePublicKey):
        crv = _CURVE_NAMES.get(public.curve.name)
        if crv is None:
            raise ValueError("unsupported EC curve")
        size = EC_CURVES[crv][1]
        numbers = public.public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "x": _int_b64(numbers.x, size),
            "y": _int_b64(numbers.y, size),
        }
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    if isinstance(public, rsa.RSAPublicKey):
        nums = public.public_numbers()
        return {
            "kty": "RSA",
            "n": _int_b64(nums.n, (nums.n.bit_length() + 7) // 8),
            "e": _int_b64(nums.e, (nums.e.bit_length() + 7) // 8),
        }
    raise ValueError("unsupported public key type")
