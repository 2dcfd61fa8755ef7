"""Benchmark of dpopkit's core against the cryptography floor and two peers (not a test).

Run: ``python bench/core.py [--quick] [--reps N] [--target-ms MS] [--clock cpu|wall]
[--verbose]``. Exit status: 0 when every ES256 "must" holds, 2 when one does not,
1 when the correctness gate fails. Method and results: bench/README.md.

For ES256, Ed25519 (emitted as ``EdDSA``) and RS256 it times, in one run and
round-robin (see ``bench/_harness.py``):

* the floor: bare ``cryptography`` sign, bare verify with a ready key, and key
  import from the JWK members + verify (for ES256 with the raw R‖S → DER step);
* ``dpopkit.create``: :func:`dpopkit.core.proof.create_proof` with ``ath``;
* ``dpopkit.verify-cold``: :func:`verify_proof` + :func:`record_proof` into the
  memory replay cache, every proof by a key never seen before (the header-key
  cache is emptied before each repetition; RS256 reuses a few keys and empties
  the cache before every verify, since 2048-bit keys are too slow to make by the
  thousand);
* ``dpopkit.verify-warm``: the same with a key seen before (header-key cache hit);
* ``pyjwt.verify`` / ``joserfc.verify``: the same kind of proof stream as
  ``verify-warm`` (one client key, fresh jti), verified the way a user of that
  library would, with the RFC 9449 checks the library lacks added by one
  shared stdlib helper (:func:`_rfc9449_checks`), so every verifier does the same job:
  typ, public jwk, alg allowlist, signature, htm, htu (normalised), iat window,
  ath, RFC 7638 thumbprint against the bound key, and jti replay.

Scenario: ``POST https://rs.example.com/api/v1/orders/12345?expand=items&page=2``
with an 835-character access token (so proofs carry ``ath``), no nonce.

A correctness gate runs first: every verifier must accept a valid proof and
reject 12 bad proofs (``_gate_cases`` below); timing does not start
otherwise. Then it prints µs/op per op and the ratios of the
performance bar (``BAR``) with PASS/FAIL against "must" and "goal".
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gc
import hashlib
import hmac
import json
import os
import platform
import secrets
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import cryptography
import joserfc
import jwt as pyjwt
from _harness import Op, Ratio, fmt_us, ratio, run_round_robin
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.backends.openssl.backend import backend as _openssl_backend
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from joserfc import jwk as joserfc_jwk
from joserfc import jwt as joserfc_jwt
from joserfc.errors import SecurityWarning
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from dpopkit.core import proof as dpop_proof
from dpopkit.core.keys import DPoPKey
from dpopkit.core.proof import create_proof, verify_proof
from dpopkit.core.replay import record_proof
from dpopkit.errors import DPoPError
from dpopkit.storage.memory import MemoryReplayCache

# --- scenario -------------------------------------------------------------------------------

HTM = "POST"
REQUEST_URL = "https://rs.example.com/api/v1/orders/12345?expand=items&page=2"
ACCESS_TOKEN = "eyJ" + "A" * 829 + "x.y"  # 835 characters
assert len(ACCESS_TOKEN) == 835
MAX_AGE = 60
FUTURE_SKEW = 5
ALGS = ("ES256", "EdDSA", "RS256")
LABEL = {"ES256": "ES256", "EdDSA": "Ed25519", "RS256": "RS256"}
RSA_KEYS = 8  # distinct RSA keys cycled through by the RS256 cold ops

# The performance bar (ES256): (must, goal); "le" ratios must be at most, "ge" at least.
BAR = {
    "cold": (1.30, 1.15),
    "warm": (1.25, 1.10),
    "create": (1.60, 1.30),
    "peer": (2.0, 2.5),
}

# joserfc warns on every use of "EdDSA" (deprecated by RFC 9864); dpopkit still emits it.
warnings.filterwarnings("ignore", category=SecurityWarning)

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_SHA256 = hashes.SHA256()
_PKCS1 = padding.PKCS1v15()


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


# --- raw JWS maker (for the floor inputs and the bad proofs of the gate) ------------------


@dataclass
class KeyMaterial:
    """A key pair with everything the floor and the peers need, prepared once."""

    alg: str
    dpop: DPoPKey
    private: Any  # cryptography private key
    public: Any  # cryptography public key
    jwk: dict[str, str]
    jkt: str


def new_key(alg: str) -> KeyMaterial:
    private: Any
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = DPoPKey.from_private_key(private, alg=alg)
    return KeyMaterial(alg, key, private, private.public_key(), key.public_jwk, key.jkt)


def raw_sign(alg: str, private: Any, data: bytes) -> bytes:
    """JWS signature bytes (raw R‖S for ECDSA)."""
    if alg == "ES256":
        r, s = decode_dss_signature(private.sign(data, _ECDSA_SHA256))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if alg == "EdDSA":
        return bytes(private.sign(data))
    return bytes(private.sign(data, _PKCS1, _SHA256))


def make_jws(
    header: Mapping[str, Any], payload: Mapping[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    h = _b64e(json.dumps(header, separators=(",", ":")).encode())
    p = _b64e(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{h}.{p}"
    return f"{signing_input}.{_b64e(sign(signing_input.encode('ascii')))}"


def claims_for(now: float, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16),
        "htm": HTM,
        "htu": "https://rs.example.com/api/v1/orders/12345",
        "iat": int(now),
        "ath": _b64e(hashlib.sha256(ACCESS_TOKEN.encode()).digest()),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


# --- the shared stdlib helper: RFC 9449 checks a peer library lacks -------------------------


class RejectedError(Exception):
    """A peer-based verifier refused a proof."""


_PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_REQUIRED = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
_DEFAULT_PORT = {"http": 80, "https": 443}


def _normalize_htu(uri: str) -> str:
    """Scheme/host lower-case, default port dropped, empty path → '/', no query/fragment."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORT.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


