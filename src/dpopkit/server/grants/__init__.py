"""The grants of the token endpoint, one module each, registered by ``grant_type``.

Each grant is a plain function ``(GrantContext) -> dict`` returning the token
response members, or raising a :class:`~dpopkit.errors.DPoPError`. When a grant
runs, the client is authenticated and the DPoP proof (if any) passed every check
and is recorded, so a grant spends its one-time artifact last (SEC-99).

- :mod:`.authorization_code_grant`: RFC 6749 §4.1.3, PKCE (RFC 7636), ``dpop_jkt`` (RFC 9449 §10);
- :mod:`.client_credentials_grant`: RFC 6749 §4.4;
- :mod:`.refresh_token_grant`: RFC 6749 §6, rotation and reuse detection (RFC 9700 §4.14.2).

Add a grant by passing ``grants={**DEFAULT_GRANTS, name: function}`` to
:class:`~dpopkit.server.TokenService`; nothing is registered at import time.
"""

from __future__ import annotations

from dpopkit.server.core import Grant
from dpopkit.server.grants.authorization_code_grant import authorization_code
from dpopkit.server.grants.client_credentials_grant import client_credentials
from dpopkit.server.grants.refresh_token_grant import refresh_token

__all__ = ["DEFAULT_GRANTS", "authorization_code", "client_credentials", "refresh_token"]

#: The grants a :class:`~dpopkit.server.TokenService` registers by default.
DEFAULT_GRANTS: dict[str, Grant] = {
    "authorization_code": authorization_code,
    "client_credentials": client_credentials,
    "refresh_token": refresh_token,
}
