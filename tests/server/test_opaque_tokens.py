"""Optional opaque access tokens: issued, introspected, revoked, used at an RS.

An opaque token is 256 random bits; the store keeps only its SHA-256 with the same
record as a JWT access token, so introspection reports ``cnf.jkt`` and
``token_type: DPoP`` (RFC 7662, RFC 9449 §6.2, AS-11) and an RS relying on
introspection checks the binding itself (RS-24).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpopkit import DPoPKey, Headers, RequestView, create_proof
from dpopkit.cli.serve import whoami_mounts
from dpopkit.errors import InvalidTokenError, Reason, ServerConfigurationError
from dpopkit.resource.guard import ResourceGuard
from dpopkit.resource.tokens import IntrospectionTokens
from dpopkit.server.config import ConfigError, build_server, load_config
from dpopkit.server.service import ServerSettings
from dpopkit.storage.memory import MemoryReplayCache
from dpopkit.storage.sql import ClientRecord, SQLGrantStore, hash_secret, sha256_hex
from tests.live import serve_in_thread

from .conftest import (
    AS,
    ISSUER,
    SECRET,
    Clock,
    body_of,
    code_params,
    get_code,
    make_service,
)

_TOKEN68_43 = re.compile(r"[A-Za-z0-9_-]{43}")


def test_as11_opaque_dpop_token_introspects_with_cnf_jkt(as_opaque: AS) -> None:
    """AS-2, AS-3, AS-11: an opaque bound token, ``token_type`` DPoP, introspected with cnf.jkt."""
    resp = as_opaque.token({"grant_type": "client_credentials", "scope": "read"})
    assert resp.status == 200, resp.body
    body = body_of(resp)
    token = body["access_token"]
    assert body["token_type"] == "DPoP"
    # 256 random bits, base64url: token68 characters and no JWT structure.
    assert _TOKEN68_43.fullmatch(token)
    info = as_opaque.introspect(token)
    assert info["active"] is True
    assert info["token_type"] == "DPoP"
    assert info["cnf"] == {"jkt": as_opaque.key.jkt}
    assert info["client_id"] == "conf"
    assert info["sub"] == "conf"
    assert info["scope"] == "read"
    assert info["aud"] == ISSUER
    assert info["exp"] - info["iat"] == as_opaque.service.settings.access_token_lifetime
    assert "jti" not in info  # the record's key is the token's hash: never shown


def test_opaque_token_stored_only_as_its_hash(as_opaque: AS, store: SQLGrantStore) -> None:
    """The value itself is never stored; its SHA-256 is the record's key."""
    token = body_of(as_opaque.token({"grant_type": "client_credentials"}))["access_token"]
    assert store.get_access_token(token) is None
    record = store.get_access_token(sha256_hex(token))
    assert record is not None
    assert record.opaque
    assert record.jkt == as_opaque.key.jkt
    db = sqlite3.connect(store.url.removeprefix("sqlite:///"))
    try:  # the raw rows: nothing holds the value
        dump = repr(db.execute("SELECT * FROM dpopkit_access_tokens").fetchall())
    finally:
        db.close()
    assert token not in dump


def test_opaque_token_hash_is_not_a_token(as_opaque: AS) -> None:
    """X-17: presenting the stored hash (or a random value) is inactive, nothing else."""
    token = body_of(as_opaque.token({"grant_type": "client_credentials"}))["access_token"]
    assert as_opaque.introspect(sha256_hex(token)) == {"active": False}
    assert as_opaque.introspect("A" * 43) == {"active": False}
    assert as_opaque.introspect("A" * 5000) == {"active": False}


def test_opaque_token_revoked_then_inactive(as_opaque: AS) -> None:
    """RFC 7009: revoking an opaque token makes introspection answer active false."""
    token = body_of(as_opaque.token({"grant_type": "client_credentials"}))["access_token"]
    as_opaque.revoke("not-this-one")
    assert as_opaque.introspect(token)["active"] is True
    as_opaque.revoke(token)
    assert as_opaque.introspect(token) == {"active": False}


def test_opaque_token_of_other_client_not_revoked(as_opaque: AS) -> None:
    """RFC 7009 §2.1: a client revokes only its own tokens."""
    token = body_of(as_opaque.token({"grant_type": "client_credentials"}))["access_token"]
    as_opaque.revoke(token, client="bound")
    assert as_opaque.introspect(token)["active"] is True


def test_opaque_token_expires(as_opaque: AS) -> None:
    token = body_of(as_opaque.token({"grant_type": "client_credentials"}))["access_token"]
    as_opaque.clock.now += as_opaque.service.settings.access_token_lifetime
    assert as_opaque.introspect(token) == {"active": False}


def test_opaque_unbound_token_is_bearer(as_opaque: AS) -> None:
    """Without a proof (a client that may use Bearer) the opaque token is Bearer."""
    body = body_of(as_opaque.token({"grant_type": "client_credentials"}, proof=None))
    assert body["token_type"] == "Bearer"
    info = as_opaque.introspect(body["access_token"])
    assert info["token_type"] == "Bearer"
    assert "cnf" not in info


