"""Dynamic client registration (RFC 7591), framework-free.

Enabled only by configuration (``registration_enabled``). The request is RFC
7591 §2 JSON metadata; the response is 201 with the client's metadata, a new
``client_id`` and, for confidential clients, a ``client_secret`` shown once
(only its scrypt hash is stored).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from dpopkit.core.http import RequestView, ResponseView
from dpopkit.core.jws import PRIVATE_JWK_MEMBERS
from dpopkit.errors import DPoPError, InvalidRequestError, OAuthError, Reason
from dpopkit.server.parsing import MAX_BODY_BYTES, parse_json_object
from dpopkit.server.redirects import InvalidRedirectURIError, validate_redirect_uri
from dpopkit.server.service import ACCESS_TOKEN_FORMATS, AUTH_METHODS, ServerSettings, TokenService
from dpopkit.server.throttle import SCRYPT_LIMITER, RateLimitedError, RateLimiter, WorkLimiter
from dpopkit.storage.sql import ClientRecord, StoreError

__all__ = [
    "InvalidClientMetadataError",
    "InvalidRedirectURIError",
    "apply_registration_policy",
    "client_from_metadata",
    "handle_register",
    "registration_rate_limiter",
]

MAX_BODY = MAX_BODY_BYTES


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
    ``registered``; see :meth:`TokenService.resolve_resource`).

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


def registration_rate_limiter(
    settings: ServerSettings, *, clock: Callable[[], float] = time.time
) -> RateLimiter:
    """The per-address limiter of ``/register``: ``registration_rate_limit`` an hour.

    In memory and per process (bounded to 10,000 addresses): several processes each
    allow the limit; put a shared limiter in front for a cluster.
    """
    return RateLimiter(limit=settings.registration_rate_limit, window=3600.0, clock=clock)


def handle_register(
    service: TokenService,
    request: RequestView,
    *,
    limiter: RateLimiter | None = None,
    scrypt: WorkLimiter | None = None,
) -> ResponseView:
    """Register a client (RFC 7591 §3); 201 with its metadata and credentials.

    Args:
        service: the token service (settings with the registration policy, store).
        request: the registration request.
        limiter: per-client-address rate limit (429 with ``Retry-After`` when spent).
        scrypt: bounds concurrent scrypt work (the shared limiter by default).
    """
    now = service.clock()
    headers = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))
    try:
        if limiter is not None:
            wait = limiter.hit(request.client_address or "unknown")
            if wait:
                raise RateLimitedError(wait)
        if request.method != "POST":
            raise InvalidClientMetadataError(Reason.INVALID_REQUEST, "POST JSON metadata")
        try:
            # One JSON object, bounded and checked (dpopkit.server.parsing).
            meta = parse_json_object(request)
        except InvalidRequestError as exc:
            raise InvalidClientMetadataError(exc.reason, exc.description) from None
        meta = apply_registration_policy(meta, service.settings)
        method = meta.get("token_endpoint_auth_method", "client_secret_basic")
        if not isinstance(method, str):
            raise InvalidClientMetadataError(Reason.INVALID_REQUEST, "bad auth method")
        secret = secrets.token_urlsafe(32) if method.startswith("client_secret") else None
        # Validate everything before paying for scrypt.
        client = client_from_metadata(
            meta, client_id=secrets.token_urlsafe(16), secret_hash=None, now=now
        )
        if secret is not None:
            secret_hash = (scrypt or SCRYPT_LIMITER).hash(secret)
            client = replace(client, secret_hash=secret_hash)
        client = replace(client, registered=True)
        service.store.put_client(client)
        out = client.metadata()
        if secret is not None:
            out["client_secret"] = secret
            out["client_secret_expires_at"] = 0
        return ResponseView(status=201, headers=headers, body=json.dumps(out).encode())
    except (DPoPError, StoreError) as exc:
        return service.error_response(exc)
