"""Hostile HTTP input for the no-5xx properties of the AS and the RS (HD-7).

Strategies build whole requests (method, query, headers, body) out of what breaks
parsers: NUL and other control characters, lone surrogates and invalid UTF-8,
numbers beyond the float range (``10^400``), ``NaN``, deep nesting, JSON arrays
where objects belong, very many and repeated parameters, very long values, wrong
media types and odd methods. :func:`check_oauth_error` is the shared verdict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import httpx
from hypothesis import strategies as st

from dpopkit import DPoPKey
from dpopkit.core.jws import b64url_encode, json_dumps

#: Error codes an AS or RS may answer (RFC 6749 §5.2, RFC 6750 §3.1, RFC 7591 §3.2.2,
#: RFC 8707 §2, RFC 9449 §5, §7.1, §8, RFC 6749 §4.1.2.1).
OAUTH_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "invalid_token",
        "insufficient_scope",
        "invalid_dpop_proof",
        "use_dpop_nonce",
        "invalid_client_metadata",
        "invalid_redirect_uri",
        "unsupported_response_type",
        "access_denied",
        "temporarily_unavailable",
    }
)

_VISIBLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))
HUGE = "1" + "0" * 400  # 10^400: valid JSON, beyond any float

#: Strings that break naive parsers (kept short; length comes from ``long_values``).
nasty_texts = st.sampled_from(
    [
        "",
        "\x00",
        "a\x00b",
        "\ud800",
        "x\udfff",
        "\r\n",
        "\t",
        "\x7f",
        "\ufffe",
        "\u202e",
        "%00",
        "%ED%A0%80",
        "%FF%FE",
        "%",
        "%zz",
        "+",
        "&&&",
        "==",
        HUGE,
        "-" + HUGE,
        "1e400",
        "NaN",
        "Infinity",
        "-0",
        "0x1",
        "[]",
        "{}",
        "null",
        "true",
        "é",
        "\U0001f600",
        "urn:ietf:params:oauth:request_uri:x",
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "https://client.test/cb",
        "http://127.0.0.1:1/cb",
        "S256",
        "code",
        "client_credentials",
        "authorization_code",
        "refresh_token",
        "read write",
    ]
)
any_text = st.text(max_size=40)  # every code point, lone surrogates included
long_values = st.builds(
    lambda c, n: c * n, st.sampled_from(["a", "%00", "\x00", "é"]), st.integers(1000, 20000)
)
values = st.one_of(nasty_texts, any_text, long_values)


def json_values(depth: int = 3) -> st.SearchStrategy[object]:
    """Hostile JSON values (as Python objects; huge numbers come in raw text below)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        values,
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(names(), any_text), inner, max_size=4),
        ),
        max_leaves=12,
    )


