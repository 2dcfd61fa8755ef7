"""``dpopkit serve-api`` under uvicorn on 127.0.0.1, Redis sharing across processes, outages.

Real processes and a real Redis (``redis_url`` fixture: skipped loudly locally
without one, failing under CI=true). Times are the wall clock: Redis expires
replay keys on its own clock.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import pytest

from dpopkit import DPoPKey, create_proof, parse_challenges
from dpopkit.core.jws import b64url_encode
from dpopkit.demo.api import create_whoami_app
from dpopkit.resource.asgi import DPoPMiddleware
from dpopkit.resource.guard import AsyncResourceGuard, ResourceGuard
from dpopkit.resource.tokens import JWTAccessTokens
from dpopkit.resource.wsgi import DPoPWSGIMiddleware
from tests.conftest import delete_redis_prefix, missing_real_part
from tests.resource._rs_support import (
    AUDIENCE,
    Calls,
    Issuer,
    KeyServer,
    asgi_app,
    free_port,
    http_server,
    wsgi_app,
)

PUBLIC = "https://api.example"


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    with http_server(server.routes) as base:
        server.publish_metadata(base)
        yield server


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited: {proc.stderr.read() if proc.stderr else b''!r}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@contextmanager
def serve_api(*args: str, env_extra: dict[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpopkit", "serve-api", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        wait_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()


def headers_for(
    key: DPoPKey, token: str, url: str, method: str = "GET", **kw: Any
) -> dict[str, str]:
    proof = create_proof(
        key,
        htm=method,
        htu=url,
        access_token=token,
        now=time.time(),
        allow_insecure_http=True,
        **kw,
    )
    return {"Authorization": f"DPoP {token}", "DPoP": proof}


def test_serve_api_whoami_end_to_end(key_server: KeyServer) -> None:
    """dpopkit serve-api: discovery at start, GET/POST whoami, replay refused, 401 challenge."""
    key = DPoPKey.generate("ES256")
    issuer = key_server.issuer()
    with serve_api(
        "--issuer",
        key_server.base,
        "--public-origin",
        PUBLIC,
        "--audience",
        PUBLIC,
        "--allow-insecure-http",
        "--metrics",
    ) as base:
        token = issuer.token(jkt=key.jkt, now=time.time(), aud=PUBLIC, scope="read")
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/api/whoami").status_code == 401
            headers = headers_for(key, token, f"{PUBLIC}/api/whoami")
            ok = client.get("/api/whoami", headers=headers)
            assert ok.status_code == 200
            assert ok.json() == {
                "sub": "alice",
                "client_id": "client-1",
                "scope": "read",
                "jkt": key.jkt,
            }
            assert client.get("/api/whoami", headers=headers).status_code == 401  # replay
            post = client.post(
                "/api/whoami", headers=headers_for(key, token, f"{PUBLIC}/api/whoami", "POST")
            )
            assert post.status_code == 200
            meta = client.get("/.well-known/oauth-protected-resource").json()
            assert meta["authorization_servers"] == [key_server.base]
            assert (
                'dpopkit_rs_rejected_total{reason="replayed_jti"} 1' in client.get("/metrics").text
            )


@pytest.mark.slow
def test_nonce_secret_shared_between_instances(key_server: KeyServer) -> None:
    """HD-21: instances sharing the secret accept
    each other's nonces; with different secrets the client gets use_dpop_nonce, never a 500."""
    key = DPoPKey.generate("ES256")
    token = key_server.issuer().token(jkt=key.jkt, now=time.time(), aud=PUBLIC)
    url = f"{PUBLIC}/api/whoami"
    common = (
        "--issuer",
        key_server.base,
        "--public-origin",
        PUBLIC,
        "--allow-insecure-http",
        "--require-nonce",
        "--nonce-secret-env",
        "RS_NONCE_SECRET",
    )
    same = {"RS_NONCE_SECRET": b64url_encode(b"\x11" * 32)}
    other = {"RS_NONCE_SECRET": b64url_encode(b"\x22" * 32)}
    with (
        serve_api(*common, env_extra=same) as a,
        serve_api(*common, env_extra=same) as b,
        serve_api(*common, env_extra=other) as c,
        httpx.Client(timeout=10) as client,
    ):
        first = client.get(f"{a}/api/whoami", headers=headers_for(key, token, url))
        assert first.status_code == 401
        nonce = first.headers["dpop-nonce"]
        assert (
            client.get(
                f"{b}/api/whoami", headers=headers_for(key, token, url, nonce=nonce)
            ).status_code
            == 200
        )
        refused = client.get(f"{c}/api/whoami", headers=headers_for(key, token, url, nonce=nonce))
        assert refused.status_code == 401
        assert (
            parse_challenges(refused.headers["www-authenticate"])[0].params["error"]
            == "use_dpop_nonce"
        )
        assert refused.headers["dpop-nonce"] != nonce


