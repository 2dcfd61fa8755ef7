"""Offline commands: ``keygen``, ``thumbprint``, ``proof`` and ``inspect``.

None of them touches the network. ``inspect`` runs every check of RFC 9449
§4.3 on its own (built from the core's pieces: strict JWS decoding, JWK import,
``normalize_htu``, ``access_token_hash``, ``jwk_thumbprint``, the signature
check) so that it can report *all* failing checks, not only the first, and then
cross-checks its verdict with :func:`dpopkit.verify_proof`.

This is a local debugging tool: unlike the errors a server sends, its
explanations echo the expected values (normalised ``htu``, ``ath``, ``jkt``).
Secrets (key passwords, nonce secrets) are read from environment variables
named on the command line, never from the command line itself.
"""

from __future__ import annotations

import argparse
import hmac
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from dpopkit.cli import CommandError
from dpopkit.core.algorithms import ALGORITHMS, DEFAULT_ALGORITHM, AlgSpec, PublicKey
from dpopkit.core.http import DPOP_HEADER, Headers
from dpopkit.core.htu import normalize_htu
from dpopkit.core.jws import (
    PRIVATE_JWK_MEMBERS,
    CompactJWS,
    JWSError,
    algorithm_spec,
    b64url_decode,
    check_crit,
    json_loads_object,
    public_key_from_jwk,
    split_compact,
)
from dpopkit.core.keys import DPoPKey
from dpopkit.core.nonce import NonceInfo, NonceIssuer
from dpopkit.core.proof import (
    PROOF_TYP,
    ProofPolicy,
    create_proof,
    extract_proof,
    verify_proof,
)
from dpopkit.core.thumbprint import access_token_hash, jwk_thumbprint
from dpopkit.errors import DPoPError, Reason
from dpopkit.keyfile import load_key, load_public_jwk, save_key

__all__ = ["Check", "Inspection", "inspect_proof", "register"]

Status = Literal["pass", "fail", "skipped"]

#: Largest input ``inspect`` reads (the policy's proof limit applies on top).
_MAX_INPUT = 1024 * 1024


# --- the inspector --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check of RFC 9449 §4.3."""

    id: str
    step: str
    name: str
    status: Status
    reason: str | None
    explanation: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "step": self.step,
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "explanation": self.explanation,
        }


@dataclass(slots=True)
class Inspection:
    """Every check of a proof, the decoded parts, and the core's own verdict."""

    checks: list[Check] = field(default_factory=list)
    header: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None
    jkt: str | None = None
    core_valid: bool = False
    core_reason: str | None = None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def agrees(self) -> bool:
        """Whether the checks and :func:`verify_proof` reach the same verdict.

        When both reject, the core's reason must be one of the failing checks' reasons.
        """
        if self.core_valid:
            return not self.failed
        return any(c.reason == self.core_reason for c in self.failed)

    @property
    def valid(self) -> bool:
        return self.core_valid and not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "checks": [c.as_dict() for c in self.checks],
            "header": self.header,
            "payload": self.payload,
            "jkt": self.jkt,
            "verify_proof": {
                "valid": self.core_valid,
                "reason": self.core_reason,
                "agrees": self.agrees,
            },
        }


class _Recorder:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(
        self,
        id_: str,
        step: str,
        name: str,
        status: Status,
        explanation: str,
        reason: Reason | None = None,
    ) -> None:
        code = reason.value if reason is not None and status == "fail" else None
        self.checks.append(Check(id_, step, name, status, code, explanation))

    def ok(self, id_: str, step: str, name: str, explanation: str) -> None:
        self.add(id_, step, name, "pass", explanation)

    def fail(self, id_: str, step: str, name: str, reason: Reason, explanation: str) -> None:
        self.add(id_, step, name, "fail", explanation, reason)

    def skip(self, id_: str, step: str, name: str, explanation: str) -> None:
        self.add(id_, step, name, "skipped", explanation)


def _iso(ts: float) -> str:
    try:
        when = datetime.fromtimestamp(ts, UTC)
        return when.isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def _claim_problem(payload: dict[str, Any], name: str) -> tuple[Reason, str] | None:
    value = payload.get(name)
    if value is None:
        return Reason.MISSING_CLAIM, f"{name} is missing"
    if not isinstance(value, str) or not value:
        return Reason.BAD_CLAIM, f"{name} must be a non-empty string, got {json.dumps(value)}"
    return None


