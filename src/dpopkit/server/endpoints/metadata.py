"""``/.well-known/oauth-authorization-server``: authorization server metadata (RFC 8414).

The document names every endpoint under the issuer, the registered grants, the
client authentication methods and the DPoP proof algorithms (RFC 9449 §5.1); it
is served at the well-known path and at the path with the issuer's path appended
(RFC 8414 §3.1), cached for five minutes.
"""

from __future__ import annotations

import json
from typing import Any

from dpopkit.core.algorithms import ALGORITHMS
from dpopkit.core.http import ResponseView
from dpopkit.server.core import ServiceCore
from dpopkit.server.settings import AUTH_METHODS

__all__ = ["document", "handle"]


def document(service: ServiceCore) -> dict[str, Any]:
    """Authorization server metadata (RFC 8414 §2, RFC 9449 §5.1, RFC 9126 §5)."""
    s = service.settings
    data: dict[str, Any] = {
        "issuer": s.issuer,
        "authorization_endpoint": s.url("/authorize"),
        "token_endpoint": s.token_endpoint,
        "pushed_authorization_request_endpoint": s.par_endpoint,
        "introspection_endpoint": s.url("/introspect"),
        "revocation_endpoint": s.url("/revoke"),
        "jwks_uri": s.url("/jwks"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": sorted(service.grants),
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": [
            a for a in ALGORITHMS if a in s.proof_algorithms
        ],
        "introspection_endpoint_auth_methods_supported": list(AUTH_METHODS[:3]),
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        # RFC 9449 §5.1 (AS-8): exactly the proof allow-list, asymmetric only.
        "dpop_signing_alg_values_supported": [a for a in ALGORITHMS if a in s.proof_algorithms],
        "authorization_response_iss_parameter_supported": True,
        "require_pushed_authorization_requests": s.require_pushed_authorization_requests,
    }
    if s.registration_enabled:
        data["registration_endpoint"] = s.url("/register")
    return data


def handle(service: ServiceCore) -> ResponseView:
    """The metadata document as a JSON response."""
    return ResponseView(
        status=200,
        headers=(("Content-Type", "application/json"), ("Cache-Control", "max-age=300")),
        body=json.dumps(document(service)).encode(),
    )
