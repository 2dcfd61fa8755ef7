"""The authorization request (RFC 6749 §4.1.1), checked alike at ``/par`` and ``/authorize``.

One function, :func:`validate_authorization_request`, holds the rules: a registered
``redirect_uri`` (RFC 6749 §3.1.2.3, RFC 8252 §7.3), ``response_type=code``, PKCE
with S256 (RFC 7636 §4.3), a well-formed ``dpop_jkt`` (RFC 9449 §10), an allowed
scope and resources (RFC 8707).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dpopkit.errors import InvalidRequestError, OAuthError, Reason, UnauthorizedClientError
from dpopkit.server.core import ServiceCore
from dpopkit.server.redirects import redirect_uri_allowed
from dpopkit.storage.sql import ClientRecord

__all__ = ["UnsupportedResponseTypeError", "validate_authorization_request"]

_B64URL_43 = re.compile(r"[A-Za-z0-9_-]{43}")


class UnsupportedResponseTypeError(OAuthError):
    """The ``response_type`` is not ``code`` (RFC 6749 §4.1.2.1)."""

    error = "unsupported_response_type"
    default_reason = Reason.INVALID_REQUEST


def validate_authorization_request(
    service: ServiceCore, client: ClientRecord, params: Mapping[str, Any]
) -> None:
    """Check an authorization request's parameters for ``client``.

    RFC 6749 §4.1.1, RFC 7636 §4.3 (S256 only), RFC 9449 §10 (``dpop_jkt``), RFC 8707.

    Raises:
        InvalidRequestError: missing/unregistered ``redirect_uri``, PKCE missing or not
            S256, malformed ``dpop_jkt`` (not a thumbprint), repeated parameters.
        UnsupportedResponseTypeError / UnauthorizedClientError / InvalidScopeError.
    """
    redirect_uri = params.get("redirect_uri")
    # RFC 6749 §3.1.2.3: exact string match against a registered redirect URI
    # (any port on a loopback IP literal, RFC 8252 §7.3).
    if not isinstance(redirect_uri, str) or not redirect_uri_allowed(
        client.redirect_uris, redirect_uri, loopback_any_port=client.is_public
    ):
        raise InvalidRequestError(Reason.INVALID_REQUEST, "redirect_uri not registered")
    if params.get("response_type") != "code":
        raise UnsupportedResponseTypeError(Reason.INVALID_REQUEST, "response_type must be code")
    if "authorization_code" not in client.grant_types:
        raise UnauthorizedClientError(Reason.UNAUTHORIZED_CLIENT)
    # RFC 7636 §4.3, RFC 9700 §2.1.1: PKCE with S256 only.
    challenge = params.get("code_challenge")
    if params.get("code_challenge_method") != "S256" or not isinstance(challenge, str):
        raise InvalidRequestError(Reason.INVALID_REQUEST, "PKCE with S256 is required")
    if not _B64URL_43.fullmatch(challenge):
        raise InvalidRequestError(Reason.INVALID_REQUEST, "malformed code_challenge")
    # RFC 9449 §10: dpop_jkt must be a SHA-256 JWK thumbprint (invalid_request).
    jkt = params.get("dpop_jkt")
    if jkt is not None and (not isinstance(jkt, str) or not _B64URL_43.fullmatch(jkt)):
        raise InvalidRequestError(Reason.INVALID_REQUEST, "dpop_jkt is not a JWK thumbprint")
    scope = params.get("scope")
    if scope is not None:
        service.resolve_scope(str(scope), allowed=client.scope)
    resource = params.get("resource", [])
    service.resolve_resource(
        resource if isinstance(resource, list) else [str(resource)], client=client
    )
    state = params.get("state")
    if state is not None and (not isinstance(state, str) or len(state) > 2048):
        raise InvalidRequestError(Reason.INVALID_REQUEST, "state too long")
