"""One redirect matrix for every client adapter: a proof never crosses origins, nor goes stale.

Real servers on 127.0.0.1 (:class:`~tests.client.servers.RedirectLab`) record every
hop and verify every proof they receive with ``verify_proof`` against the method
and URL they actually received (RFC 9449 §4.3).
"""

from __future__ import annotations

import importlib
import ssl
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import requests

from dpopkit import ClientError, DPoPKey, Reason
from dpopkit.client import httpx as dpop_httpx
from dpopkit.client import requests as dpop_requests
from tests.tls import loopback_certificate

from .servers import Hop, RedirectLab, redirect_labs

TOKEN = "AT-redirect-lab"
CODES = [301, 302, 303, 307, 308]
#: where the redirect points: the same origin, or another one (port, host or scheme differs)
TARGETS = ["same", "port", "host", "scheme"]
Send = Callable[[DPoPKey, str, str, bytes | None], tuple[int, list[str]]]
Labs = tuple[dict[str, RedirectLab], Path]  # the running labs and the CA file of the https one


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Labs]:
    cert, key = loopback_certificate(tmp_path_factory.mktemp("lab-tls"))
    with redirect_labs(str(cert), str(key)) as running:
        yield running, cert


@pytest.fixture
def lab(labs: Labs) -> dict[str, RedirectLab]:
    running, _ = labs
    running["a"].hops.clear()  # one log shared by the three labs
    return running


def _send_httpx(labs: Labs, *, hooks: bool, package: str = "httpx") -> Send:
    _, cafile = labs
    http: Any = importlib.import_module(package)  # httpx or httpx2: one DPoPAuth flow
    adapter: Any = importlib.import_module(f"dpopkit.client.{package}")

    def send(key: DPoPKey, method: str, url: str, body: bytes | None) -> tuple[int, list[str]]:
        auth = adapter.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)
        verify = ssl.create_default_context(cafile=str(cafile))
        with http.Client(
            auth=auth,
            follow_redirects=True,
            event_hooks=auth.event_hooks if hooks else None,
            verify=verify,
            trust_env=False,
        ) as client:
            response = client.request(method, url, content=body)
        return response.status_code, [str(r.url) for r in response.history]

    return send


def _send_httpx_async(labs: Labs, *, hooks: bool, package: str = "httpx") -> Send:
    _, cafile = labs
    http: Any = importlib.import_module(package)  # httpx or httpx2: one DPoPAuth flow
    adapter: Any = importlib.import_module(f"dpopkit.client.{package}")

    def send(key: DPoPKey, method: str, url: str, body: bytes | None) -> tuple[int, list[str]]:
        auth = adapter.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)
        verify = ssl.create_default_context(cafile=str(cafile))

        async def main() -> Any:
            async with http.AsyncClient(
                auth=auth,
                follow_redirects=True,
                event_hooks=auth.async_event_hooks if hooks else None,
                verify=verify,
                trust_env=False,
            ) as client:
                return await client.request(method, url, content=body)

        response = anyio.run(main)
        return response.status_code, [str(r.url) for r in response.history]

    return send


def _send_httpx_manual(labs: Labs, package: str = "httpx") -> Send:
    """The caller follows ``response.next_request`` itself (httpx's default: no following)."""
    _, cafile = labs
    http: Any = importlib.import_module(package)  # httpx or httpx2: one DPoPAuth flow
    adapter: Any = importlib.import_module(f"dpopkit.client.{package}")

    def send(key: DPoPKey, method: str, url: str, body: bytes | None) -> tuple[int, list[str]]:
        auth = adapter.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)
        verify = ssl.create_default_context(cafile=str(cafile))
        history: list[str] = []
        with http.Client(auth=auth, verify=verify, trust_env=False) as client:
            response = client.request(method, url, content=body)
            while response.next_request is not None:
                history.append(str(response.url))
                response = client.send(response.next_request)
        return response.status_code, history

    return send


