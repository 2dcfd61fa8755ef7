"""Django settings of the example DOT server, read from dpopkit's TOML (see serve.py)."""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from dpopkit.core.jws import b64url_encode
from dpopkit.server.config import load_config

HERE = Path(__file__).resolve().parent
CONFIG_FILE = Path(os.environ["DPOPKIT_DOT_CONFIG"])
CONFIG = load_config(
    CONFIG_FILE,
    host=os.environ["DPOPKIT_DOT_HOST"],
    port=int(os.environ["DPOPKIT_DOT_PORT"]),
)
RAW: dict[str, Any] = tomllib.loads(CONFIG_FILE.read_text(encoding="utf-8"))
DATA_DIR = CONFIG.data_dir


def _persisted(name: str) -> str:
    """A random secret kept (0600) in the data directory across restarts."""
    path = DATA_DIR / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(b64url_encode(secrets.token_bytes(32)))
    return path.read_text(encoding="utf-8").strip()


def _database(url: str | None) -> dict[str, Any]:
    if url is None or url.startswith("sqlite"):
        name = DATA_DIR / "dot.sqlite3" if url is None else Path(unquote(urlsplit(url).path))
        if not name.exists():  # private from the start, like dpopkit's own database
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(name)}
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ValueError("storage_url must be sqlite:///PATH or postgresql://...")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # e.g. ?options=-csearch_path%3Dmyschema
        "OPTIONS": dict(parse_qsl(parts.query)),
    }


SECRET_KEY = _persisted("dot-django-secret")
DEBUG = False
ALLOWED_HOSTS = [urlsplit(CONFIG.issuer).hostname or "", CONFIG.host, "127.0.0.1", "localhost"]
ROOT_URLCONF = "urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "rest_framework",
    "oauth2_provider",
    "dpopkit.integrations.django_oauth_toolkit",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [str(HERE / "templates")],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]
DATABASES = {"default": _database(RAW.get("storage_url"))}
LOGIN_URL = "/accounts/login/"
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}

_scopes = sorted({s for c in CONFIG.clients for s in c.scope.split()} | {"introspection"})
_tokens = CONFIG.settings
_PLUGIN = "dpopkit.integrations.django_oauth_toolkit"
OAUTH2_PROVIDER: dict[str, Any] = {
    "OAUTH2_VALIDATOR_CLASS": f"{_PLUGIN}.validators.DPoPOAuth2Validator",
    "OAUTH2_BACKEND_CLASS": f"{_PLUGIN}.backends.DPoPOAuthLibCore",
    "SCOPES": {scope: scope for scope in _scopes},
    "DEFAULT_SCOPES": [s for s in _scopes if s != "introspection"][:1] or ["introspection"],
    "PKCE_REQUIRED": True,
    "ROTATE_REFRESH_TOKEN": True,
    "OIDC_ISS_ENDPOINT": CONFIG.issuer,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "ACCESS_TOKEN_EXPIRE_SECONDS": _tokens.get("access_token_lifetime", 300),
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": _tokens.get("code_lifetime", 60),
    "REFRESH_TOKEN_EXPIRE_SECONDS": _tokens.get("refresh_token_lifetime", 86400),
}

_nonce_policy = _tokens.get("nonce_policy", "off")
DPOPKIT_DOT: dict[str, Any] = {
    "PUBLIC_URL": CONFIG.issuer,
    "REPLAY_URL": CONFIG.replay_url
    if CONFIG.replay_url != "sqlite"
    else f"sqlite:///{(DATA_DIR / 'dot-replay.db').resolve()}",
    "NONCE_POLICY": _nonce_policy,
}
if _nonce_policy != "off":
    DPOPKIT_DOT["NONCE_SECRETS"] = list(CONFIG.nonce_secrets) or [_persisted("dot-nonce-secret")]
if "proof_algorithms" in _tokens:
    DPOPKIT_DOT["ALGORITHMS"] = sorted(_tokens["proof_algorithms"])
if "proof_max_age" in _tokens:
    DPOPKIT_DOT["PROOF_MAX_AGE"] = _tokens["proof_max_age"]
TEST_MODE_USER: str | None = _tokens.get("test_mode_user")