# --- HD-18: /metrics is opt-in and answered to allowed direct peers only -----------------


def test_hd18_serve_api_metrics_off_by_default_on_with_flag(key_server: KeyServer) -> None:
    """HD-18: without --metrics, serve-api does not answer GET /metrics (it is just a
    DPoP-protected path: 401); with it, a loopback peer gets the Prometheus text and a
    proxied request does not (RFC 7239: the peer is then the proxy)."""
    common = ("--issuer", key_server.base, "--public-origin", PUBLIC, "--audience", PUBLIC)
    with serve_api(*common, "--allow-insecure-http") as base:
        off = httpx.get(f"{base}/metrics", timeout=10)
    assert off.status_code == 401
    assert "dpopkit_rs" not in off.text
    with serve_api(*common, "--allow-insecure-http", "--metrics") as base:
        on = httpx.get(f"{base}/metrics", timeout=10)
        proxied = httpx.get(f"{base}/metrics", headers={"X-Forwarded-For": "1.2.3.4"}, timeout=10)
    assert on.status_code == 200
    assert "# TYPE dpopkit_rs_rejected_total counter" in on.text
    assert on.headers["cache-control"] == "no-store"
    assert proxied.status_code == 403


@pytest.mark.parametrize(
    ("allow", "peer", "headers", "status"),
    [
        (None, "127.0.0.1", {}, 200),
        (None, "127.9.8.7", {}, 200),
        (None, "::1", {}, 200),
        (None, "::ffff:127.0.0.1", {}, 200),
        (None, "203.0.113.9", {}, 403),
        (None, "10.0.0.5", {}, 403),
        (None, "::ffff:10.0.0.5", {}, 403),
        (None, "127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}, 403),
        (None, "127.0.0.1", {"Forwarded": "for=203.0.113.9"}, 403),
        (None, "127.0.0.1", {"X-Real-IP": "203.0.113.9"}, 403),
        (["203.0.113.0/24"], "203.0.113.9", {}, 200),
        (["203.0.113.0/24"], "127.0.0.1", {}, 403),
        (["2001:db8::/32", "127.0.0.1/32"], "2001:db8::7", {}, 200),
    ],
)
def test_hd18_metrics_peer_allow_list(
    issuer: Issuer, allow: list[str] | None, peer: str, headers: dict[str, str], status: int
) -> None:
    """HD-18: with metrics on, only a direct peer in the allow-list (loopback unless
    configured) reads /metrics; anyone else, or any proxied request, gets 403."""
    tokens = JWTAccessTokens(issuer=issuer.issuer, audience=PUBLIC, jwks=issuer.jwks())
    app = create_whoami_app(
        issuer=issuer.issuer, public_origin=PUBLIC, tokens=tokens, metrics=True, metrics_allow=allow
    )

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(peer, 50000))
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as client:
            return await client.get("/metrics", headers=headers)

    response = anyio.run(main)
    assert response.status_code == status
    assert ("dpopkit_rs_accepted_total" in response.text) == (status == 200)


