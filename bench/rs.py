"""Resource-server load benchmark: uvicorn on 127.0.0.1 driven by wrk (a benchmark, not a test).

Run: ``python bench/rs.py [--duration 10] [--connections 32] [--threads 2] [--rounds 2]``
(needs ``wrk`` on PATH: ``apt-get install wrk``), or ``python bench/rs.py --in-process``
(no wrk, no sockets: see below). Exit status: 0 when every "must" of the bar holds, 2
when one does not.

Variants, each a fresh single-process uvicorn server (uvloop + httptools when
installed, else asyncio + h11) serving ``GET https://rs.example/hello``:

* ``bare``: the endpoint alone (headers ignored);
* ``floor``: the bare endpoint plus one ES256 key import + verify (below) per request:
  the floor served the same way, to show what serving it costs on top (information);
* ``dpopkit``: the endpoint behind :class:`~dpopkit.resource.asgi.DPoPMiddleware`,
  ES256 proof + RS256 JWT access token (static JWKS) + memory replay cache;
* ``dpopkit-offload``: the same with ``offload_verification=True`` (proof verified in
  a worker thread; cryptography releases the GIL, so a second core can help);
* ``pyjwt``: the same checks written with PyJWT (token: ``jwt.decode`` RS256 with iss/
  aud/exp; proof: ``get_unverified_header``, ``PyJWK``, ``jwt.decode``, then typ,
  private-member, htm, htu, iat window, ath, RFC 7638 thumbprint vs ``cnf.jkt``, replay).

Every request carries a distinct, freshly made proof (a pool written before each
run; wrk's Lua script hands them out without reuse). The JWT access token is the
same for every request, as with a real client. The report gives requests/s, the
server's CPU time per request (``/proc/<pid>/stat``), the CPU added over ``bare``,
non-2xx counts (must be 0). Variants run round-robin for ``--rounds`` rounds;
figures are medians.

The floor, measured in this process before every variant run (so interleaved with
the wrk rounds): one ES256 public-key import from the JWK's ``x``/``y`` (what a DPoP
verifier must do with a proof's ``jwk``) plus one signature verify (raw R||S turned
into DER), with ``cryptography``, in thread CPU time (many iterations, distinct keys
and messages, the cyclic GC off). The bar (``CPU_OVER_FLOOR``, ``RPS_OVER_PYJWT``):

* the CPU the dpopkit variant adds per request over ``bare`` ÷ the floor: must
  <= 1.60, goal <= 1.30 (median of the per-round ratios);
* dpopkit / pyjwt requests/s: must >= 3.0 (ratio of the medians).

``--in-process`` drives the same ASGI apps without a server: each request is one call
of the app with a fresh proof and fake ``receive``/``send`` (the coroutine is stepped
by hand; nothing in these apps waits for I/O), timed in thread CPU time and
alternated with the floor over ``--rounds`` repetitions. Information only (no
verdict, exit 0): it leaves out the HTTP server, so the share of a request that is
dpopkit's shows without the noise of a shared machine.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import hmac
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import wrk_run

ORIGIN = "https://rs.example"
ISSUER = "https://as.example"
VARIANTS = ("bare", "floor", "dpopkit", "dpopkit-offload", "pyjwt")
#: The bar: (must, goal) for "CPU added ÷ floor" (at most); the "must" for dpopkit / pyjwt req/s.
CPU_OVER_FLOOR = (1.60, 1.30)
RPS_OVER_PYJWT = 3.0

# --- server side ----------------------------------------------------------------------------


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def _dpopkit_app(config: dict[str, Any], offload: bool) -> Any:
    from dpopkit.resource.asgi import DPoPMiddleware
    from dpopkit.resource.guard import AsyncResourceGuard
    from dpopkit.resource.tokens import JWTAccessTokens
    from dpopkit.storage.memory import AsyncMemoryReplayCache

    guard = AsyncResourceGuard(
        tokens=JWTAccessTokens(issuer=ISSUER, audience=ORIGIN, jwks=config["jwks"]),
        replay=AsyncMemoryReplayCache(single_process=True),
        offload_verification=offload,
    )
    return DPoPMiddleware(_hello, guard=guard, public_origin=ORIGIN)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _pyjwt_app(config: dict[str, Any]) -> Any:
    """The same checks written with PyJWT, the way a PyJWT user would."""
    import jwt

    as_key = jwt.PyJWK(config["jwks"]["keys"][0]).key
    replay: dict[str, float] = {}
    required: Any = {"require": ["jti", "htm", "htu", "iat"]}
    at_required: Any = {"require": ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"]}

    async def deny(send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"www-authenticate", b'DPoP error="invalid_token"')],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, []).append(value)
        auth, proofs = headers.get(b"authorization", []), headers.get(b"dpop", [])
        if len(auth) != 1 or len(proofs) != 1:
            return await deny(send)
        scheme, _, token = auth[0].decode().partition(" ")
        proof = proofs[0].decode()
        now = time.time()
        try:
            if scheme.lower() != "dpop":
                raise ValueError("scheme")
            at_header = jwt.get_unverified_header(token)
            if at_header.get("typ", "").lower().removeprefix("application/") != "at+jwt":
                raise ValueError("typ")
            at = jwt.decode(
                token,
                as_key,
                algorithms=["RS256"],
                audience=ORIGIN,
                issuer=ISSUER,
                options=at_required,
            )
            header = jwt.get_unverified_header(proof)
            jwk = header.get("jwk")
            if header.get("typ") != "dpop+jwt" or not isinstance(jwk, dict):
                raise ValueError("typ/jwk")
            if header.get("alg") not in ("ES256", "RS256", "PS256", "EdDSA"):
                raise ValueError("alg")
            if {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk):
                raise ValueError("private jwk")
            key = jwt.PyJWK(jwk, algorithm=header["alg"])
            claims = jwt.decode(proof, key.key, algorithms=[header["alg"]], options=required)
            if claims["htm"] != scope["method"]:
                raise ValueError("htm")
            if claims["htu"].split("?")[0].split("#")[0] != ORIGIN + scope["path"]:
                raise ValueError("htu")
            if not now - 60 <= claims["iat"] <= now + 5:
                raise ValueError("iat")
            ath = _b64(hashlib.sha256(token.encode()).digest())
            if not hmac.compare_digest(str(claims.get("ath", "")), ath):
                raise ValueError("ath")
            members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
            canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
            jkt = _b64(hashlib.sha256(canonical).digest())
            if not hmac.compare_digest(str(at.get("cnf", {}).get("jkt", "")), jkt):
                raise ValueError("jkt")
            replay_key = hashlib.sha256(f"{jkt}|{claims['jti']}".encode()).hexdigest()
            if replay.get(replay_key, 0) > now:
                raise ValueError("replay")
            replay[replay_key] = now + 65
        except (jwt.PyJWTError, ValueError, KeyError, TypeError):
            return await deny(send)
        await _hello(scope, receive, send)

    return app


def _floor_app() -> Any:
    """The bare endpoint plus one ES256 key import + verify per request (the floor, served)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    pool = _floor_pool(4096)
    curve, algorithm = ec.SECP256R1(), ec.ECDSA(hashes.SHA256())
    from_point = ec.EllipticCurvePublicKey.from_encoded_point
    position = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal position
        if scope["type"] != "http":
            return
        x, y, sig, message = pool[position]
        position = (position + 1) % len(pool)
        key = from_point(curve, b"\x04" + _b64d(x) + _b64d(y))
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        key.verify(der, message, algorithm)
        await _hello(scope, receive, send)

    return app


