"""What the grants share: a new refresh token, and proof of the key a grant is bound to."""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from dpopkit.errors import InvalidGrantError, InvalidProofError, Reason
from dpopkit.server.core import GrantContext
from dpopkit.storage.sql import RefreshRecord, sha256_hex

__all__ = ["new_refresh", "require_key"]


def new_refresh(ctx: GrantContext, **fields: Any) -> tuple[str, RefreshRecord]:
    """A new refresh token value and its record (only its SHA-256 is stored)."""
    value = secrets.token_urlsafe(32)
    record = RefreshRecord(
        token_hash=sha256_hex(value),
        client_id=ctx.client.client_id,
        issued_at=ctx.now,
        expires_at=ctx.now + ctx.service.settings.refresh_token_lifetime,
        **fields,
    )
    return value, record


def require_key(ctx: GrantContext, bound_jkt: str) -> None:
    """Refuse unless the proof is by the key the grant is bound to.

    RFC 9449 §10 (AS-21) and §5 (AS-6).

    Raises:
        InvalidProofError: (MISSING_PROOF) no proof.
        InvalidGrantError: (JKT_MISMATCH) another key.
    """
    if ctx.proof is None:
        raise InvalidProofError(Reason.MISSING_PROOF, "a DPoP proof is required for this grant")
    if not hmac.compare_digest(ctx.proof.jkt, bound_jkt):
        raise InvalidGrantError(Reason.JKT_MISMATCH, "the grant is bound to another key")
