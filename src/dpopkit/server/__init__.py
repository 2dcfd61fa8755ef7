"""The authorization-server role: framework-free endpoints around a small service core.

Needs the ``server`` extra (Starlette, SQLAlchemy, uvicorn). The layout shows the
architecture; every import points down this list, and nothing imports upwards:

``app.py``, ``config.py``
    the Starlette application (one route per endpoint) and what ``dpopkit serve``
    builds from a TOML file.
``service.py``
    :class:`TokenService`: the core plus the default grants, with the token-side
    endpoints as one-line methods (``handle_token``, ``handle_par``, ...).
``endpoints/``
    one module per endpoint, each ``handle(service, request) -> ResponseView``:
    ``token``, ``par``, ``authorize`` (login and consent pages), ``introspect``,
    ``revoke``, ``register``, ``jwks``, ``metadata``.
``grants/``
    one module per grant, each a plain function ``(GrantContext) -> dict``,
    registered in a dict at construction (:data:`DEFAULT_GRANTS`):
    ``authorization_code_grant``, ``client_credentials_grant``, ``refresh_token_grant``
    (the grant functions themselves keep the ``grant_type`` names).
``authorization_request.py``, ``client_metadata.py``, ``users.py``
    the rules shared by two endpoints (``/par`` and ``/authorize``), client metadata
    for ``/register`` and the TOML, and who may sign in.
``core.py``
    :class:`~dpopkit.server.core.ServiceCore`: the state every endpoint shares
    (settings, grant store, replay cache, nonces, keys, grants, clock) and the
    steps they combine; :class:`GrantContext`.
``clientauth.py``, ``proofs.py``, ``minting.py``, ``targets.py``
    client authentication, DPoP proof checks with the nonce policy and replay
    records, token minting and read-back, scope and resource decisions.
``settings.py``, ``form.py``, ``parsing.py``, ``redirects.py``, ``jwt.py``, ``throttle.py``
    :class:`ServerSettings` and the protocol constants; request parsing; redirect
    URI rules; JWT signing and key rotation; login and work throttles.

``authorize.py`` and ``registration.py`` re-export their earlier names from the
modules above. The package imports :mod:`dpopkit.core`, :mod:`dpopkit.errors` and
:mod:`dpopkit.storage`, never :mod:`dpopkit.resource`.
"""

from __future__ import annotations

from dpopkit.server.core import Grant, GrantContext
from dpopkit.server.grants import (
    DEFAULT_GRANTS,
    authorization_code,
    client_credentials,
    refresh_token,
)
from dpopkit.server.service import TokenService
from dpopkit.server.settings import ServerSettings

__all__ = [
    "DEFAULT_GRANTS",
    "Grant",
    "GrantContext",
    "ServerSettings",
    "TokenService",
    "authorization_code",
    "client_credentials",
    "refresh_token",
]
