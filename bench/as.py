"""Benchmark of the authorization server's token endpoint (not a test).

Run: ``python bench/as.py [--quick] [--reps N] [--target-ms MS] [--requests N] [--seconds S]
[--node] [--rounds R] [--workers N] [--no-breakdown]``. PostgreSQL and Redis: ``bench/deploy.py``.
``--node`` adds node-oidc-provider side by side (``npm install --prefix bench/node`` first;
``bench/node/server.mjs`` configures it like our server: client_credentials,
client_secret_basic, DPoP required, ES256 JWT access tokens; its storage is a SQLite file
with the same durability settings as ours, where it keeps one ``ReplayDetection`` row per
token request, as dpopkit keeps one replay record). With ``--node`` it ends with the
verdict on the bar: tokens/s with 8 clients, dpopkit ÷ node-oidc-provider, must ≥ 1.0
(exit 2 otherwise), goal ≥ 2.0.

Scenario: ``client_credentials`` with ``client_secret_basic``, an ES256 DPoP proof
(no nonce) and an ES256 JWT access token, on the default stack of ``dpopkit
serve``: SQLite grant store, SQLite replay cache.

1. **Breakdown** (in process, thread CPU clock, round-robin, medians; see
   ``bench/_harness.py``): the parts of one token request, and the whole
   ``TokenService.handle_token`` call. The access token itself is not stored (a JWT
   outside any refresh family): the replay record is the request's one durable write.
   ``floor.ES256.verify``/``sign`` are the bare ``cryptography`` operations every
   request needs at least once each.
2. **End to end** (wall clock): ``dpopkit serve`` in a subprocess (one uvicorn
   worker on 127.0.0.1), driven by httpx clients in this process, sequentially and
   with 8 concurrent clients; client and server share the machine, so the client's
   proof creation and HTTP work are counted against the server. Then under ``wrk``
   (8 connections, 2 threads; ``apt-get install wrk``) with proofs made beforehand,
   one per request from 8 keys, never reused: a load generator that costs the
   server's cores little. The verdict is given for both loads.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Op, fmt_us, ratio, run_round_robin
from _load import LoadResult, accepted, have_wrk, wrk_run
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from dpopkit import DPoPKey, Headers, RequestView, create_proof, verify_proof
from dpopkit.core.replay import record_proof
from dpopkit.server.service import Form, ServerSettings, TokenService
from dpopkit.storage.sql import ClientRecord, SQLGrantStore, hash_secret
from dpopkit.storage.sqlite import SQLiteReplayCache

ISSUER = "https://as.bench"
TOKEN_URL = ISSUER + "/token"
SECRET = "bench-secret-value"
BASIC = "Basic " + base64.b64encode(f"bench:{SECRET}".encode()).decode()
BODY = b"grant_type=client_credentials"


def _service(tmp: Path) -> TokenService:
    store = SQLGrantStore(f"sqlite:///{tmp / 'grants.db'}")
    store.put_client(
        ClientRecord(
            client_id="bench",
            secret_hash=hash_secret(SECRET),
            grant_types=("client_credentials",),
            scope="read",
            dpop_bound_access_tokens=True,
        )
    )
    return TokenService(
        ServerSettings(issuer=ISSUER),
        store=store,
        replay=SQLiteReplayCache(tmp / "replay.db"),
    )


def _request(proof: str) -> RequestView:
    return RequestView(
        method="POST",
        url=TOKEN_URL,
        headers=Headers(
            [
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", BASIC),
                ("DPoP", proof),
            ]
        ),
        body=BODY,
    )


def breakdown(tmp: Path, reps: int, target_ms: float) -> None:
    svc = _service(tmp)
    key = DPoPKey.generate("ES256")
    raw = ec.generate_private_key(ec.SECP256R1())
    pub = raw.public_key()
    data = b"x" * 300
    der = raw.sign(data, ec.ECDSA(hashes.SHA256()))
    now = time.time()
    svc.handle_token(_request(create_proof(key, htm="POST", htu=TOKEN_URL)))  # warm caches

    def proofs(n: int) -> list[str]:
        return [create_proof(key, htm="POST", htu=TOKEN_URL) for _ in range(n)]

    def floor_verify(n: int) -> Any:
        return lambda: [pub.verify(der, data, ec.ECDSA(hashes.SHA256())) for _ in range(n)]

    def floor_sign(n: int) -> Any:
        return lambda: [raw.sign(data, ec.ECDSA(hashes.SHA256())) for _ in range(n)]

    def proof_check(n: int) -> Any:
        pool, t = proofs(n), time.time()
        return lambda: [verify_proof(p, htm="POST", htu=TOKEN_URL, now=t) for p in pool]

    def replay(n: int) -> Any:
        t = time.time()
        checked = [verify_proof(p, htm="POST", htu=TOKEN_URL, now=t) for p in proofs(n)]

        def run() -> None:
            for c in checked:
                record_proof(svc.replay, c, now=t)

        return run

    def client_auth(n: int) -> Any:
        view = _request("x")
        form = Form.parse(view)
        return lambda: [
            svc.authenticate_client(view, form, endpoint=TOKEN_URL, now=now) for _ in range(n)
        ]

    def signing(n: int) -> Any:
        signer = svc.keyring.current(now=now)
        claims = {
            "iss": ISSUER,
            "sub": "bench",
            "aud": ISSUER,
            "client_id": "bench",
            "scope": "read",
            "jti": "j" * 32,
            "iat": int(now),
            "exp": int(now) + 300,
            "cnf": {"jkt": key.jkt},
        }
        return lambda: [signer.sign(claims, typ="at+jwt") for _ in range(n)]

    def whole(n: int) -> Any:
        pool = [_request(p) for p in proofs(n)]

        def run() -> None:
            for view in pool:
                resp = svc.handle_token(view)
                assert resp.status == 200, resp.body

        return run

    ops = [
        Op("floor.ES256.verify", floor_verify),
        Op("floor.ES256.sign", floor_sign),
        Op("proof check (verify_proof)", proof_check),
        Op("replay record (SQLite)", replay, max_n=3000),
        Op("client auth (Basic, cached)", client_auth),
        Op("signing (at+jwt ES256)", signing),
        Op("handle_token (whole)", whole, max_n=3000),
    ]
    run_round_robin(ops, reps=reps, target_ms=target_ms, progress=lambda m: print("  " + m))
    floor = ops[0]
    print("\nbreakdown (thread CPU time per request, median)")
    for op in ops:
        r = ratio(op, floor)
        print(f"  {op.name:30s} {fmt_us(op.median_ns):>8s} µs  {r.value:5.2f}× verify floor")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dpopkit_server(tmp: Path, port: int, *, workers: int) -> list[str]:
    base = f"http://127.0.0.1:{port}"
    config = tmp / "as.toml"
    config.write_text(
        f'issuer = "{base}"\nport = {port}\ndata_dir = "{tmp / "data"}"\n'
        '[[clients]]\nclient_id = "bench"\n'
        f'client_secret = "{SECRET}"\ngrant_types = ["client_credentials"]\n'
        "dpop_bound_access_tokens = true\n"
    )
    cmd = [sys.executable, "-m", "dpopkit", "serve", "--config", str(config), "--no-api"]
    return [*cmd, "--log-level", "warning", "--workers", str(workers)]


def wrk_phase(base: str, seconds: float, pool_size: int, pid: int) -> LoadResult:
    """Tokens/s under wrk with 8 connections, one fresh proof per request (8 keys, as
    8 clients), and the server's CPU µs per token (``pid`` and its worker processes)."""
    keys = [DPoPKey.generate("ES256") for _ in range(8)]
    htu = base + "/token"
    proofs = [
        create_proof(keys[i % 8], htm="POST", htu=htu, allow_insecure_http=True)
        for i in range(pool_size)
    ]
    return accepted(
        wrk_run(
            htu,
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": BASIC},
            body=BODY.decode(),
            proofs=proofs,
            seconds=seconds,
            server_pid=pid,
        )
    )


