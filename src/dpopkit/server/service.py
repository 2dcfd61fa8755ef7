"""The token service: the service core with the token-side endpoints as methods.

:class:`TokenService` is what applications build and :func:`~dpopkit.server.app.create_app`
serves. It adds nothing of its own to :class:`~dpopkit.server.core.ServiceCore`: it
registers the default grants and exposes the endpoints of
:mod:`dpopkit.server.endpoints` as methods (``handle_token``, ``handle_par``,
``handle_introspect``, ``handle_revoke``, ``jwks``, ``metadata``), each a one-line
call into the endpoint's module, where the protocol logic lives.

The names other modules imported from here before the endpoints had modules of
their own are re-exported below from their present homes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from dpopkit.core.http import RequestView, ResponseView
from dpopkit.core.nonce import NonceIssuer
from dpopkit.core.replay import ReplayCache
from dpopkit.server.clientauth import auth_method_accepted
from dpopkit.server.core import Grant, GrantContext, ServiceCore
from dpopkit.server.endpoints import introspect as introspect_endpoint
from dpopkit.server.endpoints import jwks as jwks_endpoint
from dpopkit.server.endpoints import metadata as metadata_endpoint
from dpopkit.server.endpoints import par as par_endpoint
from dpopkit.server.endpoints import revoke as revoke_endpoint
from dpopkit.server.endpoints import token as token_endpoint
from dpopkit.server.form import REPEATABLE_PARAMETERS, Form
from dpopkit.server.grants import DEFAULT_GRANTS
from dpopkit.server.grants.authorization_code_grant import check_code_verifier
from dpopkit.server.jwt import KeyRing
from dpopkit.server.minting import new_family_id
from dpopkit.server.settings import (
    ACCESS_TOKEN_FORMATS,
    AUTH_METHODS,
    JWT_BEARER_ASSERTION,
    MAX_OPAQUE_TOKEN_LENGTH,
    MAX_REFRESH_REUSE_LEEWAY,
    OPAQUE_TOKEN_BYTES,
    PAR_URN_PREFIX,
    SECRET_AUTH_METHODS,
    AccessTokenFormat,
    NoncePolicy,
    ServerSettings,
)
from dpopkit.server.targets import InvalidTargetError
from dpopkit.storage.sql import AccessTokenRecord, ClientRecord, RefreshRecord, SQLGrantStore

__all__ = [
    "ACCESS_TOKEN_FORMATS",
    "AUTH_METHODS",
    "JWT_BEARER_ASSERTION",
    "MAX_OPAQUE_TOKEN_LENGTH",
    "MAX_REFRESH_REUSE_LEEWAY",
    "OPAQUE_TOKEN_BYTES",
    "PAR_URN_PREFIX",
    "REPEATABLE_PARAMETERS",
    "SECRET_AUTH_METHODS",
    "AccessTokenFormat",
    "Form",
    "Grant",
    "GrantContext",
    "InvalidTargetError",
    "NoncePolicy",
    "ServerSettings",
    "TokenService",
    "auth_method_accepted",
    "check_code_verifier",
    "new_family_id",
]


class TokenService(ServiceCore):
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

    Raises:
        ServerConfigurationError: a nonce policy without a nonce issuer.
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
        super().__init__(
            settings,
            store=store,
            replay=replay,
            grants=DEFAULT_GRANTS if grants is None else grants,
            nonces=nonces,
            keyring=keyring,
            clock=clock,
        )

    def handle_token(self, request: RequestView) -> ResponseView:
        """Answer a token request (:mod:`dpopkit.server.endpoints.token`)."""
        return token_endpoint.handle(self, request)

    def handle_par(self, request: RequestView) -> ResponseView:
        """Answer a pushed authorization request (:mod:`dpopkit.server.endpoints.par`)."""
        return par_endpoint.handle(self, request)

    def handle_introspect(self, request: RequestView) -> ResponseView:
        """Answer token introspection (:mod:`dpopkit.server.endpoints.introspect`)."""
        return introspect_endpoint.handle(self, request)

    def handle_revoke(self, request: RequestView) -> ResponseView:
        """Answer token revocation (:mod:`dpopkit.server.endpoints.revoke`)."""
        return revoke_endpoint.handle(self, request)

    def jwks(self) -> ResponseView:
        """The signing keys' JWK Set (:mod:`dpopkit.server.endpoints.jwks`)."""
        return jwks_endpoint.handle(self)

    def metadata(self) -> dict[str, Any]:
        """Authorization server metadata (:mod:`dpopkit.server.endpoints.metadata`)."""
        return metadata_endpoint.document(self)

    @staticmethod
    def may_introspect(caller: ClientRecord, record: AccessTokenRecord | RefreshRecord) -> bool:
        """Whether ``caller`` may learn about a token (RFC 7662 §2.2, §4)."""
        return introspect_endpoint.may_introspect(caller, record)

    def introspection_body(self, caller: ClientRecord, token: str, *, now: float) -> dict[str, Any]:
        """The RFC 7662 §2.2 answer about ``token`` for the authenticated ``caller``."""
        return introspect_endpoint.introspection_body(self, caller, token, now=now)