def serve(variant: str, config_path: str, port: int) -> None:
    import uvicorn

    config = json.loads(Path(config_path).read_text())
    if variant == "bare":
        app: Any = _hello
    elif variant == "floor":
        app = _floor_app()
    elif variant == "pyjwt":
        app = _pyjwt_app(config)
    else:
        app = _dpopkit_app(config, offload=variant == "dpopkit-offload")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


# --- driver ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


def _setup(workdir: Path) -> tuple[Any, str, Path]:
    from dpopkit import DPoPKey
    from dpopkit.core.jws import b64url_encode, json_dumps

    as_key = DPoPKey.generate("RS256")
    client_key = DPoPKey.generate("ES256")
    jwk = {**as_key.public_jwk, "kid": "k1", "alg": "RS256", "use": "sig"}
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps({"jwks": {"keys": [jwk]}}))
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "bench-user",
        "aud": ORIGIN,
        "client_id": "bench",
        "iat": now,
        "exp": now + 3600,
        "jti": "bench-token",
        "scope": "read",
        "cnf": {"jkt": client_key.jkt},
    }
    header = {"typ": "at+jwt", "alg": "RS256", "kid": "k1"}
    signing_input = f"{b64url_encode(json_dumps(header))}.{b64url_encode(json_dumps(claims))}"
    token = f"{signing_input}.{b64url_encode(as_key.sign(signing_input.encode()))}"
    return client_key, token, config_path


def _proofs(key: Any, token: str, count: int) -> list[str]:
    from dpopkit import create_proof

    now = time.time()
    htu = f"{ORIGIN}/hello"
    return [
        create_proof(key, htm="GET", htu=htu, access_token=token, now=now) for _ in range(count)
    ]


# --- the floor: one ES256 key import from the JWK + one verify, with cryptography ----------


