"""Authorization-server configuration: a TOML file, or demo defaults, into a running app.

The file names its clients with RFC 7591 §2 metadata (``client_id``,
``client_secret``, ``token_endpoint_auth_method``, ``grant_types``,
``redirect_uris``, ``scope``, ``jwks``, ``dpop_bound_access_tokens``). Unknown
keys are refused so a typo is not silently ignored. Every problem is reported as
one :class:`ConfigError` line.

Example::

    issuer = "http://127.0.0.1:8000"
    data_dir = "./as-data"                  # SQLite grant store, replay cache, secrets
    # key_encryption_keys_file = "/run/secrets/dpopkit-kek"   # signing keys encrypted at rest
    # storage_url = "postgresql+psycopg://user@db/as"
    # replay_url = "redis://127.0.0.1:6379/0"   # postgresql://, unix://, sqlite, memory
    #                                       # (Redis also shares the login and /register limits)
    # replay_schema = "dpopkit"               # PostgreSQL replay cache: its schema
    # replay_prefix = "dpopkit:as:"           # Redis replay cache and limits: its key prefix
    # store_timeout = 2.0                     # seconds per store call (PostgreSQL, Redis)
    cors_origins = ["*"]

    [tokens]
    access_token_lifetime = 300
    refresh_token_lifetime = 86400
    access_token_format = "jwt"             # or "opaque" (per client too)

    [dpop]
    nonce = "per_client"                    # off | per_client | always
    # nonce_secrets = ["<new>", "<old>"]    # base64url, >= 32 bytes; first signs, all verify

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpopkit._private import exposed_mode, make_private_dir, write_private_file
from dpopkit.core.nonce import NonceIssuer
from dpopkit.errors import DPoPError
from dpopkit.storage.counters import CounterStore
from dpopkit.storage.kek import KeyEncryptionError, KeyEncryptionKeys
from dpopkit.storage.sql import ClientRecord, SQLGrantStore, hash_secret
from dpopkit.storage.urls import REPLAY_URL_FORMS, parse_replay_url, replay_cache_from_url

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.types import ASGIApp

    from dpopkit.core.replay import ReplayCache
    from dpopkit.server.service import TokenService

__all__ = [
    "KEK_ENV",
    "BackendUnavailableError",
    "ConfigError",
    "ServeConfig",
    "build_server",
    "check_backends",
    "describe",
    "load_config",
]

#: The environment variable holding the key-encryption keys (one base64url key per line).
KEK_ENV = "DPOPKIT_KEY_ENCRYPTION_KEYS"

_TOP = {
    "issuer",
    "host",
    "port",
    "data_dir",
    "storage_url",
    "replay_url",
    "replay_schema",
    "replay_prefix",
    "key_encryption_keys_file",
    "store_timeout",
    "cors_origins",
    "test_mode_user",
    "registration_enabled",
    "registration_allowed_scopes",
    "registration_allowed_audiences",
    "registration_allowed_grant_types",
    "registration_allow_unbound_tokens",
    "registration_rate_limit",
    "require_pushed_authorization_requests",
    "allowed_resources",
    "tokens",
    "dpop",
    "login",
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
    "key_refresh_interval",
    "audience",
    "access_token_format",
    "refresh_reuse_leeway",
}
_DPOP = {"nonce", "algorithms", "max_age", "nonce_secrets"}
_LOGIN = {"free_failures", "lockout_failures", "lockout_seconds"}
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
#: Per-client operator settings: in the file only, never accepted at /register.
_CLIENT_OPERATOR = {"introspection_audiences", "token_endpoint_auth_method_strict"}


class ConfigError(Exception):
    """The configuration is invalid; the message is one line for the operator."""


class BackendUnavailableError(Exception):
    """A configured store does not answer (``serve --check``); one line for the operator."""


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
    #: The key prefix of a Redis replay cache (several applications sharing one Redis).
    replay_prefix: str = ""
    key_encryption: KeyEncryptionKeys | None = field(default=None, repr=False)
    store_timeout: float | None = None
    settings: dict[str, Any]
    users: dict[str, str] = field(repr=False)
    clients: list[ClientRecord] = field(repr=False)
    demo_notes: list[str] = field(default_factory=list)
    #: AS nonce secrets, newest first (the first signs, all verify); empty: one kept in data_dir.
    nonce_secrets: tuple[bytes, ...] = field(default=(), repr=False)


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")


def _typed(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key} has the wrong type")
    return value


def _persisted_secret(data_dir: Path, name: str, nbytes: int = 32, *, create: bool = True) -> str:
    """A random secret generated on first start and kept (0600) in the data directory.

    With ``create=False`` a missing secret is generated but not kept (``serve --check``).
    """
    path = data_dir / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    value = secrets.token_urlsafe(nbytes)
    if create:
        try:
            write_private_file(path, value.encode(), overwrite=False)
        except FileExistsError:  # written meanwhile by another process: use that one
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    return value


def _refuse_exposed(path: Path, what: str) -> None:
    """Refuse key material (or its directory) that group or others can access."""
    try:
        mode = exposed_mode(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot inspect {what} {path}: {exc.strerror}") from None
    if mode is not None:
        fix = "700" if path.is_dir() else "600"
        raise ConfigError(
            f"{what} {path} is accessible by group or others (mode {mode:04o}): "
            f"run chmod {fix} {path}"
        )


#: The files the server keeps in ``data_dir`` (each SQLite database with its side files).
DATA_FILES = (
    "nonce-secret",
    "csrf-secret",
    "demo-client-secret",
    "demo-user-password",
    *(
        f"{db}{side}"
        for db in ("dpopkit-as.db", "replay.db", "rs-replay.db")
        for side in ("", "-wal", "-shm", "-journal")
    ),
)


def _check_private_paths(data_dir: Path, storage_url: str, kek_file: Path | None) -> None:
    """The data dir and the server's files in it, the SQLite grant store, the KEK file."""
    _refuse_exposed(data_dir, "data_dir")
    for name in DATA_FILES:
        _refuse_exposed(data_dir / name, "data_dir file")
    database = SQLGrantStore.sqlite_path(storage_url)
    if database is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            _refuse_exposed(Path(database + suffix), "storage_url database")
    if kek_file is not None:
        _refuse_exposed(kek_file, "key_encryption_keys_file")