@pytest.mark.parametrize(
    "args",
    [
        ("--metrics-allow", "10.0.0.0/8"),
        ("--metrics", "--metrics-allow", "not-a-network"),
        ("--metrics", "--metrics-allow", "10.0.0.0/33"),
    ],
)
def test_hd18_metrics_options_refused_when_inconsistent(args: tuple[str, ...]) -> None:
    """HD-18: --metrics-allow without --metrics, or a value that is not a CIDR, is a usage
    error (exit 2, one line), never a server that silently exposes or hides metrics."""
    result = subprocess.run(
        [sys.executable, "-m", "dpopkit", "serve-api", "--issuer", "https://as.example", *args],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr
    assert b"metrics" in result.stderr


def test_serve_api_bad_configuration_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dpopkit", "serve-api", "--issuer", "http://as.example"],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr


@pytest.mark.redis
@pytest.mark.slow
def test_two_rs_processes_share_redis_replay(
    key_server: KeyServer, redis_url: str, unique_prefix: str
) -> None:
    """SEC-75: a proof accepted by one RS process is refused by the other; 50 parallel
    copies of one request across both -> exactly one 200."""
    key = DPoPKey.generate("ES256")
    token = key_server.issuer().token(jkt=key.jkt, now=time.time(), aud=PUBLIC)
    common = (
        "--issuer",
        key_server.base,
        "--public-origin",
        PUBLIC,
        "--allow-insecure-http",
        "--replay",
        redis_url,
        "--replay-prefix",
        f"{unique_prefix}:",
    )
    with serve_api(*common) as a, serve_api(*common) as b:
        url = f"{PUBLIC}/api/whoami"
        headers = headers_for(key, token, url)
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{a}/api/whoami", headers=headers).status_code == 200
            assert client.get(f"{b}/api/whoami", headers=headers).status_code == 401
        copies = headers_for(key, token, url)
        statuses: list[int] = []

        async def main() -> None:
            async with httpx.AsyncClient(timeout=20) as client:

                async def one(base: str) -> None:
                    response = await client.get(f"{base}/api/whoami", headers=copies)
                    statuses.append(response.status_code)

                async with anyio.create_task_group() as tg:
                    for index in range(50):
                        tg.start_soon(one, a if index % 2 else b)

        anyio.run(main)
        assert sorted(statuses) == [200] + [401] * 49
    assert delete_redis_prefix(redis_url, f"{unique_prefix}:") == 2


# --- replay store outage: fail closed, bounded, recover without restart ------------------


@contextmanager
def redis_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    binary = shutil.which("redis-server")
    if binary is None:
        missing_real_part("redis-server binary not found (outage tests need one)")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def _outage_setup(issuer: Issuer) -> tuple[JWTAccessTokens, DPoPKey, str, int]:
    port = free_port()
    tokens = JWTAccessTokens(issuer=issuer.issuer, audience=AUDIENCE, jwks=issuer.jwks())
    key = DPoPKey.generate("ES256")
    return tokens, key, issuer.token(jkt=key.jkt, now=time.time()), port


@pytest.mark.redis
def test_sec80_redis_down_is_503_within_timeout_then_recovers_asgi(issuer: Issuer) -> None:
    """SEC-80: Redis unreachable (closed port) -> 503 within the time-out, the handler never
    runs; service resumes without a restart when Redis is back (ASGI, asyncio)."""
    from dpopkit.storage.redis import AsyncRedisReplayCache

    tokens, key, token, port = _outage_setup(issuer)
    calls = Calls()
    replay = AsyncRedisReplayCache.from_url(f"redis://127.0.0.1:{port}/0", check_server=False)
    guard = AsyncResourceGuard(tokens=tokens, replay=replay)
    app = DPoPMiddleware(asgi_app(calls), guard=guard, public_origin=PUBLIC)
    timings: list[tuple[int, float]] = []

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as client:

            async def call() -> None:
                started = time.monotonic()
                headers = headers_for(key, token, f"{PUBLIC}/hello")
                status = (await client.get("/hello", headers=headers)).status_code
                timings.append((status, time.monotonic() - started))

            await call()
            with redis_server(port):
                await call()
            await call()
            with redis_server(port):
                await call()
        await replay.aclose()

    anyio.run(main)
    assert [status for status, _ in timings] == [503, 200, 503, 200]
    assert all(elapsed < 2.0 for _, elapsed in timings)
    assert calls.count == 2
    assert guard.metrics.snapshot()["rejected"] == {"store_unavailable": 2}


@pytest.mark.redis
def test_sec80_redis_down_is_503_within_timeout_then_recovers_wsgi(issuer: Issuer) -> None:
    """SEC-80 through the WSGI adapter and the synchronous Redis cache."""
    from dpopkit.storage.redis import RedisReplayCache

    tokens, key, token, port = _outage_setup(issuer)
    calls = Calls()
    replay = RedisReplayCache.from_url(f"redis://127.0.0.1:{port}/0", check_server=False)
    guard = ResourceGuard(tokens=tokens, replay=replay)
    app = DPoPWSGIMiddleware(wsgi_app(calls), guard=guard, public_origin=PUBLIC)
    statuses: list[int] = []
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url=PUBLIC) as client:

        def call() -> None:
            started = time.monotonic()
            headers = headers_for(key, token, f"{PUBLIC}/hello")
            statuses.append(client.get("/hello", headers=headers).status_code)
            assert time.monotonic() - started < 2.0

        call()
        with redis_server(port):
            call()
        call()
        with redis_server(port):
            call()
    replay.close()
    assert statuses == [503, 200, 503, 200]
    assert calls.count == 2


