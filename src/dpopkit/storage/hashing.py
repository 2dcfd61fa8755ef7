"""How the grant store keeps secrets: hashes, never the secrets themselves.

Codes, refresh tokens and request URIs carry 256 random bits and are stored as
their SHA-256 (:func:`sha256_hex`); client secrets and passwords are hashed with
scrypt and a random salt (:func:`hash_secret`) and checked in constant time
(:func:`verify_secret`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["hash_secret", "sha256_hex", "verify_secret"]

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def sha256_hex(value: str) -> str:
    """Return the hex SHA-256 of a high-entropy secret (codes, refresh tokens, request URIs)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def hash_secret(secret: str) -> str:
    """Hash a client secret or password with scrypt and a random salt.

    Returns:
        ``scrypt$N$r$p$<salt b64>$<hash b64>``.
    """
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    enc = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${enc(salt).decode()}${enc(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Check ``secret`` against a :func:`hash_secret` value in constant time."""
    try:
        scheme, n, r, p, salt_b64, hash_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
        n_i, r_i, p_i = int(n), int(r), int(p)
        if not (2**10 <= n_i <= 2**20 and 1 <= r_i <= 32 and 1 <= p_i <= 16):
            return False
        digest = hashlib.scrypt(
            secret.encode("utf-8"),
            salt=salt,
            n=n_i,
            r=r_i,
            p=p_i,
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)
