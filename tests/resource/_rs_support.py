"""Shared helpers for the resource-server tests: an issuer, clocks, apps and harnesses."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

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


class Introspector:
    """An RFC 7662 endpoint at ``/introspect`` answering ``answers[token]`` (Basic ``rs:1``)."""

    def __init__(self) -> None:
        self.routes = Routes()
        self.answers: dict[str, dict[str, Any]] = {}
        self.auth: list[str] = []
        self.header_names: list[set[str]] = []
        self.routes.post["/introspect"] = self.handle

    def handle(self, body: bytes, headers: Any) -> tuple[int, Any]:
        self.auth.append(headers.get("Authorization", ""))
        self.header_names.append({name.lower() for name in headers})
        expected = "Basic " + base64.b64encode(b"rs%3A1:s%26cret").decode()
        if headers.get("Authorization") != expected:
            return 401, {"error": "invalid_client"}
        token = parse_qs(body.decode())["token"][0]
        answer = self.answers.get(token, {"active": False})
        # An AS names the resource in aud (RFC 7662 §2.2); answers may override it.
        return 200, {"aud": AUDIENCE, **answer} if answer.get("active") is True else answer


class FloodServer:
    """A raw HTTP/1.1 server on 127.0.0.1 answering every request with a huge JSON body.

    Each connection gets ``200`` and ``{"keys":[`` followed by blanks up to ``body_size``
    bytes (no ``Content-Length`` unless ``declare_length``), written in ``chunk_size``
    chunks ``delay`` seconds apart (a slow drip when asked) until the peer closes.
    ``sent`` records, per connection, the body bytes the server managed to write (its
    send buffer is kept small, so this tracks what the client read).
    """

    CHUNK = 16 * 1024

    def __init__(
        self,
        *,
        body_size: int = 64 * 1024 * 1024,
        declare_length: bool = False,
        chunk_size: int = CHUNK,
        delay: float = 0.0,
    ) -> None:
        import socket

        self.body_size = body_size
        self.chunk_size = chunk_size
        self.delay = delay
        self.declare_length = declare_length
        self.sent: list[int] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self.base = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FloodServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._acceptor.join(5)
        self.join()
        self._sock.close()

    def join(self) -> None:
        """Wait until every connection so far has ended (the counts are final)."""
        for thread in list(self._threads):
            thread.join(30)

    def _accept(self) -> None:
        import socket

        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: Any) -> None:
        sent = 0
        try:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            request_line = data.split(b"\r\n", 1)[0].decode("latin-1")
            with self._lock:
                self.paths.append(request_line.split(" ")[1])
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            if self.declare_length:
                head += f"Content-Length: {self.body_size}\r\n"
            conn.sendall((head + "\r\n").encode())
            prefix = b'{"keys":['
            conn.sendall(prefix)
            sent = len(prefix)
            blank = b" " * self.chunk_size
            while sent < self.body_size:
                if self.delay:
                    time.sleep(self.delay)
                conn.sendall(blank)
                sent += len(blank)
        except OSError:
            pass  # the client hung up: what it cost us is in ``sent``
        finally:
            with self._lock:
                self.sent.append(sent)
            conn.close()


class CountedBytes:
    """How many response-body bytes a client pulled from its transport."""

    def __init__(self) -> None:
        self.read = 0


def counting_client(counted: CountedBytes) -> httpx.Client:
    """An ``httpx.Client`` whose transport counts the body bytes handed to the caller."""

    class Stream(httpx.SyncByteStream):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self.inner:
                counted.read += len(chunk)
                yield chunk

        def close(self) -> None:
            self.inner.close()

    class Transport(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=Stream(response.stream),
                extensions=response.extensions,
            )

    return httpx.Client(transport=Transport(), timeout=10)


def async_counting_client(counted: CountedBytes) -> httpx.AsyncClient:
    """The asynchronous :func:`counting_client`."""

    class Stream(httpx.AsyncByteStream):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __aiter__(self) -> Any:
            async for chunk in self.inner:
                counted.read += len(chunk)
                yield chunk

        async def aclose(self) -> None:
            await self.inner.aclose()

    class Transport(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=Stream(response.stream),
                extensions=response.extensions,
            )

    return httpx.AsyncClient(transport=Transport(), timeout=10)