def _iat_value(payload: dict[str, Any]) -> tuple[float | None, tuple[Reason, str] | None]:
    iat = payload.get("iat")
    if iat is None:
        return None, (Reason.MISSING_CLAIM, "iat is missing")
    if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
        return None, (Reason.BAD_CLAIM, f"iat must be a number (seconds), got {json.dumps(iat)}")
    try:
        return float(iat), None
    except OverflowError:
        return None, (Reason.BAD_CLAIM, "iat is out of range")


def _htu_difference(expected: str, received: str) -> str:
    def parts(url: str) -> tuple[str, str, str]:
        scheme, _, rest = url.partition("://")
        slash = rest.find("/")
        return scheme, rest[:slash], rest[slash:]

    exp, rec = parts(expected), parts(received)
    labels = ("scheme", "host and port", "path")
    diffs = [
        f"{label}: proof {r!r}, request {e!r}"
        for label, e, r in zip(labels, exp, rec, strict=True)
        if e != r
    ]
    return "; ".join(diffs) if diffs else "they differ"


def inspect_proof(
    proof: str,
    *,
    htm: str | None = None,
    htu: str | None = None,
    access_token: str | None = None,
    expected_jkt: str | None = None,
    nonce_issuer: NonceIssuer | None = None,
    now: float,
    policy: ProofPolicy | None = None,
) -> Inspection:
    """Run every check of RFC 9449 §4.3 on ``proof`` and report each one.

    A check whose input was not given (``htm`` for (8), ``htu`` for (9), the
    access token for ``ath``, ``expected_jkt``, a nonce issuer for (10)) is
    ``skipped``; checks that need a part that could not be decoded are skipped
    too. The verdict is cross-checked with :func:`verify_proof` under the same
    policy (``require_nonce`` when a nonce issuer is given).

    Args:
        proof: the compact proof (the ``DPoP`` header value).
        htm: the request method.
        htu: the request URL (must be a valid http(s) URL).
        access_token: the access token sent with the request.
        expected_jkt: the thumbprint the token is bound to (``cnf.jkt``).
        nonce_issuer: the server's nonce issuer, to check the ``nonce`` claim.
        now: the current time (seconds since the epoch).
        policy: the policy; :class:`ProofPolicy` defaults otherwise.

    Returns:
        An :class:`Inspection` listing every check.

    Raises:
        ValueError: ``htu`` is not a valid http(s) URL.
    """
    pol = policy if policy is not None else ProofPolicy(require_nonce=nonce_issuer is not None)
    expected_htu = normalize_htu(htu) if htu is not None else None
    rec = _Recorder()
    result = Inspection()

    # RFC 9449 §4.3 (1): one DPoP field whose value is a token68.
    name = "one DPoP header value (token68)"
    try:
        extract_proof(Headers([(DPOP_HEADER, proof)]))
        rec.ok("single", "(1)", name, "one value with token68 syntax")
    except DPoPError as exc:
        rec.fail("single", "(1)", name, exc.reason, _SINGLE_HELP.get(exc.reason, "bad value"))

    # RFC 9449 §4.3 (2): a well-formed compact JWS, sizes checked before decoding.
    name = "well-formed JWT (compact JWS, base64url, JSON objects)"
    parts: CompactJWS | None = None
    signature: bytes | None = None
    problems: list[tuple[Reason, str]] = []
    try:
        parts = split_compact(proof, max_length=pol.max_proof_length)
    except JWSError as exc:
        if exc.reason is Reason.TOO_LARGE:
            problems.append((exc.reason, f"the proof is longer than {pol.max_proof_length} chars"))
        else:
            problems.append((exc.reason, "a compact JWS has three non-empty parts joined by '.'"))
    if parts is not None:
        if len(parts.header_b64) > pol.max_header_length:
            problems.append(
                (Reason.TOO_LARGE, f"the header is longer than {pol.max_header_length} chars")
            )
        for label, segment in (("header", parts.header_b64), ("payload", parts.payload_b64)):
            try:
                obj = json_loads_object(b64url_decode(segment))
            except JWSError:
                problems.append(
                    (
                        Reason.MALFORMED,
                        f"the {label} is not unpadded base64url of a JSON object "
                        "(no duplicate names, no NaN)",
                    )
                )
                continue
            if label == "header":
                result.header = obj
            else:
                result.payload = obj
        try:
            signature = b64url_decode(parts.signature_b64)
        except JWSError:
            problems.append((Reason.MALFORMED, "the signature is not unpadded base64url"))
    if problems:
        rec.fail("jws", "(2)", name, problems[0][0], "; ".join(text for _, text in problems))
    else:
        rec.ok("jws", "(2)", name, "three base64url parts; header and payload are JSON objects")

    header, payload = result.header, result.payload
    no_header = "not checked: the header could not be decoded"
    no_payload = "not checked: the payload could not be decoded"

    # RFC 9449 §4.3 (3): required claims present and typed (RFC 9449 §4.2).
    name = "required claims jti, htm, htu, iat"
    iat: float | None = None
    claim_ok: dict[str, bool] = {}
    if payload is None:
        rec.skip("claims", "(3)", name, no_payload)
    else:
        found: list[tuple[Reason, str]] = []
        for claim in ("jti", "htm", "htu"):
            problem = _claim_problem(payload, claim)
            claim_ok[claim] = problem is None
            if problem is not None:
                found.append(problem)
            elif claim == "jti" and len(payload["jti"]) > pol.max_jti_length:
                found.append((Reason.BAD_CLAIM, f"jti is longer than {pol.max_jti_length} chars"))
        iat, iat_problem = _iat_value(payload)
        if iat_problem is not None:
            found.append(iat_problem)
        nonce_value = payload.get("nonce")
        if nonce_value is not None and (not isinstance(nonce_value, str) or not nonce_value):
            found.append((Reason.BAD_CLAIM, "nonce, when present, must be a non-empty string"))
        if found:
            texts = "; ".join(text for _, text in found)
            rec.fail("claims", "(3)", name, found[0][0], f"{texts} (RFC 9449 §4.2)")
        else:
            rec.ok("claims", "(3)", name, "jti, htm, htu and iat are present and well typed")

    # RFC 9449 §4.3 (4): typ.
    name = "typ is dpop+jwt"
    if header is None:
        rec.skip("typ", "(4)", name, no_header)
    else:
        typ = header.get("typ")
        if isinstance(typ, str) and typ.lower().removeprefix("application/") == PROOF_TYP:
            rec.ok("typ", "(4)", name, f"typ is {typ!r}")
        else:
            got = "missing" if typ is None else json.dumps(typ)
            rec.fail(
                "typ",
                "(4)",
                name,
                Reason.BAD_TYP,
                f'typ is {got}; a DPoP proof must have typ "dpop+jwt" in its header',
            )

    # RFC 7515 §4.1.11: crit lists only understood extensions (none for DPoP).
    name = "no crit extensions that are not understood"
    if header is None:
        rec.skip("crit", "(2)", name, no_header)
    else:
        try:
            check_crit(header)
            rec.ok("crit", "(2)", name, "no crit header" if "crit" not in header else "ok")
        except JWSError as exc:
            rec.fail(
                "crit",
                "(2)",
                name,
                exc.reason,
                f"crit is {json.dumps(header.get('crit'))}; dpopkit understands no JWS "
                "extension, remove crit",
            )

    # RFC 9449 §4.3 (5): an asymmetric alg allowed by policy.
    name = "alg is an allowed asymmetric algorithm"
    spec: AlgSpec | None = None
    if header is None:
        rec.skip("alg", "(5)", name, no_header)
    else:
        alg = header.get("alg")
        try:
            spec = algorithm_spec(alg, pol.algorithms)
            rec.ok("alg", "(5)", name, f"alg is {spec.name}")
        except JWSError as exc:
            allowed = ", ".join(a for a in ALGORITHMS if a in pol.algorithms)
            rec.fail(
                "alg",
                "(5)",
                name,
                exc.reason,
                f"alg is {json.dumps(alg)}; allowed: {allowed} (never none or HS*)",
            )

    # RFC 9449 §4.3 (5), (6): the jwk header is a valid public key that fits alg.
    name = "jwk is a valid key that fits alg"
    jwk = header.get("jwk") if header is not None else None
    key: PublicKey | None = None
    if header is None:
        rec.skip("jwk", "(5)", name, no_header)
    elif not isinstance(jwk, dict):
        got = "missing" if jwk is None else "not a JSON object"
        rec.fail(
            "jwk",
            "(5)",
            name,
            Reason.BAD_JWK,
            f"the jwk header is {got}; the proof must carry its public key as a JWK",
        )
    elif spec is None:
        rec.skip("jwk", "(5)", name, "not checked: alg is not usable")
    else:
        public_part = {k: v for k, v in jwk.items() if k not in PRIVATE_JWK_MEMBERS}
        try:
            key = public_key_from_jwk(
                public_part, spec, min_rsa_bits=pol.min_rsa_bits, max_rsa_bits=pol.max_rsa_bits
            )
            result.jkt = jwk_thumbprint(jwk)
            rec.ok("jwk", "(5)", name, f"a valid {jwk['kty']} key for {spec.name}")
        except JWSError as exc:
            key = None
            rec.fail("jwk", "(5)", name, exc.reason, f"{exc.description} ({spec.name} key)")
        except ValueError as exc:
            key = None
            rec.fail("jwk", "(5)", name, Reason.BAD_JWK, f"no RFC 7638 thumbprint: {exc}")

    # RFC 9449 §4.3 (7): the jwk holds no private key.
    name = "jwk is a public key (no private members)"
    if not isinstance(jwk, dict):
        rec.skip("public_jwk", "(7)", name, "not checked: no jwk object")
    else:
        private = sorted(PRIVATE_JWK_MEMBERS.intersection(jwk))
        if private:
            rec.fail(
                "public_jwk",
                "(7)",
                name,
                Reason.PRIVATE_JWK,
                f"the jwk contains private members {', '.join(private)}: the private key "
                "leaked into the proof; put only the public key in the header (and replace "
                "this key)",
            )
        else:
            rec.ok("public_jwk", "(7)", name, "no private key members")

    # RFC 9449 §4.3 (6): the signature verifies with the jwk.
    name = "signature verifies with the jwk"
    if spec is None or key is None or parts is None or signature is None:
        rec.skip("signature", "(6)", name, "not checked: no usable key, alg or signature")
    elif spec.verify(key, signature, parts.signing_input):
        rec.ok("signature", "(6)", name, f"valid {spec.name} signature")
    else:
        rec.fail(
            "signature",
            "(6)",
            name,
            Reason.BAD_SIGNATURE,
            "the signature does not verify with the key in the jwk header: the proof was "
            "changed after signing or signed by another key (ECDSA signatures must be raw "
            "R||S, not DER)",
        )

    # RFC 9449 §4.3 (8): htm, case-sensitive (RFC 9110 §9.1).
    name = "htm matches the request method"
    if payload is None:
        rec.skip("htm", "(8)", name, no_payload)
    elif not claim_ok.get("htm"):
        rec.skip("htm", "(8)", name, "not checked: no usable htm claim (see claims)")
    elif htm is None:
        rec.skip("htm", "(8)", name, f"htm is {payload['htm']!r}; pass --method to compare")
    elif payload["htm"] == htm:
        rec.ok("htm", "(8)", name, f"htm is {htm!r}")
    else:
        rec.fail(
            "htm",
            "(8)",
            name,
            Reason.HTM_MISMATCH,
            f"the proof says htm={payload['htm']!r} but the request method is {htm!r} "
            f"(case-sensitive); create the proof with --method {htm}",
        )

    # RFC 9449 §4.3 (9): htu, both sides normalised (RFC 3986 §6.2.2-6.2.3).
    name = "htu matches the request URL"
    if payload is None:
        rec.skip("htu", "(9)", name, no_payload)
    elif not claim_ok.get("htu"):
        rec.skip("htu", "(9)", name, "not checked: no usable htu claim (see claims)")
    else:
        claim_htu = payload["htu"]
        try:
            received_htu = normalize_htu(claim_htu)
        except ValueError as exc:
            rec.fail(
                "htu",
                "(9)",
                name,
                Reason.HTU_MISMATCH,
                f"htu {claim_htu!r} is not a valid http(s) URL ({exc}); it can never match",
            )
        else:
            if expected_htu is None:
                rec.skip(
                    "htu", "(9)", name, f"htu is {received_htu} (normalised); pass --url to compare"
                )
            elif received_htu == expected_htu:
                rec.ok("htu", "(9)", name, f"both normalise to {expected_htu}")
            else:
                rec.fail(
                    "htu",
                    "(9)",
                    name,
                    Reason.HTU_MISMATCH,
                    f"the proof is for {received_htu} but the request URL is {expected_htu} "
                    f"(both normalised; query and fragment ignored): "
                    f"{_htu_difference(expected_htu, received_htu)}; "
                    f"create the proof with --url {expected_htu}",
                )

    # RFC 9449 §4.3 (10): the server nonce.
    name = "nonce is a valid server nonce"
    nonce_info: NonceInfo | None = None
    nonce_claim = payload.get("nonce") if payload is not None else None
    if payload is None:
        rec.skip("nonce", "(10)", name, no_payload)
    elif nonce_issuer is None:
        has = f"nonce is {nonce_claim!r}; " if nonce_claim is not None else "no nonce claim; "
        rec.skip("nonce", "(10)", name, has + "pass --nonce-secret-env to check it")
    elif nonce_claim is None:
        rec.fail(
            "nonce",
            "(10)",
            name,
            Reason.NONCE_REQUIRED,
            "the proof has no nonce claim; the server answers use_dpop_nonce with a "
            "DPoP-Nonce header: retry with --nonce <that value>",
        )
    elif not isinstance(nonce_claim, str) or not nonce_claim:
        rec.skip("nonce", "(10)", name, "not checked: nonce is not a string (see claims)")
    else:
        try:
            nonce_info = nonce_issuer.verify(nonce_claim, now=now)
        except DPoPError as exc:
            rec.fail(
                "nonce",
                "(10)",
                name,
                exc.reason,
                "the nonce was not issued with this secret and context, or it expired; "
                "use the latest DPoP-Nonce the server sent",
            )
        else:
            state = "current" if nonce_info.current else "still accepted but not current"
            rec.ok(
                "nonce",
                "(10)",
                name,
                f"issued {_iso(nonce_info.issued_at)}, accepted until "
                f"{_iso(nonce_info.expires_at)} ({state})",
            )

    # RFC 9449 §4.3 (11), §11.1: iat within the window, or freshness from a valid nonce.
    name = "iat is recent"
    if payload is None:
        rec.skip("iat", "(11)", name, no_payload)
    elif iat is None:
        rec.skip("iat", "(11)", name, "not checked: no usable iat claim (see claims)")
    else:
        too_old = iat < now - pol.max_age
        too_new = iat > now + pol.future_skew
        window = (
            f"accepted from {pol.max_age:g} s before now to {pol.future_skew:g} s after; "
            f"iat {_iso(iat)}, now {_iso(now)}"
        )
        if not (too_old or too_new):
            rec.ok("iat", "(11)", name, window)
        elif nonce_info is not None and pol.nonce_carries_freshness:
            rec.ok(
                "iat",
                "(11)",
                name,
                f"outside the window ({window}) but the valid nonce vouches for freshness",
            )
        elif too_old:
            rec.fail(
                "iat",
                "(11)",
                name,
                Reason.IAT_TOO_OLD,
                f"the proof was created {now - iat:.0f} s ago ({window}); create a fresh "
                "proof for each request",
            )
        else:
            rec.fail(
                "iat",
                "(11)",
                name,
                Reason.IAT_IN_FUTURE,
                f"iat lies {iat - now:.0f} s in the future ({window}); fix the client's clock",
            )

    # RFC 9449 §4.3 (12): ath binds the proof to the access token.
    name = "ath matches the access token"
    ath = payload.get("ath") if payload is not None else None
    if payload is None:
        rec.skip("ath", "(12)", name, no_payload)
    elif access_token is None:
        if ath is not None and not isinstance(ath, str):
            rec.fail("ath", "(12)", name, Reason.BAD_CLAIM, "ath, when present, must be a string")
        else:
            rec.skip("ath", "(12)", name, "pass --access-token to check ath")
    else:
        expected_ath = access_token_hash(access_token)
        if ath is None:
            rec.fail(
                "ath",
                "(12)",
                name,
                Reason.MISSING_CLAIM,
                f"the proof has no ath; a proof sent with an access token needs "
                f"ath={expected_ath}: create it with --access-token",
            )
        elif isinstance(ath, str) and ath.isascii() and hmac.compare_digest(ath, expected_ath):
            rec.ok("ath", "(12)", name, "ath is the SHA-256 of the access token")
        else:
            rec.fail(
                "ath",
                "(12)",
                name,
                Reason.ATH_MISMATCH,
                f"ath is {json.dumps(ath)} but the token's hash is {expected_ath}: the proof was "
                "made for another token (hash the token exactly as sent, without 'DPoP ')",
            )

    # RFC 9449 §4.3 (12), §6.1: the key the token is bound to (cnf.jkt).
    name = "proof key matches the bound jkt"
    if expected_jkt is None:
        rec.skip("jkt", "(12)", name, "pass --jkt (the token's cnf.jkt) to check the binding")
    elif result.jkt is None:
        rec.skip("jkt", "(12)", name, "not checked: the jwk has no usable thumbprint")
    elif hmac.compare_digest(result.jkt.encode(), expected_jkt.encode("utf-8", "replace")):
        rec.ok("jkt", "(12)", name, f"jkt is {result.jkt}")
    else:
        rec.fail(
            "jkt",
            "(12)",
            name,
            Reason.JKT_MISMATCH,
            f"the proof key's thumbprint is {result.jkt} but the token is bound to "
            f"{expected_jkt}: sign with the key the token was issued for",
        )

    result.checks = sorted(rec.checks, key=lambda c: _ORDER.index(c.id))
    _cross_check(result, proof, htm, htu, access_token, expected_jkt, nonce_issuer, now, pol)
    return result