def _node_server(tmp: Path, port: int) -> list[str]:
    script = Path(__file__).resolve().parent / "node" / "server.mjs"
    return ["node", str(script), str(port), str(tmp / "node-oidc-provider.db")]


def end_to_end(
    name: str, cmd: list[str], port: int, requests_n: int, seconds: float, pool: int
) -> tuple[float, float, float]:
    """Tokens/s of the server ``cmd`` runs: sequential, with 8 concurrent Python clients,
    and under wrk with 8 connections (0 when wrk is not installed)."""
    import httpx

    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/.well-known/openid-configuration", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{name} did not start") from None
                time.sleep(0.1)

        def one(http: httpx.Client, key: DPoPKey) -> None:
            proof = create_proof(key, htm="POST", htu=base + "/token", allow_insecure_http=True)
            resp = http.post(
                base + "/token",
                content=BODY,
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Authorization": BASIC,
                    "DPoP": proof,
                },
            )
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["token_type"] == "DPoP", resp.text
            assert body["access_token"].count(".") == 2, "expected a JWT access token"

        key = DPoPKey.generate("ES256")
        with httpx.Client() as http:
            for _ in range(20):
                one(http, key)
            start = time.perf_counter()
            for _ in range(requests_n):
                one(http, key)
            elapsed = time.perf_counter() - start
        seq = requests_n / elapsed

        counts = [0] * 8
        stop = threading.Event()

        def worker(i: int) -> None:
            k = DPoPKey.generate("ES256")
            with httpx.Client() as http:
                while not stop.is_set():
                    one(http, k)
                    counts[i] += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        conc = sum(counts) / (time.perf_counter() - start)
        under_wrk, cpu_us = (0.0, 0.0)
        if have_wrk():
            loaded = wrk_phase(base, seconds, pool, proc.pid)
            under_wrk, cpu_us = loaded.rate, loaded.cpu_us
        print(
            f"  {name:22s} sequential {seq:7.0f}   8 clients {conc:7.0f}"
            f"   wrk -c8 {under_wrk:7.0f} tokens/s ({cpu_us:4.0f} µs server CPU per token)"
        )
        return seq, conc, under_wrk
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


