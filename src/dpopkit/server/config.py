"""Authorization-server configuration: a TOML file, or demo defaults, into a running app.

The file names its clients with RFC 7591 §2 metadata (``client_id``,
``client_secret``, ``token_endpoint_auth_method``, ``grant_types``,
``redirect_uris``, ``scope``, ``jwks``, ``dpop_bound_access_tokens``). Unknown
keys are refused so a typo is not silently ignored. Every problem is reported as
one :class:`ConfigError` line.

Example::

    issuer = "http://127.0.0.1:8000"
    data_dir = "./as-data"                  # SQLite grant store, replay cache, secrets
    # storage_url = "postgresql+psycopg://user@db/as"
    # replay_url = "redis://127.0.0.1:6379/0"   # or postgresql://..., sqlite (default), memory
    # replay_schema = "dpopkit"               # PostgreSQL replay cache: its schema
    # store_timeout = 2.0                     # seconds per store call (PostgreSQL, Redis)
    cors_origins = ["*"]

    [tokens]
    access_token_lifetime = 300
    refresh_token_lifetime = 86400
    access_token_format = "jwt"             # or "opaque" (per client too)

    [dpop]
    nonce = "per_client"                    # off | per_client | always

    [[users]]
    username = "alice"
    password_hash = "scrypt$16384$8$1$..."  # dpopkit.storage.sql.hash_secret

    [[clients]]
    client_id = "service-a"
    client_secret = "change-me"
    grant_types = ["client_credentials"]
    scope = "read"
    dpop_bound_access_tokens = true
"""

from __future__ import annotations

import json
import os
import secrets
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpopkit.errors import DPoPError
from dpopkit.storage.sql import ClientRecord, hash_secret

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.types import ASGIApp

    from dpopkit.server.service import TokenService

__all__ = ["ConfigError", "ServeConfig", "build_server", "describe", "load_config"]

_TOP = {
    "issuer",
    "host",
    "port",
    "data_dir",
    "storage_url",
    "replay_url",
    "replay_schema",
    "store_timeout",
    "cors_origins",
    "test_mode_user",
    "registration_enabled",
    "require_pushed_authorization_requests",
    "allowed_resources",
    "tokens",
    "dpop",
    "users",
    "clients",
}
_TOKENS = {
    "access_token_lifetime",
    "refresh_token_lifetime",
    "code_lifetime",
    "par_lifetime",
    "signing_alg",
    "key_rotation",
    "audience",
    "access_token_format",
}
_DPOP = {"nonce", "algorithms", "max_age"}
_CLIENT = {
    "client_id",
    "client_secret",
    "client_secret_hash",
    "token_endpoint_auth_method",
    "grant_types",
    "response_types",
    "redirect_uris",
    "scope",
    "jwks",
    "client_name",
    "dpop_bound_access_tokens",
    "require_pushed_authorization_requests",
    "dpop_nonce_required",
    "access_token_format",
}


class ConfigError(Exception):
    """The configuration is invalid; the message is one line for the operator."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeConfig:
    """Everything ``dpopkit serve`` needs, validated."""

    issuer: str
    host: str
    port: int
    data_dir: Path
    storage_url: str
    replay_url: str
    cors_origins: tuple[str, ...]
    replay_schema: str | None = None
    store_timeout: float | None = None
    settings: dict[str, Any]
    users: dict[str, str] = field(repr=False)
    clients: list[ClientRecord] = field(repr=False)
    demo_notes: list[str] = field(default_factory=list)


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")


def _typed(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key} has the wrong type")
    return value


def _persisted_secret(data_dir: Path, name: str, nbytes: int = 32) -> str:
    """A random secret generated on first start and kept in the data directory."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def _client(raw: Any, index: int, now: float) -> ClientRecord:
    from dpopkit.server.registration import client_from_metadata

    where = f"clients[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    _check_keys(raw, _CLIENT, where)
    client_id = raw.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        raise ConfigError(f"{where}.client_id is required")
    secret, secret_hash = raw.get("client_secret"), raw.get("client_secret_hash")
    if secret is not None and not isinstance(secret, str):
        raise ConfigError(f"{where}.client_secret must be a string")
    method = raw.get("token_endpoint_auth_method", "client_secret_basic")
    needs_secret = isinstance(method, str) and method.startswith("client_secret")
    if needs_secret and secret is None and secret_hash is None:
        raise ConfigError(f"{where} ({client_id}): {method} needs client_secret")
    stored = secret_hash if secret_hash is not None else None
    if stored is None and secret is not None:
        stored = hash_secret(secret)
    meta = {k: v for k, v in raw.items() if k not in ("client_secret", "client_secret_hash")}
    try:
        return client_from_metadata(meta, client_id=client_id, secret_hash=stored, now=now)
    except DPoPError as exc:
        raise ConfigError(f"{where} ({client_id}): {exc.description}") from None


