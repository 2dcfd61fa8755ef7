"""Small real test servers for the client: a DPoP authorization server and resource server.

Starlette apps served by uvicorn in a thread on 127.0.0.1 (port 0). They check
proofs with the core verifier (``verify_proof`` + replay cache + nonce issuer),
require nonces at both AS and RS, and record what they saw so tests can assert
on the wire. Some routes misbehave on purpose (nonce loops, missing nonces,
Bearer downgrades) to test the client's loop protection.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import uvicorn
from joserfc import jwt
from joserfc.jwk import KeySet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from dpopkit import (
    DPoPError,
    Headers,
    InvalidTokenError,
    NonceIssuer,
    ProofPolicy,
    Reason,
    extract_proof,
    record_proof,
    verify_proof,
)
from dpopkit.core.jws import b64url_encode
from dpopkit.errors import InvalidClientError, InvalidGrantError, InvalidRequestError
from dpopkit.storage.memory import MemoryReplayCache

CLIENT_ID = "cli"
CLIENT_SECRET = "s3cret/+ :x"
PKJ_CLIENT = "pkj"
DOCS_CLIENT_ID = "my-app"  # the client id the docs' snippets use


@dataclass
class Issued:
    jkt: str | None
    expires_at: float
    scope: str | None = None


@dataclass
class State:
    """What the servers remember and how they are told to behave."""

    base: str = ""
    tokens: dict[str, Issued] = field(default_factory=dict)
    refresh_tokens: dict[str, Issued] = field(default_factory=dict)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    par: dict[str, dict[str, str]] = field(default_factory=dict)
    revoked: list[str] = field(default_factory=list)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    par_requests: list[dict[str, Any]] = field(default_factory=list)
    rs_requests: list[dict[str, Any]] = field(default_factory=list)
    refresh_count: int = 0
    expires_in: int = 300
    token_type: str = "DPoP"
    require_par: bool = False
    offer_par: bool = True
    algs: list[str] | None = None
    metadata_issuer: str | None = None
    pkj_public_jwk: dict[str, str] | None = None
    refresh_delay: float = 0.0
    rs_reject_tokens: bool = False
    token_body_override: bytes | None = None
    # path → (status, content type, body): the answer of /token, /par or /revoke after a
    # valid proof (if one is sent)
    error_answers: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    # RFC 9207: advertise authorization_response_iss_parameter_supported / what iss to send
    # ("" = none)
    advertise_iss: bool = False
    callback_iss: str | None = None  # None = the issuer
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def issuer(self) -> str:
        return self.base


def _headers(request: Request) -> Headers:
    return Headers(
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
    )


def _url(request: Request, state: State) -> str:
    # The public URL is configuration (our own base), never the Host header.
    return state.base + request.url.path


def _err(exc: DPoPError, role: str) -> Response:
    view = exc.as_response(role=role, algs=["ES256", "EdDSA", "Ed25519", "PS256", "RS256"])  # type: ignore[arg-type]
    return Response(view.body, status_code=view.status, headers=dict(view.headers))


class Servers:
    def __init__(self) -> None:
        self.state = State()
        self.as_nonces = NonceIssuer([secrets.token_bytes(32)], context="as")
        self.rs_nonces = NonceIssuer([secrets.token_bytes(32)], context="rs")
        self.replay = MemoryReplayCache()
        self.app = Starlette(
            routes=[
                Route("/.well-known/oauth-authorization-server", self.metadata),
                Route("/oidc/.well-known/openid-configuration", self.oidc_metadata),
                Route("/token", self.token, methods=["POST"]),
                Route("/par", self.par_endpoint, methods=["POST"]),
                Route("/authorize", self.authorize),
                Route("/revoke", self.revoke, methods=["POST"]),
                Route("/api/{name:path}", self.api, methods=["GET", "POST", "PUT"]),
                Route("/loop/new-nonce", self.loop_new_nonce, methods=["GET", "POST"]),
                Route("/loop/same-nonce", self.loop_same_nonce, methods=["GET", "POST"]),
                Route("/loop/no-nonce", self.loop_no_nonce, methods=["GET", "POST"]),
                Route("/as-loop/no-nonce", self.as_no_nonce, methods=["POST"]),
                Route("/stream", self.stream, methods=["GET"]),
                Route("/redirect/{code:int}", self.redirect, methods=["GET", "POST"]),
                Route("/redirect-away", self.redirect_away, methods=["GET"]),
            ]
        )

    # -- AS ----------------------------------------------------------------------------------

    async def metadata(self, request: Request) -> Response:
        s = self.state
        data: dict[str, Any] = {
            "issuer": s.metadata_issuer or s.issuer,
            "token_endpoint": s.base + "/token",
            "authorization_endpoint": s.base + "/authorize",
            "revocation_endpoint": s.base + "/revoke",
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
                "none",
            ],
        }
        if s.offer_par:
            data["pushed_authorization_request_endpoint"] = s.base + "/par"
        if s.require_par:
            data["require_pushed_authorization_requests"] = True
        if s.algs is not None:
            data["dpop_signing_alg_values_supported"] = s.algs
        if s.advertise_iss:
            data["authorization_response_iss_parameter_supported"] = True
        return JSONResponse(data)

    async def oidc_metadata(self, request: Request) -> Response:
        s = self.state
        return JSONResponse({"issuer": s.base + "/oidc", "token_endpoint": s.base + "/token"})

    def _client(self, request: Request, form: dict[str, str]) -> str:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            raw = base64.b64decode(auth[6:]).decode()
            user, _, pwd = raw.partition(":")
            if unquote(user) in (CLIENT_ID, DOCS_CLIENT_ID) and unquote(pwd) == CLIENT_SECRET:
                return unquote(user)
            raise InvalidClientError(challenge_scheme="Basic")
        if "client_assertion" in form:
            assert form.get("client_assertion_type") == (
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            )
            assert self.state.pkj_public_jwk is not None
            jwks: Any = {"keys": [self.state.pkj_public_jwk]}
            keys = KeySet.import_key_set(jwks)
            try:
                token = jwt.decode(form["client_assertion"], keys)
            except Exception:
                raise InvalidClientError() from None
            claims = token.claims
            if (
                claims.get("iss") != PKJ_CLIENT
                or claims.get("sub") != PKJ_CLIENT
                or claims.get("aud") != self.state.issuer
                or claims.get("exp", 0) < time.time()
            ):
                raise InvalidClientError()
            return PKJ_CLIENT
        if form.get("client_secret") is not None:
            if form.get("client_id") == CLIENT_ID and form["client_secret"] == CLIENT_SECRET:
                return CLIENT_ID
            raise InvalidClientError()
        if form.get("client_id") == "public":
            return "public"
        raise InvalidClientError()

    def _proof(self, request: Request, url: str) -> Any:
        now = time.time()
        proof = extract_proof(_headers(request))
        # Nonce required at the AS (RFC 9449 §8).
        checked = verify_proof(
            proof,
            htm=request.method,
            htu=url,
            policy=ProofPolicy(require_nonce=True),
            nonce_check=self.as_nonces,
            now=now,
        )
        record_proof(self.replay, checked, now=now)
        return checked

    async def _form(self, request: Request) -> dict[str, str]:
        body = (await request.body()).decode()
        return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}

    async def token(self, request: Request) -> Response:
        s = self.state
        form = await self._form(request)
        record: dict[str, Any] = {"form": form, "headers": dict(request.headers)}
        s.token_requests.append(record)
        try:
            checked = self._proof(request, s.base + "/token")
            record["jkt"] = checked.jkt
            record["proof_claims"] = dict(checked.claims)
            if "/token" in s.error_answers:
                return self._error_answer("/token")
            client = self._client(request, form)
            grant = form.get("grant_type")
            scope = form.get("scope")
            if grant == "client_credentials":
                pass
            elif grant == "authorization_code":
                code = s.codes.pop(form.get("code", ""), None)
                if code is None or code["redirect_uri"] != form.get("redirect_uri"):
                    raise InvalidGrantError()
                challenge = b64url_encode(
                    hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                )
                if challenge != code["code_challenge"]:
                    raise InvalidGrantError()
                if code.get("dpop_jkt") and code["dpop_jkt"] != checked.jkt:
                    raise InvalidGrantError()
                scope = code.get("scope")
            elif grant == "refresh_token":
                if s.refresh_delay:
                    await asyncio.sleep(s.refresh_delay)
                with s.lock:
                    old = s.refresh_tokens.get(form.get("refresh_token", ""))
                    if old is None or old.jkt != checked.jkt:
                        raise InvalidGrantError()
                    s.refresh_count += 1
                scope = old.scope
            else:
                raise InvalidRequestError()
        except DPoPError as exc:
            return _err(exc, "as")
        del client
        if s.token_body_override is not None:
            return Response(s.token_body_override, headers={"Content-Type": "application/json"})
        at = secrets.token_urlsafe(24)
        rt = secrets.token_urlsafe(24)
        s.tokens[at] = Issued(checked.jkt, time.time() + s.expires_in, scope)
        s.refresh_tokens[rt] = Issued(checked.jkt, time.time() + 3600, scope)
        body: dict[str, Any] = {
            "access_token": at,
            "token_type": s.token_type,
            "expires_in": s.expires_in,
        }
        if grant != "client_credentials":
            body["refresh_token"] = rt
        if scope:
            body["scope"] = scope
        headers = {"Cache-Control": "no-store"}
        return JSONResponse(body, headers=headers)

    def _error_answer(self, path: str) -> Response:
        status, ctype, content = self.state.error_answers[path]
        return Response(content, status_code=status, headers={"Content-Type": ctype})

    async def par_endpoint(self, request: Request) -> Response:
        s = self.state
        form = await self._form(request)
        record: dict[str, Any] = {"form": form}
        s.par_requests.append(record)
        try:
            if "dpop" in request.headers:
                checked = self._proof(request, s.base + "/par")
                record["jkt"] = checked.jkt
                if form.get("dpop_jkt") and form["dpop_jkt"] != checked.jkt:
                    raise InvalidRequestError()
            if "/par" in s.error_answers:
                return self._error_answer("/par")
            self._client(request, form)
        except DPoPError as exc:
            return _err(exc, "as")
        uri = "urn:ietf:params:oauth:request_uri:" + secrets.token_urlsafe(12)
        s.par[uri] = form
        return JSONResponse({"request_uri": uri, "expires_in": 60}, status_code=201)

    async def authorize(self, request: Request) -> Response:
        s = self.state
        params = dict(request.query_params)
        if "request_uri" in params:
            params = s.par.pop(params["request_uri"])
        elif s.require_par:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        code = secrets.token_urlsafe(16)
        s.codes[code] = params
        answer = {"code": code, "state": params["state"]}
        if "error" in params:  # the test asks for an error callback (RFC 6749 §4.1.2.1)
            answer = {"error": params["error"], "state": params["state"]}
        iss = s.issuer if s.callback_iss is None else s.callback_iss
        if iss:
            answer["iss"] = iss
        query = urlencode(answer)
        return RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=302)

    async def revoke(self, request: Request) -> Response:
        form = await self._form(request)
        if "/revoke" in self.state.error_answers:
            return self._error_answer("/revoke")
        try:
            self._client(request, form)
        except DPoPError as exc:
            return _err(exc, "as")
        self.state.revoked.append(form["token"])
        self.state.tokens.pop(form["token"], None)
        self.state.refresh_tokens.pop(form["token"], None)
        return Response(status_code=200)

    async def as_no_nonce(self, request: Request) -> Response:
        return JSONResponse({"error": "use_dpop_nonce"}, status_code=400)

    # -- RS ----------------------------------------------------------------------------------

    async def api(self, request: Request) -> Response:
        s = self.state
        now = time.time()
        body = await request.body()
        record: dict[str, Any] = {
            "path": request.url.path,
            "body": body,
            "headers": dict(request.headers),
        }
        s.rs_requests.append(record)
        try:
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "dpop" or not token:
                raise InvalidTokenError(Reason.MISSING_TOKEN)
            checked = verify_proof(
                extract_proof(_headers(request)),
                htm=request.method,
                htu=_url(request, s),
                policy=ProofPolicy(require_nonce=True),
                nonce_check=self.rs_nonces,
                access_token=token,
                now=now,
            )
            issued = s.tokens.get(token)
            if issued is None or issued.expires_at < now or s.rs_reject_tokens:
                raise InvalidTokenError(Reason.TOKEN_EXPIRED)
            if issued.jkt is None:
                issued.jkt = checked.jkt  # test facility: an unbound token binds at first use
            if issued.jkt != checked.jkt:
                raise InvalidTokenError(Reason.JKT_MISMATCH)
            record_proof(self.replay, checked, now=now)
        except DPoPError as exc:
            record["error"] = exc.error
            return _err(exc, "rs")
        record["jti"] = checked.jti
        record["nonce"] = checked.nonce
        headers = {}
        if checked.nonce_info is not None and not checked.nonce_info.current:
            headers["DPoP-Nonce"] = self.rs_nonces.issue(now=now)
        return JSONResponse({"ok": True, "jti": checked.jti, "len": len(body)}, headers=headers)

    def _challenge(self, nonce: str | None) -> Response:
        headers = {"WWW-Authenticate": 'DPoP error="use_dpop_nonce", algs="ES256"'}
        if nonce is not None:
            headers["DPoP-Nonce"] = nonce
        self.state.rs_requests.append({"path": "loop"})
        return Response(b'{"error":"use_dpop_nonce"}', status_code=401, headers=headers)

    async def loop_new_nonce(self, request: Request) -> Response:
        await request.body()
        return self._challenge(secrets.token_urlsafe(8))

    async def loop_same_nonce(self, request: Request) -> Response:
        await request.body()
        return self._challenge("always-the-same")

    async def loop_no_nonce(self, request: Request) -> Response:
        await request.body()
        return self._challenge(None)

    async def redirect(self, request: Request) -> Response:
        await request.body()
        self.state.rs_requests.append({"path": "/redirect", "headers": dict(request.headers)})
        code = request.path_params["code"]
        return RedirectResponse(self.state.base + "/api/landed?from=redirect", status_code=code)

    async def redirect_away(self, request: Request) -> Response:
        self.state.rs_requests.append({"path": "/redirect-away", "headers": dict(request.headers)})
        target = request.query_params["to"]
        return RedirectResponse(target, status_code=302)

    async def stream(self, request: Request) -> Response:
        return Response(b"x" * 100_000, headers={"DPoP-Nonce": "from-stream"})


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


_Served = TypeVar("_Served", "Servers", "RedirectLab")


@contextmanager
def running(
    servers: _Served, *, certfile: str | None = None, keyfile: str | None = None
) -> Iterator[_Served]:
    """Serve ``servers.app`` with uvicorn on 127.0.0.1 (a free port) in a thread.

    With ``certfile``/``keyfile`` it serves https (a test certificate for 127.0.0.1).
    """
    sock = _free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        servers.app,
        log_level="warning",
        lifespan="off",
        access_log=False,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    scheme = "https" if certfile else "http"
    base = f"{scheme}://127.0.0.1:{port}"
    if isinstance(servers, Servers):
        servers.state.base = base
    else:
        servers.base = base
    try:
        yield servers
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def issue_token(servers: Servers, jkt: str | None, *, expires_in: int = 300) -> str:
    """Put an access token bound to ``jkt`` straight into the server's store."""
    at = secrets.token_urlsafe(24)
    servers.state.tokens[at] = Issued(jkt, time.time() + expires_in)
    return at


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def dumps(value: object) -> str:
    return json.dumps(value)