def _key_encryption(
    raw: Mapping[str, Any], base: Path | None
) -> tuple[KeyEncryptionKeys | None, Path | None]:
    """The KEKs from the environment or ``key_encryption_keys_file`` (never both)."""
    env = os.environ.get(KEK_ENV)
    name = raw.get("key_encryption_keys_file")
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError("config.key_encryption_keys_file must be a file name")
    if env is not None and name is not None:
        raise ConfigError(f"set {KEK_ENV} or config.key_encryption_keys_file, not both")
    path: Path | None = None
    if name is not None:
        path = Path(name)
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise ConfigError(f"cannot read key_encryption_keys_file {path}: {reason}") from None
        where = "config.key_encryption_keys_file"
    elif env is not None:
        text, where = env, KEK_ENV
    else:
        return None, None
    try:
        return KeyEncryptionKeys.from_text(text), path
    except KeyEncryptionError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _registration_policy(raw: Mapping[str, Any], settings: dict[str, Any]) -> None:
    """The dynamic registration policy keys (see docs/authorization-server.md)."""
    for key in (
        "registration_allowed_scopes",
        "registration_allowed_audiences",
        "registration_allowed_grant_types",
    ):
        if key in raw:
            values = _typed(raw, key, list, "config")
            if not all(isinstance(v, str) and v for v in values):
                raise ConfigError(f"config.{key} must be a list of strings")
            settings[key] = tuple(values)
    if "registration_allow_unbound_tokens" in raw:
        settings["registration_allow_unbound_tokens"] = _typed(
            raw, "registration_allow_unbound_tokens", bool, "config"
        )
    if "registration_rate_limit" in raw:
        settings["registration_rate_limit"] = _typed(raw, "registration_rate_limit", int, "config")


