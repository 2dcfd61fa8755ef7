"""Key-encryption keys (KEKs): private signing JWKs encrypted at rest (AES-256-GCM).

A grant store given :class:`KeyEncryptionKeys` stores each private signing JWK as
an envelope ``{"enc": "A256GCM", "kek": ID, "iv": ..., "ct": ...}`` instead of the
JWK itself. The additional authenticated data is the signing key's ``kid``, so a
ciphertext copied to another row does not decrypt.

Several KEKs can be configured, newest first: the first encrypts, every one
decrypts (rotation without downtime, see ``docs/authorization-server.md``,
"Secrets at rest"). Each KEK is 32 random bytes written in base64url, one per
line; its id is derived from the key (:attr:`KeyEncryptionKeys.ids`), so it never
has to be chosen or kept in step by hand. Generate one with::

    import secrets

    print(secrets.token_urlsafe(32))
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KeyEncryptionError", "KeyEncryptionKeys"]

_ENC = "A256GCM"


class KeyEncryptionError(ValueError):
    """A KEK is malformed, or a sealed value cannot be opened with the configured KEKs."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str) or not text.isascii():
        raise KeyEncryptionError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise KeyEncryptionError("not base64url") from None


def _aad(kid: str) -> bytes:
    return b"dpopkit signing key\x00" + kid.encode("utf-8")


class KeyEncryptionKeys:
    """One or more AES-256-GCM key-encryption keys, newest (the encrypting one) first.

    Args:
        keys: the raw 32-byte keys, newest first.

    Raises:
        KeyEncryptionError: no key, a key that is not 32 bytes, or a key given twice.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise KeyEncryptionError("no key-encryption key")
        ids: list[str] = []
        for key in keys:
            if len(key) != 32:
                raise KeyEncryptionError("a key-encryption key must be 32 bytes (base64url)")
            ids.append(_b64(hashlib.sha256(b"dpopkit kek\x00" + key).digest()[:6]))
        if len(set(ids)) != len(ids):
            raise KeyEncryptionError("a key-encryption key is listed twice")
        self._keys = {kid: AESGCM(key) for kid, key in zip(ids, keys, strict=True)}
        self.ids: tuple[str, ...] = tuple(ids)
        """The derived KEK ids, newest first; ``ids[0]`` encrypts."""

    @classmethod
    def from_text(cls, text: str) -> KeyEncryptionKeys:
        """Parse one base64url key per line, newest first (blank lines and ``#`` comments ignored).

        Raises:
            KeyEncryptionError: no key, or a line that is not a 32-byte base64url key.
        """
        keys: list[bytes] = []
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(_unb64(line))
        return cls(keys)

    @property
    def primary(self) -> str:
        """The id of the KEK that encrypts."""
        return self.ids[0]

    def seal(self, plaintext: bytes, *, kid: str) -> str:
        """Encrypt ``plaintext`` (a private JWK) for the row of signing key ``kid``."""
        iv = os.urandom(12)
        ct = self._keys[self.primary].encrypt(iv, plaintext, _aad(kid))
        return json.dumps({"enc": _ENC, "kek": self.primary, "iv": _b64(iv), "ct": _b64(ct)})

    def open(self, envelope: Mapping[str, Any], *, kid: str) -> bytes:
        """Decrypt an envelope made by :meth:`seal` for the row of signing key ``kid``.

        Raises:
            KeyEncryptionError: an unknown KEK id, a malformed envelope, or a ciphertext
                that does not authenticate (another row's, or altered).
        """
        if envelope.get("enc") != _ENC:
            raise KeyEncryptionError("unknown envelope encryption")
        kek = envelope.get("kek")
        aead = self._keys.get(kek) if isinstance(kek, str) else None
        if aead is None:
            raise KeyEncryptionError(f"the signing key {kid!r} is sealed with an unknown KEK")
        try:
            return aead.decrypt(_unb64(envelope["iv"]), _unb64(envelope["ct"]), _aad(kid))
        except (KeyError, InvalidTag, ValueError):
            raise KeyEncryptionError(f"the signing key {kid!r} does not decrypt") from None

    @staticmethod
    def is_envelope(value: Mapping[str, Any]) -> bool:
        """True when a stored value is a sealed envelope rather than a plain JWK."""
        return "enc" in value and "kty" not in value
