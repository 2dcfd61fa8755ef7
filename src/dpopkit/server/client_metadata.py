"""Client metadata (RFC 7591 §2) into client records, under the server's registration policy.

:func:`client_from_metadata` checks and converts metadata, for ``/register`` and for
clients listed in the TOML configuration alike; :func:`apply_registration_policy`
narrows what a dynamically registered client may ask for (RFC 7591 §3.2.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dpopkit.core.jws import PRIVATE_JWK_MEMBERS
from dpopkit.errors import OAuthError, Reason
from dpopkit.server.redirects import InvalidRedirectURIError, validate_redirect_uri
from dpopkit.server.settings import ACCESS_TOKEN_FORMATS, AUTH_METHODS, ServerSettings
from dpopkit.storage.sql import ClientRecord

__all__ = [
    "InvalidClientMetadataError",
    "InvalidRedirectURIError",
    "apply_registration_policy",
    "client_from_metadata",
]


class InvalidClientMetadataError(OAuthError):
    """A metadata value is invalid (RFC 7591 §3.2.2)."""

    error = "invalid_client_metadata"
    default_reason = Reason.INVALID_REQUEST


def client_from_metadata(
    meta: Mapping[str, Any], *, client_id: str, secret_hash: str | None, now: float
) -> ClientRecord:
    """Build a :class:`ClientRecord` from RFC 7591 §2 metadata (config files use it too).

    Raises:
        InvalidClientMetadataError / InvalidRedirectURIError: a bad value.
    """

    def bad(what: str) -> InvalidClientMetadataError:
        return InvalidClientMetadataError(Reason.INVALID_REQUEST, what)

    method = meta.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise bad("unsupported token_endpoint_auth_method")
    grant_types = meta.get("grant_types", ["authorization_code"])
    supported = {"authorization_code", "client_credentials", "refresh_token"}
    if (
        not isinstance(grant_types, list)
        or not grant_types
        or not all(isinstance(g, str) and g in supported for g in grant_types)
    ):
        raise bad("unsupported grant_types")
    response_types = meta.get("response_types", ["code"])
    if response_types not in (["code"], []):
        raise bad("only response_type code is supported")
    redirect_uris = meta.get("redirect_uris", [])
    if not isinstance(redirect_uris, list):
        raise InvalidRedirectURIError(Reason.INVALID_REQUEST, "redirect_uris must be a list")
    uris = tuple(validate_redirect_uri(u) for u in redirect_uris)
    if "authorization_code" in grant_types and not uris:
        raise InvalidRedirectURIError(Reason.INVALID_REQUEST, "redirect_uris required")
    scope = meta.get("scope", "")
    if not isinstance(scope, str):
        raise bad("scope must be a string")
    jwks = meta.get("jwks")
    if jwks is not None:
        keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            raise bad("jwks must be a JWK Set")
        if any(PRIVATE_JWK_MEMBERS & set(k) for k in keys):
            raise bad("jwks must hold public keys only")
    if method == "private_key_jwt" and jwks is None:
        raise bad("private_key_jwt needs jwks")
    if method == "none" and "client_credentials" in grant_types:
        raise bad("a public client cannot use client_credentials")
    flags: dict[str, bool] = {}
    for flag in (
        "dpop_bound_access_tokens",
        "require_pushed_authorization_requests",
        "dpop_nonce_required",
    ):
        value = meta.get(flag, False)
        if not isinstance(value, bool):
            raise bad(f"{flag} must be a boolean")
        flags[flag] = value
    name = meta.get("client_name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise bad("client_name must be a short string")
    token_format = meta.get("access_token_format")
    if token_format is not None and token_format not in ACCESS_TOKEN_FORMATS:
        raise bad("access_token_format must be jwt or opaque")
    return ClientRecord(
        client_id=client_id,
        secret_hash=secret_hash,
        token_endpoint_auth_method=method,
        grant_types=tuple(grant_types),
        redirect_uris=uris,
        scope=scope,
        jwks=jwks,
        client_name=name,
        access_token_format=token_format,
        introspection_audiences=(),  # an operator setting: never from registration (RFC 7662 §4)
        created_at=now,
        **flags,
    )


def apply_registration_policy(meta: Mapping[str, Any], settings: ServerSettings) -> dict[str, Any]:
    """Apply the server's registration policy to RFC 7591 §2 metadata (RFC 7591 §3.2.2).

    A registrant widens nothing the server did not allow, as with Keycloak's client
    registration policies ("Allowed Client Scopes"), node-oidc-provider's
    ``features.registration`` ``policies`` and Duende's registration validator:

    * ``scope``: only :attr:`~ServerSettings.registration_allowed_scopes` (default:
      none); an omitted scope means all of them.
    * ``grant_types``: only :attr:`~ServerSettings.registration_allowed_grant_types`.
    * ``dpop_bound_access_tokens``: forced to ``true`` (RFC 9449 §5.2); an explicit
      ``false`` is refused unless :attr:`~ServerSettings.registration_allow_unbound_tokens`.

    Audiences are limited at the token endpoint (the stored client is marked
    ``registered``; see :func:`~dpopkit.server.targets.resolve_resource`).

    Raises:
        InvalidClientMetadataError: a value outside the policy.
    """

    def bad(what: str) -> InvalidClientMetadataError:
        return InvalidClientMetadataError(Reason.INVALID_REQUEST, what)

    out = dict(meta)
    allowed_scopes = settings.registration_allowed_scopes
    scope = out.get("scope")
    if scope is None:
        out["scope"] = " ".join(allowed_scopes)
    elif not isinstance(scope, str) or not set(scope.split()) <= set(allowed_scopes):
        raise bad("scope not allowed for registered clients")
    grant_types = out.get("grant_types", ["authorization_code"])
    if not isinstance(grant_types, list) or not all(
        isinstance(g, str) and g in settings.registration_allowed_grant_types for g in grant_types
    ):
        raise bad("grant_types not allowed for registered clients")
    bound = out.get("dpop_bound_access_tokens")
    if bound is None:
        out["dpop_bound_access_tokens"] = not settings.registration_allow_unbound_tokens
    elif bound is not True and not settings.registration_allow_unbound_tokens:
        raise bad("registered clients must use dpop_bound_access_tokens")
    return out
