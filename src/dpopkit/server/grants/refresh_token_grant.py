"""The refresh token grant (RFC 6749 §6) with rotation and reuse detection (RFC 9700 §4.14.2)."""

from __future__ import annotations

import hmac
from typing import Any, NoReturn

from dpopkit.errors import InvalidGrantError, Reason
from dpopkit.server.core import GrantContext
from dpopkit.server.grants._common import new_refresh, require_key
from dpopkit.server.targets import InvalidTargetError
from dpopkit.storage.sql import RefreshRecord, sha256_hex

__all__ = ["refresh_token"]


def _reused(ctx: GrantContext, rec: RefreshRecord) -> NoReturn:
    """A spent refresh token came back: reuse detection (RFC 9700 §4.14.2).

    The family is revoked (its refresh and access tokens), unless the reuse leeway
    (``refresh_reuse_leeway``) is on and this is a retry: the same client presents the
    token within the leeway after it was rotated, with a proof by the key that rotated
    it. A retry is refused all the same, but the winner's tokens stay valid.

    Raises:
        InvalidGrantError: always.
    """
    leeway = ctx.service.settings.refresh_reuse_leeway
    retry = (
        leeway > 0
        and rec.used
        and not rec.revoked
        and rec.used_at is not None
        and ctx.now <= rec.used_at + leeway
        and ctx.jkt is not None
        and rec.used_jkt is not None
        and hmac.compare_digest(ctx.jkt, rec.used_jkt)
    )
    if not retry:
        ctx.service.store.revoke_family(rec.family_id)
    raise InvalidGrantError(Reason.INVALID_GRANT, "invalid refresh token")


def refresh_token(ctx: GrantContext) -> dict[str, Any]:
    """The refresh token grant with rotation and reuse detection.

    RFC 6749 §6, RFC 9700 §4.14.2, RFC 9449 §5.

    Every use rotates the token. A used token presented again revokes its whole
    family (including the access tokens issued from it), except for a retry by the
    same DPoP key within ``refresh_reuse_leeway`` (off by default), which is refused
    without revoking anything. A public client's token is bound to its DPoP key
    (AS-6); a confidential client may present a new key and the new access token is
    bound to that key (AS-7).

    Raises:
        InvalidGrantError: unknown, expired, revoked, reused, other client, or
            (JKT_MISMATCH) proved with another key.
        InvalidProofError: (MISSING_PROOF) a bound token without a proof.
    """
    svc, client, form, now = ctx.service, ctx.client, ctx.form, ctx.now
    value = form.need("refresh_token")
    token_hash = sha256_hex(value)
    rec = svc.store.get_refresh(token_hash)
    if rec is None or rec.client_id != client.client_id:
        raise InvalidGrantError(Reason.INVALID_GRANT, "invalid refresh token")
    if rec.used:
        _reused(ctx, rec)  # RFC 9700 §4.14.2: reuse detected
    if rec.revoked or rec.expires_at <= now:
        raise InvalidGrantError(Reason.INVALID_GRANT, "invalid refresh token")
    if rec.jkt is not None:
        require_key(ctx, rec.jkt)
    scope = svc.resolve_scope(form.one("scope"), allowed=rec.scope)
    resource = svc.resolve_resource(form.all("resource"), client=client) or rec.resource
    if rec.resource and not set(resource) <= set(rec.resource):
        raise InvalidTargetError(Reason.INVALID_REQUEST, "resource not granted")
    token, access = svc.mint_access_token(
        client_id=client.client_id,
        sub=rec.sub,
        scope=scope,
        resource=resource,
        jkt=ctx.jkt,
        family_id=rec.family_id,
        now=now,
        token_format=svc.token_format(client),
    )
    new_value, successor = new_refresh(
        ctx,
        family_id=rec.family_id,
        sub=rec.sub,
        scope=rec.scope,
        resource=rec.resource,
        jkt=rec.jkt if client.is_public and rec.jkt else (ctx.jkt if client.is_public else None),
    )
    if not svc.store.rotate_refresh(
        token_hash, now=now, access=access, refresh=successor, used_jkt=ctx.jkt
    ):
        # Lost a race: another redemption spent it first (read who, and when).
        _reused(ctx, svc.store.get_refresh(token_hash) or rec)
    return svc.token_response(token, access, refresh_token=new_value)
