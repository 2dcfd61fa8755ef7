"""Client authentication (RFC 6749 §2.3, RFC 7523 §3), with the caches that keep it cheap.

:class:`ClientAuthenticator` identifies the client of a request by exactly one
method (``client_secret_basic``, ``client_secret_post``, ``private_key_jwt`` or
``none``), checks it against the registered one (:func:`auth_method_accepted`),
and verifies the secret (scrypt, remembered by :class:`SecretCache`) or the
assertion. The assertion's ``jti`` is recorded separately
(:meth:`ClientAuthenticator.record_assertion`), after the DPoP checks.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from dpopkit.core.http import RequestView
from dpopkit.core.jws import JWSError, b64url_decode, json_loads_object
from dpopkit.errors import InvalidClientError, InvalidRequestError, Reason
from dpopkit.server.form import Form
from dpopkit.server.jwt import JWTError, verify_jwt
from dpopkit.server.parsing import is_text, parse_basic_credentials
from dpopkit.server.proofs import ReplayLog
from dpopkit.server.settings import JWT_BEARER_ASSERTION, SECRET_AUTH_METHODS, ServerSettings
from dpopkit.server.throttle import SCRYPT_LIMITER, WorkLimiter
from dpopkit.storage.sql import ClientRecord, SQLGrantStore

__all__ = ["ClientAuth", "ClientAuthenticator", "SecretCache", "auth_method_accepted"]

#: Most client records kept in the short-lived cache before it is emptied.
MAX_CACHED_CLIENTS = 4096


@dataclass(slots=True)
class ClientAuth:
    """An authenticated client, the method it used and its assertion's replay record.

    Attributes:
        client: the client record.
        method: the authentication method presented.
        assertion_replay: ``(key, expires_at)`` of a ``private_key_jwt`` assertion's
            ``jti``, recorded by :meth:`ClientAuthenticator.record_assertion`.
    """

    client: ClientRecord
    method: str
    assertion_replay: tuple[str, float] | None = None


@dataclass(slots=True)
class SecretCache:
    """Successful scrypt checks, so a client's every request does not pay scrypt again."""

    entries: dict[tuple[str, str], bytes] = field(default_factory=dict)
    maxsize: int = 1024
    limiter: WorkLimiter = field(default_factory=lambda: SCRYPT_LIMITER)

    def check(self, client_id: str, stored: str, secret: str) -> bool:
        """Whether ``secret`` matches the ``stored`` scrypt hash of ``client_id``.

        Raises:
            ServerBusyError: every scrypt slot is taken (503, never a hang).
        """
        probe = hashlib.sha256(secret.encode("utf-8")).digest()
        known = self.entries.get((client_id, stored))
        if known is not None:
            return hmac.compare_digest(known, probe)
        if not self.limiter.verify(secret, stored):
            return False
        if len(self.entries) >= self.maxsize:
            self.entries.clear()
        self.entries[(client_id, stored)] = probe
        return True


def auth_method_accepted(client: ClientRecord, presented: str) -> bool:
    """Whether a client registered for one authentication method may use ``presented``.

    The registered method always; besides, ``client_secret_basic`` and
    ``client_secret_post`` stand in for each other for a secret client (as
    node-oidc-provider, Keycloak and Duende accept either) unless the client sets
    ``token_endpoint_auth_method_strict``. Never across secret, key
    (``private_key_jwt``) and ``none``.
    """
    registered = client.token_endpoint_auth_method
    if presented == registered:
        return True
    return (
        not client.token_endpoint_auth_method_strict
        and presented in SECRET_AUTH_METHODS
        and registered in SECRET_AUTH_METHODS
    )