def _client(raw: Any, index: int, now: float) -> ClientRecord:
    from dpopkit.server.registration import client_from_metadata

    where = f"clients[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    _check_keys(raw, _CLIENT | _CLIENT_OPERATOR, where)
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
    meta = {
        k: v
        for k, v in raw.items()
        if k not in ("client_secret", "client_secret_hash") and k not in _CLIENT_OPERATOR
    }
    try:
        record = client_from_metadata(meta, client_id=client_id, secret_hash=stored, now=now)
    except DPoPError as exc:
        raise ConfigError(f"{where} ({client_id}): {exc.description}") from None
    return _operator_settings(record, raw, f"{where} ({client_id})")


def _operator_settings(record: ClientRecord, raw: Mapping[str, Any], where: str) -> ClientRecord:
    """Apply a client's operator settings (:data:`_CLIENT_OPERATOR`) to its record."""
    audiences = raw.get("introspection_audiences", [])
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        raise ConfigError(f"{where}: introspection_audiences must be a list of audience strings")
    if audiences and record.is_public:
        # RFC 7662 §2.1: introspection needs an authenticated client.
        raise ConfigError(f"{where}: a public client cannot introspect (introspection_audiences)")
    strict = raw.get("token_endpoint_auth_method_strict", False)
    if not isinstance(strict, bool):
        raise ConfigError(f"{where}: token_endpoint_auth_method_strict must be a boolean")
    return replace(
        record,
        introspection_audiences=tuple(dict.fromkeys(audiences)),
        token_endpoint_auth_method_strict=strict,
    )