#: tokens/s with 8 concurrent clients, dpopkit ÷ node-oidc-provider, same run.
MUST_VS_NODE = 1.0
GOAL_VS_NODE = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter runs")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--target-ms", type=float, default=100.0)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--node",
        action="store_true",
        help="also run node-oidc-provider (npm install --prefix bench/node first)",
    )
    parser.add_argument(
        "--rounds", type=int, help="end-to-end rounds (default 3 with --node, else 1)"
    )
    parser.add_argument("--workers", type=int, default=1, help="dpopkit serve --workers")
    parser.add_argument("--no-breakdown", action="store_true", help="end to end only")
    parser.add_argument(
        "--pool", type=int, default=40_000, help="proofs made for each wrk run (never reused)"
    )
    args = parser.parse_args()
    if args.quick:
        args.reps, args.target_ms, args.requests, args.seconds = 3, 30.0, 200, 2.0
    rounds = args.rounds or (3 if args.node else 1)
    print(f"dpopkit AS benchmark · Python {platform.python_version()} · {os.cpu_count()} CPUs")
    if not args.no_breakdown:
        with tempfile.TemporaryDirectory() as tmp:
            breakdown(Path(tmp), args.reps, args.target_ms)
    label = f"dpopkit serve ×{args.workers}" if args.workers > 1 else "dpopkit serve"
    print(
        "\nend to end (wall clock; client and server share the machine; both servers on "
        "SQLite files)"
    )
    if not have_wrk():
        print("  (wrk not found: apt-get install wrk; its phase is left out)")
    figures: dict[str, list[tuple[float, float, float]]] = {label: [], "node-oidc-provider": []}
    for _ in range(rounds):  # alternate servers so a noisy phase hits both
        with tempfile.TemporaryDirectory() as tmp:
            port = _free_port()
            cmd = _dpopkit_server(Path(tmp), port, workers=args.workers)
            figures[label].append(
                end_to_end(label, cmd, port, args.requests, args.seconds, args.pool)
            )
        if args.node:
            with tempfile.TemporaryDirectory() as tmp:
                port = _free_port()
                cmd = _node_server(Path(tmp), port)
                figures["node-oidc-provider"].append(
                    end_to_end(
                        "node-oidc-provider", cmd, port, args.requests, args.seconds, args.pool
                    )
                )
    print(f"\nmedians over {rounds} round(s), tokens/s:")
    medians: dict[str, list[float]] = {}
    for name, runs in figures.items():
        if runs:
            medians[name] = [statistics.median(r[i] for r in runs) for i in range(3)]
            seq, conc, under_wrk = medians[name]
            print(
                f"  {name:22s} sequential {seq:7.0f}   8 clients {conc:7.0f}"
                f"   wrk -c8 {under_wrk:7.0f}"
            )
    if not args.node:
        return 0
    failed = False
    for index, load in ((1, "8 Python clients"), (2, "wrk, 8 connections")):
        node = medians["node-oidc-provider"][index]
        if node == 0:
            continue
        value = medians[label][index] / node
        verdict = "PASS" if value >= MUST_VS_NODE else "FAIL"
        failed |= verdict == "FAIL"
        goal = "met" if value >= GOAL_VS_NODE else "not met"
        print(
            f"dpopkit ÷ node-oidc-provider, tokens/s, {load}: {value:.2f}× "
            f"(must ≥ {MUST_VS_NODE:.1f}: {verdict}; goal ≥ {GOAL_VS_NODE:.1f}: {goal})"
        )
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
