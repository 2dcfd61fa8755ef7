"""JWTs the authorization server makes and reads, on dpopkit's strict JWS layer.

- :class:`KeyRing`: the AS signing keys, generated on first start, persisted in the
  grant store, rotated, and published in JWKS until retired (RFC 7517 §5).
- :func:`verify_jwt`: a strict compact-JWT check against a set of public JWKs, for
  our own access tokens (introspection) and for RFC 7523 client assertions.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dpopkit.core.algorithms import ALGORITHMS
from dpopkit.core.jws import (
    JWSError,
    algorithm_spec,
    b64url_decode,
    b64url_encode,
    check_crit,
    json_dumps,
    json_loads_object,
    numeric_date,
    public_key_from_jwk,
    split_compact,
)
from dpopkit.core.keys import DPoPKey
from dpopkit.errors import Reason
from dpopkit.storage.sql import SigningKeyRecord, SQLGrantStore

__all__ = ["JWTError", "KeyRing", "SigningKey", "verify_jwt"]

MAX_JWT_LENGTH = 16384


class JWTError(Exception):
    """A JWT failed a check; ``reason`` says which."""

    def __init__(self, reason: Reason, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One signing key: its ``kid`` and the key that signs."""

    kid: str
    key: DPoPKey

    @property
    def public_jwk(self) -> dict[str, str]:
        """The JWKS entry (``kid``, ``alg``, ``use``)."""
        return {**self.key.public_jwk, "kid": self.kid, "alg": self.key.alg, "use": "sig"}

    def sign(self, claims: Mapping[str, Any], *, typ: str) -> str:
        """Return a compact JWS of ``claims`` with header ``{alg, kid, typ}``."""
        header = {"alg": self.key.alg, "kid": self.kid, "typ": typ}
        signing_input = f"{b64url_encode(json_dumps(header))}.{b64url_encode(json_dumps(claims))}"
        signature = self.key.sign(signing_input.encode("ascii"))
        return f"{signing_input}.{b64url_encode(signature)}"


class KeyRing:
    """The AS signing keys, kept in the grant store.

    The newest key signs. A key is rotated after ``rotate_after`` seconds; the
    key it replaces stays in JWKS for ``retire_grace`` seconds (the longest token
    lifetime) so tokens it signed still verify, then is deleted.

    A new key is published ``publish_ahead`` seconds before it signs (by default
    ``refresh_interval``): every server sharing the store has re-read it, and a
    resource server fetching JWKS finds it, before any token signed with it exists.
    Several servers sharing one store act as one: each re-reads the keys every
    ``refresh_interval`` seconds (and at once, at most once a second, when asked for a
    key it does not know: :meth:`reread`); when a rotation falls due on several servers
    at once, exactly one of them makes the new key.

    Args:
        store: the grant store holding the keys.
        alg: the signing algorithm (ES256 by default).
        rotate_after: seconds a key signs before a new one is made.
        retire_grace: seconds an old key stays published after it stopped signing.
        refresh_interval: seconds between re-reads of the store (another server may
            have rotated).
        publish_ahead: seconds a new key is published before it signs (None: the
            ``refresh_interval``).
    """

    def __init__(
        self,
        store: SQLGrantStore,
        *,
        alg: str = "ES256",
        rotate_after: float = 30 * 86400,
        retire_grace: float = 86400,
        refresh_interval: float = 60.0,
        publish_ahead: float | None = None,
    ) -> None:
        if alg not in ALGORITHMS:
            raise ValueError(f"unsupported signing algorithm {alg!r}")
        if not (math.isfinite(refresh_interval) and refresh_interval > 0):
            raise ValueError("refresh_interval must be a positive number of seconds")
        self._store = store
        self.alg = alg
        self.rotate_after = rotate_after
        self.retire_grace = retire_grace
        self.refresh_interval = refresh_interval
        self.publish_ahead = refresh_interval if publish_ahead is None else publish_ahead
        if not (math.isfinite(self.publish_ahead) and self.publish_ahead >= 0):
            raise ValueError("publish_ahead must be a non-negative number of seconds")
        self._keys: list[tuple[SigningKeyRecord, SigningKey]] = []
        self._loaded_at = -math.inf
        self._reread_at = -math.inf

    def _load(self) -> None:
        loaded = []
        for record in self._store.signing_keys():
            loaded.append((record, SigningKey(record.kid, DPoPKey.from_jwk(record.private_jwk))))
        self._keys = loaded

    def refresh(self, *, now: float) -> None:
        """Load the keys, creating the first one or rotating and retiring as due."""
        self._load()
        if not self._keys:
            self.rotate(now=now)
        elif now - self._keys[0][0].created_at >= self.rotate_after:
            # Only if the key we read still signs: another server may have rotated it.
            self._rotate(now=now, replacing=self._keys[0][0].kid)
        retired = [r.kid for r, _ in self._keys if r.retire_at is not None and r.retire_at <= now]
        if retired:
            self._store.delete_signing_keys(retired)
            self._load()
        self._loaded_at = now

    def rotate(self, *, now: float) -> SigningKey:
        """Make a new key now and return it.

        It signs after ``publish_ahead`` seconds; the keys it replaces retire
        ``retire_grace`` seconds after that.
        """
        return self._rotate(now=now, replacing=None)

    def _rotate(self, *, now: float, replacing: str | None) -> SigningKey:
        key = DPoPKey.generate(self.alg)
        record = SigningKeyRecord(
            kid=key.jkt, alg=key.alg, private_jwk=key.private_jwk(), created_at=now
        )
        self._store.add_signing_key(
            record,
            retire_others_at=now + self.publish_ahead + self.retire_grace,
            replacing=replacing,
        )
        self._load()  # the key just made, or the one another server made first
        self._loaded_at = now
        return self._keys[0][1]

    def _ensure(self, now: float) -> None:
        # Re-read every refresh_interval seconds (another server may have rotated).
        if not self._keys or now - self._loaded_at >= self.refresh_interval:
            self.refresh(now=now)

    def reread(self, *, now: float) -> bool:
        """Re-read the keys now, at most once a second; True when it did.

        For a token signed with a key this server does not know yet (made by another
        server sharing the store, e.g. the first key of two servers started at once).
        """
        if now - self._reread_at < 1.0:
            return False
        self._reread_at = now
        self.refresh(now=now)
        return True

    def current(self, *, now: float) -> SigningKey:
        """The key that signs now.

        The newest one published for ``publish_ahead`` seconds, or, when none is (a
        new store), the oldest one.
        """
        self._ensure(now)
        for record, key in self._keys:  # newest first
            if now - record.created_at >= self.publish_ahead:
                return key
        return self._keys[-1][1]

    def jwks(self, *, now: float) -> dict[str, list[dict[str, str]]]:
        """The public JWK Set (RFC 7517 §5): the signing key and those not yet retired."""
        self._ensure(now)
        return {
            "keys": [
                key.public_jwk
                for record, key in self._keys
                if record.retire_at is None or record.retire_at > now
            ]
        }

    def public_jwks(self, *, now: float) -> list[Mapping[str, Any]]:
        """The published public JWKs."""
        return list(self.jwks(now=now)["keys"])


