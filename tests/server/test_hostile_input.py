"""HD-7: untrusted input never yields a 5xx at the authorization server (only 503 for a store).

Every endpoint of the Starlette app (token, PAR, authorize GET and the login form,
introspect, revoke, register, JWKS, metadata and the mounted demo API) is driven
through httpx.ASGITransport with hostile methods, queries, headers and bodies, on a
real SQLite file and (marked ``postgres``) a real PostgreSQL database. Errors are
RFC 6749 §5.2 JSON with ``Cache-Control: no-store``; ``/authorize`` answers a browser
with an HTML page or a redirect carrying the error (RFC 6749 §4.1.2.1).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpopkit import DPoPKey, Headers, InvalidRequestError, NonceIssuer, RequestView, create_proof
from dpopkit.cli.serve import whoami_mounts
from dpopkit.core.jws import numeric_date
from dpopkit.server import parsing
from dpopkit.server.app import create_app
from dpopkit.server.authorize import ConfigUsers
from dpopkit.server.service import JWT_BEARER_ASSERTION, ServerSettings, TokenService
from dpopkit.storage.memory import MemoryReplayCache
from dpopkit.storage.sql import ClientRecord, SQLGrantStore
from tests.conftest import PG_DSN, missing_real_part
from tests.hostile import (
    CONTENT_TYPES,
    HUGE,
    METHODS,
    OAUTH_ERRORS,
    Request,
    check_no_5xx,
    check_oauth_error,
    header_bytes,
    hostile_claims,
    json_values,
    raw_json,
    send_asgi,
    signed_jwt,
    urlencoded,
    values,
)

from .conftest import (
    AS,
    CLIENTS,
    ISSUER,
    REDIRECT,
    SECRET,
    USERS,
    Clock,
    basic,
    code_params,
    get_code,
    hidden_fields,
    pkce,
)

JWT_KEY = DPoPKey.generate("ES256")
PROOF_KEY = DPoPKey.generate("ES256")
JWT_CLIENT = ClientRecord(
    client_id="jwt",
    token_endpoint_auth_method="private_key_jwt",
    grant_types=("client_credentials",),
    scope="read",
    jwks={"keys": [JWT_KEY.public_jwk]},
)
_, CHALLENGE = pkce()


@dataclass
class Server:
    """One app over one grant store, shared by a module's tests."""

    app: Any
    service: TokenService
    examples: int
    token: str = ""

    def send(self, request: Request) -> httpx.Response:
        return send_asgi(self.app, ISSUER, request)


def _open_store(backend: str, tmp: Any) -> SQLGrantStore:
    if backend == "sqlite":
        return SQLGrantStore(f"sqlite:///{tmp}/grants.db")
    try:
        return SQLGrantStore(PG_DSN, table_prefix=f"hd7_{uuid.uuid4().hex[:12]}_")
    except Exception as exc:  # the server is absent: skip (or fail under CI)
        missing_real_part(f"PostgreSQL at {PG_DSN}: {type(exc).__name__}")


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    store = _open_store(request.param, tmp_path_factory.mktemp("hostile"))
    service = TokenService(
        ServerSettings(issuer=ISSUER, registration_enabled=True, nonce_policy="per_client"),
        store=store,
        replay=MemoryReplayCache(single_process=True),
        nonces=NonceIssuer([b"n" * 32], context="as"),
    )
    for client in (*CLIENTS, JWT_CLIENT):
        store.put_client(client)
    app = create_app(
        service, authenticator=ConfigUsers(USERS), mounts=whoami_mounts(service, ISSUER)
    )
    server = Server(app, service, 60 if request.param == "sqlite" else 12)
    proof = create_proof(PROOF_KEY, htm="POST", htu=ISSUER + "/token", allow_insecure_http=True)
    token = server.send(
        _form(
            "/token",
            {"grant_type": "client_credentials"},
            (b"authorization", basic("conf", SECRET).encode()),
            (b"dpop", proof.encode()),
        )
    )
    assert token.status_code == 200, token.text
    server.token = token.json()["access_token"]
    yield server
    if not store.is_sqlite:
        store.drop_schema()
    service.close()


# --- the seen cases, reproduced ----------------------------------------------------------


