"""Resource-server load benchmark: uvicorn on 127.0.0.1 driven by wrk (a benchmark, not a test).

Run: ``python bench/rs.py [--duration 10] [--connections 32] [--threads 2] [--rounds 2]``
(needs ``wrk`` on PATH: ``apt-get install wrk``).

Variants, each a fresh single-process uvicorn server (uvloop + httptools when
installed) serving ``GET https://rs.example/hello``:

* ``bare``: the endpoint alone (headers ignored);
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
non-2xx counts (must be 0), and the ratio dpopkit / pyjwt (bar: >= 1.6).
Variants run round-robin for ``--rounds`` rounds; figures are medians.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ORIGIN = "https://rs.example"
ISSUER = "https://as.example"
VARIANTS = ("bare", "dpopkit", "dpopkit-offload", "pyjwt")

LUA = r"""
local proofs = {}
local token = nil
local idx = 0
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  local nthreads = tonumber(args[2])
  local f = io.open(args[1], "r")
  token = f:read("*l")
  local i = 0
  for line in f:lines() do
    if i % nthreads == tid then table.insert(proofs, line) end
    i = i + 1
  end
  f:close()
end
function request()
  idx = idx + 1
  if idx > #proofs then idx = 1 end
  return wrk.format("GET", "/hello", {["Authorization"] = "DPoP " .. token, ["DPoP"] = proofs[idx]})
end
"""


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


def serve(variant: str, config_path: str, port: int) -> None:
    import uvicorn

    config = json.loads(Path(config_path).read_text())
    if variant == "bare":
        app: Any = _hello
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


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


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


def _proof_pool(path: Path, key: Any, token: str, count: int) -> None:
    from dpopkit import create_proof

    now = time.time()
    with path.open("w") as out:
        out.write(token + "\n")
        for _ in range(count):
            proof = create_proof(key, htm="GET", htu=f"{ORIGIN}/hello", access_token=token, now=now)
            out.write(proof + "\n")


_RPS_RE = re.compile(r"Requests/sec:\s+([0-9.]+)")
_TOTAL_RE = re.compile(r"([0-9]+) requests in")
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+([0-9]+)")


def run_variant(
    variant: str, args: argparse.Namespace, workdir: Path, setup: Any
) -> dict[str, Any]:
    key, token, config_path = setup
    pool = workdir / "proofs.txt"
    _proof_pool(pool, key, token, args.pool)
    script = workdir / "rs.lua"
    script.write_text(LUA)
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
        cpu_before = _cpu_seconds(proc.pid)
        result = subprocess.run(
            [
                "wrk",
                f"-t{args.threads}",
                f"-c{args.connections}",
                f"-d{args.duration}s",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}/hello",
                "--",
                str(pool),
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        cpu = _cpu_seconds(proc.pid) - cpu_before
    finally:
        proc.terminate()
        proc.wait(10)
    out = result.stdout
    rps = float(_RPS_RE.search(out).group(1))  # type: ignore[union-attr]
    total = int(_TOTAL_RE.search(out).group(1))  # type: ignore[union-attr]
    non2xx_match = _NON2XX_RE.search(out)
    non2xx = int(non2xx_match.group(1)) if non2xx_match else 0
    return {"rps": rps, "requests": total, "non2xx": non2xx, "cpu_us": cpu / max(total, 1) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pool", type=int, default=80_000, help="proofs per run (no reuse)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.config, args.port)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    variants = args.variants.split(",")
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        setup = _setup(workdir)
        for round_no in range(args.rounds):
            for variant in variants:
                res = run_variant(variant, args, workdir, setup)
                results[variant].append(res)
                print(
                    f"round {round_no + 1} {variant:16s} {res['rps']:9.0f} req/s"
                    f"  {res['cpu_us']:7.1f} µs CPU/req  non-2xx {res['non2xx']}",
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
    if "dpopkit" in med and "pyjwt" in med:
        ratio = med["dpopkit"]["rps"] / med["pyjwt"]["rps"]
        verdict = "PASS" if ratio >= 1.6 else "FAIL"
        print(f"\ndpopkit / pyjwt req/s: {ratio:.2f}x (bar >= 1.6x: {verdict})")
    if "dpopkit-offload" in med and "dpopkit" in med:
        ratio = med["dpopkit-offload"]["rps"] / med["dpopkit"]["rps"]
        print(f"dpopkit-offload / dpopkit req/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