def _floor_pool(count: int, keys: int = 64) -> list[tuple[str, str, bytes, bytes]]:
    """(x, y, raw R||S signature, message): ``keys`` distinct keys, distinct messages."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    privates = [ec.generate_private_key(ec.SECP256R1()) for _ in range(keys)]
    pool = []
    for index in range(count):
        private = privates[index % keys]
        numbers = private.public_key().public_numbers()
        message = b"h" * 240 + b"." + b"p" * 280 + index.to_bytes(4, "big")
        r, s = decode_dss_signature(private.sign(message, ec.ECDSA(hashes.SHA256())))
        pool.append(
            (
                _b64(numbers.x.to_bytes(32, "big")),
                _b64(numbers.y.to_bytes(32, "big")),
                r.to_bytes(32, "big") + s.to_bytes(32, "big"),
                message,
            )
        )
    return pool


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def floor_us(pool: list[tuple[str, str, bytes, bytes]]) -> float:
    """Thread CPU µs of one ES256 key import from ``x``/``y`` + one verify (GC off)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    curve, algorithm = ec.SECP256R1(), ec.ECDSA(hashes.SHA256())
    from_point = ec.EllipticCurvePublicKey.from_encoded_point
    gc.collect()
    gc.disable()
    try:
        start = time.thread_time_ns()
        for x, y, sig, message in pool:
            key = from_point(curve, b"\x04" + _b64d(x) + _b64d(y))
            der = encode_dss_signature(
                int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            )
            key.verify(der, message, algorithm)
        elapsed = time.thread_time_ns() - start
    finally:
        gc.enable()
    return elapsed / len(pool) / 1000


def run_variant(
    variant: str, args: argparse.Namespace, workdir: Path, setup: Any
) -> dict[str, Any]:
    key, token, config_path = setup
    proofs = _proofs(key, token, args.pool)
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            variant,
            "--config",
            str(config_path),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait(port, proc)
        res = wrk_run(
            f"http://127.0.0.1:{port}/hello",
            method="GET",
            headers={"Authorization": f"DPoP {token}"},
            body="",
            proofs=proofs,
            seconds=args.duration,
            server_pid=proc.pid,
            connections=args.connections,
            threads=args.threads,
            # The bare and floor variants (no replay check) outrun any pool and may reuse it.
            reuse=variant in ("bare", "floor"),
        )
    finally:
        proc.terminate()
        proc.wait(10)
    return {"rps": res.rate, "requests": res.requests, "non2xx": res.refused, "cpu_us": res.cpu_us}


def _scope(token: str, proof: str) -> dict[str, Any]:
    """The ASGI scope uvicorn builds for wrk's request (same headers)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": "/hello",
        "raw_path": b"/hello",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"authorization", b"DPoP " + token.encode()),
            (b"dpop", proof.encode()),
        ],
    }


def _call(app: Any, scope: dict[str, Any]) -> int:
    """Run one request through ``app`` without an event loop; return the status."""
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    coro = app(scope, receive, send)
    try:
        coro.send(None)
    except StopIteration:
        return status[0]
    coro.close()
    raise RuntimeError("the app waited for I/O: it cannot be timed in process")


def in_process(args: argparse.Namespace, variants: list[str]) -> int:
    """Time each variant's app per request in this process, alternated with the floor."""
    from dpopkit import create_proof

    variants = [v for v in variants if v != "dpopkit-offload"]  # needs a worker thread
    with tempfile.TemporaryDirectory() as tmp:
        key, token, config_path = _setup(Path(tmp))
        config = json.loads(config_path.read_text())
    apps = {
        "bare": _hello,
        "floor": _floor_app(),
        "dpopkit": _dpopkit_app(config, offload=False),
        "pyjwt": _pyjwt_app(config),
    }
    count = args.requests
    floor_pool = _floor_pool(count)
    samples: dict[str, list[float]] = {v: [] for v in ("floor (this process)", *variants)}
    for _ in range(args.rounds):
        samples["floor (this process)"].append(floor_us(floor_pool))
        for variant in variants:
            now = time.time()
            scopes = [
                _scope(
                    token,
                    create_proof(
                        key, htm="GET", htu=f"{ORIGIN}/hello", access_token=token, now=now
                    ),
                )
                for _ in range(count)
            ]
            app = apps[variant]
            gc.collect()
            gc.disable()
            try:
                start = time.thread_time_ns()
                statuses = [_call(app, scope) for scope in scopes]
                elapsed = time.thread_time_ns() - start
            finally:
                gc.enable()
            if set(statuses) != {200}:
                raise SystemExit(f"{variant}: statuses {sorted(set(statuses))}, expected 200")
            samples[variant].append(elapsed / count / 1000)
    print(f"in process, {args.rounds} repetitions of {count} requests (thread CPU µs/request):")
    print("| op | median | min |")
    print("|---|---:|---:|")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} |")
    if "bare" in samples:
        for variant in ("floor", "dpopkit", "pyjwt"):
            if variant not in samples:
                continue
            added = [v - b for v, b in zip(samples[variant], samples["bare"], strict=True)]
            per_rep = [a / f for a, f in zip(added, samples["floor (this process)"], strict=True)]
            print(
                f"{variant} adds {statistics.median(added):.1f} µs per request over bare:"
                f" {statistics.median(per_rep):.2f}× the floor (median of per-repetition ratios;"
                f" range {min(per_rep):.2f}-{max(per_rep):.2f})"
            )
    if "dpopkit" in samples and "pyjwt" in samples:
        per_rep = [p / d for p, d in zip(samples["pyjwt"], samples["dpopkit"], strict=True)]
        print(f"pyjwt ÷ dpopkit CPU per request: {statistics.median(per_rep):.2f}×")
    return 0