def _cross_check(
    result: Inspection,
    proof: str,
    htm: str | None,
    htu: str | None,
    access_token: str | None,
    expected_jkt: str | None,
    nonce_issuer: NonceIssuer | None,
    now: float,
    policy: ProofPolicy,
) -> None:
    payload = result.payload or {}
    # For a check that was skipped, hand the core the claim's own value so it passes there.
    claim_htm, claim_htu = payload.get("htm"), payload.get("htu")
    try:
        verify_proof(
            proof,
            htm=htm if htm is not None else (claim_htm if isinstance(claim_htm, str) else "GET"),
            htu=htu if htu is not None else (claim_htu if isinstance(claim_htu, str) else ""),
            policy=policy,
            access_token=access_token,
            expected_jkt=expected_jkt,
            nonce_check=nonce_issuer,
            now=now,
        )
    except DPoPError as exc:
        result.core_valid, result.core_reason = False, exc.reason.value
    else:
        result.core_valid, result.core_reason = True, None


#: The order checks are listed in (RFC 9449 §4.3 step order; crit belongs to (2)).
_ORDER = (
    "single",
    "jws",
    "crit",
    "claims",
    "typ",
    "alg",
    "jwk",
    "signature",
    "public_jwk",
    "htm",
    "htu",
    "nonce",
    "iat",
    "ath",
    "jkt",
)