def _demo(
    data_dir: Path, issuer: str, *, create: bool
) -> tuple[dict[str, str], list[ClientRecord], list[str]]:
    secret = _persisted_secret(data_dir, "demo-client-secret", 18, create=create)
    password = _persisted_secret(data_dir, "demo-user-password", 12, create=create)
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
    nonce_secrets: Sequence[bytes] | None = None,
    create: bool = True,
) -> ServeConfig:
    """Read and validate a TOML configuration; demo defaults when ``path`` is None.

    Command-line ``host``/``port``/``data_dir`` and ``nonce_secrets`` (from
    ``--nonce-secret-env``) override the file. The data
    directory is created ``0700`` (and the demo secrets ``0600`` in it) unless
    ``create`` is False, which writes nothing at all (``serve --check``). An
    existing data directory, a file in it, the SQLite database or the KEK file
    that group or others can access is refused.

    Raises:
        ConfigError: any invalid or unreadable setting, or exposed key material (one line).
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
    storage_url = raw.get("storage_url", f"sqlite:///{(ddir / 'dpopkit-as.db').resolve()}")
    replay_url = raw.get("replay_url", "sqlite")
    for key, value in (("storage_url", storage_url), ("replay_url", replay_url)):
        if not isinstance(value, str):
            raise ConfigError(f"config.{key} must be a string")
    try:
        parse_replay_url(replay_url)
    except ValueError:
        raise ConfigError(f"config.replay_url must be {REPLAY_URL_FORMS}") from None
    replay_schema = raw.get("replay_schema")
    if replay_schema is not None and (not isinstance(replay_schema, str) or not replay_schema):
        raise ConfigError("config.replay_schema must be a schema name")
    replay_prefix = raw.get("replay_prefix", "")
    if not isinstance(replay_prefix, str):
        raise ConfigError("config.replay_prefix must be a string")
    if replay_prefix and parse_replay_url(replay_url).backend != "redis":
        raise ConfigError("config.replay_prefix applies to a Redis replay_url only")
    key_encryption, kek_file = _key_encryption(raw, None if path is None else path.parent)
    _check_private_paths(ddir, storage_url, kek_file)
    if create:
        try:
            make_private_dir(ddir)
        except OSError as exc:
            raise ConfigError(f"cannot create data_dir {ddir}: {exc.strerror}") from None
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
    _registration_policy(raw, settings)
    login = raw.get("login", {})
    if not isinstance(login, dict):
        raise ConfigError("[login] must be a table")
    _check_keys(login, _LOGIN, "login")
    for key in sorted(_LOGIN):
        if key in login:
            settings[f"login_{key}"] = _typed(login, key, int, "login")
    if "allowed_resources" in raw:
        settings["allowed_resources"] = tuple(_typed(raw, "allowed_resources", list, "config"))
    tokens = raw.get("tokens", {})
    if not isinstance(tokens, dict):
        raise ConfigError("[tokens] must be a table")
    _check_keys(tokens, _TOKENS, "tokens")
    for key in ("access_token_lifetime", "refresh_token_lifetime", "code_lifetime"):
        if key in tokens:
            settings[key] = _typed(tokens, key, int, "tokens")
    for key in ("par_lifetime", "key_rotation", "key_refresh_interval"):
        if key in tokens:
            settings[key] = _typed(tokens, key, int, "tokens")
    for key in ("signing_alg", "access_token_format"):
        if key in tokens:
            settings[key] = _typed(tokens, key, str, "tokens")
    if "audience" in tokens:
        settings["audience"] = tuple(_typed(tokens, "audience", list, "tokens"))
    if "refresh_reuse_leeway" in tokens:
        leeway = _typed(tokens, "refresh_reuse_leeway", (int, float), "tokens")
        settings["refresh_reuse_leeway"] = float(leeway)
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
    secrets_from_file = _nonce_secrets(dpop) if "nonce_secrets" in dpop else ()

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
        users, clients, notes = _demo(ddir, issuer, create=create)
    if key_encryption is None and not storage_url.startswith("sqlite"):
        notes.append(
            "WARNING: signing keys are stored unencrypted in storage_url: "
            f"set {KEK_ENV} or key_encryption_keys_file"
        )
    return ServeConfig(
        issuer=issuer,
        host=h,
        port=p,
        data_dir=ddir,
        storage_url=storage_url,
        replay_url=replay_url,
        cors_origins=tuple(cors),
        replay_schema=replay_schema,
        replay_prefix=replay_prefix,
        key_encryption=key_encryption,
        store_timeout=None if store_timeout is None else float(store_timeout),
        settings=settings,
        users=users,
        clients=clients,
        demo_notes=notes,
        nonce_secrets=tuple(nonce_secrets) if nonce_secrets else secrets_from_file,
    )


def _nonce_secrets(dpop: Mapping[str, Any]) -> tuple[bytes, ...]:
    """``[dpop] nonce_secrets``: a non-empty list, each read by ``parse_nonce_secret``."""
    from dpopkit.core.nonce import parse_nonce_secret

    values = dpop["nonce_secrets"]
    if not isinstance(values, list) or not values:
        raise ConfigError("dpop.nonce_secrets must be a non-empty list of strings")
    found: list[bytes] = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise ConfigError(f"dpop.nonce_secrets[{index}] must be a string")
        try:
            found.append(parse_nonce_secret(value))
        except ValueError as exc:
            raise ConfigError(f"dpop.nonce_secrets[{index}]: {exc}") from None
    return tuple(found)


def describe(config: ServeConfig) -> str:
    """A JSON summary of the configuration without secrets (for logs)."""
    return json.dumps(
        {
            "issuer": config.issuer,
            "listen": f"{config.host}:{config.port}",
            "storage": config.storage_url.split("://", 1)[0],
            "replay": config.replay_url.split("://", 1)[0],
            "key_encryption": list(config.key_encryption.ids) if config.key_encryption else None,
            "clients": [c.client_id for c in config.clients],
        }
    )


def _server_settings(config: ServeConfig) -> Any:
    """The validated :class:`~dpopkit.server.service.ServerSettings` of ``config``."""
    from dpopkit.server.app import is_loopback_host
    from dpopkit.server.service import ServerSettings

    try:
        settings = ServerSettings(**config.settings)
    except DPoPError as exc:
        raise ConfigError(exc.description) from None
    if settings.test_mode_user is not None and not is_loopback_host(config.host):
        raise ConfigError("test_mode_user: test mode listens on a loopback address only")
    return settings


def build_server(
    config: ServeConfig,
    *,
    mounts: Callable[[TokenService], Sequence[tuple[str, ASGIApp]]] | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[Starlette, TokenService]:
    """Open the stores, register the configured clients, make the keys, build the app.

    Signing keys are generated on first start and persisted in the grant store
    (encrypted under the newest KEK when ``key_encryption`` is configured: keys
    sealed with an older KEK, or stored in clear, are re-encrypted here); the
    nonce and CSRF secrets are generated once and kept (0600) in ``data_dir`` (0700).
    ``mounts`` receives the service and returns extra ``(path, app)`` routes.

    Raises:
        ConfigError: a setting is invalid or a store cannot be opened.
    """
    from dpopkit.server.app import create_app
    from dpopkit.server.authorize import ConfigUsers
    from dpopkit.server.service import ServerSettings, TokenService
    from dpopkit.storage._deadline import DEFAULT_STORE_TIMEOUT
    from dpopkit.storage.sql import StoreError

    settings: ServerSettings = _server_settings(config)
    try:
        make_private_dir(config.data_dir)
    except OSError as exc:
        raise ConfigError(f"cannot create data_dir {config.data_dir}: {exc.strerror}") from None
    # A client-side bound on every network store call: a frozen database answers 503.
    timeout = config.store_timeout
    try:
        store = SQLGrantStore(
            config.storage_url,
            key_encryption=config.key_encryption,
            timeout=timeout or DEFAULT_STORE_TIMEOUT,
        )
    except (StoreError, ValueError) as exc:
        raise ConfigError(f"storage_url: {exc}") from None
    except ImportError as exc:
        raise ConfigError(
            f"storage_url needs a driver that is not installed ({exc.name})"
        ) from None
    replay: ReplayCache | None = None
    try:  # whatever fails below, the connections opened so far are released
        try:
            store.reseal_signing_keys()
            for client in config.clients:
                store.put_client(client)
        except (StoreError, ValueError) as exc:
            raise ConfigError(f"storage_url: {exc}") from None
        try:
            replay = replay_cache_from_url(
                config.replay_url,
                data_dir=config.data_dir,
                timeout=timeout or DEFAULT_STORE_TIMEOUT,
                schema=config.replay_schema,
                prefix=config.replay_prefix,
            )
        except ValueError as exc:
            raise ConfigError(f"replay_url: {exc}") from None
        except ImportError as exc:
            raise ConfigError(
                f"replay_url needs a driver that is not installed ({exc.name})"
            ) from None
        nonces = _nonce_issuer(config)
        csrf = _persisted_secret(config.data_dir, "csrf-secret").encode()
        service = TokenService(settings, store=store, replay=replay, nonces=nonces, clock=clock)
        # Shares the replay cache's client: service.close() releases it too.
        counters = _counter_store(config, replay)
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
            counters=counters,
        )
    except BaseException:
        store.close()
        close = getattr(replay, "close", None)
        if callable(close):
            close()
        raise
    return app, service


def _counter_store(config: ServeConfig, replay: ReplayCache) -> CounterStore | None:
    """The shared state of the login throttle and the ``/register`` limit (HD-3, HD-2).

    A Redis ``replay_url`` serves them too: the replay cache's own client (URL,
    time-outs; closed with the cache) and its ``replay_prefix``, so every instance
    enforces one budget. Otherwise None: each process keeps its own counts in memory.
    """
    if parse_replay_url(config.replay_url).backend != "redis":
        return None
    from dpopkit.storage._deadline import DEFAULT_STORE_TIMEOUT
    from dpopkit.storage.redis import RedisCounterStore, RedisReplayCache

    if not isinstance(replay, RedisReplayCache):
        raise TypeError("a Redis replay_url needs its RedisReplayCache")
    timeout = config.store_timeout or DEFAULT_STORE_TIMEOUT
    return RedisCounterStore(replay.client, prefix=config.replay_prefix, timeout=timeout)


#: Seconds ``serve --check`` waits for each backend.
CHECK_TIMEOUT = 3.0


def _check_sqlite_file(path: Path, what: str) -> bool:
    """True when the SQLite file exists (and is one); else its directory must be writable."""
    if path.exists():
        try:
            with path.open("rb") as fh:
                header = fh.read(16)
        except OSError as exc:
            raise BackendUnavailableError(f"{what}: cannot read {path}: {exc.strerror}") from None
        if header and header != b"SQLite format 3\x00":
            raise BackendUnavailableError(f"{what}: {path} is not a SQLite database")
        if not os.access(path, os.R_OK | os.W_OK):
            raise BackendUnavailableError(f"{what}: {path} is not writable")
        return bool(header)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BackendUnavailableError(f"{what}: cannot create {path} ({parent} is not writable)")
    return False


def _with_connect_timeout(url: str) -> str:
    if "connect_timeout=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}connect_timeout={int(CHECK_TIMEOUT)}"


def _nonce_issuer(config: ServeConfig, *, create: bool = True) -> NonceIssuer:
    """The AS nonce issuer, for ``serve`` and ``serve --check`` alike.

    The configured secrets (TOML or ``--nonce-secret-env``) serve several instances and
    rotation; else one is kept in the data directory, in the same text format.
    """
    path = config.data_dir / "nonce-secret"
    try:
        return NonceIssuer(
            list(config.nonce_secrets)
            or [_persisted_secret(config.data_dir, "nonce-secret", create=create)],
            context="as",
        )
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def check_backends(config: ServeConfig) -> None:
    """Check that every configured store answers, writing nothing anywhere (``serve --check``).

    The grant store is read (schema version, and every signing key decrypted with
    the configured KEKs); a SQLite file that does not exist yet needs a writable
    directory; Redis must answer ``PING`` and PostgreSQL ``SELECT 1``, each within
    :data:`CHECK_TIMEOUT` seconds.

    The server settings and the nonce secrets are validated first, as
    :func:`build_server` does.

    Raises:
        BackendUnavailableError: a store does not answer (one line naming the setting).
        ConfigError: an invalid setting, or a store needs a driver that is not installed.
    """
    from urllib.parse import quote

    from dpopkit.storage.sql import StoreError

    _server_settings(config)
    _nonce_issuer(config, create=False)
    database = SQLGrantStore.sqlite_path(config.storage_url)
    url: str | None = config.storage_url
    if database is not None:
        exists = _check_sqlite_file(Path(database), "storage_url")
        # immutable=1: read without creating the -wal and -shm files.
        url = f"sqlite:///file:{quote(database)}?mode=ro&immutable=1&uri=true" if exists else None
    else:
        url = _with_connect_timeout(config.storage_url)
    if url is not None:
        try:
            store = SQLGrantStore(url, create=False, key_encryption=config.key_encryption)
            try:
                store.check()
            finally:
                store.close()
        except (StoreError, ValueError) as exc:
            cause = f" ({type(exc.__cause__).__name__})" if exc.__cause__ else ""
            raise BackendUnavailableError(f"storage_url: {exc}{cause}") from None
        except ImportError as exc:
            raise ConfigError(
                f"storage_url needs a driver that is not installed ({exc.name})"
            ) from None

    replay = config.replay_url
    parsed = parse_replay_url(replay)
    if parsed.backend == "sqlite":
        _check_sqlite_file(parsed.path or config.data_dir / "replay.db", "replay_url")
    elif parsed.backend == "redis":
        try:
            import redis
        except ImportError:
            raise ConfigError("replay_url needs redis: pip install 'dpopkit[redis]'") from None
        client = redis.Redis.from_url(
            replay, socket_timeout=CHECK_TIMEOUT, socket_connect_timeout=CHECK_TIMEOUT
        )
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise BackendUnavailableError(
                f"replay_url: Redis does not answer ({type(exc).__name__})"
            ) from None
        finally:
            client.close()
    elif parsed.backend == "postgres":
        try:
            import psycopg
        except ImportError:
            raise ConfigError("replay_url needs psycopg: pip install 'dpopkit[postgres]'") from None
        try:
            with psycopg.connect(replay, connect_timeout=int(CHECK_TIMEOUT)) as conn:
                conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            raise BackendUnavailableError(
                f"replay_url: PostgreSQL does not answer ({type(exc).__name__})"
            ) from None
