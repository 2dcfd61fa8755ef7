"""The grant store's tables (SQLAlchemy Core), one schema for SQLite and PostgreSQL.

:data:`SCHEMA_VERSION` is recorded in the database; a database with a newer one is
refused. Secrets live in the tables only as hashes (:mod:`dpopkit.storage.hashing`).
"""

from __future__ import annotations

import json
from typing import Any

from dpopkit.errors import requires_extra
from dpopkit.storage.records import ClientRecord

with requires_extra("server", needed_by=__name__):
    import sqlalchemy as sa

__all__ = ["SCHEMA_VERSION", "client_from_row", "tables"]

#: The schema version this code writes; a database with a newer one is refused.
SCHEMA_VERSION = 1


def tables(metadata: sa.MetaData, prefix: str) -> dict[str, sa.Table]:
    """Define the grant store's tables on ``metadata``, each name starting with ``prefix``.

    Returns:
        The tables by role: ``meta``, ``clients``, ``codes``, ``refresh``, ``families``,
        ``access``, ``requests`` and ``keys``.
    """
    t = prefix
    text, real, boolean = sa.Text, sa.Float, sa.Boolean
    return {
        "meta": sa.Table(
            f"{t}dpopkit_schema",
            metadata,
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("version", sa.Integer, nullable=False),
        ),
        "clients": sa.Table(
            f"{t}dpopkit_clients",
            metadata,
            sa.Column("client_id", sa.String(255), primary_key=True),
            sa.Column("metadata", text, nullable=False),
            sa.Column("secret_hash", text),
            sa.Column("created_at", real, nullable=False),
        ),
        "codes": sa.Table(
            f"{t}dpopkit_codes",
            metadata,
            sa.Column("code_hash", sa.String(64), primary_key=True),
            sa.Column("client_id", sa.String(255), nullable=False),
            sa.Column("data", text, nullable=False),
            sa.Column("expires_at", real, nullable=False, index=True),
            sa.Column("used", boolean, nullable=False, default=False),
            sa.Column("family_id", sa.String(64)),
        ),
        "refresh": sa.Table(
            f"{t}dpopkit_refresh_tokens",
            metadata,
            sa.Column("token_hash", sa.String(64), primary_key=True),
            sa.Column("family_id", sa.String(64), nullable=False, index=True),
            sa.Column("client_id", sa.String(255), nullable=False),
            sa.Column("data", text, nullable=False),
            sa.Column("jkt", sa.String(64)),
            sa.Column("issued_at", real, nullable=False),
            sa.Column("expires_at", real, nullable=False, index=True),
            sa.Column("used", boolean, nullable=False, default=False),
            sa.Column("revoked", boolean, nullable=False, default=False),
        ),
        "families": sa.Table(
            f"{t}dpopkit_refresh_families",
            metadata,
            sa.Column("family_id", sa.String(64), primary_key=True),
            sa.Column("client_id", sa.String(255), nullable=False),
            sa.Column("created_at", real, nullable=False),
            sa.Column("revoked", boolean, nullable=False, default=False),
        ),
        "access": sa.Table(
            f"{t}dpopkit_access_tokens",
            metadata,
            sa.Column("jti", sa.String(64), primary_key=True),
            sa.Column("client_id", sa.String(255), nullable=False),
            sa.Column("family_id", sa.String(64), index=True),
            sa.Column("data", text, nullable=False),
            sa.Column("jkt", sa.String(64)),
            sa.Column("issued_at", real, nullable=False),
            sa.Column("expires_at", real, nullable=False, index=True),
            sa.Column("revoked", boolean, nullable=False, default=False),
        ),
        "requests": sa.Table(
            f"{t}dpopkit_requests",
            metadata,
            sa.Column("id_hash", sa.String(64), primary_key=True),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("client_id", sa.String(255), nullable=False),
            sa.Column("params", text, nullable=False),
            sa.Column("expires_at", real, nullable=False, index=True),
            sa.Column("used", boolean, nullable=False, default=False),
            sa.Column("sub", sa.String(255)),
            sa.Column("browser_hash", sa.String(64)),
        ),
        "keys": sa.Table(
            f"{t}dpopkit_signing_keys",
            metadata,
            sa.Column("kid", sa.String(64), primary_key=True),
            sa.Column("alg", sa.String(16), nullable=False),
            sa.Column("private_jwk", text, nullable=False),
            sa.Column("created_at", real, nullable=False),
            sa.Column("retire_at", real),
        ),
    }


def client_from_row(row: Any) -> ClientRecord:
    """Build a :class:`~dpopkit.storage.records.ClientRecord` from a ``clients`` row."""
    meta = json.loads(row.metadata)
    return ClientRecord(
        client_id=row.client_id,
        secret_hash=row.secret_hash,
        token_endpoint_auth_method=meta["token_endpoint_auth_method"],
        grant_types=tuple(meta.get("grant_types", ())),
        redirect_uris=tuple(meta.get("redirect_uris", ())),
        scope=meta.get("scope", ""),
        jwks=meta.get("jwks"),
        client_name=meta.get("client_name"),
        dpop_bound_access_tokens=bool(meta.get("dpop_bound_access_tokens", False)),
        require_pushed_authorization_requests=bool(
            meta.get("require_pushed_authorization_requests", False)
        ),
        dpop_nonce_required=bool(meta.get("dpop_nonce_required", False)),
        access_token_format=meta.get("access_token_format"),
        introspection_audiences=tuple(meta.get("introspection_audiences", ())),
        token_endpoint_auth_method_strict=bool(
            meta.get("token_endpoint_auth_method_strict", False)
        ),
        created_at=row.created_at,
        registered=bool(meta.get("dpopkit_registered", False)),
    )