def _form(path: str, data: dict[str, str], *headers: tuple[bytes, bytes]) -> Request:
    return Request(
        "POST",
        path,
        [(b"content-type", b"application/x-www-form-urlencoded"), *headers],
        urlencode(data).encode(),
    )


def _assertion(exp: str, sub: str = '"jwt"') -> str:
    payload = f'{{"iss":"jwt","sub":{sub},"aud":"{ISSUER}/token","jti":"j-{exp[:8]}","exp":{exp}}}'
    return signed_jwt(JWT_KEY, {"alg": "ES256", "typ": "JWT"}, payload.encode())


def test_hd7_authorize_with_more_than_64_parameters_is_a_400_page(server: Server) -> None:
    """HD-7: ``/authorize`` with 70 parameters is a 400 page, not a 500 (RFC 6749 §4.1.2.1)."""
    query = "&".join(f"p{i}=1" for i in range(70))
    resp = server.send(Request("GET", f"/authorize?client_id=public&{query}"))
    assert resp.status_code == 400
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    "body", [b"[" * 30000 + b"]" * 30000, b'{"a":' * 5000 + b"1" + b"}" * 5000]
)
def test_hd7_register_deeply_nested_json_is_invalid_client_metadata(
    server: Server, body: bytes
) -> None:
    """HD-7: deeply nested JSON at ``/register`` is ``invalid_client_metadata`` (RFC 7591).

    RFC 7591 §3.2.2; the core parser bounds nesting at 32 (a RecursionError before).
    """
    resp = server.send(Request("POST", "/register", [(b"content-type", b"application/json")], body))
    assert resp.status_code == 400
    check_oauth_error(resp)
    assert resp.json()["error"] == "invalid_client_metadata"


@pytest.mark.parametrize("exp", [HUGE, "-" + HUGE])
def test_hd7_client_assertion_exp_beyond_float_is_invalid_client(server: Server, exp: str) -> None:
    """HD-7: a client assertion with ``exp`` = ±10^400 is ``invalid_client`` (RFC 7523 §3, 401)."""
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_BEARER_ASSERTION,
        "client_assertion": _assertion(exp),
    }
    resp = server.send(_form("/token", data))
    assert resp.status_code == 401
    check_oauth_error(resp)
    assert resp.json()["error"] == "invalid_client"


def _nul_requests() -> list[tuple[str, Request]]:
    cc = {"grant_type": "client_credentials"}
    nul = "con\x00f"
    basic_nul = ("authorization", basic(nul, SECRET))
    return [
        ("token form client_id", _form("/token", {**cc, "client_id": nul})),
        ("token Basic client_id", _form("/token", cc, (b"authorization", basic_nul[1].encode()))),
        (
            "token assertion sub",
            _form(
                "/token",
                {
                    **cc,
                    "client_assertion_type": JWT_BEARER_ASSERTION,
                    "client_assertion": _assertion("1", '"jw\\u0000t"'),
                },
            ),
        ),
        ("par client_id", _form("/par", {"client_id": nul, "response_type": "code"})),
        (
            "introspect client_id",
            _form("/introspect", {"token": "x", "client_id": nul, "client_secret": SECRET}),
        ),
        ("revoke client_id", _form("/revoke", {"token": "x", "client_id": nul})),
        ("authorize query", Request("GET", "/authorize?client_id=con%00f&response_type=code")),
        (
            "authorize state",
            Request(
                "GET",
                "/authorize?"
                + urlencode(
                    {
                        "client_id": "public",
                        "response_type": "code",
                        "redirect_uri": REDIRECT,
                        "code_challenge": CHALLENGE,
                        "code_challenge_method": "S256",
                        "state": "a\x00b",
                    }
                ),
            ),
        ),
        (
            "register JSON",
            Request(
                "POST",
                "/register",
                [(b"content-type", b"application/json")],
                json.dumps({"redirect_uris": [REDIRECT], "client_name": nul}).encode(),
            ),
        ),
    ]


@pytest.mark.parametrize(
    ("where", "request_"), _nul_requests(), ids=[w for w, _ in _nul_requests()]
)
def test_hd7_nul_byte_is_refused_before_the_store(
    server: Server, where: str, request_: Request
) -> None:
    """HD-7: a NUL in ``client_id`` (form, Basic, assertion ``sub``, query) or any other
    parameter is refused as input (RFC 6749 Appendix A) on SQLite and PostgreSQL alike,
    never stored, never a 500."""
    resp = server.send(request_)
    assert 400 <= resp.status_code < 500, (where, resp.status_code)
    assert resp.headers["cache-control"] == "no-store"
    if request_.path.startswith("/authorize"):
        assert resp.headers["content-type"].startswith("text/html")
    else:
        check_oauth_error(resp)


