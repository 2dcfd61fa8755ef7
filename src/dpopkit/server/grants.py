"""The grant functions of the token endpoint, registered by ``grant_type``.

Each grant is a plain function ``(GrantContext) -> dict`` returning the token
response members, or raising a :class:`~dpopkit.errors.DPoPError`. When a grant
runs, the client is authenticated and the DPoP proof (if any) passed every check
and is recorded, so a grant spends its one-time artifact last (SEC-99).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any, NoReturn

from dpopkit.errors import InvalidGrantError, InvalidProofError, Reason, UnauthorizedClientError
from dpopkit.server.parsing import equal_text
from dpopkit.server.service import (
    Grant,
    GrantContext,
    InvalidTargetError,
    check_code_verifier,
    new_family_id,
)
from dpopkit.storage.sql import RefreshRecord, sha256_hex

__all__ = ["DEFAULT_GRANTS", "authorization_code", "client_credentials", "refresh_token"]


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
    svc.store.put_access_token(record)
    return svc.token_response(token, record)


def _new_refresh(ctx: GrantContext, **fields: Any) -> tuple[str, RefreshRecord]:
    value = secrets.token_urlsafe(32)
    record = RefreshRecord(
        token_hash=sha256_hex(value),
        client_id=ctx.client.client_id,
        issued_at=ctx.now,
        expires_at=ctx.now + ctx.service.settings.refresh_token_lifetime,
        **fields,
    )
    return value, record


def _require_key(ctx: GrantContext, bound_jkt: str) -> None:
    # RFC 9449 §10 (AS-21) and §5 (AS-6): the grant is bound to a key; prove it.
    if ctx.proof is None:
        raise InvalidProofError(Reason.MISSING_PROOF, "a DPoP proof is required for this grant")
    if not hmac.compare_digest(ctx.proof.jkt, bound_jkt):
        raise InvalidGrantError(Reason.JKT_MISMATCH, "the grant is bound to another key")


def authorization_code(ctx: GrantContext) -> dict[str, Any]:
    """The authorization code grant with PKCE S256 and ``dpop_jkt``.

    RFC 6749 §4.1.3, RFC 7636 §4.5, RFC 9449 §10.

    A code is spent once: a second use is refused and revokes what the first
    issued (RFC 6749 §4.1.2). The refresh token of a public client is bound to the
    proof key (RFC 9449 §5, AS-5).

    Raises:
        InvalidGrantError: unknown, expired, used, other client, redirect_uri or
            PKCE mismatch, or (JKT_MISMATCH) the proof key is not ``dpop_jkt``.
        InvalidProofError: (MISSING_PROOF) the code is bound to a key and no proof came.
    """
    svc, client, form, now = ctx.service, ctx.client, ctx.form, ctx.now
    code = form.need("code")
    verifier = form.need("code_verifier")  # RFC 7636 §4.5: PKCE is always required
    redirect_uri = form.one("redirect_uri")
    code_hash = sha256_hex(code)
    rec = svc.store.get_code(code_hash)
    if rec is None or rec.client_id != client.client_id or rec.expires_at <= now:
        raise InvalidGrantError(Reason.INVALID_GRANT, "invalid authorization code")
    if rec.used:
        if rec.family_id is not None:
            svc.store.revoke_family(rec.family_id)
        raise InvalidGrantError(Reason.INVALID_GRANT, "invalid authorization code")
    # RFC 6749 §4.1.3: redirect_uri identical to the authorization request's (for a
    # loopback redirect, RFC 8252 §7.3, that one carries the port the app listened on).
    if redirect_uri is None or not equal_text(redirect_uri, rec.redirect_uri):
        raise InvalidGrantError(Reason.INVALID_GRANT, "redirect_uri mismatch")
    check_code_verifier(verifier, rec.code_challenge)
    if rec.dpop_jkt is not None:
        _require_key(ctx, rec.dpop_jkt)
    resource = svc.resolve_resource(form.all("resource"), client=client) or rec.resource
    if rec.resource and not set(resource) <= set(rec.resource):
        raise InvalidTargetError(Reason.INVALID_REQUEST, "resource not granted")
    family_id = new_family_id()
    token, access = svc.mint_access_token(
        client_id=client.client_id,
        sub=rec.sub,
        scope=rec.scope,
        resource=resource,
        jkt=ctx.jkt,
        family_id=family_id,
        now=now,
        token_format=svc.token_format(client),
    )
    rt_value: str | None = None
    refresh: RefreshRecord | None = None
    if "refresh_token" in client.grant_types:
        rt_value, refresh = _new_refresh(
            ctx,
            family_id=family_id,
            sub=rec.sub,
            scope=rec.scope,
            resource=rec.resource,
            # RFC 9449 §5 (AS-5, AS-7): bound for public clients only.
            jkt=ctx.jkt if client.is_public else None,
        )
    if not svc.store.redeem_code(
        code_hash, now=now, family_id=family_id, access=access, refresh=refresh
    ):
        # Lost a race with another redemption: a reused code (RFC 6749 §4.1.2).
        spent = svc.store.get_code(code_hash)
        if spent is not None and spent.family_id is not None:
            svc.store.revoke_family(spent.family_id)
        raise InvalidGrantError(Reason.INVALID_GRANT, "invalid authorization code")
    return svc.token_response(token, access, refresh_token=rt_value)


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
        _require_key(ctx, rec.jkt)
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
    new_value, successor = _new_refresh(
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


#: The grants a :class:`~dpopkit.server.service.TokenService` registers by default.
DEFAULT_GRANTS: dict[str, Grant] = {
    "authorization_code": authorization_code,
    "client_credentials": client_credentials,
    "refresh_token": refresh_token,
}