def _send_requests(labs: Labs) -> Send:
    _, cafile = labs

    def send(key: DPoPKey, method: str, url: str, body: bytes | None) -> tuple[int, list[str]]:
        auth = dpop_requests.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)
        with requests.Session() as session:
            session.trust_env = False
            response = session.request(
                method, url, data=body, auth=auth, verify=str(cafile), timeout=10
            )
        return response.status_code, [r.url for r in response.history]

    return send


def _asgi_mounts(running: dict[str, RedirectLab]) -> dict[str, httpx.AsyncBaseTransport]:
    """Every lab origin (and ``localhost`` for ``a``) served in-process, not through httpcore."""
    mounts: dict[str, httpx.AsyncBaseTransport] = {
        lab.base: httpx.ASGITransport(app=lab.app) for lab in running.values()
    }
    mounts[running["a"].base.replace("127.0.0.1", "localhost")] = mounts[running["a"].base]
    return mounts


def _send_httpx_asgi(labs: Labs) -> Send:
    """In-process apps (``ASGITransport`` never calls the trace): the request hook signs hops."""
    running, _ = labs

    def send(key: DPoPKey, method: str, url: str, body: bytes | None) -> tuple[int, list[str]]:
        auth = dpop_httpx.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)

        async def main() -> httpx.Response:
            async with httpx.AsyncClient(
                auth=auth,
                follow_redirects=True,
                event_hooks=auth.async_event_hooks,
                mounts=_asgi_mounts(running),
                trust_env=False,
            ) as client:
                return await client.request(method, url, content=body)

        response = anyio.run(main)
        return response.status_code, [str(r.url) for r in response.history]

    return send


ADAPTERS: dict[str, Callable[[Labs], Send]] = {
    # httpx's own transports (httpcore): the auth's trace extension fixes every hop on the
    # wire, so the request hook is optional; both ways must pass the same assertions.
    "httpx-hooks": partial(_send_httpx, hooks=True),
    "httpx": partial(_send_httpx, hooks=False),
    "httpx-async-hooks": partial(_send_httpx_async, hooks=True),
    "httpx-async": partial(_send_httpx_async, hooks=False),
    "httpx-manual": _send_httpx_manual,
    "httpx-asgi-hooks": _send_httpx_asgi,
    # httpx2 (the mcp SDK's HTTP client): the same DPoPAuth flow, httpcore2's trace on the wire.
    "httpx2": partial(_send_httpx, hooks=False, package="httpx2"),
    "httpx2-async": partial(_send_httpx_async, hooks=False, package="httpx2"),
    "httpx2-manual": partial(_send_httpx_manual, package="httpx2"),
    "requests": _send_requests,
}


@pytest.fixture(params=list(ADAPTERS))
def send(request: pytest.FixtureRequest, labs: Labs) -> Send:
    return ADAPTERS[request.param](labs)


def _target(lab: dict[str, RedirectLab], where: str, path: str = "/land") -> str:
    return {
        "same": lab["a"].base,
        "port": lab["b"].base,
        "host": lab["a"].base.replace("127.0.0.1", "localhost"),
        "scheme": lab["tls"].base,
    }[where] + path


def _landed_method(code: int, method: str) -> str:
    # RFC 9110 §15.4: 303 → GET; 301/302 turn POST into GET (as browsers, httpx, requests do).
    if code == 303 or (code in (301, 302) and method == "POST"):
        return "GET"
    return method


def _no_credentials(hop: Hop) -> bool:
    return "dpop" not in hop.headers and "authorization" not in hop.headers