def test_hd7_non_ascii_values_compared_in_constant_time_are_refused_not_500(
    server: Server,
) -> None:
    """HD-7: non-ASCII ``dpop_jkt`` at ``/par`` (RFC 9449 §10.1), ``redirect_uri`` at
    ``/token`` (RFC 6749 §4.1.3) and login-form ``csrf`` are compared as UTF-8 bytes:
    the answer is the endpoint's error, not a ``TypeError`` from ``hmac.compare_digest``."""
    par = {
        "client_id": "public",
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        "dpop_jkt": "é" * 43,
    }
    proof = create_proof(PROOF_KEY, htm="POST", htu=ISSUER + "/par", allow_insecure_http=True)
    resp = server.send(_form("/par", par, (b"dpop", proof.encode())))
    check_oauth_error(resp)
    assert resp.json()["error"] == "invalid_request"

    code, verifier = get_code(AS(server.service, server.service.store, Clock(time.time())))
    params = {**code_params(code, verifier), "redirect_uri": REDIRECT + "é"}
    resp = server.send(_form("/token", params))
    check_oauth_error(resp)
    assert resp.json()["error"] == "invalid_grant"

    cookie, fields = _login_page(server)
    fields = {**fields, "csrf": "é" * 64, "username": "alice", "password": "x"}
    body = urlencode(fields).encode()
    headers = [(b"content-type", b"application/x-www-form-urlencoded"), (b"cookie", cookie)]
    resp = server.send(Request("POST", "/authorize", headers, body))
    assert resp.status_code == 403
    assert resp.headers["cache-control"] == "no-store"


# --- hostile input, per endpoint ----------------------------------------------------------


def _settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))


def _proof_header(url: str) -> st.SearchStrategy[bytes]:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": PROOF_KEY.public_jwk}
    hostile = hostile_claims({"htm": "POST", "htu": url}).map(
        lambda p: signed_jwt(PROOF_KEY, header, p).encode()
    )
    valid = st.just(0).map(
        lambda _: create_proof(PROOF_KEY, htm="POST", htu=url, allow_insecure_http=True).encode()
    )
    return st.one_of(valid, hostile, header_bytes)


def _authorization() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.just(basic("conf", SECRET).encode()),
        st.builds(
            lambda i, s: b"Basic " + base64.b64encode(f"{i}:{s}".encode("utf-8", "surrogatepass")),
            values,
            values,
        ),
        st.sampled_from([b"Basic", b"Basic ====", b"Basic \xff\xfe", b"DPoP x", b"Bearer x"]),
        header_bytes,
    )


@st.composite
def _headers(draw: st.DrawFn, url: str) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for _ in range(draw(st.integers(0, 2))):
        out.append((b"authorization", draw(_authorization())))
    for _ in range(draw(st.integers(0, 2))):
        out.append((b"dpop", draw(_proof_header(url))))
    if draw(st.booleans()):
        out.append(
            (
                draw(
                    st.sampled_from(
                        [b"origin", b"cookie", b"x-forwarded-host", b"content-encoding"]
                    )
                ),
                draw(header_bytes),
            )
        )
    return out


def _assertion_pairs() -> st.SearchStrategy[str]:
    claims = hostile_claims({"iss": "jwt", "aud": ISSUER + "/token"})
    return claims.map(
        lambda p: urlencode(
            {
                "client_assertion_type": JWT_ASSERTION_TYPE,
                "client_assertion": signed_jwt(JWT_KEY, {"alg": "ES256"}, p),
            }
        )
    )


JWT_ASSERTION_TYPE = JWT_BEARER_ASSERTION


