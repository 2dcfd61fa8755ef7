"""requests DPoPAuth against real servers on 127.0.0.1 (an HTTPDigestAuth-style retry)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest
import requests

from dpopkit import DPoPKey, MissingNonceError, NonceRetryExhaustedError, Reason
from dpopkit.client.flow import NonceCache
from dpopkit.client.requests import DPoPAuth, dpop_error

from .helpers import claims_of
from .servers import Servers, issue_token


def make_auth(key: DPoPKey, token: str | None, **kw: object) -> DPoPAuth:
    return DPoPAuth(key, token=token, allow_insecure_http=True, **kw)  # type: ignore[arg-type]


def test_c10_nonce_retry_keeps_history(servers: Servers, key: DPoPKey) -> None:
    """C-10: 401 use_dpop_nonce → drained, closed, retried once; history keeps the 401."""
    at = issue_token(servers, key.jkt)
    with requests.Session() as session:
        session.auth = make_auth(key, at)
        response = session.get(servers.state.base + "/api/items?q=1", timeout=10)
        assert response.status_code == 200
        assert [r.status_code for r in response.history] == [401]
        assert response.history[0].raw.closed
        sent = response.request.headers
        assert sent["Authorization"] == f"DPoP {at}"
        assert all(name.lower() != "proxy-authorization" for name in sent)
        again = session.get(servers.state.base + "/api/items", timeout=10)
        assert again.status_code == 200
        assert again.history == []
    jtis = [r["jti"] for r in servers.state.rs_requests if "jti" in r]
    assert len(jtis) == len(set(jtis)) == 2


def test_seekable_body_rewound(servers: Servers, key: DPoPKey) -> None:
    at = issue_token(servers, key.jkt)
    body = io.BytesIO(b"0123456789")
    body.seek(2)
    response = requests.post(
        servers.state.base + "/api/upload", data=body, auth=make_auth(key, at), timeout=10
    )
    assert response.status_code == 200
    assert [r["body"] for r in servers.state.rs_requests] == [b"23456789", b"23456789"]


def test_bytes_and_form_bodies_resent(servers: Servers, key: DPoPKey) -> None:
    at = issue_token(servers, key.jkt)
    auth = make_auth(key, at)
    response = requests.post(servers.state.base + "/api/f", data={"a": "b"}, auth=auth, timeout=10)
    assert response.status_code == 200
    assert response.json()["len"] == 3


def test_generator_body_not_resent(servers: Servers, key: DPoPKey) -> None:
    """A body that cannot be rewound is never resent; the 401 comes back."""
    at = issue_token(servers, key.jkt)

    def chunks() -> Iterator[bytes]:
        yield b"abc"

    response = requests.post(
        servers.state.base + "/api/upload", data=chunks(), auth=make_auth(key, at), timeout=10
    )
    assert response.status_code == 401
    error = dpop_error(response)
    assert error is not None
    assert error.reason is Reason.BODY_NOT_REPLAYABLE
    assert len(servers.state.rs_requests) == 1
    assert dpop_error(requests.Response()) is None


def test_sec114_loops_stop(servers: Servers, key: DPoPKey) -> None:
    auth = make_auth(key, "AT")
    with pytest.raises(NonceRetryExhaustedError):
        requests.get(servers.state.base + "/loop/new-nonce", auth=auth, timeout=10)
    with pytest.raises(NonceRetryExhaustedError):
        requests.get(servers.state.base + "/loop/same-nonce", auth=auth, timeout=10)
    with pytest.raises(MissingNonceError):
        requests.get(servers.state.base + "/loop/no-nonce", auth=auth, timeout=10)
    assert len(servers.state.rs_requests) == 5


def test_shared_across_threads(servers: Servers, key: DPoPKey) -> None:
    """One DPoPAuth shared by 8 threads: every request succeeds, every jti distinct."""
    at = issue_token(servers, key.jkt)
    nonces = NonceCache()
    auth = make_auth(key, at, nonces=nonces)
    statuses: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        with requests.Session() as session:
            for _ in range(5):
                status = session.get(
                    servers.state.base + "/api/t", auth=auth, timeout=10
                ).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 40
    jtis = [r["jti"] for r in servers.state.rs_requests if "jti" in r]
    assert len(jtis) == len(set(jtis)) == 40


def test_proof_htu_has_no_query(servers: Servers, key: DPoPKey) -> None:
    at = issue_token(servers, key.jkt)
    response = requests.get(
        servers.state.base + "/api/items?secret=1#frag", auth=make_auth(key, at), timeout=10
    )
    assert response.status_code == 200
    assert claims_of(response.request.headers["DPoP"])["htu"] == servers.state.base + "/api/items"


@pytest.mark.parametrize(
    ("code", "method", "landed_method"),
    [(302, "POST", "GET"), (307, "POST", "POST"), (303, "GET", "GET"), (301, "POST", "GET")],
)
def test_same_origin_redirect_gets_its_own_proof(
    servers: Servers, key: DPoPKey, code: int, method: str, landed_method: str
) -> None:
    """A proof is bound to one URL: a followed redirect carries a new proof (new jti, htu)."""
    at = issue_token(servers, key.jkt)
    with requests.Session() as session:
        session.auth = make_auth(key, at)
        session.get(servers.state.base + "/api/warm", timeout=10)  # learn the RS nonce
        response = session.request(
            method, servers.state.base + f"/redirect/{code}", data=b"x", timeout=10
        )
    assert response.status_code == 200
    landed = servers.state.rs_requests[-1]
    assert landed["path"] == "/api/landed"
    proof = landed["headers"]["dpop"]
    claims = claims_of(proof)
    assert claims["htu"] == servers.state.base + "/api/landed"
    assert claims["htm"] == landed_method
    (first,) = [r for r in servers.state.rs_requests if r["path"] == "/redirect"]
    assert claims["jti"] != claims_of(first["headers"]["dpop"])["jti"]


def test_cross_origin_redirect_drops_proof_and_token(servers: Servers, key: DPoPKey) -> None:
    """Neither the token nor the proof follows a redirect to another origin."""
    at = issue_token(servers, key.jkt)
    other = servers.state.base.replace("127.0.0.1", "localhost")
    with requests.Session() as session:
        session.auth = make_auth(key, at)
        response = session.get(
            servers.state.base + "/redirect-away", params={"to": other + "/stream"}, timeout=10
        )
    assert response.status_code == 200
    assert "dpop" not in {k.lower() for k in response.request.headers}
    assert "authorization" not in {k.lower() for k in response.request.headers}