@pytest.mark.parametrize("where", TARGETS)
@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("code", CODES)
def test_redirect_matrix(
    lab: dict[str, RedirectLab], send: Send, key: DPoPKey, code: int, method: str, where: str
) -> None:
    """HD-10: a redirect gets a fresh proof on its own origin and no credentials elsewhere.

    RFC 9449 §4.2: a proof is bound to one method and URL and a ``jti`` is used once,
    so the hop on the same origin carries a new proof (new ``jti``, the hop's
    ``htm``/``htu``, ``ath`` for the token); on another origin (port, host or
    scheme) neither ``DPoP`` nor ``Authorization`` is sent (RFC 6454 origins).
    """
    start = lab["a"].base + f"/r/{code}"
    target = _target(lab, where)
    body = b"payload" if method == "POST" else None
    status, history = send(key, method, start + "?to=" + target, body)
    assert status == 200
    assert len(history) == 1
    hops = lab["a"].hops
    assert [h.url.split("?")[0] for h in hops] == [start, target]
    first, landed = hops
    assert first.claims is not None, first.refused
    assert (first.claims["htm"], first.claims["htu"]) == (method, start)
    assert first.headers["authorization"] == f"DPoP {TOKEN}"
    assert landed.method == _landed_method(code, method)
    if where == "same":
        assert landed.claims is not None, landed.refused  # verified: htm, htu, ath, signature
        assert landed.claims["htm"] == landed.method
        assert landed.claims["htu"] == target
        assert landed.claims["jti"] != first.claims["jti"]
        assert landed.headers["authorization"] == f"DPoP {TOKEN}"
    else:
        assert _no_credentials(landed), landed.headers


@pytest.mark.parametrize("code", [302, 307])
def test_credentials_do_not_come_back_after_leaving(
    lab: dict[str, RedirectLab], send: Send, key: DPoPKey, code: int
) -> None:
    """HD-10: once a chain has left the origin, a redirect back to it carries no credentials.

    The other origin chose where the chain goes next (method and body too, with
    307): signing that for it would make the client a confused deputy.
    """
    back = lab["a"].base + "/land"
    via = lab["b"].base + f"/r/{code}?to={back}"
    status, _ = send(key, "POST", lab["a"].base + f"/r/{code}?to={via}", b"x")
    assert status == 200
    first, away, returned = lab["a"].hops
    assert first.claims is not None
    assert _no_credentials(away)
    assert _no_credentials(returned)


def test_no_retry_with_credentials_at_another_origin(
    lab: dict[str, RedirectLab], send: Send, key: DPoPKey
) -> None:
    """HD-10: a nonce challenge from the other origin is not answered with our proof and token."""
    away = lab["b"].base + "/challenge"
    status, _ = send(key, "GET", lab["a"].base + f"/r/307?to={away}", None)
    assert status == 401
    first, challenged = lab["a"].hops  # no second request to the other origin
    assert first.claims is not None
    assert _no_credentials(challenged)


@pytest.mark.parametrize("code", [303, 307])
def test_nonce_retry_after_a_redirect_resends_the_hop(
    lab: dict[str, RedirectLab], send: Send, key: DPoPKey, code: int
) -> None:
    """HD-10: a nonce challenge on the same-origin hop retries that hop, not the first request.

    RFC 9449 §9: the retry carries the server's nonce in a new proof for the hop's
    method and URL; the first request (a POST) is not sent twice.
    """
    start = lab["a"].base + f"/r/{code}"
    status, _ = send(key, "POST", start + "?to=" + lab["a"].base + "/nonce-land", b"x")
    assert status == 200
    first, challenged, retried = lab["a"].hops
    assert first.url == start
    assert challenged.url == retried.url == lab["a"].base + "/nonce-land"
    assert retried.claims is not None
    assert retried.claims["nonce"] == "lab-nonce"
    assert retried.claims["htm"] == retried.method == _landed_method(code, "POST")
    assert len({h.claims["jti"] for h in (first, challenged, retried) if h.claims}) == 3


def test_httpx_in_process_following_without_the_hooks_is_refused(
    lab: dict[str, RedirectLab], key: DPoPKey
) -> None:
    """HD-10: a redirect followed where the auth could not sign it: a typed error, never success.

    httpx runs an auth flow once and follows redirects inside it, copying the
    headers; an in-process transport (``ASGITransport``) never calls httpcore's
    trace, so only the client's request hook sees the hops there.
    """
    auth = dpop_httpx.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)
    url = lab["a"].base + "/r/307?to=" + lab["a"].base + "/land"

    async def main() -> None:
        async with httpx.AsyncClient(
            auth=auth, follow_redirects=True, mounts=_asgi_mounts(lab), trust_env=False
        ) as client:
            await client.get(url)

    with pytest.raises(ClientError) as info:
        anyio.run(main)
    assert info.value.reason is Reason.REDIRECT_NOT_SIGNED