_SINGLE_HELP = {
    Reason.MULTIPLE_PROOFS: "a comma in the value means two DPoP fields were joined; send one",
    Reason.MALFORMED: "the value has characters a token68 cannot hold (spaces, quotes...)",
    Reason.MISSING_PROOF: "the value is empty",
}


# --- rendering ------------------------------------------------------------------------------

_MARK = {"pass": "pass", "fail": "FAIL", "skipped": "skip"}


def _render_text(result: Inspection) -> str:
    lines: list[str] = []
    if result.header is not None:
        lines.append("header:  " + json.dumps(result.header, indent=2).replace("\n", "\n  "))
    if result.payload is not None:
        lines.append("payload: " + json.dumps(result.payload, indent=2).replace("\n", "\n  "))
        iat = result.payload.get("iat")
        if isinstance(iat, int | float) and not isinstance(iat, bool) and math.isfinite(iat):
            lines.append(f"iat:     {_iso(float(iat))}")
    if result.jkt is not None:
        lines.append(f"jkt:     {result.jkt}")
    lines.append("checks (RFC 9449 §4.3):")
    for check in result.checks:
        code = f" [{check.reason}]" if check.reason else ""
        lines.append(
            f"  {_MARK[check.status]}  {check.step:<5} {check.id:<10}{code} {check.explanation}"
        )
    failed = result.failed
    if result.valid:
        lines.append("result: VALID (verify_proof agrees)")
    else:
        codes = ", ".join(dict.fromkeys(c.reason or "" for c in failed))
        count = f"{len(failed)} failing check{'s' if len(failed) != 1 else ''}"
        lines.append(f"result: INVALID ({count}: {codes})" if failed else "result: INVALID")
        if result.agrees:
            lines.append(f"verify_proof agrees: rejected with {result.core_reason}")
    if not result.agrees:
        core = "accepts" if result.core_valid else f"rejects ({result.core_reason})"
        lines.append(
            f"internal error: verify_proof {core} but the checks above disagree; "
            "please report this (the proof is treated as invalid)"
        )
    return "\n".join(lines)