# -- redirect lab ---------------------------------------------------------------------------------


@dataclass
class Hop:
    """One request a :class:`RedirectLab` received, and what its proof proved."""

    lab: str
    method: str
    url: str  # the lab's own base + path: the htu a proof must carry
    headers: dict[str, str]
    claims: dict[str, Any] | None  # the verified proof's claims (None: no proof or refused)
    refused: Reason | None  # why verify_proof refused the proof, if it did


class RedirectLab:
    """A server that redirects (``/r/{code}?to=URL``) and lands (``/land``), recording every hop.

    Each received ``DPoP`` proof is checked with ``verify_proof`` against the method
    and URL this server actually received (and ``ath`` against the token sent, if any).
    """

    def __init__(self, name: str, hops: list[Hop]) -> None:
        self.name = name
        self.hops = hops
        self.base = ""
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
        self.app = Starlette(
            routes=[
                Route("/r/{code:int}", self.redirect, methods=methods),
                Route("/land", self.land, methods=methods),
                Route("/challenge", self.challenge, methods=methods),
                Route("/nonce-land", self.nonce_land, methods=methods),
            ]
        )

    def _record(self, request: Request) -> Hop:
        # The URL this request was sent to (the host name the client used, our scheme).
        url = f"{self.base.split(':', 1)[0]}://{request.headers['host']}{request.url.path}"
        headers = dict(request.headers)
        claims: dict[str, Any] | None = None
        refused: Reason | None = None
        if "dpop" in headers:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            try:
                checked = verify_proof(
                    extract_proof(_headers(request)),
                    htm=request.method,
                    htu=url,
                    access_token=token if scheme.lower() == "dpop" else None,
                    now=time.time(),
                )
                claims = dict(checked.claims)
            except DPoPError as exc:
                refused = exc.reason
        hop = Hop(self.name, request.method, url, headers, claims, refused)
        self.hops.append(hop)
        return hop

    async def redirect(self, request: Request) -> Response:
        await request.body()
        self._record(request)
        code = request.path_params["code"]
        return Response(status_code=code, headers={"Location": request.query_params["to"]})

    async def challenge(self, request: Request, *, record: bool = True) -> Response:
        """Ask for a nonce, as an RS would: a client must not answer with our neighbour's token."""
        await request.body()
        if record:
            self._record(request)
        headers = {"WWW-Authenticate": 'DPoP error="use_dpop_nonce"', "DPoP-Nonce": "lab-nonce"}
        return Response(status_code=401, headers=headers)

    async def nonce_land(self, request: Request) -> Response:
        """Land only with a proof carrying our nonce (RFC 9449 §9); else ask for it."""
        await request.body()
        hop = self._record(request)
        if hop.claims is None or hop.claims.get("nonce") != "lab-nonce":
            return await self.challenge(request, record=False)
        return JSONResponse({"landed": self.name})

    async def land(self, request: Request) -> Response:
        body = await request.body()
        self._record(request)
        return JSONResponse({"landed": self.name, "len": len(body)})


@contextmanager
def redirect_labs(certfile: str, keyfile: str) -> Iterator[dict[str, RedirectLab]]:
    """Three labs sharing one hop log: ``a`` and ``b`` (http, two ports), ``tls`` (https)."""
    hops: list[Hop] = []
    labs = {name: RedirectLab(name, hops) for name in ("a", "b", "tls")}
    with (
        running(labs["a"]),
        running(labs["b"]),
        running(labs["tls"], certfile=certfile, keyfile=keyfile),
    ):
        yield labs
