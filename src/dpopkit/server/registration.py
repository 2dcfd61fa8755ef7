"""Dynamic client registration (RFC 7591), framework-free.

Enabled only by configuration (``registration_enabled``). The request is RFC
7591 §2 JSON metadata; the response is 201 with the client's metadata, a new
``client_id`` and, for confidential clients, a ``client_secret`` shown once
(only its scrypt hash is stored).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

from dpopkit.core.http import RequestView, ResponseView
from dpopkit.core.jws import PRIVATE_JWK_MEMBERS
from dpopkit.errors import DPoPError, InvalidRequestError, OAuthError, Reason
from dpopkit.server.parsing import MAX_BODY_BYTES, parse_json_object
from dpopkit.server.service import ACCESS_TOKEN_FORMATS, AUTH_METHODS, TokenService
from dpopkit.storage.sql import ClientRecord, StoreError, hash_secret

__all__ = [
    "InvalidClientMetadataError",
    "InvalidRedirectURIError",
    "client_from_metadata",
    "handle_register",
]

MAX_BODY = MAX_BODY_BYTES


class InvalidClientMetadataError(OAuthError):
    """A metadata value is invalid (RFC 7591 §3.2.2)."""

    error = "invalid_client_metadata"
    default_reason = Reason.INVALID_REQUEST


class InvalidRedirectURIError(OAuthError):
    """A redirect URI is invalid (RFC 7591 §3.2.2)."""

    error = "invalid_redirect_uri"
    default_reason = Reason.INVALID_REQUEST


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _check_redirect_uri(uri: object) -> str:
    # RFC 6749 §3.1.2: absolute, no fragment; https, or http on loopback (RFC 8252 §7.3).
    if not isinstance(uri, str) or len(uri) > 2048:
        raise InvalidRedirectURIError(Reason.INVALID_REQUEST, "redirect_uris must be strings")
    parts = urlsplit(uri)
    if "#" in uri or not parts.netloc:
        raise InvalidRedirectURIError(Reason.INVALID_REQUEST, "redirect_uri must be absolute")
    if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
        raise InvalidRedirectURIError(Reason.INVALID_REQUEST, "redirect_uri must use https")
    return uri


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
    uris = tuple(_check_redirect_uri(u) for u in redirect_uris)
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
        created_at=now,
        **flags,
    )


def handle_register(service: TokenService, request: RequestView) -> ResponseView:
    """Register a client (RFC 7591 §3); 201 with its metadata and credentials."""
    now = service.clock()
    headers = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))
    try:
        if request.method != "POST":
            raise InvalidClientMetadataError(Reason.INVALID_REQUEST, "POST JSON metadata")
        try:
            # One JSON object, bounded and checked (dpopkit.server.parsing).
            meta = parse_json_object(request)
        except InvalidRequestError as exc:
            raise InvalidClientMetadataError(exc.reason, exc.description) from None
        method = meta.get("token_endpoint_auth_method", "client_secret_basic")
        if not isinstance(method, str):
            raise InvalidClientMetadataError(Reason.INVALID_REQUEST, "bad auth method")
        secret = secrets.token_urlsafe(32) if method.startswith("client_secret") else None
        client = client_from_metadata(
            meta,
            client_id=secrets.token_urlsafe(16),
            secret_hash=None if secret is None else hash_secret(secret),
            now=now,
        )
        service.store.put_client(client)
        out = client.metadata()
        if secret is not None:
            out["client_secret"] = secret
            out["client_secret_expires_at"] = 0
        return ResponseView(status=201, headers=headers, body=json.dumps(out).encode())
    except (DPoPError, StoreError) as exc:
        return service.error_response(exc)