def _verdicts(med: dict[str, dict[str, float]], ratios: list[float], floors: list[float]) -> bool:
    """Print the bar's verdict lines; return whether every "must" holds."""
    ok = True
    print(f"\nfloor (ES256 key import + verify, this process): {statistics.median(floors):.1f} µs")
    if ratios:
        must, goal = CPU_OVER_FLOOR
        value = statistics.median(ratios)
        passed = value <= must
        ok &= passed
        print(
            f"RS CPU added ÷ ES256 import+verify: {value:.2f}× (must ≤ {must:.2f}: "
            f"{'PASS' if passed else 'FAIL'}; goal ≤ {goal:.2f})"
        )
    if "dpopkit" in med and "pyjwt" in med:
        must = RPS_OVER_PYJWT
        value = med["dpopkit"]["rps"] / med["pyjwt"]["rps"]
        passed = value >= must
        ok &= passed
        print(
            f"dpopkit / pyjwt req/s: {value:.2f}× (must ≥ {must:.1f}: "
            f"{'PASS' if passed else 'FAIL'})"
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--pool",
        type=int,
        default=160_000,
        help="proofs per run; never reused by the variants that check them",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="time the apps in this process, without a server or wrk (information only)",
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="with --in-process: requests per repetition"
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.config, args.port)
        return 0
    variants = args.variants.split(",")
    if args.in_process:
        return in_process(args, variants)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    floors: list[float] = []
    floor_pool = _floor_pool(4000)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        setup = _setup(workdir)
        for round_no in range(args.rounds):
            for variant in variants:
                floors.append(floor_us(floor_pool))
                res = run_variant(variant, args, workdir, setup)
                results[variant].append(res)
                print(
                    f"round {round_no + 1} {variant:16s} {res['rps']:9.0f} req/s"
                    f"  {res['cpu_us']:7.1f} µs CPU/req  non-2xx {res['non2xx']}"
                    f"  (floor before it: {floors[-1]:.1f} µs)",
                    flush=True,
                )
    med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in results.items()}
    print(
        f"\nmedians over {args.rounds} round(s), {args.duration}s,"
        f" -c{args.connections} -t{args.threads}:"
    )
    print("| variant | req/s | server CPU µs/req | CPU added over bare | non-2xx |")
    print("|---|---:|---:|---:|---:|")
    bare_cpu = med.get("bare", {}).get("cpu_us")
    for variant, m in med.items():
        added = f"{m['cpu_us'] - bare_cpu:.1f}" if bare_cpu is not None else "-"
        print(f"| {variant} | {m['rps']:.0f} | {m['cpu_us']:.1f} | {added} | {m['non2xx']:.0f} |")
    if "dpopkit-offload" in med and "dpopkit" in med:
        ratio = med["dpopkit-offload"]["rps"] / med["dpopkit"]["rps"]
        print(f"dpopkit-offload / dpopkit req/s: {ratio:.2f}× (information)")
    if "floor" in med and "dpopkit" in med and bare_cpu is not None:
        served = med["floor"]["cpu_us"] - bare_cpu
        ratio = (med["dpopkit"]["cpu_us"] - bare_cpu) / served
        print(
            f"the floor served adds {served:.1f} µs over bare; dpopkit adds {ratio:.2f}× that"
            " (information)"
        )
    # Per round: (dpopkit - bare) CPU ÷ the median floor measured in that round.
    ratios: list[float] = []
    if "dpopkit" in results and "bare" in results:
        per_round = len(variants)
        for round_no in range(args.rounds):
            added = results["dpopkit"][round_no]["cpu_us"] - results["bare"][round_no]["cpu_us"]
            floor = statistics.median(floors[round_no * per_round : (round_no + 1) * per_round])
            ratios.append(added / floor)
    non2xx = sum(r["non2xx"] for rs in results.values() for r in rs)
    if non2xx:
        print(f"\n{non2xx} non-2xx responses: the figures do not measure accepted requests")
    ok = _verdicts(med, ratios, floors) and not non2xx
    print("bar, every 'must': " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
