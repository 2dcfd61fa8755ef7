"""Shared helpers for the resource-server tests: an issuer, clocks, apps and harnesses."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx

from dpopkit import DPoPKey, create_proof
from dpopkit.core.jws import b64url_encode, json_dumps

NOW = 1_700_000_000.0
ISSUER = "https://as.example"
AUDIENCE = "https://api.example"
ORIGIN = "https://api.example"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Issuer:
    """A test authorization server: signs RFC 9068 access tokens."""

    issuer: str = ISSUER
    alg: str = "RS256"
    kid: str = "k1"
    key: DPoPKey = field(default_factory=lambda: _signing_key("RS256"))

    def jwk(self) -> dict[str, str]:
        return {**self.key.public_jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk()]}

    def token(
        self,
        *,
        jkt: str | None = None,
        scope: str = "read",
        now: float = NOW,
        lifetime: float = 300,
        header: Mapping[str, Any] | None = None,
        drop: Sequence[str] = (),
        **claims: Any,
    ) -> str:
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "alice",
            "aud": AUDIENCE,
            "client_id": "client-1",
            "iat": int(now),
            "exp": int(now + lifetime),
            "jti": f"at-{now}-{jkt}-{scope}",
            "scope": scope,
        }
        if jkt is not None:
            payload["cnf"] = {"jkt": jkt}
        payload.update(claims)
        for name in drop:
            payload.pop(name, None)
        hdr: dict[str, Any] = {"typ": "at+jwt", "alg": self.alg, "kid": self.kid}
        hdr.update(header or {})
        hdr = {k: v for k, v in hdr.items() if v is not None}
        signing_input = f"{b64url_encode(json_dumps(hdr))}.{b64url_encode(json_dumps(payload))}"
        signature = self.key.sign(signing_input.encode())
        return f"{signing_input}.{b64url_encode(signature)}"


_SIGNING_KEYS: dict[str, DPoPKey] = {}


def _signing_key(alg: str) -> DPoPKey:
    if alg not in _SIGNING_KEYS:
        _SIGNING_KEYS[alg] = DPoPKey.generate(alg)
    return _SIGNING_KEYS[alg]


def dpop_headers(
    key: DPoPKey,
    token: str,
    *,
    method: str = "GET",
    url: str = f"{ORIGIN}/hello",
    now: float = NOW,
    nonce: str | None = None,
    scheme: str = "DPoP",
    ath_token: str | None = None,
) -> list[tuple[str, str]]:
    proof = create_proof(
        key,
        htm=method,
        htu=url,
        access_token=ath_token or token,
        nonce=nonce,
        now=now,
        allow_insecure_http=True,
    )
    return [("Authorization", f"{scheme} {token}"), ("DPoP", proof)]


# --- apps ---------------------------------------------------------------------------------


class Calls:
    """Counts how often the protected handler ran (RS-4: nothing runs on failure)."""

    def __init__(self) -> None:
        self.count = 0


def principal_json(principal: Any) -> bytes:
    return json.dumps(
        {
            "sub": principal.sub,
            "client_id": principal.client_id,
            "scopes": sorted(principal.scopes),
            "jkt": principal.jkt,
            "scheme": principal.scheme,
        }
    ).encode()


def asgi_app(calls: Calls) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        calls.count += 1
        principal = scope.get("dpop")
        body = principal_json(principal) if principal is not None else b'{"public":true}'
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def wsgi_app(calls: Calls) -> Any:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        calls.count += 1
        principal = environ.get("dpopkit.principal")
        body = principal_json(principal) if principal is not None else b'{"public":true}'
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app


# --- harnesses ----------------------------------------------------------------------------

Requester = Callable[..., httpx.Response]


def asgi_requester(app: Any, backend: str, base_url: str = ORIGIN) -> Requester:
    """Send one request through httpx.ASGITransport on ``backend`` (asyncio or trio)."""

    def request(method: str, path: str, headers: Sequence[tuple[str, str]] = ()) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
                return await client.request(method, path, headers=list(headers))

        result: httpx.Response = anyio.run(go, backend=backend)
        return result

    return request


def wsgi_requester(app: Any, base_url: str = ORIGIN) -> Requester:
    def request(method: str, path: str, headers: Sequence[tuple[str, str]] = ()) -> httpx.Response:
        with httpx.Client(transport=httpx.WSGITransport(app=app), base_url=base_url) as client:
            return client.request(method, path, headers=list(headers))

    return request


@dataclass
class RS:
    """A protected app behind one adapter, with what tests inspect."""

    request: Requester
    calls: Calls
    guard: Any
    kind: str


Build = Callable[..., RS]


# --- a tiny HTTP server for JWKS / discovery / introspection ------------------------------


class Routes:
    """Handlers keyed by path; each returns (status, JSON body). Counts hits per path."""

    def __init__(self) -> None:
        self.get: dict[str, Callable[[], tuple[int, Any]]] = {}
        self.post: dict[str, Callable[[bytes, Mapping[str, str]], tuple[int, Any]]] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()

    def hit(self, path: str) -> None:
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1


@contextmanager
def http_server(routes: Routes, *, port: int = 0) -> Iterator[str]:
    """Serve ``routes`` on 127.0.0.1 (a free port) in a thread; yield the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            routes.hit(path)
            handler = routes.get.get(path)
            if handler is None:
                self._answer(404, {"error": "not_found"})
            else:
                self._answer(*handler())

        def do_POST(self) -> None:
            path = self.path.partition("?")[0]
            routes.hit(path)
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            handler = routes.post.get(path)
            if handler is None:
                self._answer(404, {"error": "not_found"})
            else:
                self._answer(*handler(body, dict(self.headers.items())))

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class KeyServer:
    """Discovery + JWKS served over HTTP on 127.0.0.1, with rotation."""

    def __init__(self) -> None:
        self.routes = Routes()
        self.keys = [Issuer(kid="k1")]
        self.base = ""
        self.routes.get["/jwks"] = lambda: (200, {"keys": [i.jwk() for i in self.keys]})

    def publish_metadata(self, base: str) -> None:
        self.base = base
        document = {"issuer": base, "jwks_uri": f"{base}/jwks", "token_endpoint": f"{base}/t"}
        self.routes.get["/.well-known/oauth-authorization-server"] = lambda: (200, document)

    def issuer(self, kid: str = "k1") -> Issuer:
        found = next(i for i in self.keys if i.kid == kid)
        return Issuer(issuer=self.base, kid=kid, key=found.key, alg=found.alg)