def test_opaque_code_flow_and_refresh(as_opaque: AS) -> None:
    """The code and refresh grants issue opaque tokens too; a reused refresh token
    revokes the family, opaque access tokens included (RFC 9700 §4.14.2)."""
    code, verifier = get_code(as_opaque, dpop_jkt=as_opaque.key.jkt)
    first = body_of(as_opaque.token(code_params(code, verifier), client=None))
    assert first["token_type"] == "DPoP"
    assert "." not in first["access_token"]
    assert as_opaque.introspect(first["access_token"])["sub"] == "alice"
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    second = body_of(as_opaque.token({**refresh, "client_id": "public"}, client=None))
    assert "." not in second["access_token"]
    reuse = as_opaque.token({**refresh, "client_id": "public"}, client=None)
    assert body_of(reuse)["error"] == "invalid_grant"
    assert as_opaque.introspect(second["access_token"]) == {"active": False}


def test_opaque_per_client_overrides_server_default(as_: AS, store: SQLGrantStore) -> None:
    """A client's ``access_token_format`` wins over the server's (JWT by default)."""
    store.put_client(
        ClientRecord(
            client_id="opq",
            secret_hash=hash_secret(SECRET),
            grant_types=("client_credentials",),
            scope="read",
            access_token_format="opaque",
        )
    )
    opaque = body_of(as_.token({"grant_type": "client_credentials"}, client="opq"))
    assert _TOKEN68_43.fullmatch(opaque["access_token"])
    jwt = body_of(as_.token({"grant_type": "client_credentials"}))
    assert jwt["access_token"].count(".") == 2
    assert as_.introspect(opaque["access_token"])["cnf"] == {"jkt": as_.key.jkt}
    assert as_.introspect(jwt["access_token"])["cnf"] == {"jkt": as_.key.jkt}
    loaded = store.get_client("opq")
    assert loaded is not None
    assert loaded.access_token_format == "opaque"


def test_jwt_client_under_opaque_default(as_opaque: AS, store: SQLGrantStore) -> None:
    store.put_client(
        ClientRecord(
            client_id="jwty",
            secret_hash=hash_secret(SECRET),
            grant_types=("client_credentials",),
            access_token_format="jwt",
        )
    )
    body = body_of(as_opaque.token({"grant_type": "client_credentials"}, client="jwty"))
    assert body["access_token"].count(".") == 2


def test_access_token_format_setting_validated() -> None:
    with pytest.raises(ServerConfigurationError) as info:
        ServerSettings(issuer=ISSUER, access_token_format="paseto")  # type: ignore[arg-type]
    assert info.value.reason is Reason.CONFIGURATION


CONFIG = """
issuer = "{issuer}"
replay_url = "memory"

[tokens]
access_token_format = "{fmt}"

[[clients]]
client_id = "svc"
client_secret = "svc-secret-value"
grant_types = ["client_credentials"]
scope = "read"
dpop_bound_access_tokens = true

[[clients]]
client_id = "rs"
client_secret = "rs-secret-value"
grant_types = ["client_credentials"]
access_token_format = "{client_fmt}"
introspection_audiences = ["{issuer}"]
"""


def test_config_reads_access_token_format(tmp_path: Path) -> None:
    path = tmp_path / "as.toml"
    path.write_text(CONFIG.format(issuer="http://127.0.0.1:1", fmt="opaque", client_fmt="jwt"))
    config = load_config(path, data_dir=tmp_path)
    assert config.settings["access_token_format"] == "opaque"
    assert {c.client_id: c.access_token_format for c in config.clients} == {
        "svc": None,
        "rs": "jwt",
    }


@pytest.mark.parametrize(("fmt", "client_fmt"), [("opaque", "macaroon"), ("paseto", "jwt")])
def test_config_bad_access_token_format(tmp_path: Path, fmt: str, client_fmt: str) -> None:
    """A bad format is one ConfigError line (``dpopkit serve`` exits 2)."""
    path = tmp_path / "as.toml"
    path.write_text(CONFIG.format(issuer="http://127.0.0.1:1", fmt=fmt, client_fmt=client_fmt))
    with pytest.raises(ConfigError):
        build_server(load_config(path, data_dir=tmp_path))


@pytest.fixture
def opaque_issuer(tmp_path: Path) -> Iterator[str]:
    """``dpopkit serve``'s app (with /api/whoami) issuing opaque tokens, under uvicorn."""

    def build(base: str) -> Any:
        path = tmp_path / "as.toml"
        path.write_text(CONFIG.format(issuer=base, fmt="opaque", client_fmt="jwt"))
        config = load_config(path, data_dir=tmp_path)
        app, service = build_server(config, mounts=lambda svc: whoami_mounts(svc, base))
        services.append(service)
        return app

    services: list[Any] = []
    with serve_in_thread(build) as base:
        yield base
    for service in services:
        service.close()


