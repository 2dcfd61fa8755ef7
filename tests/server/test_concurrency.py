"""One-time artifacts under concurrency, on SQLite and on PostgreSQL (SEC-99).

One code redeemed by 20 parallel requests → exactly one token; one refresh token
presented 20 times in parallel → exactly one success and its family revoked, unless
the optional reuse leeway (HD-9) recognises retries by the same DPoP key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dpopkit import DPoPKey, ResponseView
from dpopkit.errors import ServerConfigurationError
from dpopkit.server.config import ConfigError, build_server, load_config
from dpopkit.server.service import ServerSettings
from dpopkit.storage.sql import SQLGrantStore, sha256_hex

from .conftest import (
    AS,
    ISSUER,
    SECRET,
    Clock,
    basic,
    body_of,
    code_params,
    error_of,
    form_request,
    get_code,
    make_service,
)

PARALLEL = 20


@pytest.fixture
def server(both_stores: SQLGrantStore, clock: Clock) -> AS:
    return AS(make_service(both_stores, clock), both_stores, clock)


def _race(calls: list[Callable[[], ResponseView]]) -> list[ResponseView]:
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], ResponseView]) -> ResponseView:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def _token_call(server: AS, params: dict[str, Any], proof: str) -> Callable[[], ResponseView]:
    request = form_request(
        server.service.settings.token_endpoint, params, headers=[("DPoP", proof)]
    )
    return lambda: server.service.handle_token(request)


def test_code_redeemed_in_parallel_yields_one_token(server: AS) -> None:
    """RFC 6749 §4.1.2: 20 parallel redemptions of one code → one 200, others invalid_grant."""
    code, verifier = get_code(server, dpop_jkt=server.key.jkt)
    params = code_params(code, verifier)
    responses = _race([_token_call(server, params, server.proof()) for _ in range(PARALLEL)])
    ok = [r for r in responses if r.status == 200]
    assert len(ok) == 1
    assert all(error_of(r) == "invalid_grant" for r in responses if r.status != 200)
    assert server.store.count_access_tokens() == 1


def test_refresh_presented_in_parallel_one_success_family_revoked(server: AS) -> None:
    """RFC 9700 §4.14.2: 20 parallel uses of one refresh token → one success, family revoked."""
    code, verifier = get_code(server)
    tokens = body_of(server.token(code_params(code, verifier), client=None))
    params = {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": "public",
    }
    responses = _race([_token_call(server, params, server.proof()) for _ in range(PARALLEL)])
    ok = [body_of(r) for r in responses if r.status == 200]
    assert len(ok) == 1
    assert all(error_of(r) == "invalid_grant" for r in responses if r.status != 200)
    # The reuse revoked the whole family: the winner's tokens are dead too.
    now = server.clock.now
    assert server.service.lookup_access_token(ok[0]["access_token"], now=now) is None
    again = server.token({**params, "refresh_token": ok[0]["refresh_token"]}, client=None)
    assert error_of(again) == "invalid_grant"


def test_schema_is_versioned(both_stores: SQLGrantStore) -> None:
    """The schema records its version and re-opening the store is idempotent."""
    assert both_stores.schema_version() == 1
    both_stores.create_schema()
    assert both_stores.schema_version() == 1


# --- the refresh-token reuse leeway (HD-9) ---------------------------------------------------

LEEWAY = 5.0


@pytest.fixture
def leeway_server(both_stores: SQLGrantStore, clock: Clock) -> AS:
    service = make_service(both_stores, clock, refresh_reuse_leeway=LEEWAY)
    return AS(service, both_stores, clock)


def _refresh_params(tokens: dict[str, Any], client_id: str) -> dict[str, Any]:
    return {
        "grant_type": "refresh_token",
        "refresh_token": tokens["refresh_token"],
        "client_id": client_id,
    }


def _conf_call(server: AS, params: dict[str, Any], proof: str | None) -> Callable[[], ResponseView]:
    headers = [("Authorization", basic("conf", SECRET))]
    if proof is not None:
        headers.append(("DPoP", proof))
    request = form_request(server.service.settings.token_endpoint, params, headers=headers)
    return lambda: server.service.handle_token(request)


def test_hd9_parallel_refresh_same_key_keeps_family_within_leeway(leeway_server: AS) -> None:
    """HD-9: with refresh_reuse_leeway, 20 parallel refreshes of one token by the same DPoP
    key → one 200, the others invalid_grant, and the winner's tokens stay valid (an
    ordinary client retry does not log the user out; RFC 9700 §4.14.2 otherwise)."""
    server = leeway_server
    code, verifier = get_code(server)
    tokens = body_of(server.token(code_params(code, verifier), client=None))
    params = _refresh_params(tokens, "public")
    responses = _race([_token_call(server, params, server.proof()) for _ in range(PARALLEL)])
    ok = [body_of(r) for r in responses if r.status == 200]
    assert len(ok) == 1
    assert all(error_of(r) == "invalid_grant" for r in responses if r.status != 200)
    now = server.clock.now
    assert server.service.lookup_access_token(ok[0]["access_token"], now=now) is not None
    nxt = server.token({**params, "refresh_token": ok[0]["refresh_token"]}, client=None)
    assert nxt.status == 200, nxt.body


def test_hd9_parallel_refresh_with_two_keys_revokes_family(leeway_server: AS) -> None:
    """HD-9: within the leeway, a redemption by another key is still reuse: racing two
    keys on one (confidential, unbound) refresh token revokes the whole family."""
    server = leeway_server
    code, verifier = get_code(server, "conf")
    tokens = body_of(server.token(code_params(code, verifier, "conf")))
    params = _refresh_params(tokens, "conf")
    other = DPoPKey.generate("ES256")
    calls = [
        _conf_call(server, params, server.proof(other if i % 2 else None)) for i in range(PARALLEL)
    ]
    responses = _race(calls)
    ok = [body_of(r) for r in responses if r.status == 200]
    assert len(ok) == 1
    assert all(error_of(r) == "invalid_grant" for r in responses if r.status != 200)
    now = server.clock.now
    assert server.service.lookup_access_token(ok[0]["access_token"], now=now) is None
    again = server.token({**params, "refresh_token": ok[0]["refresh_token"]}, client="conf")
    assert error_of(again) == "invalid_grant"


@pytest.mark.parametrize("case", ["after_leeway", "other_key", "no_proof", "leeway_off"])
def test_hd9_reuse_outside_the_leeway_revokes_family(
    both_stores: SQLGrantStore, clock: Clock, case: str
) -> None:
    """HD-9: reuse detection stays: after the leeway, with another key, without a proof,
    or with the leeway off (the default), a second redemption revokes the family."""
    leeway = 0.0 if case == "leeway_off" else LEEWAY
    server = AS(make_service(both_stores, clock, refresh_reuse_leeway=leeway), both_stores, clock)
    code, verifier = get_code(server, "conf")
    tokens = body_of(server.token(code_params(code, verifier, "conf")))
    params = _refresh_params(tokens, "conf")
    first = body_of(_conf_call(server, params, server.proof())())
    if case == "after_leeway":
        server.clock.now += LEEWAY + 1
    proof = {"other_key": server.proof(DPoPKey.generate("ES256")), "no_proof": None}.get(
        case, server.proof()
    )
    assert error_of(_conf_call(server, params, proof)()) == "invalid_grant"
    now = server.clock.now
    assert server.service.lookup_access_token(first["access_token"], now=now) is None
    nxt = server.token({**params, "refresh_token": first["refresh_token"]}, client="conf")
    assert error_of(nxt) == "invalid_grant"


def test_hd9_retry_within_leeway_is_refused_without_revoking(leeway_server: AS) -> None:
    """HD-9: a sequential retry by the same key inside the leeway is invalid_grant (no new
    tokens), and the family lives on; the store keeps when and by which key it was spent."""
    server = leeway_server
    code, verifier = get_code(server)
    tokens = body_of(server.token(code_params(code, verifier), client=None))
    params = _refresh_params(tokens, "public")
    first = body_of(server.token(params, client=None))
    server.clock.now += LEEWAY - 1
    assert error_of(server.token(params, client=None)) == "invalid_grant"
    spent = server.store.get_refresh(sha256_hex(tokens["refresh_token"]))
    assert spent is not None
    assert spent.used
    assert spent.used_jkt == server.key.jkt
    assert spent.used_at == server.clock.now - (LEEWAY - 1)
    assert (
        server.token({**params, "refresh_token": first["refresh_token"]}, client=None).status == 200
    )


@pytest.mark.parametrize("value", [-1.0, 60.5, float("nan"), float("inf")])
def test_hd9_leeway_is_short_and_finite(value: float) -> None:
    """HD-9: the leeway is 0 (off) to 60 seconds; anything else is refused at construction."""
    with pytest.raises(ServerConfigurationError):
        ServerSettings(issuer=ISSUER, refresh_reuse_leeway=value)
    assert ServerSettings(issuer=ISSUER).refresh_reuse_leeway == 0.0  # off by default


@pytest.mark.parametrize(("value", "accepted"), [("2", True), ("2.5", True), ('"2"', False)])
def test_hd9_leeway_from_toml(tmp_path: Path, value: str, accepted: bool) -> None:
    """HD-9: [tokens] refresh_reuse_leeway in the configuration file, in seconds."""
    path = tmp_path / "as.toml"
    path.write_text(f'issuer = "http://127.0.0.1:1"\n[tokens]\nrefresh_reuse_leeway = {value}\n')
    if not accepted:
        with pytest.raises(ConfigError):
            load_config(path, data_dir=tmp_path)
        return
    config = load_config(path, data_dir=tmp_path)
    assert ServerSettings(**config.settings).refresh_reuse_leeway == float(value)


def test_hd9_leeway_too_long_in_toml_is_a_config_error(tmp_path: Path) -> None:
    """HD-9: a leeway over 60 s in the file is one ConfigError line at start."""
    path = tmp_path / "as.toml"
    path.write_text(
        'issuer = "http://127.0.0.1:1"\nreplay_url = "memory"\n'
        "[tokens]\nrefresh_reuse_leeway = 120\n"
    )
    with pytest.raises(ConfigError):
        build_server(load_config(path, data_dir=tmp_path))