@st.composite
def _chaos_request(draw: st.DrawFn, path: str, known: list[str], bases: list[str]) -> Request:
    """Anything: odd methods, media types, bodies, queries and headers at once."""
    url = ISSUER + path
    base = draw(st.sampled_from(bases) | _assertion_pairs()) if bases else ""
    kind = draw(st.sampled_from(["form", "form", "json", "raw"]))
    if kind == "form":
        extra = draw(urlencoded(known))
        body = "&".join(p for p in (base, extra) if p).encode("utf-8", "surrogatepass")
        ctype = draw(st.sampled_from(CONTENT_TYPES))
    elif kind == "json":
        body = draw(raw_json())
        ctype = draw(st.sampled_from(["application/json", *CONTENT_TYPES]))
    else:
        body = draw(
            st.binary(max_size=200) | values.map(lambda v: v.encode("utf-8", "surrogatepass"))
        )
        ctype = draw(st.sampled_from(CONTENT_TYPES))
    method = draw(st.sampled_from(METHODS))
    query = draw(st.just("") | urlencoded(known).map(lambda q: "?" + q))
    headers = draw(_headers(url))
    if ctype:
        headers.append((b"content-type", ctype.encode("latin-1")))
    return Request(method, path + query, headers, b"" if method in ("GET", "HEAD") else body)


@st.composite
def _near_valid_request(draw: st.DrawFn, path: str, known: list[str], bases: list[str]) -> Request:
    """A request the endpoint would accept, with one or two hostile parts: it gets deep."""
    url = ISSUER + path
    base = draw(st.sampled_from(bases) | _assertion_pairs()) if bases else ""
    pairs = draw(
        st.lists(st.tuples(st.sampled_from(known) if known else values, values), max_size=2)
    )
    extra = urlencode(pairs, encoding="utf-8", errors="surrogatepass")
    body = "&".join(p for p in (base, extra) if p).encode()
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/x-www-form-urlencoded")]
    if draw(st.booleans()):
        headers.append((b"authorization", basic("conf", SECRET).encode()))
    if draw(st.booleans()):
        headers.append((b"dpop", draw(_proof_header(url))))
    return Request("POST", path, headers, body)


@st.composite
def _near_valid_json(draw: st.DrawFn) -> Request:
    meta: dict[str, object] = {"redirect_uris": [REDIRECT]}
    names = [
        "redirect_uris",
        "grant_types",
        "token_endpoint_auth_method",
        "scope",
        "jwks",
        "client_name",
        "response_types",
        "dpop_bound_access_tokens",
        "access_token_format",
        "resource",
    ]
    for name in draw(st.lists(st.sampled_from(names), max_size=3)):
        meta[name] = draw(json_values())
    body = json.dumps(meta).encode("utf-8", "surrogatepass")
    return Request("POST", "/register", [(b"content-type", b"application/json")], body)


@st.composite
def _near_valid_api_call(draw: st.DrawFn, token: str) -> Request:
    """The demo API with a live DPoP-bound token and a proof with one hostile part."""
    method = draw(st.sampled_from(["GET", "POST", "GET", "PUT", "HEAD"]))
    url = ISSUER + "/api/whoami"
    valid = create_proof(
        PROOF_KEY, htm=method, htu=url, access_token=token, allow_insecure_http=True
    )
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": PROOF_KEY.public_jwk}
    fixed = {"htm": method, "htu": url, "ath": valid and _ath(token)}
    hostile = draw(hostile_claims(fixed)).decode("utf-8", "surrogatepass")
    proof = draw(
        st.sampled_from(
            [valid, signed_jwt(PROOF_KEY, header, hostile.encode("utf-8", "surrogatepass"))]
        )
    )
    scheme = draw(st.sampled_from(["DPoP", "dpop", "Bearer", "DPoP  "]))
    headers = [(b"authorization", f"{scheme} {token}".encode()), (b"dpop", proof.encode())]
    headers += draw(
        st.lists(
            st.tuples(
                st.sampled_from([b"dpop", b"authorization", b"x-forwarded-host", b"host"]),
                header_bytes,
            ),
            max_size=1,
        )
    )
    query = draw(st.sampled_from(["", "?access_token=" + token, "?a=%00"]))
    return Request(method, "/api/whoami" + query, headers)


def _ath(token: str) -> str:
    from dpopkit.core.thumbprint import access_token_hash

    return access_token_hash(token)


def _api_request(
    path: str, known: list[str], bases: list[str], token: str = ""
) -> st.SearchStrategy[Request]:
    near = _near_valid_json() if path == "/register" else _near_valid_request(path, known, bases)
    if path == "/api/whoami":
        near = _near_valid_api_call(token)
    if path in ("/jwks", "/.well-known/oauth-authorization-server"):
        near = st.builds(lambda h: Request("GET", path, h), _headers(ISSUER + path))
    return st.one_of(near, near, _chaos_request(path, known, bases))