@pytest.mark.parametrize("hooks", [True, False], ids=["hooks", "no-hooks"])
@pytest.mark.parametrize("where", ["same", "port"])
def test_httpx_request_shows_what_went_on_the_wire(
    lab: dict[str, RedirectLab], key: DPoPKey, where: str, hooks: bool
) -> None:
    """HD-10: the hop httpx reports is the one sent: signed once, by the hook or on the wire.

    A hop the request hook signed is not signed again by the trace, and a hop the
    trace fixed has its ``response.request`` headers fixed too (RFC 9449 §4.2: one
    proof per send).
    """
    auth = dpop_httpx.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)
    with httpx.Client(
        auth=auth,
        follow_redirects=True,
        event_hooks=auth.event_hooks if hooks else None,
        trust_env=False,
    ) as client:
        response = client.post(lab["a"].base + "/r/307?to=" + _target(lab, where), content=b"x")
    assert response.status_code == 200
    _, landed = lab["a"].hops
    for name in ("dpop", "authorization"):
        assert response.request.headers.get(name) == landed.headers.get(name)
    assert (landed.claims is not None) is (where == "same")


@pytest.mark.parametrize("hooks", [True, False], ids=["hooks", "no-hooks"])
@pytest.mark.parametrize("where", ["same", "port"])
def test_httpx_callers_own_authorization_without_a_token(
    lab: dict[str, RedirectLab], key: DPoPKey, where: str, hooks: bool
) -> None:
    """HD-10: with no token, a caller's own ``Authorization`` follows as httpx would keep it.

    The auth replaces only the fields it sets: a same-origin hop keeps the caller's
    ``Authorization`` next to its fresh proof; another origin gets neither.
    """
    auth = dpop_httpx.DPoPAuth(key, allow_insecure_http=True)
    with httpx.Client(
        auth=auth,
        follow_redirects=True,
        event_hooks=auth.event_hooks if hooks else None,
        trust_env=False,
    ) as client:
        url = lab["a"].base + "/r/307?to=" + _target(lab, where)
        response = client.get(url, headers={"Authorization": "Basic Y2xpOnM="})
    assert response.status_code == 200
    _, landed = lab["a"].hops
    if where == "same":
        assert landed.claims is not None, landed.refused
        assert landed.headers["authorization"] == "Basic Y2xpOnM="
    else:
        assert _no_credentials(landed), landed.headers


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_httpx_callers_trace_still_called(
    lab: dict[str, RedirectLab], key: DPoPKey, asynchronous: bool
) -> None:
    """HD-10: a ``trace`` extension the caller set keeps working, and sees what goes out.

    The auth's own trace runs first, so a logging trace never records the stale
    proof a followed redirect would have carried to another origin.
    """
    auth = dpop_httpx.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)
    url = lab["a"].base + "/r/302?to=" + _target(lab, "port")
    blocks: list[list[bytes]] = []
    events: list[str] = []

    def record(event: str, info: dict[str, Any]) -> None:
        events.append(event)
        if event == "http11.send_request_headers.started":
            blocks.append([name.lower() for name, _ in info["request"].headers])

    async def arecord(event: str, info: dict[str, Any]) -> None:
        record(event, info)

    if asynchronous:

        async def main() -> None:
            async with httpx.AsyncClient(
                auth=auth, follow_redirects=True, trust_env=False
            ) as client:
                await client.get(url, extensions={"trace": arecord})

        anyio.run(main)
    else:
        with httpx.Client(auth=auth, follow_redirects=True, trust_env=False) as client:
            client.get(url, extensions={"trace": record})
    assert "http11.receive_response_headers.complete" in events
    first, away = blocks
    assert {b"dpop", b"authorization"} <= set(first)
    assert not {b"dpop", b"authorization"} & set(away)
