"""Benchmark of the client's per-request DPoP overhead (not a test).

Run: ``python bench/client.py [--quick] [--reps N] [--target-ms MS]``.

A plain ASGI app (uvicorn, in a thread, 127.0.0.1, port 0) answers 200 to
``GET /api/v1/orders/12345?expand=items&page=2``; it checks nothing, so what
differs between the ops below is the client side only. Timed in one run,
round-robin (``bench/_harness.py``), with the **thread CPU clock** of the
client thread (the server's work in its own thread is not counted):

* ``floor.ES256.sign``: a bare ``cryptography`` ECDSA P-256 sign of a ~300-byte
  input plus DER → raw R‖S (what a proof needs);
* ``httpx.bare`` / ``httpx.dpopkit``: one ``httpx.Client.get`` without auth, and
  with :class:`dpopkit.client.httpx.DPoPAuth` (a new proof with ``ath`` per
  request, nonce cache consulted, response inspected);
* ``requests.bare`` / ``requests.dpopkit`` / ``requests.roc``: one
  ``requests.Session.get`` without auth, with
  :class:`dpopkit.client.requests.DPoPAuth`, and with requests-oauth2client's
  ``DPoPToken`` (its users' way of doing the same call).

The issue's bar: the added cost of ``DPoPAuth`` (op − bare) is at most 1.3× a
bare ES256 sign. It is printed with PASS/FAIL, next to requests-oauth2client's
added cost measured in the same run.
"""

from __future__ import annotations

import argparse
import platform
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Op, fmt_us, ratio, run_round_robin

PATH = "/api/v1/orders/12345?expand=items&page=2"
ACCESS_TOKEN = "eyJ" + "a" * 832  # 835 characters, like shared/bench/README.md


