"""One redirect matrix for every client adapter: a proof never crosses origins, nor goes stale.

Real servers on 127.0.0.1 (:class:`~tests.client.servers.RedirectLab`) record every
hop and verify every proof they receive with ``verify_proof`` against the method
and URL they actually received (RFC 9449 §4.3).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

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


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, RedirectLab], Path]]:
    cert, key = loopback_certificate(tmp_path_factory.mktemp("lab-tls"))
    with redirect_labs(str(cert), str(key)) as running:
        yield running, cert


@pytest.fixture
def lab(labs: tuple[dict[str, RedirectLab], Path]) -> dict[str, RedirectLab]:
    running, _ = labs
    running["a"].hops.clear()  # one log shared by the three labs
    return running


def _send_httpx(cafile: Path) -> Send:
    def send(key: DPoPKey, method: str, url: str, body: bytes | None) -> tuple[int, list[str]]:
        auth = dpop_httpx.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)
        verify = ssl.create_default_context(cafile=str(cafile))
        with httpx.Client(
            auth=auth,
            follow_redirects=True,
            event_hooks=auth.event_hooks,
            verify=verify,
            trust_env=False,
        ) as client:
            response = client.request(method, url, content=body)
        return response.status_code, [str(r.url) for r in response.history]

    return send


def _send_httpx_async(cafile: Path) -> Send:
    def send(key: DPoPKey, method: str, url: str, body: bytes | None) -> tuple[int, list[str]]:
        auth = dpop_httpx.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)
        verify = ssl.create_default_context(cafile=str(cafile))

        async def main() -> httpx.Response:
            async with httpx.AsyncClient(
                auth=auth,
                follow_redirects=True,
                event_hooks=auth.async_event_hooks,
                verify=verify,
                trust_env=False,
            ) as client:
                return await client.request(method, url, content=body)

        response = anyio.run(main)
        return response.status_code, [str(r.url) for r in response.history]

    return send


def _send_httpx_manual(cafile: Path) -> Send:
    """The caller follows ``response.next_request`` itself (httpx's default: no following)."""

    def send(key: DPoPKey, method: str, url: str, body: bytes | None) -> tuple[int, list[str]]:
        auth = dpop_httpx.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)
        verify = ssl.create_default_context(cafile=str(cafile))
        history: list[str] = []
        with httpx.Client(auth=auth, verify=verify, trust_env=False) as client:
            response = client.request(method, url, content=body)
            while response.next_request is not None:
                history.append(str(response.url))
                response = client.send(response.next_request)
        return response.status_code, history

    return send


def _send_requests(cafile: Path) -> Send:
    def send(key: DPoPKey, method: str, url: str, body: bytes | None) -> tuple[int, list[str]]:
        auth = dpop_requests.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)
        with requests.Session() as session:
            session.trust_env = False
            response = session.request(
                method, url, data=body, auth=auth, verify=str(cafile), timeout=10
            )
        return response.status_code, [r.url for r in response.history]

    return send


ADAPTERS: dict[str, Callable[[Path], Send]] = {
    "httpx": _send_httpx,
    "httpx-async": _send_httpx_async,
    "httpx-manual": _send_httpx_manual,
    "requests": _send_requests,
}


@pytest.fixture(params=list(ADAPTERS))
def send(request: pytest.FixtureRequest, labs: tuple[dict[str, RedirectLab], Path]) -> Send:
    _, cafile = labs
    maker = ADAPTERS[request.param]
    return maker(cafile)


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


def test_httpx_following_without_the_hooks_is_refused(
    lab: dict[str, RedirectLab], key: DPoPKey
) -> None:
    """HD-10: httpx followed a redirect the auth could not sign: a typed error, never success.

    httpx runs an auth flow once and follows redirects inside it, copying the
    headers; only the client's request hook sees the hops.
    """
    auth = dpop_httpx.DPoPAuth(key, token=TOKEN, allow_insecure_http=True)
    url = lab["a"].base + "/r/307?to=" + lab["a"].base + "/land"
    with (
        httpx.Client(auth=auth, follow_redirects=True, trust_env=False) as client,
        pytest.raises(ClientError) as info,
    ):
        client.get(url)
    assert info.value.reason is Reason.REDIRECT_NOT_SIGNED
