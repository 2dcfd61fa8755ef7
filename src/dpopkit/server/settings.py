"""Authorization-server settings and the protocol constants every endpoint shares.

:class:`ServerSettings` is frozen and checked at construction; the endpoint URLs
derive from its ``issuer`` (RFC 8414 §2). Nothing here does I/O.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from dpopkit.core.algorithms import ALGORITHMS
from dpopkit.core.proof import ProofPolicy
from dpopkit.errors import Reason, SecurityWarning, ServerConfigurationError

__all__ = [
    "ACCESS_TOKEN_FORMATS",
    "AUTH_METHODS",
    "JWT_BEARER_ASSERTION",
    "MAX_OPAQUE_TOKEN_LENGTH",
    "MAX_REFRESH_REUSE_LEEWAY",
    "OPAQUE_TOKEN_BYTES",
    "PAR_URN_PREFIX",
    "SECRET_AUTH_METHODS",
    "AccessTokenFormat",
    "NoncePolicy",
    "ServerSettings",
]

#: The client assertion type of ``private_key_jwt`` (RFC 7523 §2.2).
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: The prefix of a pushed request's ``request_uri`` (RFC 9126 §2.2).
PAR_URN_PREFIX = "urn:ietf:params:oauth:request_uri:"
#: The client authentication methods (RFC 7591 §2 ``token_endpoint_auth_method``).
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
#: The two ways of sending a client secret (RFC 6749 §2.3.1): interchangeable unless pinned.
SECRET_AUTH_METHODS = frozenset({"client_secret_basic", "client_secret_post"})
#: The longest refresh-token reuse leeway accepted (seconds): a retry window, not a policy.
MAX_REFRESH_REUSE_LEEWAY = 60.0

NoncePolicy = Literal["off", "per_client", "always"]
AccessTokenFormat = Literal["jwt", "opaque"]
#: The access-token formats: RFC 9068 JWTs, or opaque values read back by introspection.
ACCESS_TOKEN_FORMATS: tuple[str, ...] = ("jwt", "opaque")
#: Random bytes in an opaque access token (256 bits; base64url, token68 characters).
OPAQUE_TOKEN_BYTES = 32
#: Longest value looked up as an opaque token (ours are 43 characters).
MAX_OPAQUE_TOKEN_LENGTH = 256


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
        key_refresh_interval: seconds between re-reads of the signing keys from the
            store: servers sharing one store publish and verify a key another one made
            within this time, and a new key signs only after it (so it must be shorter
            than ``key_rotation``).
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
        registration_rate_limit: registrations per client address and hour, 1 to 1000
            (per process unless the limiter is given a shared counter store).
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
    key_refresh_interval: int = 60
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
        for name in (
            "access_token_lifetime",
            "refresh_token_lifetime",
            "code_lifetime",
            "key_refresh_interval",
        ):
            if getattr(self, name) < 1:
                raise ServerConfigurationError(Reason.CONFIGURATION, f"{name} must be >= 1")
        if self.key_rotation <= self.key_refresh_interval:
            # A new key is published for key_refresh_interval seconds before it signs.
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "key_rotation must be longer than key_refresh_interval"
            )
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
        if not 1 <= self.registration_rate_limit <= 1000:
            # each registration in the window is one number of a shared counter record
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "registration_rate_limit must be in 1..1000"
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
