"""Token minting: access tokens (RFC 9068 JWTs or opaque values) and their records.

:class:`TokenMinter` makes an access token from what a grant decided (client,
subject, scope, audiences, DPoP key), renders the RFC 6749 §5.1 response, and
reads one of its own tokens back (:meth:`TokenMinter.lookup_access_token`, for
introspection and revocation). JWTs are signed with the :class:`KeyRing`'s
current key; an opaque token is stored by its SHA-256 only. A JWT access token that
belongs to a refresh-token family is stored with it (so that a family revocation reaches
it); one outside any family is not stored at all until it is revoked: its signature and
claims are its record, and a revocation writes its row, marked revoked, as a deny-list
entry kept until it expires.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from dpopkit.core.algorithms import ALGORITHMS
from dpopkit.server.jwt import JWTError, KeyRing, verify_jwt
from dpopkit.server.settings import (
    MAX_OPAQUE_TOKEN_LENGTH,
    OPAQUE_TOKEN_BYTES,
    AccessTokenFormat,
    ServerSettings,
)
from dpopkit.storage.sql import AccessTokenRecord, ClientRecord, SQLGrantStore, sha256_hex

__all__ = ["TokenMinter", "new_family_id"]


def new_family_id() -> str:
    """A random refresh-token family id."""
    return secrets.token_hex(16)


class TokenMinter:
    """Makes, renders and reads back this server's access tokens.

    Args:
        settings: issuer, lifetimes, default audience and token format.
        store: where access-token records are read (grants write them).
        keyring: the signing keys.
    """

    __slots__ = ("keyring", "settings", "store")

    def __init__(self, settings: ServerSettings, *, store: SQLGrantStore, keyring: KeyRing) -> None:
        self.settings = settings
        self.store = store
        self.keyring = keyring

    def token_format(self, client: ClientRecord) -> AccessTokenFormat:
        """The access-token format for ``client``: its own setting, else the server's."""
        chosen = client.access_token_format
        if chosen in ("jwt", "opaque"):
            return "opaque" if chosen == "opaque" else "jwt"
        return self.settings.access_token_format

    def mint_access_token(
        self,
        *,
        client_id: str,
        sub: str,
        scope: str,
        resource: Sequence[str],
        jkt: str | None,
        family_id: str | None,
        now: float,
        token_format: str | None = None,
    ) -> tuple[str, AccessTokenRecord]:
        """Make an access token and return it with its store record.

        A JWT (RFC 9068) has the claims ``iss sub aud client_id scope jti iat exp`` and
        ``cnf.jkt`` when bound (RFC 9449 §6.1, AS-2, AS-10), header ``typ: at+jwt``
        (RFC 9068 §2.1). An opaque token is 256 random bits (base64url, token68); only
        its SHA-256 is stored, with the same record, so introspection reports the same
        members and ``cnf.jkt`` (RFC 7662, RFC 9449 §6.2).

        Args:
            client_id: the client the token is issued to.
            sub: the subject (the user, or the client itself).
            scope: the granted scope (space-separated).
            resource: RFC 8707 resources (the ``aud``); empty for ``settings.aud``.
            jkt: the DPoP key thumbprint it is bound to, or None.
            family_id: the refresh-token family it belongs to, or None.
            now: the current time.
            token_format: ``jwt`` or ``opaque``; None means ``settings.access_token_format``
                (grants pass :meth:`token_format` of the client).
        """
        aud = tuple(resource) or self.settings.aud
        iat = int(now)
        exp = iat + self.settings.access_token_lifetime
        opaque = (token_format or self.settings.access_token_format) == "opaque"
        if opaque:
            # The token is random; the store knows it by its hash (introspection, revocation).
            token = secrets.token_urlsafe(OPAQUE_TOKEN_BYTES)
            jti = sha256_hex(token)
        else:
            jti = secrets.token_urlsafe(24)
            claims: dict[str, Any] = {
                "iss": self.settings.issuer,
                "sub": sub,
                "aud": aud[0] if len(aud) == 1 else list(aud),
                "client_id": client_id,
                "jti": jti,
                "iat": iat,
                "exp": exp,
            }
            if scope:
                claims["scope"] = scope
            if jkt is not None:
                claims["cnf"] = {"jkt": jkt}  # RFC 9449 §6.1
            token = self.keyring.current(now=now).sign(claims, typ="at+jwt")
        record = AccessTokenRecord(
            jti=jti,
            client_id=client_id,
            sub=sub,
            scope=scope,
            aud=aud,
            jkt=jkt,
            issued_at=float(iat),
            expires_at=float(exp),
            family_id=family_id,
            opaque=opaque,
        )
        return token, record

    def token_response(
        self, token: str, record: AccessTokenRecord, *, refresh_token: str | None = None
    ) -> dict[str, Any]:
        """The RFC 6749 §5.1 JSON; ``token_type`` DPoP for a bound token (RFC 9449 §5, AS-3)."""
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "DPoP" if record.jkt is not None else "Bearer",
            "expires_in": int(record.expires_at - record.issued_at),
        }
        if record.scope:
            body["scope"] = record.scope
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        return body

    def lookup_access_token(self, token: str, *, now: float) -> AccessTokenRecord | None:
        """Return the live record of one of our access tokens, or None (inactive).

        A value with a dot is read as a JWT (signature, ``iss``, then its ``jti``: the
        stored row if there is one, else the verified claims); any other as an opaque
        token, found by its SHA-256. Either way the record must be of that kind, not
        revoked and not expired.
        """
        if "." not in token:
            if not token or len(token) > MAX_OPAQUE_TOKEN_LENGTH:
                return None
            found = self.store.get_access_token(sha256_hex(token))
            if found is None or not found.opaque or found.revoked or found.expires_at <= now:
                return None
            return found
        claims = self._verified_claims(token, now)
        if claims is None and self.keyring.reread(now=now):
            # Perhaps signed by a key another server sharing the store made just now.
            claims = self._verified_claims(token, now)
        if claims is None:
            return None
        if claims.get("iss") != self.settings.issuer or not isinstance(claims.get("jti"), str):
            return None
        # A stored row wins (a refresh family's token, or a revoked one); a JWT outside any
        # family is not stored when issued, so its verified claims are its record.
        record = self.store.get_access_token(claims["jti"]) or _record_from_claims(claims)
        if record is None or record.opaque or record.revoked or record.expires_at <= now:
            return None
        return record

    def _verified_claims(self, token: str, now: float) -> dict[str, Any] | None:
        """The claims of ``token`` when one of our published keys signed it, else None."""
        try:
            return verify_jwt(
                token,
                jwks=self.keyring.public_jwks(now=now),
                algorithms=ALGORITHMS,
                typ="at+jwt",
                now=now,
                leeway=0.0,
            )
        except JWTError:
            return None


def _record_from_claims(claims: dict[str, Any]) -> AccessTokenRecord | None:
    """The record of a verified JWT access token of ours, from its claims (RFC 9068 §2.2)."""
    sub, client_id, scope = claims.get("sub"), claims.get("client_id"), claims.get("scope", "")
    aud, iat, exp = claims.get("aud"), claims.get("iat"), claims.get("exp")
    cnf = claims.get("cnf", {})
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    audiences = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
    if (
        not isinstance(sub, str)
        or not isinstance(client_id, str)
        or not isinstance(scope, str)
        or not audiences
        or not all(isinstance(a, str) for a in audiences)
        or type(iat) is not int
        or type(exp) is not int
        or not (jkt is None or isinstance(jkt, str))
    ):
        return None
    return AccessTokenRecord(
        jti=claims["jti"],
        client_id=client_id,
        sub=sub,
        scope=scope,
        aud=audiences,
        jkt=jkt,
        issued_at=float(iat),
        expires_at=float(exp),
        family_id=None,
        opaque=False,
    )
