"""The authorization-server role: a framework-free token service and its Starlette app.

:class:`TokenService` (:mod:`.service`) answers the token, PAR, introspection and
revocation endpoints from a :class:`~dpopkit.RequestView`; grants are plain
functions (:mod:`.grants`) registered in a dict. :func:`~dpopkit.server.app.create_app`
serves it with Starlette, and :mod:`.config` builds everything ``dpopkit serve``
runs from a TOML file. Needs the ``server`` extra (Starlette, SQLAlchemy, uvicorn).
"""

from __future__ import annotations

from dpopkit.server.grants import (
    DEFAULT_GRANTS,
    authorization_code,
    client_credentials,
    refresh_token,
)
from dpopkit.server.service import Grant, GrantContext, ServerSettings, TokenService

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
