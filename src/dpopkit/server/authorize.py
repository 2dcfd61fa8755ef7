"""The browser part of the authorization code flow, under its earlier import path.

The endpoint is :mod:`dpopkit.server.endpoints.authorize`, the request rules
:mod:`dpopkit.server.authorization_request`, the sign-in users
:mod:`dpopkit.server.users`. The names below are re-exported from there.
"""

from __future__ import annotations

from dpopkit.server.authorization_request import (
    UnsupportedResponseTypeError,
    validate_authorization_request,
)
from dpopkit.server.endpoints.authorize import AuthorizationEndpoint
from dpopkit.server.redirects import redirect_uri_allowed
from dpopkit.server.users import Authenticator, ConfigUsers

__all__ = [
    "Authenticator",
    "AuthorizationEndpoint",
    "ConfigUsers",
    "UnsupportedResponseTypeError",
    "redirect_uri_allowed",
    "validate_authorization_request",
]
