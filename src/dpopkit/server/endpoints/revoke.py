"""``/revoke``: token revocation (RFC 7009 §2): 200 whatever the token was.

A refresh token revokes its whole family; an access token only itself. A client
may revoke only its own tokens; anything else is answered 200 all the same
(RFC 7009 §2.2), so the endpoint tells nobody which tokens exist.
"""

from __future__ import annotations

from dpopkit.core.http import RequestView, ResponseView
from dpopkit.errors import DPoPError, InvalidRequestError, Reason
from dpopkit.server.core import ServiceCore
from dpopkit.server.form import Form
from dpopkit.storage.sql import StoreError, sha256_hex

__all__ = ["handle"]


def handle(service: ServiceCore, request: RequestView) -> ResponseView:
    """Answer a revocation request."""
    now = service.clock()
    try:
        if request.method != "POST":
            raise InvalidRequestError(Reason.INVALID_REQUEST, "use POST")
        form = Form.parse(request)
        auth = service.authenticate_client(
            request, form, endpoint=service.settings.url("/revoke"), now=now
        )
        service.record_assertion(auth, now=now)
        token = form.need("token")
        rt = service.store.get_refresh(sha256_hex(token))
        if rt is not None:
            if rt.client_id == auth.client.client_id:
                service.store.revoke_family(rt.family_id)
        else:
            record = service.lookup_access_token(token, now=now)
            if record is not None and record.client_id == auth.client.client_id:
                service.store.revoke_access_token(record)
        response = ResponseView(status=200, headers=(("Cache-Control", "no-store"),))
    except (DPoPError, StoreError) as exc:
        response = service.error_response(exc)
    return service.finish(response, None, None, now=now)