ENDPOINTS: dict[str, tuple[list[str], list[str]]] = {
    "/token": (
        [
            "grant_type",
            "code",
            "code_verifier",
            "redirect_uri",
            "refresh_token",
            "client_id",
            "client_secret",
            "client_assertion",
            "client_assertion_type",
            "scope",
            "resource",
        ],
        [
            "grant_type=client_credentials",
            "grant_type=authorization_code&code=x&code_verifier=" + "a" * 43,
            "grant_type=refresh_token&refresh_token=x",
            "grant_type=client_credentials&client_id=post&client_secret=" + SECRET,
            "",
        ],
    ),
    "/par": (
        [
            "client_id",
            "response_type",
            "redirect_uri",
            "code_challenge",
            "code_challenge_method",
            "state",
            "scope",
            "resource",
            "dpop_jkt",
            "request_uri",
        ],
        [
            urlencode(
                {
                    "client_id": "public",
                    "response_type": "code",
                    "redirect_uri": REDIRECT,
                    "code_challenge": CHALLENGE,
                    "code_challenge_method": "S256",
                }
            ),
            "",
        ],
    ),
    "/introspect": (
        ["token", "token_type_hint", "client_id", "client_secret"],
        ["token=x", "token=a.b.c&client_id=post&client_secret=" + SECRET, ""],
    ),
    "/revoke": (
        ["token", "token_type_hint", "client_id"],
        ["token=x&client_id=public", "token=a.b.c", ""],
    ),
    "/register": (["redirect_uris", "client_name"], []),
    "/jwks": ([], []),
    "/.well-known/oauth-authorization-server": ([], []),
    "/api/whoami": (["access_token"], []),
}


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_hd7_hostile_requests_get_oauth_errors_never_5xx(server: Server, path: str) -> None:
    """HD-7: hostile methods, queries, headers and bodies at each AS endpoint give a
    2xx or the endpoint's OAuth error (RFC 6749 §5.2 JSON, ``no-store``), 503 at most."""
    known, bases = ENDPOINTS[path]

    @_settings(server.examples)
    @given(request=_api_request(path, known, bases, server.token))
    def run(request: Request) -> None:
        resp = server.send(request)
        check_oauth_error(
            resp, empty_challenge_ok=path == "/api/whoami", head=request.method == "HEAD"
        )

    run()


@st.composite
def _authorize_query(draw: st.DrawFn) -> Request:
    params = {
        "client_id": draw(st.sampled_from(["public", "conf", "noncey", "nobody"]) | values),
        "response_type": "code",
        "redirect_uri": draw(st.sampled_from([REDIRECT, "http://127.0.0.1:9/cb"]) | values),
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        "state": "st",
    }
    keep = draw(st.lists(st.sampled_from(list(params)), unique=True))
    base = urlencode({k: params[k] for k in keep}, encoding="utf-8", errors="surrogatepass")
    extra = draw(urlencoded(["scope", "resource", "dpop_jkt", "request_uri", "state", "prompt"]))
    raw = draw(st.just("") | st.binary(max_size=20).map(lambda b: b.decode("latin-1")))
    headers = draw(_headers(ISSUER + "/authorize"))
    return Request("GET", "/authorize?" + "&".join(p for p in (base, extra, raw) if p), headers)


def _check_authorize(resp: httpx.Response, *, head: bool = False) -> None:
    check_no_5xx(resp)
    if resp.status_code in (303, 302):
        location = resp.headers["location"]
        error = parse_qs(urlsplit(location).query).get("error")
        assert error is None or error[0] in OAUTH_ERRORS, location
    if resp.status_code >= 300:
        assert resp.headers.get("cache-control") == "no-store", resp.headers
    if resp.status_code >= 400 and not head:
        ctype = resp.headers.get("content-type", "")
        if ctype.startswith("application/json"):  # refused before the handler (405, 413)
            assert resp.json()["error"] in OAUTH_ERRORS
        else:
            assert ctype.startswith("text/html"), resp.headers


