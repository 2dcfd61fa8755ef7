"""The client credentials grant (RFC 6749 §4.4): a confidential client asks for itself."""

from __future__ import annotations

from typing import Any

from dpopkit.errors import Reason, UnauthorizedClientError
from dpopkit.server.core import GrantContext

__all__ = ["client_credentials"]


def client_credentials(ctx: GrantContext) -> dict[str, Any]:
    """The client credentials grant (RFC 6749 §4.4); confidential clients only.

    Raises:
        UnauthorizedClientError: a public client.
        InvalidScopeError / InvalidTargetError: scope or resource not allowed.
    """
    client, svc = ctx.client, ctx.service
    if client.is_public:
        raise UnauthorizedClientError(Reason.UNAUTHORIZED_CLIENT, "confidential clients only")
    scope = svc.resolve_scope(ctx.form.one("scope"), allowed=client.scope)
    resource = svc.resolve_resource(ctx.form.all("resource"), client=client)
    token, record = svc.mint_access_token(
        client_id=client.client_id,
        sub=client.client_id,
        scope=scope,
        resource=resource,
        jkt=ctx.jkt,  # RFC 9449 §5 (AS-2): bound to the proof key
        family_id=None,
        now=ctx.now,
        token_format=svc.token_format(client),
    )
    if record.opaque:
        # An opaque token is known only by its stored record. A JWT outside any refresh
        # family is its own record (signature and claims, read back by lookup_access_token):
        # it is written to the store only when revoked (RFC 7009).
        svc.store.put_access_token(record)
    return svc.token_response(token, record)