def _demo(data_dir: Path, issuer: str) -> tuple[dict[str, str], list[ClientRecord], list[str]]:
    secret = _persisted_secret(data_dir, "demo-client-secret", 18)
    password = _persisted_secret(data_dir, "demo-user-password", 12)
    users = {"demo": hash_secret(password)}
    redirect = "http://127.0.0.1:8765/callback"
    clients = [
        ClientRecord(
            client_id="demo-client",
            secret_hash=hash_secret(secret),
            token_endpoint_auth_method="client_secret_basic",  # noqa: S106 - a method name
            grant_types=("client_credentials", "authorization_code", "refresh_token"),
            redirect_uris=(redirect,),
            scope="read write",
            client_name="dpopkit demo client",
            dpop_bound_access_tokens=True,
        ),
        ClientRecord(
            client_id="demo-public",
            token_endpoint_auth_method="none",  # noqa: S106 - a method name
            grant_types=("authorization_code", "refresh_token"),
            redirect_uris=(redirect, f"{issuer}/app/"),  # the browser client (server/spa)
            scope="read write",
            client_name="dpopkit demo public client",
            dpop_bound_access_tokens=True,
        ),
    ]
    notes = [
        f"DEMO MODE (no --config): issuer {issuer}, data in {data_dir}",
        f"  confidential client: client_id=demo-client client_secret={secret}",
        f"  public client:       client_id=demo-public (PKCE, redirect_uri {redirect})",
        f"  user:                username=demo password={password}",
        f"  browser client:      {issuer}/app/ (demo-public, key in the browser)",
        "  both clients must use DPoP (dpop_bound_access_tokens)",
    ]
    return users, clients, notes