def test_hd7_authorize_get_hostile_queries(server: Server) -> None:
    """HD-7: hostile ``/authorize`` queries give a page or a redirect (RFC 6749 §4.1.2.1),
    ``no-store``, never a 5xx other than 503."""

    @_settings(server.examples)
    @given(request=_authorize_query())
    def run(request: Request) -> None:
        _check_authorize(server.send(request))

    run()


def _login_page(server: Server) -> tuple[bytes, dict[str, str]]:
    query = urlencode(
        {
            "client_id": "public",
            "response_type": "code",
            "redirect_uri": REDIRECT,
            "code_challenge": CHALLENGE,
            "code_challenge_method": "S256",
            "state": "st",
        }
    )
    page = server.send(Request("GET", "/authorize?" + query))
    assert page.status_code == 200, page.text
    cookie = page.headers["set-cookie"].split(";")[0].encode()
    return cookie, hidden_fields(page.text)


def test_hd7_authorize_login_form_hostile_posts(server: Server) -> None:
    """HD-7: hostile login and consent form posts (on a live sign-in page) give a page or
    a redirect, never a 5xx other than 503 (RFC 6749 §4.1.2.1, §3.1)."""
    form_names = ["interaction", "csrf", "step", "action", "username", "password"]

    @_settings(server.examples)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        cookie, fields = _login_page(server)
        keep = data.draw(st.lists(st.sampled_from(list(fields)), unique=True))
        base = {k: fields[k] for k in keep}
        base.update(
            data.draw(
                st.dictionaries(
                    st.sampled_from(["username", "password", "action", "step"]),
                    st.sampled_from(["alice", "login", "deny", "approve", "consent"]) | values,
                    max_size=3,
                )
            )
        )
        body = urlencode(base, encoding="utf-8", errors="surrogatepass")
        extra = data.draw(urlencoded(form_names))
        headers = [(b"cookie", data.draw(st.just(cookie) | header_bytes))]
        ctype = data.draw(st.sampled_from(CONTENT_TYPES[:1] * 4 + CONTENT_TYPES))
        headers.append((b"content-type", ctype.encode("latin-1")))
        method = data.draw(st.sampled_from(["POST"] * 6 + METHODS))
        request = Request(
            method,
            "/authorize",
            headers,
            "&".join(p for p in (body, extra) if p).encode("utf-8", "surrogatepass"),
        )
        _check_authorize(server.send(request), head=method == "HEAD")

    run()


# --- store outages --------------------------------------------------------------------


@pytest.fixture(scope="module")
def dead_server() -> Iterator[Server]:
    dead = SQLGrantStore("postgresql://postgres@127.0.0.1:1/none", create=False)
    service = TokenService(
        ServerSettings(issuer=ISSUER, registration_enabled=True),
        store=dead,
        replay=MemoryReplayCache(single_process=True),
    )
    app = create_app(service, authenticator=ConfigUsers(USERS))
    yield Server(app, service, 0)
    service.close()


OUTAGE_REQUESTS = [
    _form(
        "/token",
        {"grant_type": "client_credentials"},
        (b"authorization", basic("conf", SECRET).encode()),
    ),
    _form("/par", {"client_id": "public", "response_type": "code"}),
    _form("/introspect", {"token": "x"}, (b"authorization", basic("conf", SECRET).encode())),
    _form("/revoke", {"token": "x", "client_id": "public"}),
    Request(
        "POST",
        "/register",
        [(b"content-type", b"application/json")],
        json.dumps({"redirect_uris": [REDIRECT]}).encode(),
    ),
    Request("GET", "/jwks"),
    Request("GET", "/authorize?client_id=public"),
]


@pytest.mark.parametrize(
    "request_", OUTAGE_REQUESTS, ids=lambda r: f"{r.method} {r.path.split('?')[0]}"
)
def test_hd7_store_outage_is_503_at_every_endpoint(dead_server: Server, request_: Request) -> None:
    """HD-7: an unreachable grant store is 503 (``temporarily_unavailable``, RFC 6749 §5.2
    as extended by RFC 6749 §4.1.2.1), never a 500, at every endpoint that reads it."""
    resp = dead_server.send(request_)
    assert resp.status_code == 503, resp.text[:200]
    assert resp.headers["cache-control"] == "no-store"
    if not request_.path.startswith("/authorize"):
        assert resp.json()["error"] == "temporarily_unavailable"


