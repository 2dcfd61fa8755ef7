"""What the grant store keeps: one frozen record per kind of row, and the store's error.

Clients, authorization codes, refresh tokens, issued access tokens, pushed
authorization requests and login interactions, and the AS signing keys; the
store (:class:`~dpopkit.storage.sql.SQLGrantStore`) reads and writes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AccessTokenRecord",
    "ClientRecord",
    "CodeRecord",
    "InteractionRecord",
    "RefreshRecord",
    "SigningKeyRecord",
    "StoreError",
]


class StoreError(RuntimeError):
    """The database cannot be used (unreachable, newer schema, corrupt record)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRecord:
    """A registered client, described with RFC 7591 §2 metadata names.

    ``secret_hash`` is a :func:`hash_secret` value (never the secret).
    ``dpop_bound_access_tokens`` is RFC 9449 §5.2; ``require_pushed_authorization_requests``
    is RFC 9126 §6; ``dpop_nonce_required`` is dpopkit's per-client nonce switch;
    ``access_token_format`` (``jwt`` or ``opaque``) overrides the server's default
    access-token format for this client (None: the server's default).

    Operator settings (configuration only, never taken from RFC 7591 registration):
    ``introspection_audiences`` lists the token audiences (``aud`` values) this client
    may introspect tokens for, as a resource server does (RFC 7662 §4); without it a
    client learns only about its own tokens. ``token_endpoint_auth_method_strict``
    pins ``client_secret_basic`` / ``client_secret_post`` to the registered one (by
    default the two are interchangeable for a secret client, RFC 6749 §2.3.1).

    ``registered`` marks a client made by dynamic registration (RFC 7591): the
    server's registration policy (allowed audiences) applies to it for its lifetime.
    """

    client_id: str
    token_endpoint_auth_method: str = "client_secret_basic"  # noqa: S105 - a method name
    secret_hash: str | None = None
    grant_types: tuple[str, ...] = ("client_credentials",)
    redirect_uris: tuple[str, ...] = ()
    scope: str = ""
    jwks: Mapping[str, Any] | None = None
    client_name: str | None = None
    dpop_bound_access_tokens: bool = False
    require_pushed_authorization_requests: bool = False
    dpop_nonce_required: bool = False
    access_token_format: str | None = None
    introspection_audiences: tuple[str, ...] = ()
    token_endpoint_auth_method_strict: bool = False
    created_at: float = 0.0
    registered: bool = False

    @property
    def is_public(self) -> bool:
        """True for a client that does not authenticate (``none``, RFC 6749 §2.1)."""
        return self.token_endpoint_auth_method == "none"  # noqa: S105 - a method name

    def metadata(self) -> dict[str, Any]:
        """The RFC 7591 §3.2.1 view of this client (no secret)."""
        data: dict[str, Any] = {
            "client_id": self.client_id,
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "grant_types": list(self.grant_types),
            "dpop_bound_access_tokens": self.dpop_bound_access_tokens,
            "require_pushed_authorization_requests": self.require_pushed_authorization_requests,
            "client_id_issued_at": int(self.created_at),
        }
        if self.redirect_uris:
            data["redirect_uris"] = list(self.redirect_uris)
            data["response_types"] = ["code"]
        if self.scope:
            data["scope"] = self.scope
        if self.jwks is not None:
            data["jwks"] = dict(self.jwks)
        if self.client_name:
            data["client_name"] = self.client_name
        if self.access_token_format is not None:
            data["access_token_format"] = self.access_token_format
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeRecord:
    """An authorization code (stored by hash), with PKCE and ``dpop_jkt`` (RFC 9449 §10)."""

    code_hash: str
    client_id: str
    sub: str
    redirect_uri: str
    scope: str
    code_challenge: str
    dpop_jkt: str | None
    resource: tuple[str, ...]
    expires_at: float
    used: bool = False
    family_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshRecord:
    """One refresh token of a rotation family; ``jkt`` binds it (RFC 9449 §5, AS-5).

    Once spent, ``used_at`` is when it was rotated and ``used_jkt`` the DPoP key
    thumbprint of the proof that rotated it (None without a proof): the reuse leeway
    compares a second redemption with them.
    """

    token_hash: str
    family_id: str
    client_id: str
    sub: str
    scope: str
    resource: tuple[str, ...]
    jkt: str | None
    expires_at: float
    issued_at: float
    used: bool = False
    revoked: bool = False
    used_at: float | None = None
    used_jkt: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessTokenRecord:
    """What was issued for an access token (RFC 7662 introspection, RFC 7009).

    A JWT access token is kept by its ``jti`` claim. An opaque token is kept by
    :func:`sha256_hex` of its value in ``jti`` with ``opaque`` set (the value itself
    is never stored); a lookup by either kind never matches the other.
    """

    jti: str
    client_id: str
    sub: str
    scope: str
    aud: tuple[str, ...]
    jkt: str | None
    issued_at: float
    expires_at: float
    family_id: str | None = None
    revoked: bool = False
    opaque: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class InteractionRecord:
    """A pushed authorization request (RFC 9126) or a login interaction in progress."""

    id_hash: str
    kind: str  # "par" or "interaction"
    client_id: str
    params: Mapping[str, Any]
    expires_at: float
    used: bool = False
    sub: str | None = None
    browser_hash: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKeyRecord:
    """An AS signing key (private JWK), published until ``retire_at``."""

    kid: str
    alg: str
    private_jwk: Mapping[str, Any] = field(repr=False)
    created_at: float
    retire_at: float | None = None
