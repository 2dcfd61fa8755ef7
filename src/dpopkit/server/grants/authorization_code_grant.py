"""The authorization code grant (RFC 6749 §4.1.3) with PKCE S256 and ``dpop_jkt``.

The code was issued by ``/authorize`` (:mod:`dpopkit.server.endpoints.authorize`);
here it is spent once, against its PKCE verifier (RFC 7636 §4.6) and, when the
authorization request named one, the DPoP key (RFC 9449 §10).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from dpopkit.errors import InvalidGrantError, InvalidRequestError, Reason
from dpopkit.server.core import GrantContext
from dpopkit.server.grants._common import new_refresh, require_key
from dpopkit.server.minting import new_family_id
from dpopkit.server.parsing import equal_text
from dpopkit.server.targets import InvalidTargetError
from dpopkit.storage.sql import RefreshRecord, sha256_hex

__all__ = ["authorization_code", "check_code_verifier"]

_UNRESERVED_VERIFIER = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)


def check_code_verifier(verifier: str, challenge: str) -> None:
    """Check a PKCE ``code_verifier`` against an S256 ``code_challenge`` (RFC 7636 §4.6).

    Raises:
        InvalidRequestError: the verifier is not 43-128 unreserved characters (§4.1).
        InvalidGrantError: it does not match.
    """
    if not 43 <= len(verifier) <= 128 or not set(verifier) <= _UNRESERVED_VERIFIER:
        raise InvalidRequestError(Reason.INVALID_REQUEST, "malformed code_verifier")
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest())
    if not hmac.compare_digest(digest.rstrip(b"=").decode("ascii"), challenge):
        raise InvalidGrantError(Reason.INVALID_GRANT, "PKCE verification failed")


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
        require_key(ctx, rec.dpop_jkt)
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
        rt_value, refresh = new_refresh(
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