def verify_jwt(
    token: str,
    *,
    jwks: Sequence[Mapping[str, Any]],
    algorithms: Collection[str],
    typ: str | None = None,
    now: float,
    leeway: float = 5.0,
) -> dict[str, Any]:
    """Check a compact JWT's signature and time claims; return its claims.

    The key is picked by ``kid`` when the header has one, otherwise every key of
    ``jwks`` fitting ``alg`` is tried. ``exp`` is required; ``nbf`` and ``iat``
    are honoured when present (RFC 7519 §4.1).

    Raises:
        JWTError: MALFORMED, TOO_LARGE, BAD_TYP, UNSUPPORTED_ALG, BAD_SIGNATURE,
            TOKEN_EXPIRED, BAD_CLAIM.
    """
    try:
        parts = split_compact(token, max_length=MAX_JWT_LENGTH)
        header = json_loads_object(b64url_decode(parts.header_b64))
        spec = algorithm_spec(header.get("alg"), algorithms)
        check_crit(header)
        if typ is not None:
            got = header.get("typ")
            if not isinstance(got, str) or got.lower().removeprefix("application/") != typ:
                raise JWSError(Reason.BAD_TYP, "unexpected typ")
        kid = header.get("kid")
        candidates = [
            jwk
            for jwk in jwks
            if (kid is None or jwk.get("kid") == kid)
            and jwk.get("kty") == spec.kty
            and jwk.get("alg", spec.name) == spec.name
        ]
        signature = b64url_decode(parts.signature_b64)
        for jwk in candidates:
            try:
                public = public_key_from_jwk(
                    {k: v for k, v in jwk.items() if k not in ("kid", "alg", "use", "key_ops")},
                    spec,
                )
            except JWSError:
                continue
            if spec.verify(public, signature, parts.signing_input):
                break
        else:
            raise JWSError(Reason.BAD_SIGNATURE, "signature does not verify")
        claims = json_loads_object(b64url_decode(parts.payload_b64))
    except JWSError as exc:
        raise JWTError(exc.reason, exc.description) from None
    # RFC 7519 §2, §4.1.4-4.1.6: NumericDate values, finite and within the float range
    # (an integer of 400 digits is valid JSON and must not reach float arithmetic).
    exp = numeric_date(claims.get("exp"))
    if exp is None:
        raise JWTError(Reason.BAD_CLAIM, "exp is required")
    if now > exp + leeway:
        raise JWTError(Reason.TOKEN_EXPIRED, "the JWT has expired")
    if "nbf" in claims:
        nbf = numeric_date(claims["nbf"])
        if nbf is None or now + leeway < nbf:
            raise JWTError(Reason.BAD_CLAIM, "the JWT is not yet valid")
    if "iat" in claims:
        iat = numeric_date(claims["iat"])
        if iat is None or iat > now + leeway:
            raise JWTError(Reason.BAD_CLAIM, "iat is in the future")
    return claims
