"""The authorization server's grant store: SQLAlchemy 2 Core over SQLite or PostgreSQL.

One schema and one code path for both databases. The store keeps clients,
authorization codes, refresh-token families, issued access tokens (by ``jti``, for
introspection and revocation), pushed authorization requests and login interactions,
and the AS signing keys.

Every state change is one transaction. The one-time artifacts are spent with a
conditional ``UPDATE ... WHERE used = false`` whose row count decides the single
winner, in the same transaction that records what was issued for them, so a
code is redeemed once and a refresh token rotated once, even under concurrency
and across processes (RFC 6749 §4.1.2, §10.5; RFC 9700 §4.14.2).

Secrets are never stored in the clear: codes, refresh tokens and request URIs
are stored as their SHA-256 (they carry 256 random bits); client secrets and
passwords are hashed with scrypt and a salt by :func:`hash_secret`.

Private signing JWKs are encrypted (AES-256-GCM, bound to their ``kid``) when the
store is given :class:`~dpopkit.storage.kek.KeyEncryptionKeys`; a SQLite file is
created ``0600`` (its ``-wal`` and ``-shm`` files take the same mode).

SQLite write transactions start with ``BEGIN IMMEDIATE`` (the write lock is
taken up front, so two writers queue on ``busy_timeout`` instead of failing
with a lock upgrade error); the file runs in WAL mode.

Over PostgreSQL every operation has a client-side deadline (``timeout``, 2 s
by default): the wait for a pooled connection, its liveness ping and the
transaction share it, and a connection whose server stops answering is cut
(:mod:`dpopkit.storage._deadline`) and invalidated, so the operation raises
:class:`StoreError` (HTTP 503) instead of waiting for the server to come back.
Each operation holds its own pooled connection; a stuck one blocks no other.

The records live in :mod:`~dpopkit.storage.records`, the tables in
:mod:`~dpopkit.storage.schema` and the secret hashing in
:mod:`~dpopkit.storage.hashing`; all are importable from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from dpopkit.errors import requires_extra

with requires_extra("server", needed_by=__name__):
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection, Engine

from dpopkit._private import create_private_file
from dpopkit.storage._deadline import DEFAULT_STORE_TIMEOUT, Deadline, check_timeout
from dpopkit.storage._health import StoreHealth
from dpopkit.storage.hashing import hash_secret, sha256_hex, verify_secret
from dpopkit.storage.kek import KeyEncryptionError, KeyEncryptionKeys
from dpopkit.storage.records import (
    AccessTokenRecord,
    ClientRecord,
    CodeRecord,
    InteractionRecord,
    RefreshRecord,
    SigningKeyRecord,
    StoreError,
)
from dpopkit.storage.schema import SCHEMA_VERSION, client_from_row, tables

__all__ = [
    "SCHEMA_VERSION",
    "AccessTokenRecord",
    "ClientRecord",
    "CodeRecord",
    "InteractionRecord",
    "RefreshRecord",
    "SQLGrantStore",
    "SigningKeyRecord",
    "StoreError",
    "hash_secret",
    "sha256_hex",
    "verify_secret",
]


class SQLGrantStore:
    """The grant store over a SQLAlchemy URL (``sqlite:///file.db``, ``postgresql+psycopg://``).

    Args:
        url: the database URL. ``postgresql://`` is read as ``postgresql+psycopg://``.
        table_prefix: prepended to every table name (several stores in one database).
        create: create the schema (idempotent) and check its version now.
        key_encryption: encrypt private signing JWKs at rest with these KEKs (the
            first encrypts, all decrypt); without it they are stored as plain JWKs.
        timeout: PostgreSQL: client-side seconds one operation may take (pool wait,
            ping and transaction) before it fails with :class:`StoreError`. A new
            connection is bounded by ``connect_timeout`` (the URL's, else
            ``timeout`` rounded up, at least 2 s as in libpq).

    Raises:
        StoreError: the database is unreachable or has a newer schema version.
    """

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = "",
        create: bool = True,
        key_encryption: KeyEncryptionKeys | None = None,
        timeout: float = DEFAULT_STORE_TIMEOUT,
    ) -> None:
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        self.url = url
        self.timeout = check_timeout(timeout)
        #: outages and recoveries of the database, logged on ``dpopkit.storage``
        self.health = StoreHealth("grant_store")
        self.is_sqlite = url.startswith("sqlite")
        self.key_encryption = key_encryption
        self._metadata = sa.MetaData()
        self._t = tables(self._metadata, table_prefix)
        self._insert = {name: table.insert() for name, table in self._t.items()}
        if self.is_sqlite:
            if url in ("sqlite://", "sqlite:///:memory:"):
                raise StoreError("use a SQLite file: an in-memory database is per connection")
            self._read = self._sqlite_engine(url)
            self._write = self._sqlite_engine(url)
        else:
            self._read = self._write = self._network_engine(url, self.timeout)
        if create:
            self.create_schema()

    @staticmethod
    def sqlite_path(url: str) -> str | None:
        """The database file of a ``sqlite:///`` URL (None for another database)."""
        if not url.startswith("sqlite"):
            return None
        database = sa.engine.make_url(url).database
        return None if not database or database == ":memory:" else database

    @staticmethod
    def _sqlite_engine(url: str) -> Engine:
        path = SQLGrantStore.sqlite_path(url)
        if path is not None and not path.startswith("file:"):
            # 0600 before SQLite creates it 0644; a missing directory: SQLite reports it.
            with suppress(OSError):
                create_private_file(path)
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=16,
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        # No "begin" connection event: any connection event makes SQLAlchemy dispatch
        # events on every statement (~20 µs a write, bench/as.py). _tx and _ro issue
        # BEGIN themselves.
        return engine

    def close(self) -> None:
        """Release every pooled connection."""
        self._read.dispose()
        if self._write is not self._read:
            self._write.dispose()

    @staticmethod
    def _network_engine(url: str, timeout: float) -> Engine:
        # No pool_pre_ping: SQLAlchemy's ping runs before any deadline could be armed,
        # so _connection pings under the deadline itself.
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in sa.engine.make_url(url).query:
            connect_args["connect_timeout"] = max(2, int(-(-timeout // 1)))
        return sa.create_engine(
            url,
            pool_size=10,
            max_overflow=20,
            pool_timeout=timeout,
            connect_args=connect_args,
        )

    @contextmanager
    def _connection(self, engine: Engine) -> Iterator[Connection]:
        """One pooled connection for one operation, under the store's deadline (PostgreSQL)."""
        if self.is_sqlite:
            with engine.connect() as conn:
                yield conn
            return
        at = time.monotonic() + self.timeout
        for attempt in (1, 2):
            conn = engine.connect()  # pool_timeout; a new connection: connect_timeout
            dbapi = conn.connection.dbapi_connection
            try:
                deadline = Deadline(dbapi.fileno(), at - time.monotonic()).arm()  # type: ignore[union-attr]
            except BaseException:
                conn.invalidate()
                conn.close()
                raise
            try:
                engine.dialect.do_ping(dbapi)  # type: ignore[arg-type]
            except Exception as exc:  # a stale pooled connection, or the deadline passed
                deadline.disarm()
                conn.invalidate()
                conn.close()
                if deadline.fired or attempt == 2:
                    raise StoreError("the grant store cannot be reached") from exc
                continue
            try:
                yield conn
            except sa.exc.DBAPIError as exc:
                if deadline.fired:
                    raise StoreError(
                        f"the grant store did not answer within {self.timeout:g} s"
                    ) from exc
                raise
            finally:
                deadline.disarm()
                if deadline.fired:  # the socket is cut: never hand it out again
                    conn.invalidate()
                conn.close()
            return

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._watched(), self._connection(self._write) as conn, conn.begin():
            if self.is_sqlite:
                # The write lock up front: writers queue on busy_timeout (module doc).
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    @contextmanager
    def _ro(self) -> Iterator[Connection]:
        with self._watched(), self._connection(self._read) as conn, conn.begin():
            if self.is_sqlite:
                conn.exec_driver_sql("BEGIN")  # one snapshot for the whole read
            yield conn

    @contextmanager
    def _watched(self) -> Iterator[None]:
        """Map an unreachable database to :class:`StoreError`; log outages and recoveries."""
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.TimeoutError) as exc:
            self.health.failed(type(exc).__name__)
            raise StoreError("the grant store cannot be reached") from exc
        except StoreError as exc:  # the connection deadline fired, or the ping failed
            if exc.__cause__ is not None:
                self.health.failed(type(exc.__cause__).__name__)
            raise
        else:
            self.health.ok()

    # -- schema ---------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the tables if missing and record / check the schema version."""
        meta = self._t["meta"]
        try:
            # In one write transaction: two processes starting at once create it once.
            with self._tx() as conn:
                self._metadata.create_all(conn, checkfirst=True)
        except sa.exc.IntegrityError:  # pragma: no cover - two processes created it at once
            pass
        with self._tx() as conn:
            row = conn.execute(sa.select(meta.c.version).where(meta.c.name == "grants")).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(meta.insert().values(name="grants", version=SCHEMA_VERSION))
                except sa.exc.IntegrityError:  # pragma: no cover - concurrent first start
                    pass
            elif row.version > SCHEMA_VERSION:
                raise StoreError(
                    f"the database has schema version {row.version}; this dpopkit knows "
                    f"{SCHEMA_VERSION}: upgrade dpopkit"
                )

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        meta = self._t["meta"]
        with self._ro() as conn:
            version = conn.execute(
                sa.select(meta.c.version).where(meta.c.name == "grants")
            ).scalar_one()
        return int(version)

    def drop_schema(self) -> None:
        """Drop every table of this store (tests and tear-down only)."""
        with self._tx() as conn:
            self._metadata.drop_all(conn, checkfirst=True)

    # -- clients --------------------------------------------------------------------------

    def put_client(self, client: ClientRecord) -> None:
        """Insert or replace a client."""
        t = self._t["clients"]
        meta = client.metadata()
        meta["dpop_nonce_required"] = client.dpop_nonce_required
        # Operator settings: kept with the metadata, not part of the RFC 7591 view.
        if client.introspection_audiences:
            meta["introspection_audiences"] = list(client.introspection_audiences)
        if client.token_endpoint_auth_method_strict:
            meta["token_endpoint_auth_method_strict"] = True
        meta["dpopkit_registered"] = client.registered
        values = {
            "metadata": json.dumps(meta),
            "secret_hash": client.secret_hash,
            "created_at": client.created_at,
        }
        with self._tx() as conn:
            done = conn.execute(
                t.update().where(t.c.client_id == client.client_id).values(**values)
            )
            if done.rowcount == 0:
                conn.execute(t.insert().values(client_id=client.client_id, **values))

    def get_client(self, client_id: str) -> ClientRecord | None:
        """Return a client, or None."""
        t = self._t["clients"]
        with self._ro() as conn:
            row = conn.execute(sa.select(t).where(t.c.client_id == client_id)).first()
        return None if row is None else client_from_row(row)

    # -- codes ----------------------------------------------------------------------------

    def put_code(self, code: CodeRecord) -> None:
        """Store a new authorization code."""
        t = self._t["codes"]
        data = {
            "sub": code.sub,
            "redirect_uri": code.redirect_uri,
            "scope": code.scope,
            "code_challenge": code.code_challenge,
            "dpop_jkt": code.dpop_jkt,
            "resource": list(code.resource),
        }
        with self._tx() as conn:
            conn.execute(
                t.insert().values(
                    code_hash=code.code_hash,
                    client_id=code.client_id,
                    data=json.dumps(data),
                    expires_at=code.expires_at,
                    used=False,
                )
            )

    def get_code(self, code_hash: str) -> CodeRecord | None:
        """Return a code by hash (used or not), or None."""
        t = self._t["codes"]
        with self._ro() as conn:
            row = conn.execute(sa.select(t).where(t.c.code_hash == code_hash)).first()
        if row is None:
            return None
        data = json.loads(row.data)
        return CodeRecord(
            code_hash=row.code_hash,
            client_id=row.client_id,
            sub=data["sub"],
            redirect_uri=data["redirect_uri"],
            scope=data["scope"],
            code_challenge=data["code_challenge"],
            dpop_jkt=data["dpop_jkt"],
            resource=tuple(data["resource"]),
            expires_at=row.expires_at,
            used=bool(row.used),
            family_id=row.family_id,
        )

    def redeem_code(
        self,
        code_hash: str,
        *,
        now: float,
        family_id: str,
        access: AccessTokenRecord,
        refresh: RefreshRecord | None,
    ) -> bool:
        """Spend a code and record what it was exchanged for, in one transaction.

        Returns:
            True for the single winner; False if the code was used, expired or missing
            (nothing is then written).
        """
        codes = self._t["codes"]
        with self._tx() as conn:
            done = conn.execute(
                codes.update()
                .where(
                    codes.c.code_hash == code_hash,
                    codes.c.used == sa.false(),
                    codes.c.expires_at > now,
                )
                .values(used=True, family_id=family_id)
            )
            if done.rowcount != 1:
                return False
            self._insert_family(conn, family_id, access.client_id, now)
            self._insert_access(conn, access)
            if refresh is not None:
                self._insert_refresh(conn, refresh)
        return True

    # -- refresh tokens -------------------------------------------------------------------

    def _insert_family(self, conn: Connection, family_id: str, client_id: str, now: float) -> None:
        conn.execute(
            self._insert["families"],
            {"family_id": family_id, "client_id": client_id, "created_at": now, "revoked": False},
        )

    def _insert_refresh(self, conn: Connection, rt: RefreshRecord) -> None:
        data = {"sub": rt.sub, "scope": rt.scope, "resource": list(rt.resource)}
        conn.execute(
            self._insert["refresh"],
            {
                "token_hash": rt.token_hash,
                "family_id": rt.family_id,
                "client_id": rt.client_id,
                "data": json.dumps(data),
                "jkt": rt.jkt,
                "issued_at": rt.issued_at,
                "expires_at": rt.expires_at,
                "used": False,
                "revoked": False,
            },
        )

    def get_refresh(self, token_hash: str) -> RefreshRecord | None:
        """Return a refresh token by hash; ``revoked`` also reflects its family."""
        t, fam = self._t["refresh"], self._t["families"]
        with self._ro() as conn:
            row = conn.execute(
                sa.select(t, fam.c.revoked.label("family_revoked"))
                .join(fam, fam.c.family_id == t.c.family_id)
                .where(t.c.token_hash == token_hash)
            ).first()
        if row is None:
            return None
        data = json.loads(row.data)
        return RefreshRecord(
            token_hash=row.token_hash,
            family_id=row.family_id,
            client_id=row.client_id,
            sub=data["sub"],
            scope=data["scope"],
            resource=tuple(data["resource"]),
            jkt=row.jkt,
            issued_at=row.issued_at,
            expires_at=row.expires_at,
            used=bool(row.used),
            revoked=bool(row.revoked) or bool(row.family_revoked),
            used_at=data.get("used_at"),
            used_jkt=data.get("used_jkt"),
        )

    def rotate_refresh(
        self,
        token_hash: str,
        *,
        now: float,
        access: AccessTokenRecord,
        refresh: RefreshRecord,
        used_jkt: str | None = None,
    ) -> bool:
        """Spend a refresh token and store its successor and the new access token atomically.

        The spent token keeps ``used_at`` (= ``now``) and ``used_jkt`` (the thumbprint of
        the proof that spent it) in its JSON column, so a later redemption can be told
        apart as a retry by the same key (the reuse leeway) or as a reuse.

        Returns:
            True for the single winner; False if it was already used, revoked or
            expired (the caller then decides on reuse detection).
        """
        t, fam = self._t["refresh"], self._t["families"]
        live_family = (
            sa.select(fam.c.family_id)
            .where(fam.c.family_id == t.c.family_id, fam.c.revoked == sa.false())
            .exists()
        )
        with self._tx() as conn:
            # sub, scope and resource never change: reading them first is race-free; the
            # conditional UPDATE below alone decides the winner.
            raw = conn.execute(sa.select(t.c.data).where(t.c.token_hash == token_hash)).scalar()
            if raw is None:
                return False
            data = {**json.loads(raw), "used_at": now, "used_jkt": used_jkt}
            done = conn.execute(
                t.update()
                .where(
                    t.c.token_hash == token_hash,
                    t.c.used == sa.false(),
                    t.c.revoked == sa.false(),
                    t.c.expires_at > now,
                    live_family,
                )
                .values(used=True, data=json.dumps(data))
            )
            if done.rowcount != 1:
                return False
            self._insert_access(conn, access)
            self._insert_refresh(conn, refresh)
        return True

    def revoke_family(self, family_id: str) -> None:
        """Revoke a whole family: its refresh tokens and the access tokens issued from it."""
        with self._tx() as conn:
            conn.execute(
                self._t["families"]
                .update()
                .where(self._t["families"].c.family_id == family_id)
                .values(revoked=True)
            )
            conn.execute(
                self._t["refresh"]
                .update()
                .where(self._t["refresh"].c.family_id == family_id)
                .values(revoked=True)
            )
            conn.execute(
                self._t["access"]
                .update()
                .where(self._t["access"].c.family_id == family_id)
                .values(revoked=True)
            )

    # -- access tokens --------------------------------------------------------------------

    def _insert_access(
        self, conn: Connection, at: AccessTokenRecord, *, revoked: bool = False
    ) -> None:
        data: dict[str, Any] = {"sub": at.sub, "scope": at.scope, "aud": list(at.aud)}
        if at.opaque:
            data["opaque"] = True  # in the JSON column: no schema change
        # A parameter dict on a prebuilt statement keeps SQLAlchemy's compiled cache hot.
        conn.execute(
            self._insert["access"],
            {
                "jti": at.jti,
                "client_id": at.client_id,
                "family_id": at.family_id,
                "data": json.dumps(data),
                "jkt": at.jkt,
                "issued_at": at.issued_at,
                "expires_at": at.expires_at,
                "revoked": revoked,
            },
        )

    def put_access_token(self, access: AccessTokenRecord, *, family_id: str | None = None) -> None:
        """Record an opaque access token issued without a code or refresh token."""
        with self._tx() as conn:
            self._insert_access(conn, access)

    def get_access_token(self, jti: str) -> AccessTokenRecord | None:
        """Return an issued access token by ``jti``, or None."""
        t = self._t["access"]
        with self._ro() as conn:
            row = conn.execute(sa.select(t).where(t.c.jti == jti)).first()
        if row is None:
            return None
        data = json.loads(row.data)
        return AccessTokenRecord(
            jti=row.jti,
            client_id=row.client_id,
            sub=data["sub"],
            scope=data["scope"],
            aud=tuple(data["aud"]),
            jkt=row.jkt,
            issued_at=row.issued_at,
            expires_at=row.expires_at,
            family_id=row.family_id,
            revoked=bool(row.revoked),
            opaque=bool(data.get("opaque", False)),
        )

    def revoke_access_token(self, access: AccessTokenRecord) -> None:
        """Mark one access token revoked (RFC 7009).

        A token with no row yet (a JWT access token outside any refresh family, which is
        not stored when issued) gets one, already revoked: the row is its deny-list entry
        until it expires.
        """
        t = self._t["access"]
        with self._tx() as conn:
            done = conn.execute(t.update().where(t.c.jti == access.jti).values(revoked=True))
            if done.rowcount == 0:
                try:
                    with conn.begin_nested():
                        self._insert_access(conn, access, revoked=True)
                except sa.exc.IntegrityError:  # revoked at the same moment by another call
                    conn.execute(t.update().where(t.c.jti == access.jti).values(revoked=True))

    def count_access_tokens(self) -> int:
        """How many access tokens were recorded (tests and metrics)."""
        t = self._t["access"]
        with self._ro() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())

    # -- pushed requests and interactions -------------------------------------------------

    def put_request(self, record: InteractionRecord) -> None:
        """Store a pushed authorization request or an interaction."""
        t = self._t["requests"]
        with self._tx() as conn:
            conn.execute(
                t.insert().values(
                    id_hash=record.id_hash,
                    kind=record.kind,
                    client_id=record.client_id,
                    params=json.dumps(dict(record.params)),
                    expires_at=record.expires_at,
                    used=False,
                    sub=record.sub,
                    browser_hash=record.browser_hash,
                )
            )

    def get_request(self, id_hash: str, *, kind: str, now: float) -> InteractionRecord | None:
        """Return a live (unused, unexpired) request of ``kind``, or None."""
        t = self._t["requests"]
        with self._ro() as conn:
            row = conn.execute(
                sa.select(t).where(
                    t.c.id_hash == id_hash,
                    t.c.kind == kind,
                    t.c.used == sa.false(),
                    t.c.expires_at > now,
                )
            ).first()
        if row is None:
            return None
        return InteractionRecord(
            id_hash=row.id_hash,
            kind=row.kind,
            client_id=row.client_id,
            params=json.loads(row.params),
            expires_at=row.expires_at,
            used=bool(row.used),
            sub=row.sub,
            browser_hash=row.browser_hash,
        )

    def consume_request(
        self, id_hash: str, *, kind: str, now: float, client_id: str | None = None
    ) -> InteractionRecord | None:
        """Spend a live request once (RFC 9126 §2.2: ``request_uri`` is one-time use).

        With ``client_id``, only a request of that client is spent: another client's
        attempt changes nothing and gets None, so it cannot burn the owner's request.
        """
        record = self.get_request(id_hash, kind=kind, now=now)
        if record is None or (client_id is not None and record.client_id != client_id):
            return None
        t = self._t["requests"]
        owner = t.c.client_id == record.client_id
        with self._tx() as conn:
            done = conn.execute(
                t.update()
                .where(t.c.id_hash == id_hash, owner, t.c.used == sa.false(), t.c.expires_at > now)
                .values(used=True)
            )
        return record if done.rowcount == 1 else None

    def set_request_subject(self, id_hash: str, sub: str) -> None:
        """Record the authenticated user of an interaction."""
        t = self._t["requests"]
        with self._tx() as conn:
            conn.execute(t.update().where(t.c.id_hash == id_hash).values(sub=sub))

    # -- signing keys ---------------------------------------------------------------------

    def signing_keys(self) -> list[SigningKeyRecord]:
        """All stored signing keys, newest first."""
        t = self._t["keys"]
        with self._ro() as conn:
            # The signing key is the one without a retirement time; then newest first.
            current_first = sa.case((t.c.retire_at.is_(None), 0), else_=1)
            rows = conn.execute(
                sa.select(t).order_by(current_first, t.c.created_at.desc(), t.c.kid)
            ).all()
        return [
            SigningKeyRecord(
                kid=row.kid,
                alg=row.alg,
                private_jwk=self._open_jwk(row.private_jwk, kid=row.kid),
                created_at=row.created_at,
                retire_at=row.retire_at,
            )
            for row in rows
        ]

    def _open_jwk(self, stored: str, *, kid: str) -> dict[str, Any]:
        value = json.loads(stored)
        if not KeyEncryptionKeys.is_envelope(value):
            return dict(value)
        if self.key_encryption is None:
            raise StoreError(
                f"the signing key {kid!r} is encrypted: configure the key-encryption key"
            )
        try:
            return dict(json.loads(self.key_encryption.open(value, kid=kid)))
        except KeyEncryptionError as exc:
            raise StoreError(str(exc)) from None

    def _seal_jwk(self, jwk: Mapping[str, Any], *, kid: str) -> str:
        plain = json.dumps(dict(jwk))
        if self.key_encryption is None:
            return plain
        return self.key_encryption.seal(plain.encode("utf-8"), kid=kid)

    def reseal_signing_keys(self) -> int:
        """Encrypt every signing key under the newest KEK (plain or sealed with an older one).

        Run at start (``dpopkit serve`` does): after a KEK is added or rotated, the
        rows no longer need the older KEK. Without ``key_encryption`` nothing changes.

        Returns:
            The number of rows rewritten.

        Raises:
            StoreError: a row cannot be decrypted with the configured KEKs.
        """
        kek = self.key_encryption
        if kek is None:
            return 0
        t = self._t["keys"]
        changed = 0
        with self._tx() as conn:
            for row in conn.execute(sa.select(t.c.kid, t.c.private_jwk)).all():
                value = json.loads(row.private_jwk)
                if KeyEncryptionKeys.is_envelope(value) and value.get("kek") == kek.primary:
                    continue
                jwk = self._open_jwk(row.private_jwk, kid=row.kid)
                conn.execute(
                    t.update()
                    .where(t.c.kid == row.kid)
                    .values(private_jwk=self._seal_jwk(jwk, kid=row.kid))
                )
                changed += 1
        return changed

    def check(self) -> int:
        """Read the schema version and every signing key, writing nothing (``serve --check``).

        Returns:
            The number of signing keys (0 when the schema does not exist yet).

        Raises:
            StoreError: the database cannot be reached, has a newer schema version, or
                a signing key does not decrypt with the configured KEKs.
        """
        meta = self._t["meta"]
        with self._ro() as conn:
            if not sa.inspect(conn).has_table(meta.name):
                return 0
            version = conn.execute(
                sa.select(meta.c.version).where(meta.c.name == "grants")
            ).scalar()
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {version}; this dpopkit knows "
                f"{SCHEMA_VERSION}: upgrade dpopkit"
            )
        return len(self.signing_keys())

    def add_signing_key(
        self,
        key: SigningKeyRecord,
        *,
        retire_others_at: float | None,
        replacing: str | None = None,
    ) -> bool:
        """Store a new signing key; older keys without a retirement time get one.

        With ``replacing`` (a kid), the key is stored only if that key still signs
        (has no retirement time yet): when several servers share the store and find
        a rotation due at once, one rotates and the others keep the key it made.

        Returns:
            Whether the key was stored (always True without ``replacing``).
        """
        t = self._t["keys"]
        with self._tx() as conn:
            if replacing is not None:
                # One UPDATE decides: the row lock (PostgreSQL) or the write lock (SQLite)
                # makes a second rotator see the retirement time the first one set.
                claimed = conn.execute(
                    t.update()
                    .where(t.c.kid == replacing, t.c.retire_at.is_(None))
                    .values(retire_at=retire_others_at)
                ).rowcount
                if claimed != 1:
                    return False
            if retire_others_at is not None:
                conn.execute(
                    t.update().where(t.c.retire_at.is_(None)).values(retire_at=retire_others_at)
                )
            conn.execute(
                t.insert().values(
                    kid=key.kid,
                    alg=key.alg,
                    private_jwk=self._seal_jwk(key.private_jwk, kid=key.kid),
                    created_at=key.created_at,
                    retire_at=key.retire_at,
                )
            )
        return True

    def delete_signing_keys(self, kids: Sequence[str]) -> None:
        """Remove retired keys."""
        if not kids:
            return
        t = self._t["keys"]
        with self._tx() as conn:
            conn.execute(t.delete().where(t.c.kid.in_(list(kids))))

    def purge_expired(self, *, now: float) -> int:
        """Delete codes, requests, access and refresh tokens that expired before ``now``.

        Returns:
            The number of rows deleted.
        """
        deleted = 0
        with self._tx() as conn:
            for name in ("codes", "requests", "access", "refresh"):
                t = self._t[name]
                deleted += conn.execute(t.delete().where(t.c.expires_at < now)).rowcount
        return deleted
