"""The framework-free token service: RequestView in, ResponseView out.

:class:`TokenService` answers the token endpoint (RFC 6749 §3.2), pushed
authorization requests (RFC 9126), introspection (RFC 7662), revocation
(RFC 7009), JWKS and metadata (RFC 8414), with DPoP (RFC 9449) on every endpoint
that issues or binds. Grants are plain functions registered in a dict at
construction (see :mod:`dpopkit.server.grants`); nothing is subclassed.

The order at the token endpoint keeps one-time artifacts safe under retries
(RFC 9449 §8, attacks SEC-99): client authentication (signature only) → every
DPoP check including the nonce → replay record of the proof → replay record of
the client assertion ``jti`` → the grant, which alone spends a code or rotates
a refresh token. A ``use_dpop_nonce`` answer therefore never burns a code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from dpopkit.core.algorithms import ALGORITHMS
from dpopkit.core.http import DPOP_HEADER, DPOP_NONCE_HEADER, RequestView, ResponseView
from dpopkit.core.jws import JWSError, b64url_decode, json_loads_object
from dpopkit.core.nonce import NonceIssuer
from dpopkit.core.proof import ProofPolicy, VerifiedProof, extract_proof, verify_proof
from dpopkit.core.replay import ReplayCache, record_proof
from dpopkit.errors import (
    DPoPError,
    InvalidClientError,
    InvalidGrantError,
    InvalidProofError,
    InvalidRequestError,
    InvalidScopeError,
    OAuthError,
    Reason,
    ReplayStoreError,
    SecurityWarning,
    ServerConfigurationError,
    TemporarilyUnavailableError,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)
from dpopkit.server.jwt import JWTError, KeyRing, verify_jwt
from dpopkit.server.parsing import (
    equal_text,
    is_text,
    parse_basic_credentials,
    parse_form,
)
from dpopkit.server.throttle import SCRYPT_LIMITER, WorkLimiter
from dpopkit.storage._health import StoreHealth
from dpopkit.storage.sql import (
    AccessTokenRecord,
    ClientRecord,
    InteractionRecord,
    RefreshRecord,
    SQLGrantStore,
    StoreError,
    sha256_hex,
)

__all__ = [
    "ACCESS_TOKEN_FORMATS",
    "JWT_BEARER_ASSERTION",
    "AccessTokenFormat",
    "Form",
    "Grant",
    "GrantContext",
    "InvalidTargetError",
    "NoncePolicy",
    "ServerSettings",
    "TokenService",
    "auth_method_accepted",
]

JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PAR_URN_PREFIX = "urn:ietf:params:oauth:request_uri:"
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
#: The two ways of sending a client secret (RFC 6749 §2.3.1): interchangeable unless pinned.
SECRET_AUTH_METHODS = frozenset({"client_secret_basic", "client_secret_post"})
#: Parameters that may appear more than once (RFC 8707 §2); every other one only once.
REPEATABLE_PARAMETERS = frozenset({"resource"})
#: The longest refresh-token reuse leeway accepted (seconds): a retry window, not a policy.
MAX_REFRESH_REUSE_LEEWAY = 60.0
MAX_FORM_BYTES = 65536
_UNRESERVED_VERIFIER = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)

NoncePolicy = Literal["off", "per_client", "always"]
AccessTokenFormat = Literal["jwt", "opaque"]
#: The access-token formats: RFC 9068 JWTs, or opaque values read back by introspection.
ACCESS_TOKEN_FORMATS: tuple[str, ...] = ("jwt", "opaque")
#: Random bytes in an opaque access token (256 bits; base64url, token68 characters).
OPAQUE_TOKEN_BYTES = 32
#: Longest value looked up as an opaque token (ours are 43 characters).
MAX_OPAQUE_TOKEN_LENGTH = 256


class InvalidTargetError(OAuthError):
    """The ``resource`` parameter is not acceptable (RFC 8707 §2)."""

    error = "invalid_target"
    default_reason = Reason.INVALID_REQUEST


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """Authorization-server settings. Frozen; invalid values raise at construction.

    Attributes:
        issuer: the issuer identifier (RFC 8414 §2); endpoint URLs derive from it.
        access_token_lifetime: seconds (short: RFC 9449 §11.2, AS-26).
        refresh_token_lifetime: seconds a refresh token lives.
        code_lifetime: seconds an authorization code lives (RFC 6749 §4.1.2).
        par_lifetime: seconds a ``request_uri`` lives (RFC 9126 §2.2).
        interaction_lifetime: seconds a login page stays usable.
        nonce_policy: ``off``, ``per_client`` (clients with ``dpop_nonce_required``) or
            ``always`` (RFC 9449 §8).
        proof_algorithms: accepted DPoP proof algorithms (published in metadata, AS-8).
        proof_max_age: seconds a proof is acceptable after its ``iat``.
        signing_alg: the access-token signing algorithm (ES256 by default).
        key_rotation: seconds a signing key signs before a new one is made.
        audience: default ``aud`` of access tokens (RFC 9068 §3) without ``resource``.
        allowed_resources: accepted RFC 8707 ``resource`` values; empty accepts any
            absolute URI without a fragment.
        require_pushed_authorization_requests: every client must use PAR (RFC 9126 §5).
        registration_enabled: open dynamic client registration (RFC 7591).
        test_mode_user: auto-login this user and auto-consent (loopback only).
        access_token_format: ``jwt`` (RFC 9068, the default) or ``opaque`` (a random
            value only this AS can read: RFC 7662 introspection); a client's
            ``access_token_format`` metadata overrides it.
        refresh_reuse_leeway: seconds after a refresh token was rotated during which
            presenting it again with a proof by the same DPoP key is refused
            (``invalid_grant``) without revoking its family: a client's retry of a
            refresh whose answer it lost. 0 (the default) turns it off; at most 60.
            Outside it, or with another key or no proof, reuse revokes the family
            (RFC 9700 §4.14.2).
        registration_allowed_scopes: the scopes a dynamically registered client may
            have (RFC 7591 §2 ``scope``); empty (the default) allows none.
        registration_allowed_audiences: the ``resource`` values (RFC 8707) a registered
            client may ask tokens for; empty means :attr:`aud` (the configured audiences).
        registration_allowed_grant_types: the grant types a registered client may use
            (``authorization_code`` and ``refresh_token`` by default: a user consents).
        registration_allow_unbound_tokens: let a registered client opt out of DPoP
            binding (``dpop_bound_access_tokens: false``); off by default.
        registration_rate_limit: registrations per client address and hour (per process).
        login_free_failures: failed sign-ins per username before delays start (an
            address gets five times each login budget).
        login_lockout_failures: failed sign-ins per username that lock it temporarily.
        login_lockout_seconds: how long such a lockout lasts.
    """

    issuer: str
    access_token_lifetime: int = 300
    refresh_token_lifetime: int = 86400
    code_lifetime: int = 60
    par_lifetime: int = 60
    interaction_lifetime: int = 600
    nonce_policy: NoncePolicy = "off"
    proof_algorithms: frozenset[str] = frozenset(ALGORITHMS)
    proof_max_age: float = 60.0
    signing_alg: str = "ES256"
    key_rotation: int = 30 * 86400
    audience: tuple[str, ...] = ()
    allowed_resources: tuple[str, ...] = ()
    require_pushed_authorization_requests: bool = False
    registration_enabled: bool = False
    test_mode_user: str | None = None
    access_token_format: AccessTokenFormat = "jwt"  # noqa: S105 - a format name
    refresh_reuse_leeway: float = 0.0
    registration_allowed_scopes: tuple[str, ...] = ()
    registration_allowed_audiences: tuple[str, ...] = ()
    registration_allowed_grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")
    registration_allow_unbound_tokens: bool = False
    registration_rate_limit: int = 20
    login_free_failures: int = 3
    login_lockout_failures: int = 10
    login_lockout_seconds: int = 900

    def __post_init__(self) -> None:
        parts = urlsplit(self.issuer)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.query:
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "issuer must be an http(s) URL without query"
            )
        if parts.fragment or self.issuer.endswith("/"):
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "issuer must not end with / or have a fragment"
            )
        for name in ("access_token_lifetime", "refresh_token_lifetime", "code_lifetime"):
            if getattr(self, name) < 1:
                raise ServerConfigurationError(Reason.CONFIGURATION, f"{name} must be >= 1")
        if self.code_lifetime > 600:
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "code_lifetime must be at most 600 s (RFC 6749 §4.1.2)"
            )
        if self.nonce_policy == "off" and self.access_token_lifetime > 3600:
            # RFC 9449 §11.2 (AS-26, SEC-9): no long-lived bound tokens without nonces.
            warnings.warn(
                "access tokens live longer than 1 h without server nonces (RFC 9449 §11.2)",
                SecurityWarning,
                stacklevel=3,
            )
        if self.nonce_policy not in ("off", "per_client", "always"):
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "nonce_policy must be off, per_client or always"
            )
        if self.signing_alg not in ALGORITHMS:
            raise ServerConfigurationError(Reason.CONFIGURATION, "unsupported signing_alg")
        if self.access_token_format not in ACCESS_TOKEN_FORMATS:
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "access_token_format must be jwt or opaque"
            )
        if not 0 <= self.refresh_reuse_leeway <= MAX_REFRESH_REUSE_LEEWAY:  # NaN fails too
            raise ServerConfigurationError(
                Reason.CONFIGURATION,
                f"refresh_reuse_leeway must be 0 to {MAX_REFRESH_REUSE_LEEWAY:g} seconds",
            )
        known_grants = {"authorization_code", "client_credentials", "refresh_token"}
        if not set(self.registration_allowed_grant_types) <= known_grants:
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "registration_allowed_grant_types: unknown grant type"
            )
        if not 0 <= self.login_free_failures < self.login_lockout_failures:
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "need 0 <= login free_failures < lockout_failures"
            )
        if self.login_lockout_seconds < 1:
            raise ServerConfigurationError(Reason.CONFIGURATION, "login lockout_seconds >= 1")
        if self.registration_rate_limit < 1:
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "registration_rate_limit must be >= 1"
            )
        try:
            ProofPolicy(algorithms=self.proof_algorithms, max_age=self.proof_max_age)
        except ValueError as exc:
            raise ServerConfigurationError(Reason.CONFIGURATION, str(exc)) from None

    def url(self, path: str) -> str:
        """The public URL of an endpoint path under the issuer."""
        return self.issuer + path

    @property
    def token_endpoint(self) -> str:
        """The public token endpoint URL (the ``htu`` proofs must name)."""
        return self.url("/token")

    @property
    def par_endpoint(self) -> str:
        """The public PAR endpoint URL (RFC 9126)."""
        return self.url("/par")

    @property
    def aud(self) -> tuple[str, ...]:
        """The default access-token audience."""
        return self.audience or (self.issuer,)

    @property
    def registered_client_audiences(self) -> tuple[str, ...]:
        """The ``resource`` values a dynamically registered client may ask for."""
        return self.registration_allowed_audiences or self.aud


class Form:
    """A parsed ``application/x-www-form-urlencoded`` body (RFC 6749 Appendix B).

    Parameters may not repeat (RFC 6749 §3.1, §3.2) except those read with :meth:`all`
    (:data:`REPEATABLE_PARAMETERS`): :meth:`one` and :meth:`as_dict` refuse a repeat.
    """

    __slots__ = ("_data",)

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        data: dict[str, list[str]] = {}
        for name, value in pairs:
            data.setdefault(name, []).append(value)
        self._data = data

    @classmethod
    def parse(cls, request: RequestView) -> Form:
        """Parse a request body, refusing other media types and oversized bodies.

        Raises:
            InvalidRequestError: wrong content type, too large, not UTF-8, too many
                parameters or a forbidden character (:func:`~dpopkit.server.parsing.parse_form`).
        """
        return cls(parse_form(request))  # bounded and checked (dpopkit.server.parsing)

    def __contains__(self, name: str) -> bool:
        return name in self._data

    def one(self, name: str, *, required: bool = False) -> str | None:
        """The single value of ``name`` (empty counts as absent, RFC 6749 §3.1).

        Raises:
            InvalidRequestError: repeated, or missing when ``required``.
        """
        values = self._data.get(name, [])
        if len(values) > 1:
            raise InvalidRequestError(Reason.INVALID_REQUEST, f"{name} is repeated")
        value = values[0] if values else ""
        if not value:
            if required:
                raise InvalidRequestError(Reason.INVALID_REQUEST, f"{name} is required")
            return None
        return value

    def need(self, name: str) -> str:
        """The single required value of ``name``."""
        value = self.one(name, required=True)
        assert value is not None
        return value

    def all(self, name: str) -> list[str]:
        """Every value of a repeatable parameter (``resource``, RFC 8707 §2)."""
        return [v for v in self._data.get(name, []) if v]

    def as_dict(self) -> dict[str, Any]:
        """Every parameter: single values as strings, repeatable ones as lists (for storage).

        The one rule for a whole authorization request, at ``/par`` and at ``/authorize``
        alike (RFC 6749 §3.1, RFC 9126 §2.1): no parameter but a repeatable one
        (:data:`REPEATABLE_PARAMETERS`) may appear more than once.

        Raises:
            InvalidRequestError: a parameter is repeated.
        """
        for name, values in self._data.items():
            if len(values) > 1 and name not in REPEATABLE_PARAMETERS:
                raise InvalidRequestError(Reason.INVALID_REQUEST, f"{name} is repeated")
        return {k: (v if k in REPEATABLE_PARAMETERS else v[0]) for k, v in self._data.items() if v}


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantContext:
    """What a grant function sees: the authenticated client, the form and the checked proof.

    ``proof`` passed every RFC 9449 §4.3 check and its ``jti`` is recorded.
    """

    service: TokenService
    client: ClientRecord
    form: Form
    proof: VerifiedProof | None
    now: float

    @property
    def jkt(self) -> str | None:
        """The proof key thumbprint, or None without a proof."""
        return None if self.proof is None else self.proof.jkt


#: A grant: takes the context, returns the token response JSON members or raises.
Grant = Callable[[GrantContext], dict[str, Any]]


@dataclass(slots=True)
class _ClientAuth:
    client: ClientRecord
    method: str
    assertion_replay: tuple[str, float] | None = None


@dataclass(slots=True)
class _SecretCache:
    """Successful scrypt checks, so a client's every request does not pay scrypt again."""

    entries: dict[tuple[str, str], bytes] = field(default_factory=dict)
    maxsize: int = 1024
    limiter: WorkLimiter = field(default_factory=lambda: SCRYPT_LIMITER)

    def check(self, client_id: str, stored: str, secret: str) -> bool:
        probe = hashlib.sha256(secret.encode("utf-8")).digest()
        known = self.entries.get((client_id, stored))
        if known is not None:
            return hmac.compare_digest(known, probe)
        if not self.limiter.verify(secret, stored):  # ServerBusyError: 503, never a hang
            return False
        if len(self.entries) >= self.maxsize:
            self.entries.clear()
        self.entries[(client_id, stored)] = probe
        return True


