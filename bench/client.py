"""Benchmark of the client's per-request DPoP overhead (not a test).

Run: ``python bench/client.py [--quick] [--reps N] [--target-ms MS]``.

The bar: the cost ``DPoPAuth`` adds to a request (op − bare)
is at most 1.3× a bare ES256 sign, measured next to requests-oauth2client's
DPoP token doing the same calls in the same run.

Two transports, timed in one run, round-robin (``bench/_harness.py``), with the
**thread CPU clock** of the client thread, medians over the repetitions:

* ``mem.*``: a quiet in-process transport (``httpx.MockTransport`` / a requests
  adapter) answering a canned 200: no socket and no server, so the network and
  the server do not drown the client-side difference. The bar is judged here.
* the other rows: a real round trip to a plain ASGI app (uvicorn, in a thread,
  127.0.0.1, port 0) that checks nothing; the server's work in its own thread
  is not counted, but loopback I/O makes these rows noisier.

Ops: ``floor.ES256.sign`` is a bare ``cryptography`` ECDSA P-256 sign of an
input as long as a real proof's signing input, plus DER → raw R‖S (what a proof
needs); ``*.bare`` is one GET with ``Authorization: DPoP <token>`` and no auth
object; ``*.bare+sign`` is the same GET plus one bare sign in the same
iteration (the sign "on top of the bare request", paying the cache misses a
sign really pays between two requests); ``*.dpopkit`` uses
:class:`dpopkit.client.httpx.DPoPAuth` / :class:`dpopkit.client.requests.DPoPAuth`
(a new proof with ``ath`` per request, nonce cache consulted, response
inspected); ``*.roc`` uses requests-oauth2client's ``DPoPToken`` (requests
only: it has no httpx auth).

For deterministic comparisons (timing noise hides small wins on a shared
machine), count instructions: ``valgrind --tool=callgrind python
bench/client.py --loop mem.httpx.dpopkit --count 1000`` minus the same with
``--count 0``, divided by 1000.

Each ratio is the median of per-repetition ratios (each repetition's ops run
seconds apart at most), with the quartiles as the noise. Two verdicts are
printed against 1.3×: the added cost over the bare sign timed alone in a tight
loop (the strictest reading), and over what a bare sign
adds to the same request (``bare+sign − bare``). The exit status is 1 when the
first verdict fails for httpx.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import json
import platform
import secrets
import socket
import statistics
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
    from dpopkit.core.proof import create_proof, verify_proof

    url = base + PATH
    key = DPoPKey.generate("ES256")
    raw_key = ec.generate_private_key(ec.SECP256R1())
    sample = create_proof(
        key,
        htm="GET",
        htu=url,
        access_token=ACCESS_TOKEN,
        now=time.time(),
        allow_insecure_http=True,
    )
    signing_input = b"x" * len(sample.rsplit(".", 1)[0])  # as long as a real proof's

    def dpop_auth() -> dpop_httpx.DPoPAuth:
        return dpop_httpx.DPoPAuth(key, token=ACCESS_TOKEN, allow_insecure_http=True)

    def requests_auth() -> dpop_requests.DPoPAuth:
        return dpop_requests.DPoPAuth(key, token=ACCESS_TOKEN, allow_insecure_http=True)

    def roc_auth() -> DPoPToken:
        return DPoPToken(access_token=ACCESS_TOKEN, _dpop_key=RocKey.generate(alg="ES256"))

    canned = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    httpx_clients = {
        "mem.bare": httpx.Client(transport=canned),
        "mem.dpopkit": httpx.Client(transport=canned, auth=dpop_auth()),
        "bare": httpx.Client(),
        "dpopkit": httpx.Client(auth=dpop_auth()),
    }
    sessions = {name: requests.Session() for name in ("mem.bare", "mem.dpopkit", "mem.roc")}
    sessions.update({name: requests.Session() for name in ("bare", "dpopkit", "roc")})
    for name, session in sessions.items():
        if name.startswith("mem."):
            session.mount("http://", _CannedAdapter())
        if name.endswith("dpopkit"):
            session.auth = requests_auth()
        elif name.endswith("roc"):
            session.auth = roc_auth()
    # The bare request carries the same Authorization field, so "op − bare" is the DPoP work.
    bare_headers = {"Authorization": f"DPoP {ACCESS_TOKEN}"}

    def one_sign() -> None:
        r, s = decode_dss_signature(raw_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def sign(n: int) -> Callable[[], None]:
        def run() -> None:
            for _ in range(n):
                one_sign()

        return run

    def http(
        client: Any, headers: dict[str, str] | None = None, *, plus_sign: bool = False
    ) -> Callable[[int], Callable[[], None]]:
        def prepare(n: int) -> Callable[[], None]:
            def run() -> None:
                for _ in range(n):
                    response = client.get(url, headers=headers)
                    if response.status_code != 200:
                        raise RuntimeError(f"unexpected status {response.status_code}")
                    if plus_sign:
                        one_sign()

            return run

        return prepare

    # The yardstick: the least a DPoP client can add to the bare request, written inline
    # (constant header and ath computed once, as dpopkit does; no nonce cache, no response
    # inspection, no checks): the proof's JSON, base64url, one sign, DER -> raw, one header.
    minimal_header = _b64e(
        json.dumps(
            {"typ": "dpop+jwt", "alg": "ES256", "jwk": _ec_public_jwk(raw_key)},
            separators=(",", ":"),
        ).encode()
    )
    minimal_ath = _b64e(hashlib.sha256(ACCESS_TOKEN.encode()).digest())
    minimal_htu = url.split("?", 1)[0]
    minimal_alg = ec.ECDSA(hashes.SHA256())

    def minimal_headers() -> dict[str, str]:
        body = (
            f'{{"jti":"{secrets.token_urlsafe(16)}","htm":"GET","htu":"{minimal_htu}",'
            f'"iat":{int(time.time())},"ath":"{minimal_ath}"}}'
        )
        signing_input = f"{minimal_header}.{_b64e(body.encode())}"
        r, s = decode_dss_signature(raw_key.sign(signing_input.encode(), minimal_alg))
        signature = _b64e(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        return {**bare_headers, "DPoP": f"{signing_input}.{signature}"}

    # The yardstick makes real proofs: dpopkit must accept one (else the comparison is void).
    verify_proof(
        minimal_headers()["DPoP"], htm="GET", htu=url, access_token=ACCESS_TOKEN, now=time.time()
    )

    def minimal(client: Any) -> Callable[[int], Callable[[], None]]:
        def prepare(n: int) -> Callable[[], None]:
            def run() -> None:
                for _ in range(n):
                    if client.get(url, headers=minimal_headers()).status_code != 200:
                        raise RuntimeError("unexpected status")

            return run

        return prepare

    h, r = httpx_clients, sessions
    ops = [
        Op("floor.ES256.sign", sign),
        Op("mem.httpx.bare", http(h["mem.bare"], bare_headers)),
        Op("mem.httpx.bare+sign", http(h["mem.bare"], bare_headers, plus_sign=True)),
        Op("mem.httpx.dpopkit", http(h["mem.dpopkit"])),
        Op("mem.httpx.minimal", minimal(h["mem.bare"])),
        Op("mem.requests.bare", http(r["mem.bare"], bare_headers)),
        Op("mem.requests.bare+sign", http(r["mem.bare"], bare_headers, plus_sign=True)),
        Op("mem.requests.dpopkit", http(r["mem.dpopkit"])),
        Op("mem.requests.roc", http(r["mem.roc"])),
        Op("httpx.bare", http(h["bare"], bare_headers), max_n=5000),
        Op("httpx.dpopkit", http(h["dpopkit"]), max_n=5000),
        Op("requests.bare", http(r["bare"], bare_headers), max_n=5000),
        Op("requests.dpopkit", http(r["dpopkit"]), max_n=5000),
        Op("requests.roc", http(r["roc"]), max_n=5000),
    ]

    def close() -> None:
        for client in httpx_clients.values():
            client.close()
        for session in sessions.values():
            session.close()

    return ops, close


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _ec_public_jwk(private: Any) -> dict[str, str]:
    numbers = private.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64e(numbers.x.to_bytes(32, "big")),
        "y": _b64e(numbers.y.to_bytes(32, "big")),
    }


def added_ratio(op: Op, bare: Op, unit: Op | tuple[Op, Op]) -> tuple[float, float, float]:
    """Median and quartiles of the per-repetition ``(op − bare) / unit``.

    ``unit`` is one op (its figure) or a pair ``(a, b)`` (the difference a − b).
    """
    per_rep = []
    for i, (x, b) in enumerate(zip(op.samples_ns, bare.samples_ns, strict=True)):
        u = (
            unit.samples_ns[i]
            if isinstance(unit, Op)
            else unit[0].samples_ns[i] - unit[1].samples_ns[i]
        )
        per_rep.append((x - b) / u)
    if len(per_rep) < 2:
        return per_rep[0], per_rep[0], per_rep[0]
    q1, _, q3 = statistics.quantiles(per_rep, n=4)
    return statistics.median(per_rep), q1, q3


BAR = 1.3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--target-ms", type=float, default=120.0)
    parser.add_argument(
        "--loop",
        metavar="OP",
        help="run one mem.* op --count times, untimed (for valgrind --tool=callgrind)",
    )
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.loop:
        ops, close = make_ops("http://127.0.0.1:9")  # mem.* ops never touch this address
        op = {op.name: op for op in ops}[args.loop]
        # One call first, in every run (--count 0 too): what the first request pays once
        # (caches filled, code first run) is not work per request, as in the timed runs.
        op.prepare(1)()
        run = op.prepare(args.count)
        gc.collect()
        gc.disable()  # as in the timed runs (bench/_harness.py)
        run()
        close()
        return 0
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
    sign = by["floor.ES256.sign"]
    print(
        f"# dpopkit client benchmark — Python {platform.python_version()}, {reps} reps, "
        "thread CPU time, medians"
    )
    print("# mem.* = quiet in-process transport (canned 200, no socket, no server);")
    print("# other rows = real round trip to a plain uvicorn app on 127.0.0.1 (noisier).")
    print(f"{'op':<24} {'µs/op':>9} {'spread':>7}")
    for op in ops:
        print(f"{op.name:<24} {fmt_us(op.median_ns):>9} {op.spread:>6.0%}")
    print()
    print(f"Added cost per request (op − bare; bar: ≤ {BAR}× a bare ES256 sign).")
    print("  A = ÷ the bare sign timed alone (floor.ES256.sign, tight loop: strictest)")
    print("  B = ÷ what a bare sign adds to the same request (bare+sign − bare)")
    verdict = True
    for prefix in ("mem.", ""):
        for stack, name in (
            ("httpx", "dpopkit"),
            ("httpx", "minimal"),
            ("requests", "dpopkit"),
            ("requests", "roc"),
        ):
            if f"{prefix}{stack}.{name}" not in by:
                continue
            op, bare = by[f"{prefix}{stack}.{name}"], by[f"{prefix}{stack}.bare"]
            added = op.median_ns - bare.median_ns
            a, a1, a3 = added_ratio(op, bare, sign)
            label = f"{prefix}{stack}.{name}"
            line = f"  {label:<22} {added / 1000:+7.1f} µs  A {a:5.2f}× ({a1:.2f}–{a3:.2f})"
            if prefix:
                with_sign = by[f"{prefix}{stack}.bare+sign"]
                b, b1, b3 = added_ratio(op, bare, (with_sign, bare))
                line += f"  B {b:5.2f}× ({b1:.2f}–{b3:.2f})"
                # The least-disturbed repetitions (noise on a shared machine only adds time).
                a_min = (op.min_ns - bare.min_ns) / sign.min_ns
                b_min = (op.min_ns - bare.min_ns) / (with_sign.min_ns - bare.min_ns)
                line += f"  min: A {a_min:.2f}× B {b_min:.2f}×"
                if name == "dpopkit":
                    line += (
                        f"  A {'PASS' if a <= BAR else 'FAIL'}  B {'PASS' if b <= BAR else 'FAIL'}"
                    )
                    if stack == "httpx":
                        verdict = a <= BAR
            print(line)
    rm = added_ratio(
        by["mem.httpx.dpopkit"],
        by["mem.httpx.bare"],
        (by["mem.httpx.minimal"], by["mem.httpx.bare"]),
    )
    print(
        f"mem.httpx: dpopkit's added cost ÷ the minimal yardstick's = {rm[0]:.2f}× "
        f"(quartiles {rm[1]:.2f}–{rm[2]:.2f})"
    )
    in_context = by["mem.httpx.bare+sign"].median_ns - by["mem.httpx.bare"].median_ns
    print(
        f"A bare sign costs {fmt_us(sign.median_ns)} µs alone and adds "
        f"{fmt_us(in_context)} µs to a bare httpx request (mem)."
    )
    for prefix in ("mem.", ""):
        rr = ratio(by[f"{prefix}requests.roc"], by[f"{prefix}requests.dpopkit"])
        print(
            f"{prefix}requests: requests-oauth2client / dpopkit per request = {rr.value:.2f}× "
            f"(quartiles {rr.q1:.2f}–{rr.q3:.2f})"
        )
    return 0 if verdict else 1


if __name__ == "__main__":
    raise SystemExit(main())