def load_config(
    path: Path | None,
    *,
    host: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    now: float = 0.0,
) -> ServeConfig:
    """Read and validate a TOML configuration; demo defaults when ``path`` is None.

    Command-line ``host``/``port``/``data_dir`` override the file.

    Raises:
        ConfigError: any invalid or unreadable setting (one line).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    _check_keys(raw, _TOP, "config")
    h = host if host is not None else raw.get("host", "127.0.0.1")
    p = port if port is not None else raw.get("port", 8000)
    if not isinstance(h, str) or not h:
        raise ConfigError("config.host must be a string")
    if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= 65535:
        raise ConfigError("config.port must be an integer 0-65535")
    issuer = raw.get("issuer", f"http://{h if ':' not in h else f'[{h}]'}:{p}")
    if not isinstance(issuer, str):
        raise ConfigError("config.issuer must be a string")
    ddir = data_dir if data_dir is not None else Path(raw.get("data_dir", "dpopkit-data"))
    if path is not None and not ddir.is_absolute() and data_dir is None:
        ddir = path.parent / ddir
    try:
        ddir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create data_dir {ddir}: {exc.strerror}") from None
    storage_url = raw.get("storage_url", f"sqlite:///{(ddir / 'dpopkit-as.db').resolve()}")
    replay_url = raw.get("replay_url", "sqlite")
    for key, value in (("storage_url", storage_url), ("replay_url", replay_url)):
        if not isinstance(value, str):
            raise ConfigError(f"config.{key} must be a string")
    if not (
        replay_url in ("sqlite", "memory")
        or replay_url.startswith(("redis://", "rediss://", "postgresql://", "postgres://"))
    ):
        raise ConfigError(
            "config.replay_url must be sqlite, memory, a redis:// or a postgresql:// URL"
        )
    replay_schema = raw.get("replay_schema")
    if replay_schema is not None and (not isinstance(replay_schema, str) or not replay_schema):
        raise ConfigError("config.replay_schema must be a schema name")
    store_timeout = raw.get("store_timeout")
    if store_timeout is not None and (
        isinstance(store_timeout, bool)
        or not isinstance(store_timeout, int | float)
        or not 0 < store_timeout <= 60
    ):
        raise ConfigError("config.store_timeout must be a number of seconds in (0, 60]")
    cors = raw.get("cors_origins", ["*"])
    if not isinstance(cors, list) or not all(isinstance(o, str) for o in cors):
        raise ConfigError("config.cors_origins must be a list of strings")

    settings: dict[str, Any] = {"issuer": issuer}
    for key in ("registration_enabled", "require_pushed_authorization_requests"):
        if key in raw:
            settings[key] = _typed(raw, key, bool, "config")
    if "test_mode_user" in raw:
        settings["test_mode_user"] = _typed(raw, "test_mode_user", str, "config")
    if "allowed_resources" in raw:
        settings["allowed_resources"] = tuple(_typed(raw, "allowed_resources", list, "config"))
    tokens = raw.get("tokens", {})
    if not isinstance(tokens, dict):
        raise ConfigError("[tokens] must be a table")
    _check_keys(tokens, _TOKENS, "tokens")
    for key in ("access_token_lifetime", "refresh_token_lifetime", "code_lifetime"):
        if key in tokens:
            settings[key] = _typed(tokens, key, int, "tokens")
    for key in ("par_lifetime", "key_rotation"):
        if key in tokens:
            settings[key] = _typed(tokens, key, int, "tokens")
    for key in ("signing_alg", "access_token_format"):
        if key in tokens:
            settings[key] = _typed(tokens, key, str, "tokens")
    if "audience" in tokens:
        settings["audience"] = tuple(_typed(tokens, "audience", list, "tokens"))
    dpop = raw.get("dpop", {})
    if not isinstance(dpop, dict):
        raise ConfigError("[dpop] must be a table")
    _check_keys(dpop, _DPOP, "dpop")
    if "nonce" in dpop:
        settings["nonce_policy"] = _typed(dpop, "nonce", str, "dpop")
    if "algorithms" in dpop:
        settings["proof_algorithms"] = frozenset(_typed(dpop, "algorithms", list, "dpop"))
    if "max_age" in dpop:
        settings["proof_max_age"] = float(_typed(dpop, "max_age", (int, float), "dpop"))

    users: dict[str, str] = {}
    raw_users = raw.get("users", [])
    if not isinstance(raw_users, list):
        raise ConfigError("[[users]] must be an array of tables")
    for i, user in enumerate(raw_users):
        if not isinstance(user, dict):
            raise ConfigError(f"users[{i}] must be a table")
        _check_keys(user, {"username", "password", "password_hash"}, f"users[{i}]")
        name = user.get("username")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"users[{i}].username is required")
        if isinstance(user.get("password_hash"), str):
            users[name] = user["password_hash"]
        elif isinstance(user.get("password"), str):
            users[name] = hash_secret(user["password"])
        else:
            raise ConfigError(f"users[{i}] ({name}) needs password_hash or password")
    raw_clients = raw.get("clients", [])
    if not isinstance(raw_clients, list):
        raise ConfigError("[[clients]] must be an array of tables")
    clients = [_client(c, i, now) for i, c in enumerate(raw_clients)]
    if len({c.client_id for c in clients}) != len(clients):
        raise ConfigError("clients: duplicate client_id")

    notes: list[str] = []
    if path is None:
        from dpopkit.server.app import is_loopback_host

        if not is_loopback_host(h):
            raise ConfigError("demo mode (no --config) listens on a loopback address only")
        users, clients, notes = _demo(ddir, issuer)
    return ServeConfig(
        issuer=issuer,
        host=h,
        port=p,
        data_dir=ddir,
        storage_url=storage_url,
        replay_url=replay_url,
        cors_origins=tuple(cors),
        replay_schema=replay_schema,
        store_timeout=None if store_timeout is None else float(store_timeout),
        settings=settings,
        users=users,
        clients=clients,
        demo_notes=notes,
    )


def describe(config: ServeConfig) -> str:
    """A JSON summary of the configuration without secrets (for logs)."""
    return json.dumps(
        {
            "issuer": config.issuer,
            "listen": f"{config.host}:{config.port}",
            "storage": config.storage_url.split("://", 1)[0],
            "replay": config.replay_url.split("://", 1)[0],
            "clients": [c.client_id for c in config.clients],
        }
    )


def build_server(
    config: ServeConfig,
    *,
    mounts: Callable[[TokenService], Sequence[tuple[str, ASGIApp]]] | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[Starlette, TokenService]:
    """Open the stores, register the configured clients, make the keys, build the app.

    Signing keys are generated on first start and persisted in the grant store;
    the nonce and CSRF secrets are generated once and kept in ``data_dir``.
    ``mounts`` receives the service and returns extra ``(path, app)`` routes.

    Raises:
        ConfigError: a setting is invalid or a store cannot be opened.
    """
    from dpopkit.core.nonce import NonceIssuer
    from dpopkit.core.replay import ReplayCache
    from dpopkit.server.app import create_app, is_loopback_host
    from dpopkit.server.authorize import ConfigUsers
    from dpopkit.server.service import ServerSettings, TokenService
    from dpopkit.storage._deadline import DEFAULT_STORE_TIMEOUT
    from dpopkit.storage.sql import SQLGrantStore, StoreError

    try:
        settings = ServerSettings(**config.settings)
    except DPoPError as exc:
        raise ConfigError(exc.description) from None
    if settings.test_mode_user is not None and not is_loopback_host(config.host):
        raise ConfigError("test_mode_user: test mode listens on a loopback address only")
    # A client-side bound on every network store call: a frozen database answers 503.
    timeout = config.store_timeout
    try:
        store = SQLGrantStore(config.storage_url, timeout=timeout or DEFAULT_STORE_TIMEOUT)
        for client in config.clients:
            store.put_client(client)
    except (StoreError, ValueError) as exc:
        raise ConfigError(f"storage_url: {exc}") from None
    except ImportError as exc:
        raise ConfigError(
            f"storage_url needs a driver that is not installed ({exc.name})"
        ) from None
    replay: ReplayCache
    if config.replay_url == "memory":
        from dpopkit.storage.memory import MemoryReplayCache

        replay = MemoryReplayCache(single_process=True)
    elif config.replay_url == "sqlite":
        from dpopkit.storage.sqlite import SQLiteReplayCache

        replay = SQLiteReplayCache(config.data_dir / "replay.db")
    elif config.replay_url.startswith(("postgresql://", "postgres://")):
        from dpopkit.storage.postgres import PostgresReplayCache

        replay = PostgresReplayCache(
            config.replay_url,
            schema=config.replay_schema,
            timeout=timeout or DEFAULT_STORE_TIMEOUT,
        )
    else:
        from dpopkit.storage.redis import DEFAULT_TIMEOUT, RedisReplayCache

        replay = RedisReplayCache.from_url(config.replay_url, timeout=timeout or DEFAULT_TIMEOUT)
    nonces = NonceIssuer(
        [_persisted_secret(config.data_dir, "nonce-secret").encode()], context="as"
    )
    csrf = _persisted_secret(config.data_dir, "csrf-secret").encode()
    service = TokenService(settings, store=store, replay=replay, nonces=nonces, clock=clock)
    try:
        service.keyring.refresh(now=clock())
    except StoreError as exc:
        raise ConfigError(f"storage_url: {exc}") from None
    app = create_app(
        service,
        authenticator=ConfigUsers(config.users),
        cors_origins=config.cors_origins,
        csrf_secret=csrf,
        mounts=mounts(service) if mounts is not None else (),
    )
    return app, service