def _check_header(header: Mapping[str, Any]) -> Any:
    """typ and a public jwk (RFC 9449 §4.3 (4), (7)); returns the jwk."""
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != "dpop+jwt":
        raise RejectedError("typ")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or not _PRIVATE.isdisjoint(jwk):
        raise RejectedError("jwk missing or private")
    return jwk


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 with json.dumps(sort_keys=True)."""
    required = _REQUIRED.get(jwk.get("kty"), ())  # type: ignore[arg-type]
    if not required:
        raise RejectedError("kty")
    canonical = json.dumps({k: jwk[k] for k in required}, sort_keys=True, separators=(",", ":"))
    return _b64e(hashlib.sha256(canonical.encode()).digest())


def _rfc9449_checks(
    claims: Mapping[str, Any],
    *,
    htm: bool = True,
    htu: bool = True,
    iat: bool = True,
    ath: bool = True,
    access_token: str,
    now: float,
) -> None:
    """The claim checks a library may lack (RFC 9449 §4.3 (8), (9), (11), (12))."""
    for name in ("jti", "htm", "htu"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise RejectedError(name)
    if htm and claims["htm"] != HTM:
        raise RejectedError("htm")
    if htu:
        received = claims["htu"]
        expected = "https://rs.example.com/api/v1/orders/12345"
        if received != expected and _normalize_htu(received) != _normalize_htu(REQUEST_URL):
            raise RejectedError("htu")
    if iat:
        value = claims.get("iat")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RejectedError("iat type")
        if value < now - MAX_AGE or value > now + FUTURE_SKEW:
            raise RejectedError("iat window")
    if ath:
        expected_ath = _b64e(hashlib.sha256(access_token.encode()).digest())
        received_ath = claims.get("ath")
        if not isinstance(received_ath, str) or not hmac.compare_digest(
            received_ath.encode(), expected_ath.encode()
        ):
            raise RejectedError("ath")


def _record_jti(replay: dict[str, float], jkt: str, jti: str, now: float) -> None:
    """jti replay dict (RFC 9449 §11.1), after every other check."""
    key = f"{jkt}|{jti}"
    if key in replay:
        raise RejectedError("replay")
    replay[key] = now + MAX_AGE + FUTURE_SKEW


# --- verifiers (one call = everything a server does for one request) ------------------------

Verifier = Callable[[str, str, float], object]  # (proof, expected_jkt, now)


def dpopkit_verifier(cache: MemoryReplayCache, *, clear_key_cache: bool = False) -> Verifier:
    key_cache = dpop_proof._key_cache

    def verify(proof: str, jkt: str, now: float) -> object:
        if clear_key_cache:
            key_cache.clear()
        checked = verify_proof(
            proof, htm=HTM, htu=REQUEST_URL, access_token=ACCESS_TOKEN, expected_jkt=jkt, now=now
        )
        record_proof(cache, checked, now=now)
        return checked

    return verify


def pyjwt_verifier(alg: str, replay: dict[str, float]) -> Verifier:
    algorithms = [alg]
    options: Any = {"require": ["jti", "htm", "htu", "iat"], "verify_exp": True}

    def verify(proof: str, jkt: str, now: float) -> object:
        header = pyjwt.get_unverified_header(proof)
        jwk = _check_header(header)
        if header.get("alg") not in algorithms:
            raise RejectedError("alg")
        key = pyjwt.PyJWK(jwk, algorithm=header["alg"])
        claims = pyjwt.decode(
            proof, key=key.key, algorithms=algorithms, options=options, leeway=FUTURE_SKEW
        )
        _rfc9449_checks(claims, access_token=ACCESS_TOKEN, now=now)
        thumbprint = _thumbprint(jwk)
        if not hmac.compare_digest(thumbprint.encode(), jkt.encode()):
            raise RejectedError("jkt")
        _record_jti(replay, thumbprint, claims["jti"], now)
        return claims

    return verify


def joserfc_verifier(alg: str, replay: dict[str, float]) -> Verifier:
    jws_registry = JWSRegistry(algorithms=[alg])
    jws_registry.max_header_length = 4096  # the default 512 bytes refuses RSA proof headers
    expected_ath = _b64e(hashlib.sha256(ACCESS_TOKEN.encode()).digest())

    def resolve_key(obj: Any) -> Any:
        return joserfc_jwk.import_key(_check_header(obj.headers()))

    def verify(proof: str, jkt: str, now: float) -> object:
        keys: list[Any] = []

        def key_callback(obj: Any) -> Any:
            key = resolve_key(obj)
            keys.append(key)
            return key

        token = joserfc_jwt.decode(proof, key_callback, registry=jws_registry)
        claims_registry = JWTClaimsRegistry(
            now=int(now),
            leeway=FUTURE_SKEW,
            jti={"essential": True},
            htm={"essential": True, "value": HTM},
            htu={"essential": True},
            iat={"essential": True},
            ath={"essential": True, "value": expected_ath},
        )
        claims_registry.validate(token.claims)
        _rfc9449_checks(token.claims, htm=False, ath=False, access_token=ACCESS_TOKEN, now=now)
        thumbprint = keys[0].thumbprint()
        if not hmac.compare_digest(thumbprint.encode(), jkt.encode()):
            raise RejectedError("jkt")
        _record_jti(replay, thumbprint, token.claims["jti"], now)
        return token

    return verify


# --- a yardstick: the smallest verifier that still runs every check (ES256 only) -----------
#
# Not dpopkit and not a peer: one flat function on cryptography + stdlib, written only to show
# in every run what a complete verifier can reach on this machine (the role of "lean" in
# ../shared/bench/README.md, whose code is not provided). It keeps a key cache by header bytes
# (filled only after a proof fully verified) and memoises ath for the last token, as dpopkit
# does; it refuses everything the correctness gate throws at it.

_STD_ALPHABET = bytes.maketrans(b"-_+/=", b"+/!!!")
_P256 = ec.SECP256R1()
_CANONICAL_TAIL = {2: frozenset(b"AQgw"), 3: frozenset(b"AEIMQUYcgkosw048")}  # zero unused bits


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise RejectedError("duplicate member")
    return obj


def minimal_verifier(replay: dict[str, float]) -> Verifier:
    """ES256 proofs: size, 3 segments, strict base64url, header and payload objects without
    duplicate names, typ, alg, crit, public EC jwk on P-256, key import (point on the curve),
    jti/htm/htu/iat typed, htm, htu (normalised when not byte-identical), iat window, ath,
    thumbprint = expected jkt, signature, then the replay record."""
    headers: dict[str, tuple[Any, str]] = {}
    memo = ["", ""]  # (last access token, its ath)
    a2b: Callable[..., bytes] = binascii.a2b_base64
    scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
    loads = json.JSONDecoder(object_pairs_hook=_no_duplicates).decode
    verify_alg, compare, sha256 = _ECDSA_SHA256, hmac.compare_digest, hashlib.sha256
    htu_fast = "https://rs.example.com/api/v1/orders/12345"

    def b64d(value: str) -> bytes:
        data = value.encode("ascii").translate(_STD_ALPHABET)
        rem = len(data) % 4
        if rem:
            if rem == 1 or data[-1] not in _CANONICAL_TAIL[rem]:
                raise RejectedError("b64")
            data += b"=" * (4 - rem)
        return a2b(data, strict_mode=True)

    def verify(proof: str, jkt: str, now: float) -> object:
        try:
            return checked(proof, jkt, now)
        except (ValueError, StopIteration, AttributeError, TypeError) as exc:
            # broken base64url, UTF-8 or JSON, a point off the curve, a header not an object
            raise RejectedError(type(exc).__name__) from None

    def checked(proof: str, jkt: str, now: float) -> object:
        if len(proof) > 8192:
            raise RejectedError("size")
        h, p, s = proof.split(".")  # not three: ValueError (refused)
        facts = headers.get(h)
        if facts is None:
            header = loads(b64d(h).decode())
            jwk = header.get("jwk")
            typ = header.get("typ")
            if (
                not isinstance(typ, str)
                or typ.lower().removeprefix("application/") != "dpop+jwt"
                or header.get("alg") != "ES256"
                or "crit" in header
                or not isinstance(jwk, dict)
                or jwk.get("kty") != "EC"
                or jwk.get("crv") != "P-256"
                or not _PRIVATE.isdisjoint(jwk)
            ):
                raise RejectedError("header")
            x, y = jwk.get("x"), jwk.get("y")
            if not isinstance(x, str) or not isinstance(y, str):
                raise RejectedError("jwk")
            xb, yb = b64d(x), b64d(y)
            if len(xb) != 32 or len(yb) != 32:
                raise RejectedError("jwk")
            key = ec.EllipticCurvePublicKey.from_encoded_point(_P256, b"\x04" + xb + yb)
            canonical = f'{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}'
            facts = (key, _b64e(sha256(canonical.encode()).digest()))
        key, thumbprint = facts
        text = b64d(p).decode()
        claims, end = scan(text, 0)
        if (
            end != len(text)
            or not isinstance(claims, dict)
            or len(claims) != text.count(",") + 1  # a flat object: no duplicate name
            or "{" in text[1:]
            or "[" in text
        ):
            raise RejectedError("payload")
        get = claims.get
        jti, htm, htu, iat, ath = get("jti"), get("htm"), get("htu"), get("iat"), get("ath")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise RejectedError("jti")
        if htm != HTM:
            raise RejectedError("htm")
        if not isinstance(htu, str) or (
            htu != htu_fast and _normalize_htu(htu) != _normalize_htu(REQUEST_URL)
        ):
            raise RejectedError("htu")
        if type(iat) is not int and type(iat) is not float:
            raise RejectedError("iat")
        if iat < now - MAX_AGE or iat > now + FUTURE_SKEW:
            raise RejectedError("iat window")
        # the token is a secret: compared in constant time, as dpopkit does (a server gets a
        # new string per request, so an identity shortcut would only flatter the benchmark)
        if not compare(memo[0], ACCESS_TOKEN):
            memo[:] = [ACCESS_TOKEN, _b64e(sha256(ACCESS_TOKEN.encode()).digest())]
        if not isinstance(ath, str) or not ath.isascii() or not compare(ath, memo[1]):
            raise RejectedError("ath")
        if not compare(thumbprint, jkt):
            raise RejectedError("jkt")
        sig = b64d(s)
        if len(sig) != 64:
            raise RejectedError("signature")
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        try:
            key.verify(der, proof[: len(h) + len(p) + 1].encode("ascii"), verify_alg)
        except InvalidSignature:
            raise RejectedError("signature") from None
        if len(headers) < 4096:
            headers[h] = facts
        _record_jti(replay, thumbprint, jti, now)
        return claims

    return verify


# --- creators (for information: peers' create) ---------------------------------------------


def pyjwt_creator(km: KeyMaterial) -> Callable[[], str]:
    headers = {"typ": "dpop+jwt", "jwk": km.jwk}

    def create() -> str:
        claims = claims_for(time.time())
        return pyjwt.encode(claims, km.private, algorithm=km.alg, headers=headers)

    return create


def joserfc_creator(km: KeyMaterial) -> Callable[[], str]:
    key = joserfc_jwk.import_key(km.dpop.private_jwk())  # type: ignore[arg-type]
    header = {"typ": "dpop+jwt", "alg": km.alg, "jwk": km.jwk}

    def create() -> str:
        claims = claims_for(time.time())
        return joserfc_jwt.encode(header, claims, key, algorithms=[km.alg])

    return create


# --- correctness gate -----------------------------------------------------------------------


def _gate_cases(alg: str) -> Iterator[tuple[str, str, str, bool]]:
    """(case, proof, expected jkt, must accept); "replay" repeats the valid proof."""
    km, other = new_key(alg), new_key(alg)
    now = time.time()
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": km.jwk}

    def signed(hdr: Mapping[str, Any] = header, **claims: Any) -> str:
        return make_jws(hdr, claims_for(now, **claims), lambda d: raw_sign(alg, km.private, d))

    valid = create_proof(km.dpop, htm=HTM, htu=REQUEST_URL, access_token=ACCESS_TOKEN, now=now)
    yield "valid", valid, km.jkt, True
    yield "replay", valid, km.jkt, False
    a, b = signed(), signed()
    yield "bad signature", a.rsplit(".", 1)[0] + "." + b.rsplit(".", 1)[1], km.jkt, False
    yield "wrong htm", signed(htm="GET"), km.jkt, False
    yield "wrong htu", signed(htu="https://rs.example.com/api/v1/orders/99999"), km.jkt, False
    yield "stale iat", signed(iat=int(now) - 10 * MAX_AGE), km.jkt, False
    yield "future iat", signed(iat=int(now) + 10 * MAX_AGE), km.jkt, False
    yield "wrong ath", signed(ath=_b64e(hashlib.sha256(b"another token").digest())), km.jkt, False
    yield "typ=JWT", signed({**header, "typ": "JWT"}), km.jkt, False
    foreign = create_proof(other.dpop, htm=HTM, htu=REQUEST_URL, access_token=ACCESS_TOKEN)
    yield "foreign key", foreign, km.jkt, False
    yield "private jwk", signed({**header, "jwk": km.dpop.private_jwk()}), km.jkt, False
    hs_header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": km.jwk}
    secret = json.dumps(km.jwk).encode()
    hs = make_jws(hs_header, claims_for(now), lambda d: hmac.new(secret, d, "sha256").digest())
    yield "alg=HS256", hs, km.jkt, False
    yield "missing jti", signed(jti=None), km.jkt, False


def correctness_gate(verbose: bool) -> bool:
    ok = True
    for alg in ALGS:
        cases = list(_gate_cases(alg))
        verifiers: dict[str, Verifier] = {
            "dpopkit": dpopkit_verifier(MemoryReplayCache()),
            "pyjwt": pyjwt_verifier(alg, {}),
            "joserfc": joserfc_verifier(alg, {}),
        }
        if alg == "ES256":
            verifiers["minimal"] = minimal_verifier({})
        for name, verify in verifiers.items():
            results = []
            for case, proof, jkt, accept in cases:
                try:
                    verify(proof, jkt, time.time())
                    accepted, why = True, ""
                except (
                    DPoPError,
                    RejectedError,
                    pyjwt.PyJWTError,
                    joserfc.errors.JoseError,
                ) as exc:
                    accepted, why = False, getattr(exc, "reason", type(exc).__name__)
                    if isinstance(exc, RejectedError):
                        why = f"RejectedError({exc})"
                    why = str(getattr(why, "value", why))
                good = accepted == accept
                ok &= good
                results.append((case, good, why))
            bad = [c for c, good, _ in results if not good]
            status = "ok" if not bad else "FAILED: " + ", ".join(bad)
            print(f"  gate {LABEL[alg]:7} {name:8} {len(results)} cases ({status})")
            if verbose:
                print("    " + "; ".join(f"{c}: {w or 'accepted'}" for c, _, w in results))
    return ok


# --- ops ------------------------------------------------------------------------------------


class Pools:
    """Fresh keys and proofs, built untimed before each repetition."""

    def __init__(self, alg: str) -> None:
        self.alg = alg
        self.warm_key = new_key(alg)
        self.rsa_keys = [new_key(alg) for _ in range(RSA_KEYS)] if alg == "RS256" else []

    def cold_keys(self, n: int) -> list[KeyMaterial]:
        if self.rsa_keys:
            return [self.rsa_keys[i % RSA_KEYS] for i in range(n)]
        return [new_key(self.alg) for _ in range(n)]

    def cold_proofs(self, n: int) -> list[tuple[str, str]]:
        now = time.time()
        return [
            (
                create_proof(km.dpop, htm=HTM, htu=REQUEST_URL, access_token=ACCESS_TOKEN, now=now),
                km.jkt,
            )
            for km in self.cold_keys(n)
        ]

    def warm_proofs(self, n: int) -> list[tuple[str, str]]:
        km, now = self.warm_key, time.time()
        return [
            (
                create_proof(km.dpop, htm=HTM, htu=REQUEST_URL, access_token=ACCESS_TOKEN, now=now),
                km.jkt,
            )
            for _ in range(n)
        ]


def _verify_loop(pool: list[tuple[str, str]], verify: Verifier) -> Callable[[], None]:
    def run() -> None:
        clock = time.time
        for proof, jkt in pool:
            verify(proof, jkt, clock())

    return run


def build_ops(alg: str) -> dict[str, Op]:
    label = LABEL[alg]
    pools = Pools(alg)
    ops: dict[str, Op] = {}

    def add(kind: str, prepare: Callable[[int], Callable[[], object]], max_n: int = 20_000) -> None:
        ops[kind] = Op(f"{kind}", prepare, max_n=max_n)

    # A real signing input: what create_proof signs.
    sample = create_proof(pools.warm_key.dpop, htm=HTM, htu=REQUEST_URL, access_token=ACCESS_TOKEN)
    signing_input = sample.rsplit(".", 1)[0].encode()
    private, public = pools.warm_key.private, pools.warm_key.public

    # floor: bare sign (DER for ECDSA).
    if alg == "ES256":

        def bare_sign() -> bytes:
            return bytes(private.sign(signing_input, _ECDSA_SHA256))
    elif alg == "EdDSA":

        def bare_sign() -> bytes:
            return bytes(private.sign(signing_input))
    else:

        def bare_sign() -> bytes:
            return bytes(private.sign(signing_input, _PKCS1, _SHA256))

    def prep_sign(n: int) -> Callable[[], None]:
        sign = bare_sign

        def run() -> None:
            for _ in range(n):
                sign()

        return run

    add("floor.sign", prep_sign)

    # floor: bare verify with a ready key, distinct signatures by that key.
    def prep_verify(n: int) -> Callable[[], None]:
        pool = []
        for _ in range(n):
            data = signing_input + secrets.token_bytes(8)
            pool.append((bare_sign_for(alg, private, data), data))
        if alg == "ES256":

            def run() -> None:
                verify, algo = public.verify, _ECDSA_SHA256
                for sig, data in pool:
                    verify(sig, data, algo)
        elif alg == "EdDSA":

            def run() -> None:
                verify = public.verify
                for sig, data in pool:
                    verify(sig, data)
        else:

            def run() -> None:
                verify, pad, hash_alg = public.verify, _PKCS1, _SHA256
                for sig, data in pool:
                    verify(sig, data, pad, hash_alg)

        return run

    add("floor.verify", prep_verify)

    # floor: key import from the JWK members + verify (ES256: raw R‖S → DER too).
    def prep_import_verify(n: int) -> Callable[[], None]:
        pool = []
        for km in pools.cold_keys(n):
            data = signing_input + secrets.token_bytes(8)
            pool.append((km.jwk, raw_sign(alg, km.private, data), data))
        if alg == "ES256":
            curve = ec.SECP256R1()

            def run() -> None:
                algo, from_point = _ECDSA_SHA256, ec.EllipticCurvePublicKey.from_encoded_point
                for jwk, sig, data in pool:
                    key = from_point(curve, b"\x04" + _b64d(jwk["x"]) + _b64d(jwk["y"]))
                    der = encode_dss_signature(
                        int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
                    )
                    key.verify(der, data, algo)
        elif alg == "EdDSA":

            def run() -> None:
                load = ed25519.Ed25519PublicKey.from_public_bytes
                for jwk, sig, data in pool:
                    load(_b64d(jwk["x"])).verify(sig, data)
        else:

            def run() -> None:
                pad, hash_alg = _PKCS1, _SHA256
                for jwk, sig, data in pool:
                    numbers = rsa.RSAPublicNumbers(
                        int.from_bytes(_b64d(jwk["e"]), "big"),
                        int.from_bytes(_b64d(jwk["n"]), "big"),
                    )
                    numbers.public_key().verify(sig, data, pad, hash_alg)

        return run

    add("floor.import+verify", prep_import_verify, max_n=5_000)

    # dpopkit create.
    def prep_create(n: int) -> Callable[[], None]:
        key = pools.warm_key.dpop

        def run() -> None:
            for _ in range(n):
                create_proof(key, htm=HTM, htu=REQUEST_URL, access_token=ACCESS_TOKEN)

        return run

    add("dpopkit.create", prep_create)

    def prep_cold(n: int) -> Callable[[], None]:
        dpop_proof._key_cache.clear()
        verify = dpopkit_verifier(MemoryReplayCache(), clear_key_cache=alg == "RS256")
        return _verify_loop(pools.cold_proofs(n), verify)

    add("dpopkit.verify-cold", prep_cold, max_n=5_000)

    def prep_warm(n: int) -> Callable[[], None]:
        dpop_proof._key_cache.clear()
        verify = dpopkit_verifier(MemoryReplayCache())
        warm_up = pools.warm_proofs(1)[0]
        verify(warm_up[0], warm_up[1], time.time())  # the key is now "seen before"
        return _verify_loop(pools.warm_proofs(n), verify)

    add("dpopkit.verify-warm", prep_warm)

    if alg == "ES256":  # the yardstick (see minimal_verifier), same streams as dpopkit

        def prep_minimal_cold(n: int) -> Callable[[], None]:
            return _verify_loop(pools.cold_proofs(n), minimal_verifier({}))

        add("minimal.verify-cold", prep_minimal_cold, max_n=5_000)

        def prep_minimal_warm(n: int) -> Callable[[], None]:
            verify = minimal_verifier({})
            warm_up = pools.warm_proofs(1)[0]
            verify(warm_up[0], warm_up[1], time.time())
            return _verify_loop(pools.warm_proofs(n), verify)

        add("minimal.verify-warm", prep_minimal_warm)

    # The peers verify the same stream as dpopkit.verify-warm: one client key, fresh jti
    # (they have no key cache, so each of their verifies imports the key).
    def prep_pyjwt(n: int) -> Callable[[], None]:
        return _verify_loop(pools.warm_proofs(n), pyjwt_verifier(alg, {}))

    add("pyjwt.verify", prep_pyjwt, max_n=5_000)

    def prep_joserfc(n: int) -> Callable[[], None]:
        return _verify_loop(pools.warm_proofs(n), joserfc_verifier(alg, {}))

    add("joserfc.verify", prep_joserfc, max_n=5_000)

    for peer, creator in (("pyjwt", pyjwt_creator), ("joserfc", joserfc_creator)):

        def prep_peer_create(
            n: int, make: Callable[[KeyMaterial], Callable[[], str]] = creator
        ) -> Callable[[], None]:
            create = make(pools.warm_key)

            def run() -> None:
                for _ in range(n):
                    create()

            return run

        add(f"{peer}.create", prep_peer_create)

    for op in ops.values():
        op.name = f"{label}:{op.name}"
    return ops


def bare_sign_for(alg: str, private: Any, data: bytes) -> bytes:
    if alg == "ES256":
        return bytes(private.sign(data, _ECDSA_SHA256))
    if alg == "EdDSA":
        return bytes(private.sign(data))
    return bytes(private.sign(data, _PKCS1, _SHA256))


# --- report ---------------------------------------------------------------------------------


def _passes(value: float, limit: float, at_least: bool) -> bool:
    return value >= limit if at_least else value <= limit


def _verdict(r: Ratio, must: float, goal: float, *, at_least: bool) -> str:
    def word(limit: float) -> str:
        return "PASS" if _passes(r.value, limit, at_least) else "FAIL"

    sign = "≥" if at_least else "≤"
    return f"must {sign}{must:.2f} {word(must)}   goal {sign}{goal:.2f} {word(goal)}"


def environment() -> str:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"CPU: {cpu} ({os.cpu_count()} logical CPUs), load {os.getloadavg()[0]:.2f}\n"
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}\n"
        f"cryptography {cryptography.__version__} ({_openssl_backend.openssl_version_text()}), "
        f"PyJWT {pyjwt.__version__}, joserfc {joserfc.__version__}"
    )


def _fmt_ratio(r: Ratio) -> str:
    return f"{r.value:5.2f}× (of medians {r.of_medians:5.2f}×) [{r.q1:.2f}-{r.q3:.2f}]"


def _over(ops: dict[str, Op], a: str, b: str) -> str:
    return fmt_us(ops[a].median_ns - ops[b].median_ns)


def report(all_ops: dict[str, dict[str, Op]], reps: int) -> bool:
    print()
    print(
        f"{'op':30} {'µs/op':>8} {'ns/op':>9} {'ops/s':>8} {'min µs':>8} {'spread':>7}"
        f"   (median and min of {reps} repetitions; spread = (max-min)/median)"
    )
    for ops in all_ops.values():
        for op in ops.values():
            med = op.median_ns
            print(
                f"{op.name:30} {fmt_us(med):>8} {med:>9.0f} {1e9 / med:>8.0f} "
                f"{fmt_us(op.min_ns):>8} {op.spread * 100:>6.1f}%"
            )
    print()
    print(
        "Ratios: median of the per-repetition ratios (the verdict), the ratio of the medians, "
        "and [q1-q3] of the per-repetition ratios (the noise):"
    )
    bar_ok = True
    for alg, ops in all_ops.items():
        tag = "" if alg == "ES256" else "  (info: the bar is set for ES256)"
        print(f"  {LABEL[alg]}{tag}")
        rows: list[tuple[str, Ratio, str, bool]] = [
            (
                "verify-cold ÷ floor import+verify",
                ratio(ops["dpopkit.verify-cold"], ops["floor.import+verify"]),
                "cold",
                False,
            ),
            (
                "verify-warm ÷ floor verify",
                ratio(ops["dpopkit.verify-warm"], ops["floor.verify"]),
                "warm",
                False,
            ),
            (
                "create ÷ floor sign",
                ratio(ops["dpopkit.create"], ops["floor.sign"]),
                "create",
                False,
            ),
        ]
        for peer in ("pyjwt", "joserfc"):
            rows.append(
                (
                    f"{peer} verify ÷ dpopkit verify",
                    ratio(ops[f"{peer}.verify"], ops["dpopkit.verify-warm"]),
                    "peer",
                    True,
                )
            )
        for text, r, kind, at_least in rows:
            must, goal = BAR[kind]
            verdict = _verdict(r, must, goal, at_least=at_least)
            print(f"    {text:36} {_fmt_ratio(r)}  {verdict}")
            if alg == "ES256":
                bar_ok &= _passes(r.value, must, at_least)
        # (label, op, reference op): information only
        info = [
            ("verify-cold ÷ floor verify", "dpopkit.verify-cold", "floor.verify"),
            ("import+verify ÷ floor verify", "floor.import+verify", "floor.verify"),
            ("pyjwt verify ÷ dpopkit verify-cold", "pyjwt.verify", "dpopkit.verify-cold"),
            ("joserfc verify ÷ dpopkit verify-cold", "joserfc.verify", "dpopkit.verify-cold"),
            ("pyjwt create ÷ floor sign", "pyjwt.create", "floor.sign"),
            ("joserfc create ÷ floor sign", "joserfc.create", "floor.sign"),
        ]
        if "minimal.verify-warm" in ops:  # the yardstick: what one flat function reaches here
            info += [
                (
                    "minimal verify-cold ÷ import+verify",
                    "minimal.verify-cold",
                    "floor.import+verify",
                ),
                ("minimal verify-warm ÷ floor verify", "minimal.verify-warm", "floor.verify"),
                ("dpopkit ÷ minimal verify-cold", "dpopkit.verify-cold", "minimal.verify-cold"),
                ("dpopkit ÷ minimal verify-warm", "dpopkit.verify-warm", "minimal.verify-warm"),
            ]
        for text, num, den in info:
            print(f"    {text:36} {_fmt_ratio(ratio(ops[num], ops[den]))}  (info)")
        print(
            "    Python above the floor (median µs): "
            f"cold {_over(ops, 'dpopkit.verify-cold', 'floor.import+verify')}, "
            f"warm {_over(ops, 'dpopkit.verify-warm', 'floor.verify')}, "
            f"create {_over(ops, 'dpopkit.create', 'floor.sign')}"
        )
    print()
    print(
        "'dpopkit verify' in the peer rows is the verify of a key seen before (header-key "
        "cache hit); the peers verify the same stream of proofs (one client key, fresh jti)."
    )
    print(
        "ES256 performance bar, every 'must' (median of per-repetition ratios): "
        + ("PASS" if bar_ok else "FAIL")
    )
    return bar_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions (~30 s)")
    parser.add_argument("--reps", type=int, help="repetitions (default 41, quick 15)")
    parser.add_argument("--target-ms", type=float, help="ms per op per repetition")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: this thread's CPU time (default; robust on a shared machine); wall: elapsed",
    )
    parser.add_argument("--verbose", action="store_true", help="show each gate case's reason")
    parser.add_argument(
        "--loop",
        metavar="ALG:OP",
        help="prepare one op (e.g. ES256:dpopkit.verify-warm) for --count calls and run it "
        "once, untimed, for valgrind --tool=callgrind: instructions per call = (total - "
        "total with --prepare-only) / count",
    )
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--prepare-only", action="store_true", help="with --loop: do not run")
    args = parser.parse_args(argv)
    if args.loop:
        alg, _, kind = args.loop.partition(":")
        run = build_ops(alg)[kind].prepare(args.count)
        gc.collect()
        gc.disable()  # as in the timed runs (bench/_harness.py)
        if not args.prepare_only:
            run()
        return 0
    reps = args.reps or (15 if args.quick else 41)
    target_ms = args.target_ms or (4.0 if args.quick else 8.0)
    if reps < 1 or target_ms <= 0:
        parser.error("--reps and --target-ms must be positive")

    started = time.perf_counter()
    print("dpopkit core benchmark (not a test)")
    print(environment())
    print(
        f"scenario: {HTM} {REQUEST_URL}, access token {len(ACCESS_TOKEN)} chars (ath), no nonce; "
        f"{reps} repetitions round-robin, ~{target_ms:.0f} ms per op each, GC off while timing, "
        f"clock: {args.clock}"
    )
    print("correctness gate:")
    if not correctness_gate(args.verbose):
        print("correctness gate FAILED: not timing anything")
        return 1
    all_ops = {alg: build_ops(alg) for alg in ALGS}
    flat = [op for ops in all_ops.values() for op in ops.values()]

    def progress(message: str) -> None:
        print(f"  {message} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    run_round_robin(flat, reps=reps, target_ms=target_ms, clock=args.clock, progress=progress)
    passed = report(all_ops, reps)
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0 if passed else 2


if __name__ == "__main__":
    sys.exit(main())