async def plain_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def start_server() -> tuple[str, Callable[[], None]]:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(plain_app, log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


class _CannedAdapter:
    """A requests transport adapter answering 200 in-process (no socket)."""

    def __new__(cls) -> Any:
        import requests
        from requests.adapters import BaseAdapter

        class Adapter(BaseAdapter):
            def send(self, request: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
                response = requests.Response()
                response.status_code = 200
                response._content = b"ok"
                response.request = request
                response.url = request.url
                response.connection = self  # type: ignore[assignment]
                return response

            def close(self) -> None:
                return None

        return Adapter()


def make_ops(base: str) -> tuple[list[Op], Callable[[], None]]:
    import httpx
    import requests
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from requests_oauth2client import DPoPKey as RocKey
    from requests_oauth2client import DPoPToken

    from dpopkit import DPoPKey
    from dpopkit.client import httpx as dpop_httpx
    from dpopkit.client import requests as dpop_requests

    url = base + PATH
    key = DPoPKey.generate("ES256")
    raw_key = ec.generate_private_key(ec.SECP256R1())
    signing_input = b"x" * 300
    h_bare = httpx.Client()
    h_dpop = httpx.Client(
        auth=dpop_httpx.DPoPAuth(key, token=ACCESS_TOKEN, allow_insecure_http=True)
    )
    r_bare = requests.Session()
    r_dpop = requests.Session()
    r_dpop.auth = dpop_requests.DPoPAuth(key, token=ACCESS_TOKEN, allow_insecure_http=True)
    r_roc = requests.Session()
    r_roc.auth = DPoPToken(access_token=ACCESS_TOKEN, _dpop_key=RocKey.generate(alg="ES256"))
    bare_headers = {"Authorization": f"DPoP {ACCESS_TOKEN}"}
    canned = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    m_bare = httpx.Client(transport=canned)
    m_dpop = httpx.Client(
        transport=canned,
        auth=dpop_httpx.DPoPAuth(key, token=ACCESS_TOKEN, allow_insecure_http=True),
    )
    rm_bare, rm_dpop, rm_roc = requests.Session(), requests.Session(), requests.Session()
    for session in (rm_bare, rm_dpop, rm_roc):
        session.mount("http://", _CannedAdapter())
    rm_dpop.auth = dpop_requests.DPoPAuth(key, token=ACCESS_TOKEN, allow_insecure_http=True)
    rm_roc.auth = DPoPToken(access_token=ACCESS_TOKEN, _dpop_key=RocKey.generate(alg="ES256"))

    def sign(n: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(n):
                r, s = decode_dss_signature(raw_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
                r.to_bytes(32, "big") + s.to_bytes(32, "big")

        return run

    def http(
        client: Any, headers: dict[str, str] | None = None
    ) -> Callable[[int], Callable[[], None]]:
        def prepare(n: int) -> Callable[[], None]:
            def run() -> None:
                for _ in range(n):
                    response = client.get(url, headers=headers)
                    if response.status_code != 200:
                        raise RuntimeError(f"unexpected status {response.status_code}")

            return run

        return prepare

    ops = [
        Op("floor.ES256.sign", sign),
        Op("mem.httpx.bare", http(m_bare, bare_headers)),
        Op("mem.httpx.dpopkit", http(m_dpop)),
        Op("mem.requests.bare", http(rm_bare, bare_headers)),
        Op("mem.requests.dpopkit", http(rm_dpop)),
        Op("mem.requests.roc", http(rm_roc)),
        Op("httpx.bare", http(h_bare, bare_headers), max_n=5000),
        Op("httpx.dpopkit", http(h_dpop), max_n=5000),
        Op("requests.bare", http(r_bare, bare_headers), max_n=5000),
        Op("requests.dpopkit", http(r_dpop), max_n=5000),
        Op("requests.roc", http(r_roc), max_n=5000),
    ]

    def close() -> None:
        for c in (h_bare, h_dpop, m_bare, m_dpop):
            c.close()
        for s in (r_bare, r_dpop, r_roc, rm_bare, rm_dpop, rm_roc):
            s.close()

    return ops, close


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=200.0)
    args = parser.parse_args(argv)
    reps, target = (3, 60.0) if args.quick else (args.reps, args.target_ms)
    base, stop = start_server()
    ops, close = make_ops(base)
    try:
        run_round_robin(
            ops,
            reps=reps,
            target_ms=target,
            clock="cpu",
            progress=lambda m: print(m, file=sys.stderr),
        )
    finally:
        close()
        stop()
    by = {op.name: op for op in ops}
    print(f"# dpopkit client benchmark — Python {platform.python_version()}, {reps} reps")
    print(f"{'op':<20} {'µs/op':>9} {'spread':>7}")
    for op in ops:
        print(f"{op.name:<20} {fmt_us(op.median_ns):>9} {op.spread:>6.0%}")
    sign = by["floor.ES256.sign"].median_ns
    print()
    print("added cost per request (op − bare), as a multiple of one bare ES256 sign.")
    print("The bar is judged in process (mem.*: no socket, so no loopback noise); the")
    print("local-server rows show the same added cost inside a real round trip.")
    verdict = True
    for prefix in ("mem.", ""):
        for stack, name in (("httpx", "dpopkit"), ("requests", "dpopkit"), ("requests", "roc")):
            added = by[f"{prefix}{stack}.{name}"].median_ns - by[f"{prefix}{stack}.bare"].median_ns
            mult = added / sign
            mark = ""
            if name == "dpopkit" and prefix:
                ok = mult <= 1.3
                verdict &= ok
                mark = "PASS (≤ 1.3×)" if ok else "FAIL (> 1.3×)"
            label = f"{prefix}{stack}.{name}"
            print(f"  {label:<22} +{fmt_us(added):>7} µs = {mult:5.2f}× sign  {mark}")
    for prefix in ("mem.", ""):
        r = ratio(by[f"{prefix}requests.roc"], by[f"{prefix}requests.dpopkit"])
        print(
            f"{prefix}requests: requests-oauth2client / dpopkit per request = {r.value:.2f}× "
            f"(quartiles {r.q1:.2f}–{r.q3:.2f})"
        )
    return 0 if verdict else 1


if __name__ == "__main__":
    raise SystemExit(main())