def _json(status: int, body: Mapping[str, Any], *extra: tuple[str, str]) -> ResponseView:
    return ResponseView(
        status=status,
        headers=(("Content-Type", "application/json"), ("Cache-Control", "no-store"), *extra),
        body=json.dumps(body, separators=(",", ":")).encode(),
    )


class TokenService:
    """The authorization server's token-side endpoints, framework-free.

    Args:
        settings: the :class:`ServerSettings`.
        store: the grant store (SQLite or PostgreSQL).
        replay: the replay cache for proof and client-assertion ``jti`` values.
        nonces: the AS nonce issuer; required unless ``settings.nonce_policy == "off"``.
        keyring: the signing keys; built from ``store`` when None.
        grants: ``grant_type`` → grant function; :data:`~dpopkit.server.grants.DEFAULT_GRANTS`
            when None.
        clock: returns the current time (seconds since the epoch).
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        store: SQLGrantStore,
        replay: ReplayCache,
        nonces: NonceIssuer | None = None,
        keyring: KeyRing | None = None,
        grants: Mapping[str, Grant] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if settings.nonce_policy != "off" and nonces is None:
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "a nonce policy needs a NonceIssuer"
            )
        if grants is None:
            from dpopkit.server.grants import DEFAULT_GRANTS

            grants = DEFAULT_GRANTS
        self.settings = settings
        self.store = store
        self.replay = replay
        #: outages and recoveries of the replay cache, logged on ``dpopkit.storage``
        self.replay_health = StoreHealth("replay")
        self.nonces = nonces if settings.nonce_policy != "off" else None
        self.keyring = keyring or KeyRing(
            store,
            alg=settings.signing_alg,
            rotate_after=settings.key_rotation,
            retire_grace=max(settings.access_token_lifetime, settings.refresh_token_lifetime),
        )
        self.grants: dict[str, Grant] = dict(grants)
        self.clock = clock
        self._policy = ProofPolicy(
            algorithms=settings.proof_algorithms, max_age=settings.proof_max_age
        )
        self._policy_nonce = ProofPolicy(
            algorithms=settings.proof_algorithms,
            max_age=settings.proof_max_age,
            require_nonce=True,
        )
        self._secrets = _SecretCache()
        self._clients: dict[str, tuple[ClientRecord, float]] = {}
        #: Seconds a client record is reused before it is read again (0 disables the cache).
        self.client_cache_ttl = 5.0
        #: Seconds between deletions of expired codes, requests and tokens.
        self.purge_interval = 300.0
        self._last_purge = clock()

    def close(self) -> None:
        """Release the grant store's and the replay cache's connections."""
        self.store.close()
        close = getattr(self.replay, "close", None)
        if callable(close):
            close()

    # -- shared checks --------------------------------------------------------------------

    def nonce_required(self, client: ClientRecord | None) -> bool:
        """Whether proofs from ``client`` must carry a server nonce (RFC 9449 §8)."""
        policy = self.settings.nonce_policy
        return policy == "always" or (
            policy == "per_client" and client is not None and client.dpop_nonce_required
        )

    def check_proof(
        self, request: RequestView, client: ClientRecord | None, *, htu: str, now: float
    ) -> VerifiedProof | None:
        """Run every RFC 9449 §4.3 check on the request's proof, without recording it.

        Returns None when there is no ``DPoP`` header and the client does not require one.

        Raises:
            InvalidProofError: a failed check, or MISSING_PROOF for a client with
                ``dpop_bound_access_tokens`` (RFC 9449 §5.2, AS-9).
            UseNonceError: a nonce is required and missing or stale (AS-12, AS-14).
        """
        if not request.headers.get_all(DPOP_HEADER):
            if client is not None and client.dpop_bound_access_tokens:
                # RFC 9449 §5.2: a dpop_bound_access_tokens client must send a proof.
                raise InvalidProofError(Reason.MISSING_PROOF, "this client must use DPoP")
            return None
        # RFC 9449 §4.3 (1): exactly one DPoP header, a token68.
        proof = extract_proof(request.headers)
        required = self.nonce_required(client)
        # RFC 9449 §4.3 (2)-(12) with htm=POST and htu = the endpoint's public URL (AS-1).
        return verify_proof(
            proof,
            htm="POST",
            htu=htu,
            policy=self._policy_nonce if required else self._policy,
            nonce_check=self.nonces,
            now=now,
        )

    def get_client(self, client_id: str, *, now: float) -> ClientRecord | None:
        """A registered client, from a short-lived cache (``client_cache_ttl`` seconds)."""
        hit = self._clients.get(client_id)
        if hit is not None and now - hit[1] < self.client_cache_ttl:
            return hit[0]
        client = self.store.get_client(client_id)
        if client is not None:
            if len(self._clients) >= 4096:
                self._clients.clear()
            self._clients[client_id] = (client, now)
        return client

    def _record(self, key: str, expires_at: float, now: float) -> bool:
        try:
            seen = self.replay.check_and_store(key, expires_at, now=now)
        except ReplayStoreError as exc:
            self.replay_health.failed(str(exc.detail.get("error", exc.reason.value)))
            raise
        except Exception as exc:
            self.replay_health.failed(type(exc).__name__)
            raise ReplayStoreError(detail={"error": type(exc).__name__}) from exc
        self.replay_health.ok()
        return seen

    def _record_proof(self, proof: VerifiedProof, *, now: float) -> None:
        """RFC 9449 §11.1: the atomic replay record of a proof that passed every check."""
        try:
            record_proof(self.replay, proof, now=now)
        except ReplayStoreError as exc:
            self.replay_health.failed(str(exc.detail.get("error", exc.reason.value)))
            raise
        self.replay_health.ok()

    def authenticate_client(
        self, request: RequestView, form: Form, *, endpoint: str, now: float
    ) -> _ClientAuth:
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
                or not self._secrets.check(client.client_id, client.secret_hash, secret)
            ):
                raise InvalidClientError(
                    Reason.INVALID_CLIENT,
                    "client authentication failed",
                    challenge_scheme=challenge,
                )
            return _ClientAuth(client, method)
        if method == "private_key_jwt":
            assert assertion is not None
            replay = self._check_assertion(client, form, assertion, endpoint=endpoint, now=now)
            return _ClientAuth(client, method, replay)
        return _ClientAuth(client, method)

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

    def record_assertion(self, auth: _ClientAuth, *, now: float) -> None:
        """Record a client assertion's ``jti`` (RFC 7523 §3 (7)); a repeat is refused.

        Raises:
            InvalidClientError: the assertion was already used.
            ReplayStoreError: the replay store failed (503).
        """
        if auth.assertion_replay is None:
            return
        key, expires = auth.assertion_replay
        if not self._record(key, expires, now):
            raise InvalidClientError(Reason.INVALID_CLIENT, "client assertion replayed")

    # -- token issuance helpers used by grants -------------------------------------------

    def token_format(self, client: ClientRecord) -> AccessTokenFormat:
        """The access-token format for ``client``: its own setting, else the server's."""
        chosen = client.access_token_format
        if chosen in ("jwt", "opaque"):
            return "opaque" if chosen == "opaque" else "jwt"
        return self.settings.access_token_format

    def resolve_scope(self, requested: str | None, *, allowed: str) -> str:
        """The granted scope: ``requested`` (must be within ``allowed``) or all of ``allowed``.

        Raises:
            InvalidScopeError: a requested scope is not allowed (RFC 6749 §5.2).
        """
        allowed_set = allowed.split()
        if requested is None:
            return " ".join(allowed_set)
        wanted = requested.split()
        if not set(wanted) <= set(allowed_set):
            raise InvalidScopeError(Reason.INVALID_SCOPE, "scope not allowed")
        return " ".join(dict.fromkeys(wanted))

    def resolve_resource(
        self, values: Sequence[str], *, client: ClientRecord | None = None
    ) -> tuple[str, ...]:
        """Check RFC 8707 ``resource`` values: absolute URIs, no fragment, allowed.

        A dynamically registered ``client`` may only name the server-side
        :attr:`ServerSettings.registered_client_audiences`.

        Raises:
            InvalidTargetError: a value is not acceptable.
        """
        for value in values:
            parts = urlsplit(value)
            if not parts.scheme or not parts.netloc or parts.fragment or "#" in value:
                raise InvalidTargetError(Reason.INVALID_REQUEST, "resource must be absolute")
            if self.settings.allowed_resources and value not in self.settings.allowed_resources:
                raise InvalidTargetError(Reason.INVALID_REQUEST, "unknown resource")
            if (
                client is not None
                and client.registered
                and value not in self.settings.registered_client_audiences
            ):
                raise InvalidTargetError(
                    Reason.INVALID_REQUEST, "resource not allowed for this client"
                )
        return tuple(dict.fromkeys(values))

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
        if (token_format or self.settings.access_token_format) == "opaque":
            value = secrets.token_urlsafe(OPAQUE_TOKEN_BYTES)
            return value, AccessTokenRecord(
                jti=sha256_hex(value),
                client_id=client_id,
                sub=sub,
                scope=scope,
                aud=aud,
                jkt=jkt,
                issued_at=float(iat),
                expires_at=float(exp),
                family_id=family_id,
                opaque=True,
            )
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

    # -- endpoints ------------------------------------------------------------------------

    def _finish(
        self,
        response: ResponseView,
        client: ClientRecord | None,
        proof: VerifiedProof | None,
        now: float,
    ) -> ResponseView:
        headers = list(response.headers)
        names = {name.lower() for name, _ in headers}
        if "cache-control" not in names:
            headers.append(("Cache-Control", "no-store"))  # RFC 6749 §5.1, AS-19
        # RFC 9449 §8.2 (AS-18): a fresh nonce whenever the client's is not current,
        # on success too; never a second DPoP-Nonce (AS-15).
        if (
            self.nonces is not None
            and self.nonce_required(client)
            and DPOP_NONCE_HEADER.lower() not in names
            and (proof is None or proof.nonce_info is None or not proof.nonce_info.current)
        ):
            headers.append((DPOP_NONCE_HEADER, self.nonces.issue(now=now)))
        return replace(response, headers=tuple(headers))

    def _housekeeping(self, now: float) -> None:
        # Expired rows go every purge_interval seconds; a minute of grace past expiry.
        if now - self._last_purge < self.purge_interval:
            return
        self._last_purge = now
        self.store.purge_expired(now=now - 60)

    def error_response(self, exc: DPoPError | StoreError) -> ResponseView:
        """Render an error as RFC 6749 §5.2 JSON; a store failure becomes 503."""
        if isinstance(exc, StoreError):
            exc = TemporarilyUnavailableError(Reason.STORE_UNAVAILABLE, "storage unavailable")
        return exc.as_response(role="as")

    def handle_token(self, request: RequestView) -> ResponseView:
        """Answer a token request (RFC 6749 §3.2, RFC 9449 §5).

        Errors are RFC 6749 §5.2 JSON (400; 401 for ``invalid_client``; 503
        ``temporarily_unavailable`` when a store fails), always ``Cache-Control: no-store``.
        """
        now = self.clock()
        client: ClientRecord | None = None
        proof: VerifiedProof | None = None
        try:
            if request.method != "POST":
                raise InvalidRequestError(Reason.INVALID_REQUEST, "use POST")
            form = Form.parse(request)
            grant_type = form.need("grant_type")
            grant = self.grants.get(grant_type)
            if grant is None:
                raise UnsupportedGrantTypeError(Reason.UNSUPPORTED_GRANT_TYPE)
            auth = self.authenticate_client(
                request, form, endpoint=self.settings.token_endpoint, now=now
            )
            client = auth.client
            if grant_type not in client.grant_types:
                raise UnauthorizedClientError(Reason.UNAUTHORIZED_CLIENT)
            proof = self.check_proof(request, client, htu=self.settings.token_endpoint, now=now)
            # RFC 9449 §11.1: record the proof only after every check passed; then the
            # assertion jti; only then may the grant spend a code or rotate a token (SEC-99).
            if proof is not None:
                self._record_proof(proof, now=now)
            self.record_assertion(auth, now=now)
            body = grant(GrantContext(service=self, client=client, form=form, proof=proof, now=now))
            response = _json(200, body)
            self._housekeeping(now)
        except (DPoPError, StoreError) as exc:
            response = self.error_response(exc)
        return self._finish(response, client, proof, now)

    def handle_par(self, request: RequestView) -> ResponseView:
        """Answer a pushed authorization request (RFC 9126 §2, RFC 9449 §10.1).

        A ``DPoP`` header is checked with ``htu`` = the PAR endpoint and sets
        ``dpop_jkt`` (AS-23, AS-24); a ``dpop_jkt`` naming another key is refused (AS-25).
        """
        from dpopkit.server.authorize import validate_authorization_request

        now = self.clock()
        client: ClientRecord | None = None
        proof: VerifiedProof | None = None
        try:
            if request.method != "POST":
                raise InvalidRequestError(Reason.INVALID_REQUEST, "use POST")
            form = Form.parse(request)
            auth = self.authenticate_client(
                request, form, endpoint=self.settings.par_endpoint, now=now
            )
            client = auth.client
            # RFC 9126 §2.1: request_uri is not allowed in a pushed request.
            if "request_uri" in form:
                raise InvalidRequestError(Reason.INVALID_REQUEST, "request_uri not allowed")
            params = form.as_dict()
            for secret_param in ("client_secret", "client_assertion", "client_assertion_type"):
                params.pop(secret_param, None)
            params["client_id"] = client.client_id
            proof = self.check_proof(request, client, htu=self.settings.par_endpoint, now=now)
            if proof is not None:
                jkt = params.get("dpop_jkt")
                # RFC 9449 §10.1: dpop_jkt and the PAR proof must name the same key (AS-25).
                if jkt is not None and not equal_text(str(jkt), proof.jkt):
                    raise InvalidRequestError(Reason.JKT_MISMATCH, "dpop_jkt does not match")
                params["dpop_jkt"] = proof.jkt
            validate_authorization_request(self, client, params)
            if proof is not None:
                self._record_proof(proof, now=now)
            self.record_assertion(auth, now=now)
            request_uri = PAR_URN_PREFIX + secrets.token_urlsafe(32)
            self.store.put_request(
                InteractionRecord(
                    id_hash=sha256_hex(request_uri),
                    kind="par",
                    client_id=client.client_id,
                    params=params,
                    expires_at=now + self.settings.par_lifetime,
                )
            )
            response = _json(
                201, {"request_uri": request_uri, "expires_in": self.settings.par_lifetime}
            )
        except (DPoPError, StoreError) as exc:
            response = self.error_response(exc)
        return self._finish(response, client, proof, now)

    def _introspection_client(self, request: RequestView, form: Form, now: float) -> ClientRecord:
        auth = self.authenticate_client(
            request, form, endpoint=self.settings.url("/introspect"), now=now
        )
        if auth.client.is_public:
            raise InvalidClientError(Reason.INVALID_CLIENT, "client authentication required")
        self.record_assertion(auth, now=now)
        return auth.client

    def lookup_access_token(self, token: str, *, now: float) -> AccessTokenRecord | None:
        """Return the live record of one of our access tokens, or None (inactive).

        A value with a dot is read as a JWT (signature, ``iss``, then its ``jti``);
        any other as an opaque token, found by its SHA-256. Either way the record
        must be of that kind, not revoked and not expired.
        """
        if "." not in token:
            if not token or len(token) > MAX_OPAQUE_TOKEN_LENGTH:
                return None
            found = self.store.get_access_token(sha256_hex(token))
            if found is None or not found.opaque or found.revoked or found.expires_at <= now:
                return None
            return found
        try:
            claims = verify_jwt(
                token,
                jwks=self.keyring.public_jwks(now=now),
                algorithms=ALGORITHMS,
                typ="at+jwt",
                now=now,
                leeway=0.0,
            )
        except JWTError:
            return None
        if claims.get("iss") != self.settings.issuer or not isinstance(claims.get("jti"), str):
            return None
        record = self.store.get_access_token(claims["jti"])
        if record is None or record.opaque or record.revoked or record.expires_at <= now:
            return None
        return record

    @staticmethod
    def may_introspect(caller: ClientRecord, record: AccessTokenRecord | RefreshRecord) -> bool:
        """Whether ``caller`` may learn about a token (RFC 7662 §2.2, §4).

        An access token: its own client, or a client whose ``introspection_audiences``
        names one of the token's audiences (a resource server). A refresh token: only
        its own client (it is meant for nobody else, RFC 6749 §1.5).
        """
        if caller.client_id == record.client_id:
            return True
        if isinstance(record, RefreshRecord):
            return False
        return not set(record.aud).isdisjoint(caller.introspection_audiences)

    def introspection_body(self, caller: ClientRecord, token: str, *, now: float) -> dict[str, Any]:
        """The RFC 7662 §2.2 answer about ``token`` for the authenticated ``caller``.

        ``{"active": false}`` and nothing else unless the token is live and
        :meth:`may_introspect` lets ``caller`` see it.
        """
        record = self.lookup_access_token(token, now=now)
        if record is not None:
            if not self.may_introspect(caller, record):
                return {"active": False}
            body: dict[str, Any] = {
                "active": True,
                "iss": self.settings.issuer,
                "client_id": record.client_id,
                "sub": record.sub,
                "aud": record.aud[0] if len(record.aud) == 1 else list(record.aud),
                "iat": int(record.issued_at),
                "exp": int(record.expires_at),
                # RFC 9449 §6.2 (AS-11): the token type and, below, cnf.jkt.
                "token_type": "DPoP" if record.jkt else "Bearer",
            }
            if not record.opaque:
                body["jti"] = record.jti  # an opaque token's key is its hash: not shown
            if record.scope:
                body["scope"] = record.scope
            if record.jkt:
                body["cnf"] = {"jkt": record.jkt}
            return body
        rt = self.store.get_refresh(sha256_hex(token))
        if (
            rt is None
            or rt.used
            or rt.revoked
            or rt.expires_at <= now
            or not self.may_introspect(caller, rt)
        ):
            return {"active": False}
        body = {
            "active": True,
            "client_id": rt.client_id,
            "sub": rt.sub,
            "scope": rt.scope,
            "exp": int(rt.expires_at),
            "token_type": "refresh_token",
        }
        if rt.jkt:
            body["cnf"] = {"jkt": rt.jkt}
        return body

    def handle_introspect(self, request: RequestView) -> ResponseView:
        """Answer token introspection (RFC 7662 §2; RFC 9449 §6.2, AS-11).

        Only authenticated confidential clients may introspect, and only tokens
        :meth:`may_introspect` allows them. A DPoP-bound token reports
        ``token_type: DPoP`` and ``cnf.jkt``; an unknown, expired or revoked token, or
        one the caller may not see, is ``{"active": false}`` and nothing else (X-17,
        RFC 7662 §2.2).
        """
        now = self.clock()
        try:
            if request.method != "POST":
                raise InvalidRequestError(Reason.INVALID_REQUEST, "use POST")
            form = Form.parse(request)
            caller = self._introspection_client(request, form, now)
            body = self.introspection_body(caller, form.need("token"), now=now)
            response = _json(200, body)
        except (DPoPError, StoreError) as exc:
            response = self.error_response(exc)
        return self._finish(response, None, None, now)

    def handle_revoke(self, request: RequestView) -> ResponseView:
        """Answer token revocation (RFC 7009 §2): 200 whatever the token was.

        A refresh token revokes its whole family; an access token only itself. A
        client may revoke only its own tokens.
        """
        now = self.clock()
        try:
            if request.method != "POST":
                raise InvalidRequestError(Reason.INVALID_REQUEST, "use POST")
            form = Form.parse(request)
            auth = self.authenticate_client(
                request, form, endpoint=self.settings.url("/revoke"), now=now
            )
            self.record_assertion(auth, now=now)
            token = form.need("token")
            rt = self.store.get_refresh(sha256_hex(token))
            if rt is not None:
                if rt.client_id == auth.client.client_id:
                    self.store.revoke_family(rt.family_id)
            else:
                record = self.lookup_access_token(token, now=now)
                if record is not None and record.client_id == auth.client.client_id:
                    self.store.revoke_access_token(record.jti)
            response = ResponseView(status=200, headers=(("Cache-Control", "no-store"),))
        except (DPoPError, StoreError) as exc:
            response = self.error_response(exc)
        return self._finish(response, None, None, now)

    def jwks(self) -> ResponseView:
        """The JWK Set of the access-token signing keys (RFC 7517 §5); 503 if the store fails."""
        try:
            keys = self.keyring.jwks(now=self.clock())
        except StoreError as exc:
            return self.error_response(exc)
        return ResponseView(
            status=200,
            headers=(("Content-Type", "application/json"), ("Cache-Control", "max-age=60")),
            body=json.dumps(keys).encode(),
        )

    def metadata(self) -> dict[str, Any]:
        """Authorization server metadata (RFC 8414 §2, RFC 9449 §5.1, RFC 9126 §5)."""
        s = self.settings
        data: dict[str, Any] = {
            "issuer": s.issuer,
            "authorization_endpoint": s.url("/authorize"),
            "token_endpoint": s.token_endpoint,
            "pushed_authorization_request_endpoint": s.par_endpoint,
            "introspection_endpoint": s.url("/introspect"),
            "revocation_endpoint": s.url("/revoke"),
            "jwks_uri": s.url("/jwks"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": sorted(self.grants),
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "token_endpoint_auth_signing_alg_values_supported": [
                a for a in ALGORITHMS if a in s.proof_algorithms
            ],
            "introspection_endpoint_auth_methods_supported": list(AUTH_METHODS[:3]),
            "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
            # RFC 9449 §5.1 (AS-8): exactly the proof allow-list, asymmetric only.
            "dpop_signing_alg_values_supported": [a for a in ALGORITHMS if a in s.proof_algorithms],
            "authorization_response_iss_parameter_supported": True,
            "require_pushed_authorization_requests": s.require_pushed_authorization_requests,
        }
        if s.registration_enabled:
            data["registration_endpoint"] = s.url("/register")
        return data


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


def new_family_id() -> str:
    """A random refresh-token family id."""
    return secrets.token_hex(16)


def check_code_verifier(verifier: str, challenge: str) -> None:
    """Check a PKCE ``code_verifier`` against an S256 ``code_challenge`` (RFC 7636 §4.6).

    Raises:
        InvalidRequestError: the verifier is not 43-128 unreserved characters (§4.1).
        InvalidGrantError: it does not match.
    """
    if not 43 <= len(verifier) <= 128 or not set(verifier) <= _UNRESERVED_VERIFIER:
        raise InvalidRequestError(Reason.INVALID_REQUEST, "malformed code_verifier")
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest())
    if not hmac.compare_digest(digest.rstrip(b"=").decode("ascii"), challenge):
        raise InvalidGrantError(Reason.INVALID_GRANT, "PKCE verification failed")