def _live_token(issuer: str, key: DPoPKey) -> str:
    proof = create_proof(key, htm="POST", htu=issuer + "/token", allow_insecure_http=True)
    resp = httpx.post(
        issuer + "/token",
        data={"grant_type": "client_credentials"},
        headers={"DPoP": proof},
        auth=("svc", "svc-secret-value"),
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["token_type"] == "DPoP"
    token: str = resp.json()["access_token"]
    assert _TOKEN68_43.fullmatch(token)
    return token


def _whoami(issuer: str, token: str, key: DPoPKey) -> httpx.Response:
    url = issuer + "/api/whoami"
    proof = create_proof(key, htm="GET", htu=url, access_token=token, allow_insecure_http=True)
    return httpx.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})


def _challenge_error(resp: httpx.Response) -> str | None:
    found = re.search(r'error="([a-z_]+)"', resp.headers.get("WWW-Authenticate", ""))
    return None if found is None else found.group(1)


def test_opaque_token_at_mounted_whoami(opaque_issuer: str) -> None:
    """RS-2 with an opaque token: the mounted API accepts the right key, refuses another,
    and refuses it once revoked at the AS."""
    key = DPoPKey.generate("ES256")
    token = _live_token(opaque_issuer, key)
    ok = _whoami(opaque_issuer, token, key)
    assert ok.status_code == 200, ok.text
    assert ok.json()["jkt"] == key.jkt
    other = _whoami(opaque_issuer, token, DPoPKey.generate("ES256"))
    assert other.status_code == 401
    assert _challenge_error(other) == "invalid_token"
    bearer = httpx.get(opaque_issuer + "/api/whoami", headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 401  # RS-16: a bound token is never Bearer
    revoke = httpx.post(
        opaque_issuer + "/revoke", data={"token": token}, auth=("svc", "svc-secret-value")
    )
    assert revoke.status_code == 200
    info = httpx.post(
        opaque_issuer + "/introspect", data={"token": token}, auth=("rs", "rs-secret-value")
    )
    assert info.json() == {"active": False}
    gone = _whoami(opaque_issuer, token, key)
    assert gone.status_code == 401
    assert _challenge_error(gone) == "invalid_token"


def _rs_request(token: str, key: DPoPKey, url: str = "https://api.example/data") -> RequestView:
    proof = create_proof(key, htm="GET", htu=url, access_token=token)
    return RequestView(
        method="GET",
        url=url,
        headers=Headers([("Authorization", f"DPoP {token}"), ("DPoP", proof)]),
    )


def test_rs24_introspection_rs_accepts_opaque_token(opaque_issuer: str) -> None:
    """RS-24 end to end: an RS using IntrospectionTokens against our /introspect over real
    HTTP reads cnf.jkt and token_type, and checks the binding itself."""
    key = DPoPKey.generate("ES256")
    token = _live_token(opaque_issuer, key)
    tokens = IntrospectionTokens(
        endpoint=opaque_issuer + "/introspect",
        client_id="rs",
        client_secret="rs-secret-value",
        issuer=opaque_issuer,
        audience=opaque_issuer,
        cache_ttl=0,
        allow_insecure_http=True,
    )
    guard = ResourceGuard(tokens=tokens, replay=MemoryReplayCache(single_process=True))
    principal = guard.authenticate(_rs_request(token, key))
    assert principal.scheme == "DPoP"
    assert principal.jkt == key.jkt
    assert principal.client_id == "svc"
    assert principal.scopes == frozenset({"read"})
    with pytest.raises(InvalidTokenError) as other:
        guard.authenticate(_rs_request(token, DPoPKey.generate("ES256")))
    assert other.value.reason is Reason.JKT_MISMATCH
    httpx.post(opaque_issuer + "/revoke", data={"token": token}, auth=("svc", "svc-secret-value"))
    with pytest.raises(InvalidTokenError) as revoked:
        guard.authenticate(_rs_request(token, key))
    assert revoked.value.reason is Reason.TOKEN_INACTIVE
    assert tokens.call_count == 3


@pytest.mark.parametrize(("fmt", "status"), [("opaque", 201), ("jwt", 201), ("paseto", 400)])
def test_registration_access_token_format(
    store: SQLGrantStore, clock: Clock, fmt: str, status: int
) -> None:
    """RFC 7591 §2: the client metadata may choose the format; another value is
    ``invalid_client_metadata`` (RFC 7591 §3.2.2)."""
    from dpopkit.server.registration import handle_register

    svc = make_service(
        store,
        clock,
        registration_enabled=True,
        registration_allowed_grant_types=("client_credentials",),
    )
    meta = {"grant_types": ["client_credentials"], "access_token_format": fmt}
    resp = handle_register(
        svc,
        RequestView(
            method="POST",
            url=ISSUER + "/register",
            headers=Headers([("Content-Type", "application/json")]),
            body=json.dumps(meta).encode(),
        ),
    )
    assert resp.status == status
    body = body_of(resp)
    if status != 201:
        assert body["error"] == "invalid_client_metadata"
        return
    assert body["access_token_format"] == fmt
    client = store.get_client(body["client_id"])
    assert client is not None
    assert svc.token_format(client) == fmt