# --- helpers for the commands ---------------------------------------------------------------


def _secret_from_env(var: str | None, what: str) -> str | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise CommandError(f"environment variable {var} (the {what}) is not set")
    if not value:
        raise CommandError(f"environment variable {var} (the {what}) is empty")
    return value


def _load_private(path: str, password_env: str | None) -> DPoPKey:
    password = _secret_from_env(password_env, "key password")
    try:
        return load_key(path, password=password)
    except OSError as exc:
        raise CommandError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CommandError(f"cannot load key file {path}: {exc}") from None


def _parse_now(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise CommandError(
                f"--now {text!r}: give seconds since the epoch or an ISO 8601 time"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if not math.isfinite(value):
        raise CommandError("--now must be a finite number")
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# --- commands -------------------------------------------------------------------------------


def _cmd_keygen(args: argparse.Namespace) -> int:
    password = _secret_from_env(args.password_env, "key password")
    if password is not None and args.format != "pem":
        raise CommandError("a password needs --format pem (a JWK file cannot be encrypted)")
    try:
        key = DPoPKey.generate(args.alg)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.out is None:
        if args.format == "pem":
            sys.stdout.write(key.to_pem(password=password).decode("ascii"))
        else:
            _print_json(key.private_jwk())
        print(
            "note: this is a PRIVATE key: keep it secret "
            "(--out FILE writes it with 0600 permissions)",
            file=sys.stderr,
        )
        return 0
    try:
        save_key(key, args.out, password=password, format=args.format, overwrite=args.force)
    except FileExistsError:
        raise CommandError(f"{args.out} already exists (use --force to replace it)") from None
    except OSError as exc:
        raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"wrote the private key to {args.out} (mode 0600)", file=sys.stderr)
    print(f"jkt: {key.jkt}")
    print(f"public_jwk: {json.dumps(key.public_jwk)}")
    return 0


def _cmd_thumbprint(args: argparse.Namespace) -> int:
    password = _secret_from_env(args.password_env, "key password")
    try:
        jwk = load_public_jwk(args.keyfile, password=password)
    except OSError as exc:
        raise CommandError(f"cannot read key file {args.keyfile}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CommandError(f"cannot load key file {args.keyfile}: {exc}") from None
    print(jwk_thumbprint(jwk))
    return 0


def _cmd_proof(args: argparse.Namespace) -> int:
    claims: dict[str, Any] | None = None
    if args.claims is not None:
        try:
            claims = json_loads_object(args.claims.encode("utf-8"))
        except JWSError:
            raise CommandError("--claims must be a JSON object") from None
    key = _load_private(args.key, args.password_env)
    try:
        proof = create_proof(
            key,
            htm=args.method,
            htu=args.url,
            access_token=args.access_token,
            nonce=args.nonce,
            claims=claims,
            allow_insecure_http=args.insecure_http,
        )
    except ValueError as exc:
        message = str(exc)
        if "allow_insecure_http" in message:
            message = "DPoP needs https; add --insecure-http for a loopback test server"
        raise CommandError(f"cannot create the proof: {message}") from None
    print(proof)
    return 0


def _read_proof(arg: str) -> str:
    if arg == "-":
        data = sys.stdin.read(_MAX_INPUT + 1)
        if len(data) > _MAX_INPUT:
            raise CommandError(f"the input is larger than {_MAX_INPUT} characters")
        arg = data
    text = arg.strip()
    if text.lower().startswith("dpop:"):  # pasted as a header line
        text = text[5:].strip()
    if not text:
        raise CommandError("no proof given")
    return text


def _cmd_inspect(args: argparse.Namespace) -> int:
    proof = _read_proof(args.proof)
    now = _parse_now(args.now) if args.now is not None else time.time()
    if args.url is not None:
        try:
            normalize_htu(args.url)
        except ValueError as exc:
            raise CommandError(f"--url {args.url!r} is not a valid http(s) URL: {exc}") from None
    issuer: NonceIssuer | None = None
    secret = _secret_from_env(args.nonce_secret_env, "nonce secret")
    if secret is not None:
        try:
            issuer = NonceIssuer([secret.encode("utf-8")], context=args.nonce_context)
        except ValueError as exc:
            raise CommandError(f"nonce secret from {args.nonce_secret_env}: {exc}") from None
    result = inspect_proof(
        proof,
        htm=args.method,
        htu=args.url,
        access_token=args.access_token,
        expected_jkt=args.jkt,
        nonce_issuer=issuer,
        now=now,
    )
    if args.json:
        _print_json(result.as_dict())
    else:
        print(_render_text(result))
    return 0 if result.valid else 1


# --- registration ---------------------------------------------------------------------------


def _add(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Callable[[argparse.Namespace], int],
    help_text: str,
    description: str,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=description)
    parser.set_defaults(func=func)
    return parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keygen``, ``thumbprint``, ``proof`` and ``inspect``."""
    p = _add(
        subparsers,
        "keygen",
        _cmd_keygen,
        "generate a DPoP key pair",
        "Generate a DPoP private key. Without --out the private JWK (or PEM) is printed; "
        "with --out it is written with 0600 permissions and the jkt and public JWK are printed.",
    )
    p.add_argument("--alg", default=DEFAULT_ALGORITHM, choices=ALGORITHMS, help="(default ES256)")
    p.add_argument("--out", metavar="FILE", help="write the private key to FILE (mode 0600)")
    p.add_argument("--format", choices=("jwk", "pem"), default="jwk", help="(default jwk)")
    p.add_argument(
        "--password-env",
        metavar="VAR",
        help="encrypt the PEM with the password in environment variable VAR",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file")

    p = _add(
        subparsers,
        "thumbprint",
        _cmd_thumbprint,
        "print the RFC 7638 thumbprint (jkt) of a key file",
        "Print the jkt (RFC 7638 SHA-256 thumbprint) of a private or public JWK or PEM file.",
    )
    p.add_argument("keyfile", metavar="KEYFILE")
    p.add_argument("--password-env", metavar="VAR", help="password of an encrypted PEM")

    p = _add(
        subparsers,
        "proof",
        _cmd_proof,
        "create a DPoP proof",
        'Print a DPoP proof for one request, e.g. curl -H "DPoP: $(dpopkit proof ...)".',
    )
    p.add_argument("--key", required=True, metavar="FILE", help="private key file (JWK or PEM)")
    p.add_argument("--password-env", metavar="VAR", help="password of an encrypted PEM")
    p.add_argument("--method", required=True, metavar="M", help="HTTP method (case-sensitive)")
    p.add_argument("--url", required=True, metavar="U", help="request URL (https)")
    p.add_argument("--nonce", metavar="N", help="the server's DPoP-Nonce value")
    p.add_argument("--access-token", metavar="T", help="adds ath (RFC 9449 §4.2)")
    p.add_argument("--claims", metavar="JSON", help="extra claims as a JSON object")
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow an http:// URL (loopback tests only)",
    )

    p = _add(
        subparsers,
        "inspect",
        _cmd_inspect,
        "decode a DPoP proof and show every RFC 9449 §4.3 check",
        "Decode a proof and run every RFC 9449 §4.3 check (pass, FAIL or skip). "
        "Exit 0 valid, 1 invalid, 2 usage error.",
    )
    p.add_argument("proof", metavar="PROOF", help="the proof, or - to read it from stdin")
    p.add_argument("--method", metavar="M", help="the request method (checks htm)")
    p.add_argument("--url", metavar="U", help="the request URL (checks htu)")
    p.add_argument("--access-token", metavar="T", help="the access token (checks ath)")
    p.add_argument("--jkt", metavar="J", help="the token's cnf.jkt (checks the key binding)")
    p.add_argument(
        "--now", metavar="T", help="the time to check iat against (epoch seconds or ISO 8601)"
    )
    p.add_argument(
        "--nonce-secret-env",
        metavar="VAR",
        help="check the nonce with the server's nonce secret held in environment variable VAR",
    )
    p.add_argument(
        "--nonce-context", default="", metavar="C", help="the nonce issuer's context (default '')"
    )
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