class ClientAuthenticator:
    """Authenticates the client of a token-side request.

    Args:
        settings: the issuer and accepted assertion algorithms.
        store: where client records are read.
        replay_log: where assertion ``jti`` values are recorded.
    """

    def __init__(
        self, settings: ServerSettings, *, store: SQLGrantStore, replay_log: ReplayLog
    ) -> None:
        self.settings = settings
        self.store = store
        self.replay_log = replay_log
        self.secrets = SecretCache()
        #: Seconds a client record is reused before it is read again (0 disables the cache).
        self.cache_ttl = 5.0
        self._clients: dict[str, tuple[ClientRecord, float]] = {}

    def get_client(self, client_id: str, *, now: float) -> ClientRecord | None:
        """A registered client, from a short-lived cache (:attr:`cache_ttl` seconds)."""
        hit = self._clients.get(client_id)
        if hit is not None and now - hit[1] < self.cache_ttl:
            return hit[0]
        client = self.store.get_client(client_id)
        if client is not None:
            if len(self._clients) >= MAX_CACHED_CLIENTS:
                self._clients.clear()
            self._clients[client_id] = (client, now)
        return client

    def authenticate(
        self, request: RequestView, form: Form, *, endpoint: str, now: float
    ) -> ClientAuth:
        """Identify and authenticate the client (RFC 6749 §2.3, RFC 7523 §3).

        Methods: ``client_secret_basic``, ``client_secret_post``, ``private_key_jwt``
        and ``none``; exactly one per request (RFC 6749 §2.3: a Basic header and a
        body secret together are ``invalid_request``). The method presented must be
        the registered one, except that a secret client may send its secret either way
        unless it sets ``token_endpoint_auth_method_strict`` (see
        :func:`auth_method_accepted`); never across secret, key and none.

        Raises:
            InvalidClientError: unknown client, wrong method or bad credentials (401).
            InvalidRequestError: several methods at once.

        Does not check: the assertion ``jti`` replay (record it with
        :meth:`record_assertion` after the DPoP checks, SEC-99).
        """
        authz = request.headers.get_all("Authorization")
        basic: tuple[str, str] | None = None
        if len(authz) > 1:
            raise InvalidRequestError(Reason.MULTIPLE_AUTHORIZATION, "two Authorization fields")
        if authz:
            scheme, _, cred = authz[0].strip().partition(" ")
            if scheme.lower() != "basic":
                raise InvalidClientError(
                    Reason.INVALID_CLIENT,
                    "unsupported client authentication",
                    challenge_scheme="Basic",
                )
            try:
                # RFC 6749 §2.3.1: id and secret are form-urlencoded inside Basic.
                basic = parse_basic_credentials(cred)
            except ValueError:
                raise InvalidClientError(
                    Reason.INVALID_CLIENT, "malformed Basic credentials", challenge_scheme="Basic"
                ) from None
        body_secret = form.one("client_secret")
        assertion = form.one("client_assertion")
        used = [m for m, on in (("basic", basic), ("post", body_secret), ("jwt", assertion)) if on]
        if len(used) > 1:
            raise InvalidRequestError(Reason.INVALID_REQUEST, "one client authentication method")
        form_id = form.one("client_id")
        challenge = "Basic" if basic is not None else None
        if basic is not None:
            client_id = basic[0]
            if form_id is not None and form_id != client_id:
                raise InvalidRequestError(Reason.INVALID_REQUEST, "client_id mismatch")
            method = "client_secret_basic"
        elif assertion is not None:
            client_id = self._assertion_issuer(assertion) or ""
            if form_id is not None and form_id != client_id:
                raise InvalidClientError(Reason.INVALID_CLIENT, "client_id mismatch")
            method = "private_key_jwt"
        else:
            client_id = form_id or ""
            method = "client_secret_post" if body_secret is not None else "none"
        client = self.get_client(client_id, now=now) if client_id else None
        if client is None or not auth_method_accepted(client, method):
            raise InvalidClientError(
                Reason.INVALID_CLIENT, "client authentication failed", challenge_scheme=challenge
            )
        if method in ("client_secret_basic", "client_secret_post"):
            secret = basic[1] if basic is not None else body_secret
            if (
                secret is None
                or client.secret_hash is None
                or not self.secrets.check(client.client_id, client.secret_hash, secret)
            ):
                raise InvalidClientError(
                    Reason.INVALID_CLIENT,
                    "client authentication failed",
                    challenge_scheme=challenge,
                )
            return ClientAuth(client, method)
        if method == "private_key_jwt":
            assert assertion is not None
            replay = self._check_assertion(client, form, assertion, endpoint=endpoint, now=now)
            return ClientAuth(client, method, replay)
        return ClientAuth(client, method)

    @staticmethod
    def _assertion_issuer(assertion: str) -> str | None:
        # Only picks the client record; the assertion is verified with its keys afterwards.
        try:
            payload = json_loads_object(b64url_decode(assertion.split(".")[1]))
        except (JWSError, IndexError, ValueError):
            return None
        sub = payload.get("sub")
        # Checked like a client_id parameter before it is looked up (no NUL reaches the store).
        return sub if isinstance(sub, str) and is_text(sub) else None

    def _check_assertion(
        self, client: ClientRecord, form: Form, assertion: str, *, endpoint: str, now: float
    ) -> tuple[str, float]:
        # RFC 7523 §2.2: the assertion type.
        if form.one("client_assertion_type") != JWT_BEARER_ASSERTION:
            raise InvalidClientError(Reason.INVALID_CLIENT, "unsupported client_assertion_type")
        keys = (client.jwks or {}).get("keys")
        if not isinstance(keys, list) or not keys:
            raise InvalidClientError(Reason.INVALID_CLIENT, "client has no keys")
        try:
            claims = verify_jwt(
                assertion,
                jwks=[k for k in keys if isinstance(k, dict)],
                algorithms=self.settings.proof_algorithms,
                now=now,
            )
        except JWTError:
            raise InvalidClientError(Reason.INVALID_CLIENT, "invalid client assertion") from None
        # RFC 7523 §3 (1), (2): iss and sub are the client_id.
        if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
            raise InvalidClientError(Reason.INVALID_CLIENT, "assertion iss/sub mismatch")
        # RFC 7523 §3 (3): aud names this AS (issuer or the endpoint).
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        accepted = {self.settings.issuer, self.settings.token_endpoint, endpoint}
        if not any(isinstance(a, str) and a in accepted for a in auds):
            raise InvalidClientError(Reason.INVALID_CLIENT, "assertion aud mismatch")
        # RFC 7523 §3 (4): a bounded lifetime; (7): jti for replay protection.
        exp = float(claims["exp"])
        if exp - now > 600:
            raise InvalidClientError(Reason.INVALID_CLIENT, "assertion lives too long")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise InvalidClientError(Reason.INVALID_CLIENT, "assertion jti required")
        digest = hashlib.sha256(f"{client.client_id}|{jti}".encode()).hexdigest()
        return f"dpopkit:assertion:{digest}", exp + 5.0

    def record_assertion(self, auth: ClientAuth, *, now: float) -> None:
        """Record a client assertion's ``jti`` (RFC 7523 §3 (7)); a repeat is refused.

        Raises:
            InvalidClientError: the assertion was already used.
            ReplayStoreError: the replay store failed (503).
        """
        if auth.assertion_replay is None:
            return
        key, expires = auth.assertion_replay
        if not self.replay_log.record(key, expires, now=now):
            raise InvalidClientError(Reason.INVALID_CLIENT, "client assertion replayed")
