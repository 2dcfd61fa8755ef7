"""Stateless, rotating server nonces (RFC 9449 §8, §9, §11.1).

A nonce is ``base64url(key id ‖ time step ‖ HMAC-SHA256(secret, context ‖ key id ‖ step)[:16])``:
unpredictable without the secret (AS-13), checkable by any instance that shares
the secrets, and carrying the server time it was issued at, so that a fresh
nonce can stand in for a client's wrong clock (SEC-6). Several secrets may be
configured: the first signs, all verify, so a secret rotates without downtime.
The ``context`` separates servers sharing a secret (an AS nonce is not an RS
nonce, RS-23).

A secret written as text (a TOML file, an environment variable, a command-line
tool) has one format everywhere, read by :func:`parse_nonce_secret`: unpadded
base64url (RFC 4648 §5) of at least 32 bytes, as ``secrets.token_urlsafe(32)`` makes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from dpopkit.core.jws import JWSError, b64url_decode, b64url_encode
from dpopkit.errors import Reason, UseNonceError

__all__ = [
    "MIN_SECRET_BYTES",
    "NonceInfo",
    "NonceIssuer",
    "parse_nonce_secret",
    "parse_nonce_secrets",
]

_KID_LEN = 4
_MAC_LEN = 16
_RAW_LEN = _KID_LEN + 4 + _MAC_LEN
#: The shortest nonce secret accepted, in bytes (HMAC-SHA256 key of the hash's size).
MIN_SECRET_BYTES = 32
_HEX_RE = re.compile(r"[0-9a-fA-F]{64,}")


def parse_nonce_secret(text: str) -> bytes:
    """Decode the text form of a nonce secret: unpadded base64url of >= 32 bytes.

    The one format for a secret given as text, on every command and in the Python
    API (a ``str`` passed to :class:`NonceIssuer`): unpadded base64url (RFC 4648 §5,
    the JOSE alphabet ``A-Z a-z 0-9 - _``) of at least 32 bytes, such as
    ``python -c "import secrets; print(secrets.token_urlsafe(32))"`` prints.
    Surrounding whitespace (a file's final newline) is ignored.

    Raises:
        ValueError: one line saying what is wrong (never echoing the value): empty,
            padded, standard base64 (``+``/``/``), hex (an older format; refused rather
            than silently read as other bytes), not base64url, or under 32 bytes.
    """
    if not isinstance(cast(object, text), str):
        raise ValueError("a nonce secret in text form must be a string")
    value = text.strip(" \t\r\n")
    if not value:
        raise ValueError("the nonce secret is empty")
    if "=" in value:
        raise ValueError("a nonce secret is unpadded base64url: remove the '=' padding")
    if "+" in value or "/" in value:
        raise ValueError(
            "a nonce secret is base64url ('-' and '_'), not standard base64 ('+' and '/')"
        )
    if _HEX_RE.fullmatch(value):
        raise ValueError(
            "the nonce secret looks like hex; nonce secrets are base64url "
            "(e.g. secrets.token_urlsafe(32))"
        )
    try:
        secret = b64url_decode(value)
    except JWSError:
        raise ValueError("the nonce secret is not base64url (RFC 4648 §5)") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the nonce secret decodes to {len(secret)} bytes; at least {MIN_SECRET_BYTES} "
            "are needed (e.g. secrets.token_urlsafe(32))"
        )
    return secret


def parse_nonce_secrets(text: str) -> list[bytes]:
    """Several comma-separated secrets (newest first), each read by :func:`parse_nonce_secret`.

    Raises:
        ValueError: an empty list or item, or an item that is not a valid secret
            (the message says which item, by position, never the value).
    """
    items = text.split(",")
    secrets: list[bytes] = []
    for position, item in enumerate(items, 1):
        try:
            secrets.append(parse_nonce_secret(item))
        except ValueError as exc:
            where = f"item {position} of {len(items)}: " if len(items) > 1 else ""
            raise ValueError(f"{where}{exc}") from None
    return secrets


@dataclass(frozen=True, slots=True)
class NonceInfo:
    """What a valid nonce says: when it was issued and until when it is accepted.

    ``current`` is False for an older (still accepted) nonce: the server should
    then send a fresh ``DPoP-Nonce``.
    """

    issued_at: float
    expires_at: float
    current: bool


class NonceIssuer:
    """Issue and verify stateless nonces.

    Args:
        secrets: one or more secrets of at least 32 bytes; the first signs, all verify.
            A ``str`` is the text form, read by :func:`parse_nonce_secret` (base64url).
        context: separates issuers that share secrets (e.g. ``"as"`` vs ``"rs:https://api"``).
        step: seconds per time step (a nonce changes every ``step`` seconds).
        accept_past_steps: how many older steps are still accepted (the window).

    A nonce issued in step ``s`` is accepted while the current step is between
    ``s - 1`` (a peer instance slightly ahead) and ``s + accept_past_steps``.
    """

    __slots__ = ("_context", "_keys", "_signing_kid", "accept_past_steps", "step")

    def __init__(
        self,
        secrets: Sequence[bytes | str],
        *,
        context: str = "",
        step: int = 60,
        accept_past_steps: int = 2,
    ) -> None:
        if isinstance(cast(object, secrets), bytes | bytearray | str) or not secrets:
            raise ValueError("secrets must be a non-empty sequence of secrets")
        if step < 1 or accept_past_steps < 0:
            raise ValueError("step must be >= 1 and accept_past_steps >= 0")
        keys: dict[bytes, bytes] = {}
        for item in secrets:
            secret = parse_nonce_secret(item) if isinstance(item, str) else item
            if not isinstance(cast(object, secret), bytes | bytearray) or len(secret) < 32:
                raise ValueError("each nonce secret must be at least 32 bytes")
            kid = hashlib.sha256(b"dpopkit-nonce-kid" + bytes(secret)).digest()[:_KID_LEN]
            keys.setdefault(kid, bytes(secret))
        self._keys = keys
        self._signing_kid = next(iter(keys))
        self._context = context.encode("utf-8")
        self.step = step
        self.accept_past_steps = accept_past_steps

    def __repr__(self) -> str:
        return f"NonceIssuer(keys={len(self._keys)}, step={self.step})"

    def _mac(self, kid: bytes, step_bytes: bytes) -> bytes:
        msg = self._context + b"\x00" + kid + step_bytes
        return hmac.new(self._keys[kid], msg, hashlib.sha256).digest()[:_MAC_LEN]

    def issue(self, *, now: float) -> str:
        """Return the current nonce (the same value for everyone within one step).

        The value is 32 base64url characters, a subset of ``NQCHAR`` (RFC 9449 §8.1).
        """
        step_bytes = struct.pack(">I", int(now // self.step) & 0xFFFFFFFF)
        kid = self._signing_kid
        return b64url_encode(kid + step_bytes + self._mac(kid, step_bytes))

    def challenge(self, reason: Reason = Reason.NONCE_REQUIRED, *, now: float) -> UseNonceError:
        """Return (not raise) a :class:`UseNonceError` carrying the current nonce."""
        return UseNonceError(reason, nonce=self.issue(now=now))

    def verify(self, nonce: str, *, now: float) -> NonceInfo:
        """Check a nonce from a proof (RFC 9449 §4.3 (10), §8 AS-16).

        Returns:
            A :class:`NonceInfo` for a nonce issued by this issuer within the window.

        Raises:
            UseNonceError: (NONCE_MISMATCH) unknown, forged or expired, with a fresh nonce.
        """
        try:
            if not isinstance(cast(object, nonce), str) or len(nonce) != 32:
                raise ValueError
            raw = b64url_decode(nonce)
        except (ValueError, JWSError):
            raise self.challenge(Reason.NONCE_MISMATCH, now=now) from None
        kid, step_bytes, mac = raw[:_KID_LEN], raw[_KID_LEN:8], raw[8:]
        if len(raw) != _RAW_LEN or kid not in self._keys:
            raise self.challenge(Reason.NONCE_MISMATCH, now=now)
        # RFC 9449 §4.3 (10): constant-time comparison of the MAC.
        if not hmac.compare_digest(mac, self._mac(kid, step_bytes)):
            raise self.challenge(Reason.NONCE_MISMATCH, now=now)
        issued_step = struct.unpack(">I", step_bytes)[0]
        current_step = int(now // self.step) & 0xFFFFFFFF
        age = current_step - issued_step
        if age < -1 or age > self.accept_past_steps:
            raise self.challenge(Reason.NONCE_MISMATCH, now=now)
        issued_at = float(issued_step * self.step)
        return NonceInfo(
            issued_at=issued_at,
            expires_at=issued_at + (self.accept_past_steps + 1) * self.step,
            current=age <= 0 and kid == self._signing_kid,
        )
