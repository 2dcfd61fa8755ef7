"""An Authlib authorization server (Flask) with DPoP added by ``dpopkit[authlib]``.

Start it with the same TOML file ``dpopkit serve`` reads::

    python examples/authlib_server.py --config as.toml --host 127.0.0.1 --port 8000

It reads ``issuer``, ``[[clients]]`` (RFC 7591 names, ``dpop_bound_access_tokens``,
``dpop_nonce_required``), ``[[users]]``, ``[tokens]`` (lifetimes, ``audience``),
``[dpop]`` (``nonce``, ``algorithms``, ``max_age``, ``nonce_secrets``) and
``test_mode_user``, which approves the code flow as that user for requests from a
loopback address (there is no login page here: without it the authorization endpoint
answers 403). Authlib's models live in SQLite (``authlib.db`` in ``data_dir``), the
replay cache is the one ``replay_url`` names, JWT access tokens (RFC 9068) are
signed with an ES256 key kept in ``data_dir``. A DPoP-protected ``/api/whoami`` shows
Authlib's ``ResourceProtector`` with :func:`dpopkit.integrations.authlib.protect`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector, current_token
from authlib.integrations.sqla_oauth2 import (
    OAuth2AuthorizationCodeMixin,
    OAuth2ClientMixin,
    OAuth2TokenMixin,
    create_query_client_func,
    create_save_token_func,
)
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import OAuth2Error
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator, JWTBearerTokenValidator
from flask import Flask, jsonify, request
from joserfc.jwk import ECKey, KeySet
from sqlalchemy import Column, Integer, String, Text, create_engine
from sqlalchemy.orm import DeclarativeBase, scoped_session, sessionmaker
from werkzeug.serving import make_server

from dpopkit._private import write_private_file
from dpopkit.core.nonce import NonceIssuer
from dpopkit.integrations.authlib import protect, register_dpop
from dpopkit.server.config import ConfigError, ServeConfig, load_config
from dpopkit.storage.sql import verify_secret
from dpopkit.storage.urls import replay_cache_from_url


def _loopback(host: str | None) -> bool:
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _signing_key(data_dir: Path) -> ECKey:
    path = data_dir / "authlib-signing-key.json"
    if path.exists():
        return ECKey.import_key(json.loads(path.read_text(encoding="utf-8")))
    key = ECKey.generate_key("P-256", parameters={"kid": secrets.token_urlsafe(8)})
    write_private_file(path, json.dumps(key.as_dict(private=True)).encode(), overwrite=False)
    return key


class _User:
    def __init__(self, username: str) -> None:
        self.username = username

    def get_user_id(self) -> str:
        return self.username


def create_app(config: ServeConfig, *, db_path: Path | None = None) -> Flask:
    """Build the Flask app: Authlib's server with DPoP, from a ``dpopkit serve`` config."""
    settings = config.settings
    issuer = settings["issuer"].rstrip("/")
    test_user = settings.get("test_mode_user")
    if test_user is not None and not (
        _loopback(config.host) and _loopback(urlsplit(issuer).hostname)
    ):
        raise ConfigError("test_mode_user needs a loopback --host and issuer")
    audience = list(settings.get("audience", ())) or [issuer]
    lifetime = int(settings.get("access_token_lifetime", 300))

    class Base(DeclarativeBase):
        pass

    class Client(Base, OAuth2ClientMixin):
        __tablename__ = "oauth2_client"
        id = Column(Integer, primary_key=True)

        def check_client_secret(self, client_secret: str) -> bool:
            # Secrets are stored hashed (dpopkit.storage.sql.hash_secret), never in clear.
            return self.client_secret is not None and verify_secret(
                client_secret, self.client_secret
            )

    class AuthorizationCode(Base, OAuth2AuthorizationCodeMixin):
        __tablename__ = "oauth2_code"
        id = Column(Integer, primary_key=True)
        user_id = Column(String(120))
        dpop_jkt = Column(String(64))  # RFC 9449 §10

    class Token(Base, OAuth2TokenMixin):
        __tablename__ = "oauth2_token"
        id = Column(Integer, primary_key=True)
        user_id = Column(String(120))
        dpop_jkt = Column(String(64))  # the key the tokens of this row are bound to
        access_token = Column(Text, unique=True, nullable=False)

        def is_refresh_token_active(self) -> bool:
            if self.refresh_token_revoked_at:
                return False
            refresh_lifetime = int(settings.get("refresh_token_lifetime", 86400))
            return self.issued_at + refresh_lifetime >= time.time()

    path = db_path if db_path is not None else config.data_dir / "authlib.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    session = scoped_session(sessionmaker(bind=engine))
    for record in config.clients:
        if session.query(Client).filter_by(client_id=record.client_id).first() is not None:
            continue
        client = Client(client_id=record.client_id, client_secret=record.secret_hash)
        client.set_client_metadata(
            {
                "token_endpoint_auth_method": record.token_endpoint_auth_method,
                "grant_types": list(record.grant_types),
                "response_types": ["code"] if "authorization_code" in record.grant_types else [],
                "redirect_uris": list(record.redirect_uris),
                "scope": record.scope,
                "dpop_bound_access_tokens": record.dpop_bound_access_tokens,
                "dpop_nonce_required": record.dpop_nonce_required,
            }
        )
        session.add(client)
    session.commit()

    key = _signing_key(config.data_dir)
    private_keys = KeySet([key])
    public_jwks = private_keys.as_dict(private=False)
    public_keys = KeySet.import_key_set(public_jwks)

    class Generator(JWTBearerTokenGenerator):  # type: ignore[misc]
        def get_jwks(self) -> Any:
            return private_keys

        def get_audiences(self, client: Any, user: Any, scope: Any) -> Any:
            return audience

    generator = Generator(
        issuer,
        alg="ES256",
        refresh_token_generator=lambda **_: secrets.token_urlsafe(32),
        expires_generator=lambda client, grant_type: lifetime,
    )

    app = Flask(__name__)
    server = AuthorizationServer(
        app,
        query_client=create_query_client_func(session, Client),
        save_token=create_save_token_func(session, Token),
    )
    server.register_token_generator("default", generator)

    class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")

        def save_authorization_code(self, code: str, req: Any) -> None:
            data = req.payload.data
            session.add(
                AuthorizationCode(
                    code=code,
                    client_id=req.client.client_id,
                    redirect_uri=req.payload.redirect_uri,
                    scope=req.scope,
                    user_id=req.user.get_user_id(),
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                    dpop_jkt=data.get("dpop_jkt"),  # checked by dpopkit (RFC 9449 §10)
                )
            )
            session.commit()

        def query_authorization_code(self, code: str, client: Any) -> Any:
            item = (
                session.query(AuthorizationCode)
                .filter_by(code=code, client_id=client.client_id)
                .first()
            )
            return item if item is not None and not item.is_expired() else None

        def delete_authorization_code(self, authorization_code: Any) -> None:
            session.delete(authorization_code)
            session.commit()

        def authenticate_user(self, authorization_code: Any) -> Any:
            return _User(authorization_code.user_id)

    class RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
        INCLUDE_NEW_REFRESH_TOKEN = True

        def authenticate_refresh_token(self, refresh_token: str) -> Any:
            item = session.query(Token).filter_by(refresh_token=refresh_token).first()
            return item if item is not None and item.is_refresh_token_active() else None

        def authenticate_user(self, credential: Any) -> Any:
            return _User(credential.user_id) if credential.user_id else None

        def revoke_old_credential(self, credential: Any) -> None:
            credential.refresh_token_revoked_at = int(time.time())
            session.add(credential)
            session.commit()

    class ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post")

    server.register_grant(CodeGrant, [CodeChallenge(required=True)])
    server.register_grant(RefreshGrant)
    server.register_grant(ClientCredentials)

    nonce_policy = settings.get("nonce_policy", "off")
    nonces = None
    if nonce_policy != "off":
        nonces = NonceIssuer(list(config.nonce_secrets) or [secrets.token_bytes(32)], context="as")
    replay = replay_cache_from_url(
        config.replay_url, data_dir=config.data_dir, sqlite_name="authlib-replay.db"
    )
    algorithms = settings.get("proof_algorithms")
    options: dict[str, Any] = {} if algorithms is None else {"algorithms": algorithms}
    dpop = register_dpop(
        server,
        token_endpoint=f"{issuer}/token",
        replay=replay,
        nonces=nonces,
        nonce_required=(
            None
            if nonce_policy == "always"
            else lambda client: client.client_metadata.get("dpop_nonce_required") is True
        ),
        max_age=float(settings.get("proof_max_age", 60.0)),
        **options,
    )

    class Validator(JWTBearerTokenValidator):  # type: ignore[misc]
        def get_jwks(self) -> Any:
            return public_keys

    require_oauth = ResourceProtector()
    protect(
        require_oauth,
        Validator(issuer=issuer, resource_server=audience[0]),
        replay=replay,
        public_url=lambda req: f"{issuer}{request.path}",
        **options,
    )

    metadata = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "code_challenge_methods_supported": ["S256"],
        **dpop.metadata(),  # dpop_signing_alg_values_supported (RFC 9449 §5.1)
    }

    @app.get("/.well-known/oauth-authorization-server")
    def discovery() -> Any:
        return jsonify(metadata)

    @app.get("/jwks")
    def jwks() -> Any:
        return jsonify(public_jwks)

    @app.get("/authorize")
    def authorize() -> Any:
        if test_user is None or not _loopback(request.remote_addr):
            return "This example has no login page: set test_mode_user (loopback only).", 403
        user = _User(test_user)
        try:
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            return server.handle_error_response(request, error)
        return server.create_authorization_response(grant_user=user, grant=grant)

    @app.post("/token")
    def token() -> Any:
        return server.create_token_response()

    @app.get("/api/whoami")
    @require_oauth()
    def whoami() -> Any:
        claims = current_token
        return jsonify(
            {
                "sub": claims.get("sub"),
                "client_id": claims.get("client_id"),
                "cnf": claims.get("cnf"),
            }
        )

    @app.teardown_appcontext
    def _close(_exc: BaseException | None) -> None:
        session.remove()

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """``--config FILE --host H --port P``: load the TOML, build the app, serve it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the dpopkit serve TOML")
    parser.add_argument("--host", default=None, help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (8000)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, host=args.host, port=args.port, now=time.time())
        app = create_app(config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    httpd = make_server(config.host, config.port, app, threaded=True)
    print(f"Authlib + dpopkit authorization server on {config.settings['issuer']}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