def test_whoami_app_in_process_with_given_validator(issuer: Issuer) -> None:
    """create_whoami_app with the AS's own validator (how `dpopkit serve` mounts it)."""
    tokens = JWTAccessTokens(issuer=issuer.issuer, audience=PUBLIC, jwks=issuer.jwks())
    app = create_whoami_app(
        issuer=issuer.issuer, public_origin=PUBLIC, tokens=tokens, require_nonce=True
    )
    key = DPoPKey.generate("EdDSA")
    token = issuer.token(jkt=key.jkt, now=time.time(), aud=PUBLIC)

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as client:
            url = f"{PUBLIC}/api/whoami"
            first = await client.get("/api/whoami", headers=headers_for(key, token, url))
            nonce = first.headers["dpop-nonce"]
            second = await client.get(
                "/api/whoami", headers=headers_for(key, token, url, nonce=nonce)
            )
            return [first.status_code, second.status_code]

    assert anyio.run(main, backend="trio") == [401, 200]


@contextmanager
def blackhole() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a hung Redis)."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sec80_hung_redis_bounded_latency_then_503(issuer: Issuer, backend: str) -> None:
    """SEC-80: a store that never answers -> 503 within the time-out.
    On trio the synchronous Redis cache runs in a worker thread."""
    from dpopkit.storage.redis import AsyncRedisReplayCache, RedisReplayCache

    tokens, key, token, _ = _outage_setup(issuer)
    with blackhole() as port:
        url = f"redis://127.0.0.1:{port}/0"
        replay: Any = (
            AsyncRedisReplayCache.from_url(url, check_server=False, timeout=0.3)
            if backend == "asyncio"
            else RedisReplayCache.from_url(url, check_server=False, timeout=0.3)
        )
        calls = Calls()
        guard = AsyncResourceGuard(tokens=tokens, replay=replay)
        app = DPoPMiddleware(asgi_app(calls), guard=guard, public_origin=PUBLIC)

        async def main() -> tuple[int, float]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as client:
                started = time.monotonic()
                headers = headers_for(key, token, f"{PUBLIC}/hello")
                status = (await client.get("/hello", headers=headers)).status_code
                return status, time.monotonic() - started

        status, elapsed = anyio.run(main, backend=backend)
    assert status == 503
    assert elapsed < 1.5
    assert calls.count == 0


@pytest.mark.redis
def test_trio_app_with_sync_redis_cache_in_thread(
    issuer: Issuer, redis_url: str, unique_prefix: str
) -> None:
    """AsyncResourceGuard on trio with the synchronous Redis cache: accept once, then replay."""
    from dpopkit.storage.redis import RedisReplayCache

    tokens, key, token, _ = _outage_setup(issuer)
    replay = RedisReplayCache.from_url(redis_url, prefix=f"{unique_prefix}:", check_server=False)
    guard = AsyncResourceGuard(tokens=tokens, replay=replay)
    calls = Calls()
    app = DPoPMiddleware(asgi_app(calls), guard=guard, public_origin=PUBLIC)
    headers = headers_for(key, token, f"{PUBLIC}/hello")

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as client:
            return [(await client.get("/hello", headers=headers)).status_code for _ in range(2)]

    try:
        assert anyio.run(main, backend="trio") == [200, 401]
    finally:
        for stored in replay.client.scan_iter(f"{unique_prefix}:*"):
            replay.client.delete(stored)
        replay.close()