def names(known: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Parameter names: the endpoint's own (so they repeat) and hostile ones."""
    pool = [*known, "client_id", "scope", "resource", "state", "x"]
    return st.one_of(st.sampled_from(pool), nasty_texts, any_text)


def _encode(text: str) -> str:
    # Percent-encode as a client would; lone surrogates become invalid UTF-8 bytes.
    return quote(text.encode("utf-8", "surrogatepass"), safe="%+")


def urlencoded(known: Sequence[str]) -> st.SearchStrategy[str]:
    """A form or query string: up to 100 pairs (over the 64 limit), repeats, raw escapes."""
    pair = st.tuples(names(known), values).map(lambda p: f"{_encode(p[0])}={_encode(p[1])}")
    many = st.integers(65, 120).map(lambda n: "&".join(f"p{i}=1" for i in range(n)))
    return st.one_of(st.lists(pair, max_size=12).map("&".join), many, values.map(_encode))


def raw_json() -> st.SearchStrategy[bytes]:
    """JSON bodies: objects, arrays where objects belong, deep nesting, huge numbers, junk."""
    dumped = json_values().map(
        lambda v: json.dumps(v, ensure_ascii=True).encode("utf-8", "surrogatepass")
    )
    deep = st.builds(
        lambda o, n: (
            (o * n + (b"]" if o == b"[" else b"}") * n)
            if o == b"["
            else b'{"a":' * n + b"1" + b"}" * n
        ),
        st.sampled_from([b"[", b"{"]),
        st.sampled_from([33, 500, 10000, 30000]),
    )
    numbers = st.sampled_from(
        [
            b'{"redirect_uris":["https://client.test/cb"],"x":' + HUGE.encode() + b"}",
            b'{"a":1e400}',
            b'{"a":NaN}',
            b'{"a":-Infinity}',
            b'{"a":1,"a":2}',
            b'{"scope":"\\u0000"}',
            b'{"client_name":"\\ud800"}',
            b'{"redirect_uris":"\\udfff"}',
            b"\xff\xfe{}",
            b'{"a":"\xed\xa0\x80"}',
        ]
    )
    return st.one_of(dumped, deep, numbers, st.binary(max_size=64))


CONTENT_TYPES = [
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-8",
    "application/json",
    "text/plain",
    "multipart/form-data; boundary=x",
    "",
    "application/x-www-form-urlencoded\x00",
    "*/*",
]
METHODS = [
    "GET",
    "POST",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "HEAD",
    "OPTIONS",
    "TRACE",
    "get",
    "BREW",
]

#: Header values as bytes (an ASGI server hands the app bytes; latin-1 and junk included).
header_bytes = st.one_of(
    values.map(lambda v: v.encode("utf-8", "surrogatepass")), st.binary(max_size=80)
).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def _basic(client_id: str, secret: str) -> bytes:
    import base64

    raw = f"{client_id}:{secret}".encode("utf-8", "surrogatepass")
    return b"Basic " + base64.b64encode(raw)


def signed_jwt(key: DPoPKey, header: Mapping[str, object], payload: bytes) -> str:
    """A compact JWS over an arbitrary payload (raw bytes: huge numbers survive)."""
    signing_input = f"{b64url_encode(json_dumps(header))}.{b64url_encode(payload)}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"


def hostile_claims(fixed: dict[str, str]) -> st.SearchStrategy[bytes]:
    """JWT payloads: plausible claims with hostile values (10^400, NaN-ish, NUL, nesting)."""
    number = st.sampled_from(
        [HUGE, "-" + HUGE, "1e308", "1.7e308", "0", "-1", "1e-400", "true", '"1"', "null"]
    )

    def build(exp: str, iat: str, nbf: str | None, sub: str, extra: str) -> bytes:
        members = [f'"{k}":{json.dumps(v)}' for k, v in fixed.items()]
        members += [f'"exp":{exp}', f'"iat":{iat}', f'"sub":{sub}', f'"jti":{json.dumps(extra)}']
        if nbf is not None:
            members.append(f'"nbf":{nbf}')
        return ("{" + ",".join(members) + "}").encode("utf-8", "surrogatepass")

    subs = st.one_of(
        st.sampled_from(['"jwt"', '"a\\u0000b"', '"\\ud800"', "[]", "{}", HUGE]),
        any_text.map(lambda t: json.dumps(t)),
    )
    return st.builds(build, number, number, st.none() | number, subs, any_text)


@dataclass(frozen=True)
class Request:
    """One hostile request, as httpx sends it through an ASGI or WSGI transport."""

    method: str
    path: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def __repr__(self) -> str:  # shown on failure: long values cut
        head = [(k, v[:200]) for k, v in self.headers]
        return f"Request({self.method} {self.path[:300]!r} {head!r} {self.body[:300]!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis' printer
        printer.text(repr(self))


def send_asgi(app: object, base_url: str, request: Request) -> httpx.Response:
    """Send ``request`` to an ASGI app (exceptions in the app surface as 500s)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            return await client.send(_build(client, request))

    response: httpx.Response = anyio.run(go)
    return response


def send_wsgi(app: object, base_url: str, request: Request) -> httpx.Response:
    """Send ``request`` to a WSGI app.

    httpx's WSGI transport decodes header values as ASCII (PEP 3333 servers use
    latin-1), so bytes above 0x7F are dropped from header values here.
    """
    headers = [(k, bytes(b for b in v if b < 0x80)) for k, v in request.headers]
    ascii_request = Request(request.method, request.path, headers, request.body)
    transport = httpx.WSGITransport(app=app)  # type: ignore[arg-type]
    with httpx.Client(transport=transport, base_url=base_url) as client:
        return client.send(_build(client, ascii_request))


def _build(client: httpx.Client | httpx.AsyncClient, request: Request) -> httpx.Request:
    path = request.path[:60000]  # httpx refuses longer URLs; still over MAX_QUERY_BYTES
    try:
        built = client.build_request(request.method, path, content=request.body)
    except httpx.InvalidURL:  # bytes no HTTP client sends raw: percent-encoded instead
        path = quote(path, safe=_VISIBLE_ASCII)[:60000]
        built = client.build_request(request.method, path, content=request.body)
    # Raw bytes, exactly as generated (httpx would refuse some as str).
    built.headers = httpx.Headers([*built.headers.raw, *request.headers])
    return built


def check_no_5xx(response: httpx.Response) -> None:
    """Untrusted input never yields a 5xx other than 503 (an unavailable store)."""
    assert response.status_code < 500 or response.status_code == 503, (
        response.status_code,
        response.text[:300],
    )


def check_oauth_error(
    response: httpx.Response, *, empty_challenge_ok: bool = False, head: bool = False
) -> None:
    """No 5xx but 503; a 4xx/503 is OAuth error JSON with ``no-store``.

    Args:
        response: the answer.
        empty_challenge_ok: a 401 with a bare ``WWW-Authenticate`` challenge and no
            body is also fine (RFC 6750 §3.1: no error for a request without
            credentials, RS-18).
        head: the request was ``HEAD`` (no body to check).
    """
    check_no_5xx(response)
    status = response.status_code
    if status < 400:
        return
    assert "no-store" in response.headers.get("cache-control", ""), response.headers
    if head:
        return
    if empty_challenge_ok and status == 401 and not response.content:
        assert "www-authenticate" in response.headers
        return
    assert response.headers.get("content-type", "").startswith("application/json"), (
        status,
        response.headers,
        response.text[:200],
    )
    body = response.json()
    assert isinstance(body, dict), body
    assert body.get("error") in OAUTH_ERRORS, body
