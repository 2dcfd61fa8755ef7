"""Throughput of a deployment: ``dpopkit serve`` and ``dpopkit serve-api`` with 1 and 2
workers on PostgreSQL and Redis (a benchmark, not a test).

Run: ``python bench/deploy.py [--workers 1,2] [--seconds 5] [--rounds 2] [--pool 40000]``
(needs wrk, and PostgreSQL and Redis on 127.0.0.1 as the tests use them).

* **AS**: ``dpopkit serve --workers N`` with the grant store in a fresh PostgreSQL database
  and the replay cache in Redis (the recipe of ``docs/deployment.md``); wrk posts
  ``client_credentials`` token requests, 8 connections, one fresh ES256 proof per request
  (8 keys, as 8 clients); each answer is an ES256 JWT access token.
* **RS**: ``dpopkit serve-api --workers N`` with its replay cache in Redis, validating the
  AS's JWT access token (keys by discovery from a ``dpopkit serve`` beside it); wrk sends
  ``GET /api/whoami``, 8 connections, one fresh proof per request, with ``ath``.

Every figure is requests/s and the server's CPU µs per request (all its processes). The
load generator (wrk) and the servers share the machine's cores; rounds alternate 1 and 2
workers, and the table gives medians. ``DPOPKIT_BENCH_LOG=FILE`` keeps the servers' logs
(each refusal is one line with its reason).
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _load import LoadResult, accepted, fresh_postgres_database, have_wrk, wrk_run

from dpopkit import DPoPKey, create_proof

SECRET = "bench-secret-value"
BASIC = "Basic " + base64.b64encode(f"bench:{SECRET}".encode()).decode()
REDIS = "redis://127.0.0.1:6379/13"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(cmd: list[str], ready_url: str) -> subprocess.Popen[bytes]:
    log = os.environ.get("DPOPKIT_BENCH_LOG")
    err = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(ready_url, timeout=1)
            return proc
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit(f"{' '.join(cmd[2:5])} did not start") from None
            time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _serve(tmp: Path, port: int, workers: int, prefix: str) -> subprocess.Popen[bytes]:
    base = f"http://127.0.0.1:{port}"
    config = tmp / "as.toml"
    config.write_text(
        f'issuer = "{base}"\nport = {port}\ndata_dir = "{tmp / "data"}"\n'
        f'storage_url = "{fresh_postgres_database()}"\n'
        f'replay_url = "{REDIS}"\nreplay_prefix = "{prefix}"\n'
        '[[clients]]\nclient_id = "bench"\n'
        f'client_secret = "{SECRET}"\ngrant_types = ["client_credentials"]\n'
        "dpop_bound_access_tokens = true\n"
    )
    cmd = [sys.executable, "-m", "dpopkit", "serve", "--config", str(config), "--no-api"]
    cmd += ["--log-level", "info", "--workers", str(workers)]
    return _start(cmd, base + "/.well-known/oauth-authorization-server")


def as_run(workers: int, seconds: float, pool: int) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        proc = _serve(Path(tmp), port, workers, f"bench-as-{os.getpid()}-{time.time_ns()}:")
        try:
            htu = f"http://127.0.0.1:{port}/token"
            keys = [DPoPKey.generate("ES256") for _ in range(8)]
            # Warm every worker: the first use of the client secret in a process runs the
            # (deliberately slow, concurrency-limited) scrypt check; later ones hit its cache.
            for _ in range(8 * workers):
                with httpx.Client() as http:  # a new connection: any worker may take it
                    answer = http.post(
                        htu,
                        content=b"grant_type=client_credentials",
                        headers={
                            "Content-Type": "application/x-www-form-urlencoded",
                            "Authorization": BASIC,
                            "DPoP": create_proof(
                                keys[0], htm="POST", htu=htu, allow_insecure_http=True
                            ),
                        },
                    )
                    assert answer.status_code == 200, answer.text
            proofs = [
                create_proof(keys[i % 8], htm="POST", htu=htu, allow_insecure_http=True)
                for i in range(pool)
            ]
            return accepted(
                wrk_run(
                    htu,
                    method="POST",
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",
                        "Authorization": BASIC,
                    },
                    body="grant_type=client_credentials",
                    proofs=proofs,
                    seconds=seconds,
                    server_pid=proc.pid,
                )
            )
        finally:
            _stop(proc)


def rs_run(workers: int, seconds: float, pool: int) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        as_port, rs_port = _free_port(), _free_port()
        issuer = f"http://127.0.0.1:{as_port}"
        auth = _serve(Path(tmp), as_port, 1, f"bench-rs-as-{os.getpid()}-{time.time_ns()}:")
        try:
            key = DPoPKey.generate("ES256")
            token_proof = create_proof(
                key, htm="POST", htu=issuer + "/token", allow_insecure_http=True
            )
            token = httpx.post(
                issuer + "/token",
                content=b"grant_type=client_credentials",
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Authorization": BASIC,
                    "DPoP": token_proof,
                },
            ).json()["access_token"]
            origin = f"http://127.0.0.1:{rs_port}"
            url = origin + "/api/whoami"
            cmd = [sys.executable, "-m", "dpopkit", "serve-api", "--issuer", issuer]
            cmd += ["--audience", issuer, "--port", str(rs_port), "--replay", REDIS]
            cmd += ["--allow-insecure-http"]  # the AS on loopback http
            cmd += ["--replay-prefix", f"bench-rs-{os.getpid()}-{time.time_ns()}:"]
            cmd += ["--log-level", "warning", "--workers", str(workers)]
            api = _start(cmd, url)
            try:

                def proof() -> str:
                    return create_proof(
                        key, htm="GET", htu=url, access_token=token, allow_insecure_http=True
                    )

                # Warm every worker: each fetches the AS's keys by discovery once.
                for _ in range(8 * workers):
                    with httpx.Client() as http:  # a new connection: any worker may take it
                        answer = http.get(
                            url, headers={"Authorization": f"DPoP {token}", "DPoP": proof()}
                        )
                        assert answer.status_code == 200, answer.text
                return accepted(
                    wrk_run(
                        url,
                        method="GET",
                        headers={"Authorization": f"DPoP {token}"},
                        body="",
                        proofs=[proof() for _ in range(pool)],
                        seconds=seconds,
                        server_pid=api.pid,
                    )
                )
            finally:
                _stop(api)
        finally:
            _stop(auth)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pool", type=int, default=120_000, help="proofs per run (no reuse)")
    args = parser.parse_args()
    if not have_wrk():
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 1
    counts = [int(n) for n in args.workers.split(",")]
    print(
        f"dpopkit deployment benchmark · Python {platform.python_version()} · {os.cpu_count()} CPUs"
    )
    results: dict[tuple[str, int], list[LoadResult]] = {}
    for round_no in range(1, args.rounds + 1):
        for workers in counts:
            for name, run in (("serve", as_run), ("serve-api", rs_run)):
                res = run(workers, args.seconds, args.pool)
                results.setdefault((name, workers), []).append(res)
                print(
                    f"round {round_no} {name:9s} ×{workers}: {res.rate:7.0f} req/s"
                    f"  {res.cpu_us:5.0f} µs CPU/request",
                    flush=True,
                )
    print(f"\nmedians over {args.rounds} round(s), wrk -c8 -t2, {args.seconds:g} s:")
    print(
        "| workers | `dpopkit serve`, tokens/s (CPU µs/token) "
        "| `dpopkit serve-api`, requests/s (CPU µs/request) |"
    )
    print("|---:|---:|---:|")
    for workers in counts:
        cells = []
        for name in ("serve", "serve-api"):
            runs = results[(name, workers)]
            rate = statistics.median(r.rate for r in runs)
            cpu = statistics.median(r.cpu_us for r in runs)
            cells.append(f"{rate:.0f} ({cpu:.0f})")
        print(f"| {workers} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
