"""``/introspect``: token introspection (RFC 7662 §2; RFC 9449 §6.2, AS-11).

Only authenticated confidential clients may introspect, and only tokens
:func:`may_introspect` allows them. A DPoP-bound token reports ``token_type:
DPoP`` and ``cnf.jkt``; an unknown, expired or revoked token, or one the caller
may not see, is ``{"active": false}`` and nothing else (X-17, RFC 7662 §2.2).
"""

from __future__ import annotations

from typing import Any

from dpopkit.core.http import RequestView, ResponseView
from dpopkit.errors import DPoPError, InvalidClientError, InvalidRequestError, Reason
from dpopkit.server.core import ServiceCore, json_response
from dpopkit.server.form import Form
from dpopkit.storage.sql import (
    AccessTokenRecord,
    ClientRecord,
    RefreshRecord,
    StoreError,
    sha256_hex,
)

__all__ = ["handle", "introspection_body", "may_introspect"]


def may_introspect(caller: ClientRecord, record: AccessTokenRecord | RefreshRecord) -> bool:
    """Whether ``caller`` may learn about a token (RFC 7662 §2.2, §4).

    An access token: its own client, or a client whose ``introspection_audiences``
    names one of the token's audiences (a resource server). A refresh token: only
    its own client (it is meant for nobody else, RFC 6749 §1.5).
    """
    if caller.client_id == record.client_id:
        return True
    if isinstance(record, RefreshRecord):
        return False
    return not set(record.aud).isdisjoint(caller.introspection_audiences)


def introspection_body(
    service: ServiceCore, caller: ClientRecord, token: str, *, now: float
) -> dict[str, Any]:
    """The RFC 7662 §2.2 answer about ``token`` for the authenticated ``caller``.

    ``{"active": false}`` and nothing else unless the token is live and
    :func:`may_introspect` lets ``caller`` see it.
    """
    record = service.lookup_access_token(token, now=now)
    if record is not None:
        if not may_introspect(caller, record):
            return {"active": False}
        body: dict[str, Any] = {
            "active": True,
            "iss": service.settings.issuer,
            "client_id": record.client_id,
            "sub": record.sub,
            "aud": record.aud[0] if len(record.aud) == 1 else list(record.aud),
            "iat": int(record.issued_at),
            "exp": int(record.expires_at),
            # RFC 9449 §6.2 (AS-11): the token type and, below, cnf.jkt.
            "token_type": "DPoP" if record.jkt else "Bearer",
        }
        if not record.opaque:
            body["jti"] = record.jti  # an opaque token's key is its hash: not shown
        if record.scope:
            body["scope"] = record.scope
        if record.jkt:
            body["cnf"] = {"jkt": record.jkt}
        return body
    rt = service.store.get_refresh(sha256_hex(token))
    if (
        rt is None
        or rt.used
        or rt.revoked
        or rt.expires_at <= now
        or not may_introspect(caller, rt)
    ):
        return {"active": False}
    body = {
        "active": True,
        "client_id": rt.client_id,
        "sub": rt.sub,
        "scope": rt.scope,
        "exp": int(rt.expires_at),
        "token_type": "refresh_token",
    }
    if rt.jkt:
        body["cnf"] = {"jkt": rt.jkt}
    return body


def _caller(service: ServiceCore, request: RequestView, form: Form, now: float) -> ClientRecord:
    """The authenticated confidential client asking (RFC 7662 §2.1)."""
    auth = service.authenticate_client(
        request, form, endpoint=service.settings.url("/introspect"), now=now
    )
    if auth.client.is_public:
        raise InvalidClientError(Reason.INVALID_CLIENT, "client authentication required")
    service.record_assertion(auth, now=now)
    return auth.client


def handle(service: ServiceCore, request: RequestView) -> ResponseView:
    """Answer an introspection request: 200 with the RFC 7662 §2.2 JSON."""
    now = service.clock()
    try:
        if request.method != "POST":
            raise InvalidRequestError(Reason.INVALID_REQUEST, "use POST")
        form = Form.parse(request)
        caller = _caller(service, request, form, now)
        body = introspection_body(service, caller, form.need("token"), now=now)
        response = json_response(200, body)
    except (DPoPError, StoreError) as exc:
        response = service.error_response(exc)
    return service.finish(response, None, None, now=now)