def test_hd7_last_resort_handler_logs_and_answers_json(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """HD-7: a defect in a handler (here a grant function that raises) is logged with its
    stack and answered 500 ``server_error`` JSON with ``no-store``, never a bare page."""

    def broken(ctx: Any) -> dict[str, Any]:
        raise RuntimeError("defect")

    store = SQLGrantStore(f"sqlite:///{tmp_path}/grants.db")
    service = TokenService(
        ServerSettings(issuer=ISSUER),
        store=store,
        replay=MemoryReplayCache(single_process=True),
        grants={"client_credentials": broken},
    )
    for client in CLIENTS:
        store.put_client(client)
    app = create_app(service, authenticator=ConfigUsers(USERS))
    auth = (b"authorization", basic("conf", SECRET).encode())
    with caplog.at_level("ERROR", logger="dpopkit.server"):
        resp = send_asgi(app, ISSUER, _form("/token", {"grant_type": "client_credentials"}, auth))
    service.close()
    assert resp.status_code == 500
    assert resp.headers["cache-control"] == "no-store"
    assert resp.json()["error"] == "server_error"
    assert any(r.exc_info and "/token" in r.getMessage() for r in caplog.records)


async def _raw_asgi(app: Any, path: str, query: bytes) -> tuple[int, dict[bytes, bytes]]:
    """One GET through the app's ASGI interface with a query no HTTP client would send."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"as.test")],
        "client": ("127.0.0.1", 50000),
        "server": ("as.test", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return start["status"], dict(start["headers"])


_VALID_QUERY = urlencode(
    {
        "client_id": "public",
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
    }
).encode()


@pytest.mark.parametrize("hostile", [b"&state=\xff", b"&state=a\x00", b"&state=a b", b"&\x80"])
def test_hd7_raw_bytes_in_the_authorize_query_are_a_400_page(
    server: Server, hostile: bytes
) -> None:
    """HD-7: raw non-ASCII, NUL or space bytes in the ``/authorize`` query (RFC 3986 §3.4,
    RFC 9112 §3.2: a request target is visible ASCII) are a 400 page, never a 500."""
    status, headers = anyio.run(_raw_asgi, server.app, "/authorize", _VALID_QUERY)
    assert status == 200  # the login page: the request itself is fine
    status, headers = anyio.run(_raw_asgi, server.app, "/authorize", _VALID_QUERY + hostile)
    assert status == 400
    assert headers[b"cache-control"] == b"no-store"


# --- the parsing layer and NumericDate on their own -------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(st.text(), urlencoded(["a", "client_id"])),
    body=st.one_of(st.binary(max_size=300), raw_json()),
    ctype=st.sampled_from(CONTENT_TYPES),
)
def test_hd7_parsing_layer_is_total(text: str, body: bytes, ctype: str) -> None:
    """HD-7: whatever the text or body, the parsing layer returns checked values or raises
    ``InvalidRequestError`` (``ValueError`` for Basic credentials), nothing else."""
    headers = Headers([("Content-Type", ctype)])
    view = RequestView(method="POST", url=f"{ISSUER}/x?{text}", headers=headers, body=body)
    calls: list[Callable[[], object]] = [
        lambda: parsing.parse_urlencoded(text),
        lambda: parsing.parse_query(view),
        lambda: parsing.parse_form(view),
        lambda: parsing.parse_json_object(view),
    ]
    for call in calls:
        try:
            result = call()
        except InvalidRequestError:
            continue
        if isinstance(result, list):
            assert all(parsing.is_text(n) and parsing.is_text(v) for n, v in result)
    try:
        client_id, secret = parsing.parse_basic_credentials(text)
    except ValueError:
        return
    assert parsing.is_text(client_id)
    assert parsing.is_text(secret)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (10**400, None),
        (-(10**400), None),
        (True, None),
        ("1", None),
        (None, None),
        ([1], None),
        (1700000000, 1700000000.0),
        (1.5, 1.5),
        (2**1023, float(2**1023)),
    ],
)
def test_hd7_numeric_date_refuses_what_a_float_cannot_hold(
    value: object, expected: float | None
) -> None:
    """HD-7: RFC 7519 §2 NumericDate: a finite number within the float range, else None
    (the caller's typed error); 10^400 is valid JSON and must not reach float arithmetic."""
    assert numeric_date(value) == expected
