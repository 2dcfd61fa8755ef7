"""The proof inspector behind ``dpopkit inspect``: every RFC 9449 §4.3 check, reported.

It runs every check on its own (built from the core's pieces: strict JWS decoding,
JWK import, ``normalize_htu``, ``access_token_hash``, ``jwk_thumbprint``, the
signature check) so that it can report *all* failing checks, not only the first,
and then cross-checks its verdict with :func:`dpopkit.verify_proof`.

This is a local debugging tool: unlike the errors a server sends, its
explanations echo the expected values (normalised ``htu``, ``ath``, ``jkt``).
No argument parsing and no printing here (:mod:`dpopkit.cli.offline` does both).
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from dpopkit.core.algorithms import ALGORITHMS, AlgSpec, PublicKey
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
from dpopkit.core.nonce import NonceInfo, NonceIssuer
from dpopkit.core.proof import (
    PROOF_TYP,
    ProofPolicy,
    extract_proof,
    verify_proof,
)
from dpopkit.core.thumbprint import access_token_hash, jwk_thumbprint
from dpopkit.errors import DPoPError, Reason

__all__ = ["CHECKS", "Check", "Inspection", "inspect_proof", "render_text"]

Status = Literal["pass", "fail", "skipped"]


# --- the inspector --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check of RFC 9449 §4.3.

    Attributes:
        id: a stable short name (``htu``, ``signature``...).
        step: the RFC 9449 §4.3 step, e.g. ``(9)``.
        name: what the check ensures.
        status: ``pass``, ``fail`` or ``skipped`` (its input was not given, or a
            part it needs could not be decoded).
        reason: the :class:`~dpopkit.Reason` value when it failed, else None.
        explanation: what was found and, on failure, how to fix it.
    """

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


#: id -> (RFC 9449 §4.3 step, what the check ensures), in the order they run and print.
CHECKS: dict[str, tuple[str, str]] = {
    "single": ("(1)", "one DPoP header value (token68)"),
    "jws": ("(2)", "well-formed JWT (compact JWS, base64url, JSON objects)"),
    "crit": ("(2)", "no crit extension that is not understood (RFC 7515 §4.1.11)"),
    "claims": ("(3)", "required claims jti, htm, htu, iat present and typed"),
    "typ": ("(4)", "typ is dpop+jwt"),
    "alg": ("(5)", "alg is an allowed asymmetric algorithm"),
    "jwk": ("(5)", "jwk is a valid key that fits alg"),
    "signature": ("(6)", "signature verifies with the jwk"),
    "public_jwk": ("(7)", "jwk is a public key (no private members)"),
    "htm": ("(8)", "htm matches the request method"),
    "htu": ("(9)", "htu matches the request URL"),
    "nonce": ("(10)", "nonce is a valid server nonce"),
    "iat": ("(11)", "iat is recent"),
    "exp_nbf": ("(11)", "exp and nbf, when present, allow now"),
    "ath": ("(12)", "ath matches the access token"),
    "jkt": ("(12)", "proof key matches the bound jkt"),
}

_NO_HEADER = "not checked: the header could not be decoded"
_NO_PAYLOAD = "not checked: the payload could not be decoded"


def _check(check_id: str, status: Status, explanation: str, reason: Reason | None = None) -> Check:
    step, name = CHECKS[check_id]
    code = reason.value if reason is not None and status == "fail" else None
    return Check(check_id, step, name, status, code, explanation)


def _ok(check_id: str, explanation: str) -> Check:
    return _check(check_id, "pass", explanation)


def _fail(check_id: str, reason: Reason, explanation: str) -> Check:
    return _check(check_id, "fail", explanation, reason)


def _skip(check_id: str, explanation: str) -> Check:
    return _check(check_id, "skipped", explanation)


@dataclass(slots=True)
class _Subject:
    """The proof, the request facts given, and what earlier checks learned."""

    proof: str
    htm: str | None
    htu: str | None  # normalised
    access_token: str | None
    expected_jkt: str | None
    nonce_issuer: NonceIssuer | None
    now: float
    policy: ProofPolicy
    result: Inspection
    parts: CompactJWS | None = None
    signature: bytes | None = None
    spec: AlgSpec | None = None
    key: PublicKey | None = None
    iat: float | None = None
    exp: float | None = None
    nbf: float | None = None
    usable_claims: set[str] = field(default_factory=set)
    nonce_info: NonceInfo | None = None

    @property
    def header(self) -> dict[str, Any] | None:
        return self.result.header

    @property
    def payload(self) -> dict[str, Any] | None:
        return self.result.payload


def _iso(ts: float) -> str:
    try:
        when = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        return "out of range"
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


_SINGLE_HELP = {
    Reason.MULTIPLE_PROOFS: "a comma in the value means two DPoP fields were joined; send one",
    Reason.MALFORMED: "the value has characters a token68 cannot hold (spaces, quotes...)",
    Reason.MISSING_PROOF: "the value is empty",
}


def _check_single(s: _Subject) -> Check:
    # RFC 9449 §4.3 (1): one DPoP field whose value is a token68.
    try:
        extract_proof(Headers([(DPOP_HEADER, s.proof)]))
    except DPoPError as exc:
        return _fail("single", exc.reason, _SINGLE_HELP.get(exc.reason, "not a token68"))
    return _ok("single", "one value with token68 syntax")


def _check_jws(s: _Subject) -> Check:
    # RFC 9449 §4.3 (2): a well-formed compact JWS, sizes checked before decoding.
    pol = s.policy
    problems: list[tuple[Reason, str]] = []
    try:
        s.parts = split_compact(s.proof, max_length=pol.max_proof_length)
    except JWSError as exc:
        if exc.reason is Reason.TOO_LARGE:
            return _fail(
                "jws", exc.reason, f"the proof is longer than {pol.max_proof_length} chars"
            )
        return _fail("jws", exc.reason, "a compact JWS has three non-empty parts joined by '.'")
    if len(s.parts.header_b64) > pol.max_header_length:
        problems.append(
            (Reason.TOO_LARGE, f"the header is longer than {pol.max_header_length} chars")
        )
    for label, segment in (("header", s.parts.header_b64), ("payload", s.parts.payload_b64)):
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
            s.result.header = obj
        else:
            s.result.payload = obj
    try:
        s.signature = b64url_decode(s.parts.signature_b64)
    except JWSError:
        problems.append((Reason.MALFORMED, "the signature is not unpadded base64url"))
    if problems:
        return _fail("jws", problems[0][0], "; ".join(text for _, text in problems))
    return _ok("jws", "three base64url parts; header and payload are JSON objects")


def _check_crit(s: _Subject) -> Check:
    # RFC 7515 §4.1.11: crit may list only extensions the recipient understands (none here).
    if s.header is None:
        return _skip("crit", _NO_HEADER)
    try:
        check_crit(s.header)
    except JWSError as exc:
        crit = json.dumps(s.header.get("crit"))
        return _fail(
            "crit", exc.reason, f"crit is {crit}; DPoP proofs use no JWS extension: remove crit"
        )
    return _ok("crit", "no crit header")


def _claim_problem(payload: dict[str, Any], name: str) -> tuple[Reason, str] | None:
    value = payload.get(name)
    if value is None:
        return Reason.MISSING_CLAIM, f"{name} is missing"
    if not isinstance(value, str) or not value:
        return Reason.BAD_CLAIM, f"{name} must be a non-empty string, got {json.dumps(value)}"
    return None


def _numeric_date(name: str, value: object) -> tuple[float | None, tuple[Reason, str] | None]:
    # bool is an int in Python; NaN/Infinity were refused by the JSON parser.
    if isinstance(value, bool) or not isinstance(value, int | float):
        got = json.dumps(value)
        return None, (Reason.BAD_CLAIM, f"{name} must be a number (seconds), got {got}")
    try:
        return float(value), None  # an int too large for a float overflows here
    except OverflowError:
        return None, (Reason.BAD_CLAIM, f"{name} is out of range")


def _iat_value(payload: dict[str, Any]) -> tuple[float | None, tuple[Reason, str] | None]:
    iat = payload.get("iat")
    if iat is None:
        return None, (Reason.MISSING_CLAIM, "iat is missing")
    return _numeric_date("iat", iat)


def _check_claims(s: _Subject) -> Check:
    # RFC 9449 §4.3 (3): the claims of §4.2 present and typed.
    payload = s.payload
    if payload is None:
        return _skip("claims", _NO_PAYLOAD)
    found: list[tuple[Reason, str]] = []
    for claim in ("jti", "htm", "htu"):
        problem = _claim_problem(payload, claim)
        if problem is not None:
            found.append(problem)
            continue
        s.usable_claims.add(claim)
        if claim == "jti" and len(payload["jti"]) > s.policy.max_jti_length:
            found.append((Reason.BAD_CLAIM, f"jti is longer than {s.policy.max_jti_length} chars"))
    s.iat, iat_problem = _iat_value(payload)
    if iat_problem is not None:
        found.append(iat_problem)
    nonce = payload.get("nonce")
    if nonce is not None and not isinstance(nonce, str):
        found.append((Reason.BAD_CLAIM, "nonce, when present, must be a string"))
    # Optional JWT time claims (RFC 7519 §4.1.4, §4.1.5): a NumericDate when present.
    for name in ("exp", "nbf"):
        if name in payload:
            value, problem = _numeric_date(name, payload[name])
            setattr(s, name, value)
            if problem is not None:
                found.append((problem[0], f"{problem[1]} (optional, but a NumericDate)"))
    if found:
        texts = "; ".join(text for _, text in found)
        return _fail("claims", found[0][0], f"{texts} (RFC 9449 §4.2)")
    return _ok("claims", "jti, htm, htu and iat are present and well typed")


def _check_typ(s: _Subject) -> Check:
    # RFC 9449 §4.3 (4): typ; "application/" prefix allowed, case-insensitive (RFC 7515 §4.1.9).
    if s.header is None:
        return _skip("typ", _NO_HEADER)
    typ = s.header.get("typ")
    if isinstance(typ, str) and typ.lower().removeprefix("application/") == PROOF_TYP:
        return _ok("typ", f"typ is {typ!r}")
    got = "missing" if typ is None else json.dumps(typ)
    return _fail("typ", Reason.BAD_TYP, f'typ is {got}; a DPoP proof has typ "dpop+jwt"')


def _check_alg(s: _Subject) -> Check:
    # RFC 9449 §4.3 (5): an asymmetric alg allowed by policy (never none or HS*).
    if s.header is None:
        return _skip("alg", _NO_HEADER)
    alg = s.header.get("alg")
    try:
        s.spec = algorithm_spec(alg, s.policy.algorithms)
    except JWSError as exc:
        allowed = ", ".join(a for a in ALGORITHMS if a in s.policy.algorithms)
        return _fail("alg", exc.reason, f"alg is {json.dumps(alg)}; allowed: {allowed}")
    return _ok("alg", f"alg is {s.spec.name}")


def _check_jwk(s: _Subject) -> Check:
    # RFC 9449 §4.3 (5), (6): the jwk header is a valid public key that fits alg.
    if s.header is None:
        return _skip("jwk", _NO_HEADER)
    jwk = s.header.get("jwk")
    if not isinstance(jwk, dict):
        got = "missing" if jwk is None else "not a JSON object"
        return _fail("jwk", Reason.BAD_JWK, f"the jwk header is {got}; put the public key there")
    if s.spec is None:
        return _skip("jwk", "not checked: alg is not usable")
    # Private members are the business of check (7); judge the rest of the key here.
    public_part = {k: v for k, v in jwk.items() if k not in PRIVATE_JWK_MEMBERS}
    try:
        s.key = public_key_from_jwk(
            public_part,
            s.spec,
            min_rsa_bits=s.policy.min_rsa_bits,
            max_rsa_bits=s.policy.max_rsa_bits,
        )
        s.result.jkt = jwk_thumbprint(jwk)
    except JWSError as exc:
        s.key = None
        return _fail("jwk", exc.reason, f"{exc.description} (alg {s.spec.name})")
    except ValueError as exc:  # pragma: no cover - the import checked the thumbprint members
        s.key = None
        return _fail("jwk", Reason.BAD_JWK, f"no RFC 7638 thumbprint: {exc}")
    return _ok("jwk", f"a valid {jwk['kty']} key for {s.spec.name}")


def _check_signature(s: _Subject) -> Check:
    # RFC 9449 §4.3 (6): the signature verifies with the key in jwk (and no other).
    if s.spec is None or s.key is None or s.parts is None or s.signature is None:
        return _skip("signature", "not checked: no usable alg, key or signature")
    if s.spec.verify(s.key, s.signature, s.parts.signing_input):
        return _ok("signature", f"valid {s.spec.name} signature")
    return _fail(
        "signature",
        Reason.BAD_SIGNATURE,
        "the signature does not verify with the key in the jwk header: the proof was changed "
        "after signing or signed by another key (ECDSA signatures are raw R||S, not DER)",
    )


def _check_public_jwk(s: _Subject) -> Check:
    # RFC 9449 §4.3 (7): the jwk holds no private key.
    jwk = s.header.get("jwk") if s.header is not None else None
    if not isinstance(jwk, dict):
        return _skip("public_jwk", "not checked: no jwk object")
    private = sorted(PRIVATE_JWK_MEMBERS.intersection(jwk))
    if private:
        return _fail(
            "public_jwk",
            Reason.PRIVATE_JWK,
            f"the jwk contains private members {', '.join(private)}: the private key leaked "
            "into the proof; send only the public key (and replace this key)",
        )
    return _ok("public_jwk", "no private key members")


def _check_htm(s: _Subject) -> Check:
    # RFC 9449 §4.3 (8): htm, case-sensitive (RFC 9110 §9.1).
    if s.payload is None:
        return _skip("htm", _NO_PAYLOAD)
    if "htm" not in s.usable_claims:
        return _skip("htm", "not checked: no usable htm claim (see claims)")
    claim = s.payload["htm"]
    if s.htm is None:
        return _skip("htm", f"htm is {claim!r}; pass --method to compare")
    if claim == s.htm:
        return _ok("htm", f"htm is {claim!r}")
    return _fail(
        "htm",
        Reason.HTM_MISMATCH,
        f"the proof says htm={claim!r} but the request method is {s.htm!r} (case-sensitive); "
        f"create the proof with --method {s.htm}",
    )


def _htu_difference(expected: str, received: str) -> str:
    def parts(url: str) -> tuple[str, str, str]:
        scheme, _, rest = url.partition("://")
        slash = rest.find("/")
        return scheme, rest[:slash], rest[slash:]

    labels = ("scheme", "host and port", "path")
    diffs = [
        f"{label}: proof {r!r}, request {e!r}"
        for label, e, r in zip(labels, parts(expected), parts(received), strict=True)
        if e != r
    ]
    return "; ".join(diffs) if diffs else "they differ"


def _check_htu(s: _Subject) -> Check:
    # RFC 9449 §4.3 (9): htu, both sides normalised (RFC 3986 §6.2.2-6.2.3).
    if s.payload is None:
        return _skip("htu", _NO_PAYLOAD)
    if "htu" not in s.usable_claims:
        return _skip("htu", "not checked: no usable htu claim (see claims)")
    claim = s.payload["htu"]
    try:
        received = normalize_htu(claim)
    except ValueError as exc:
        return _fail(
            "htu",
            Reason.HTU_MISMATCH,
            f"htu {claim!r} is not a valid http(s) URL ({exc}); it can never match",
        )
    if s.htu is None:
        return _skip("htu", f"htu is {received} (normalised); pass --url to compare")
    if received == s.htu:
        return _ok("htu", f"both normalise to {received}")
    return _fail(
        "htu",
        Reason.HTU_MISMATCH,
        f"the proof is for {received} but the request URL is {s.htu} (both normalised; query "
        f"and fragment ignored): {_htu_difference(s.htu, received)}; "
        f"create the proof with --url {s.htu}",
    )


def _check_nonce(s: _Subject) -> Check:
    # RFC 9449 §4.3 (10): the server nonce.
    if s.payload is None:
        return _skip("nonce", _NO_PAYLOAD)
    nonce = s.payload.get("nonce")
    if s.nonce_issuer is None:
        found = f"nonce is {nonce!r}; " if nonce is not None else "no nonce claim; "
        return _skip("nonce", found + "pass --nonce-secret-env to check it")
    if nonce is None:
        return _fail(
            "nonce",
            Reason.NONCE_REQUIRED,
            "the proof has no nonce; the server answers use_dpop_nonce with a DPoP-Nonce "
            "header: create the proof again with --nonce <that value>",
        )
    if not isinstance(nonce, str):
        return _skip("nonce", "not checked: nonce is not a string (see claims)")
    try:
        s.nonce_info = s.nonce_issuer.verify(nonce, now=s.now)
    except DPoPError as exc:
        if not nonce:
            return _fail(
                "nonce",
                exc.reason,
                "the nonce is empty, a wrong nonce: the server answers use_dpop_nonce with a "
                "DPoP-Nonce header; create the proof again with --nonce <that value>",
            )
        return _fail(
            "nonce",
            exc.reason,
            "the nonce was not issued with this secret and context, or it expired; "
            "use the latest DPoP-Nonce the server sent",
        )
    info = s.nonce_info
    state = "current" if info.current else "still accepted but not current"
    return _ok(
        "nonce", f"issued {_iso(info.issued_at)}, accepted until {_iso(info.expires_at)} ({state})"
    )


def _check_iat(s: _Subject) -> Check:
    # RFC 9449 §4.3 (11), §11.1: iat within the window, or freshness from a valid nonce.
    if s.payload is None:
        return _skip("iat", _NO_PAYLOAD)
    iat, now, pol = s.iat, s.now, s.policy
    if iat is None:
        return _skip("iat", "not checked: no usable iat claim (see claims)")
    window = (
        f"accepted from {pol.max_age:g} s before now to {pol.future_skew:g} s after; "
        f"iat {_iso(iat)}, now {_iso(now)}"
    )
    too_old = iat < now - pol.max_age
    too_new = iat > now + pol.future_skew
    if not (too_old or too_new):
        return _ok("iat", window)
    if s.nonce_info is not None and pol.nonce_carries_freshness:
        return _ok("iat", f"outside the window ({window}), but the valid nonce vouches for it")
    if too_old:
        return _fail(
            "iat",
            Reason.IAT_TOO_OLD,
            f"the proof was created {now - iat:.0f} s ago ({window}); "
            "create a fresh proof for each request",
        )
    return _fail(
        "iat",
        Reason.IAT_IN_FUTURE,
        f"iat lies {iat - now:.0f} s in the future ({window}); fix the client's clock",
    )


def _check_exp_nbf(s: _Subject) -> Check:
    # RFC 7519 §4.1.4, §4.1.5: optional in a proof; when present nbf <= now < exp, with
    # the same skew as iat. A valid nonce does not excuse them (the signer set them).
    if s.payload is None:
        return _skip("exp_nbf", _NO_PAYLOAD)
    present = [name for name in ("exp", "nbf") if name in s.payload]
    if not present:
        return _ok("exp_nbf", "no exp or nbf claim (both optional)")
    if (s.exp is None and "exp" in present) or (s.nbf is None and "nbf" in present):
        return _skip("exp_nbf", "not checked: exp or nbf is not a number (see claims)")
    now, skew = s.now, s.policy.future_skew
    problems: list[tuple[Reason, str]] = []
    if s.exp is not None and not now < s.exp + skew:
        problems.append(
            (
                Reason.EXP_IN_PAST,
                f"the proof expired at {_iso(s.exp)}, {now - s.exp:.0f} s before now "
                f"({skew:g} s of skew allowed); create a fresh proof for each request",
            )
        )
    if s.nbf is not None and s.nbf - skew > now:
        problems.append(
            (
                Reason.NBF_IN_FUTURE,
                f"the proof is not valid before {_iso(s.nbf)}, {s.nbf - now:.0f} s after now "
                f"({skew:g} s of skew allowed); fix the client's clock",
            )
        )
    if problems:
        return _fail("exp_nbf", problems[0][0], "; ".join(text for _, text in problems))
    limits = ", ".join(
        f"{name} {_iso(value)}"
        for name, value in (("nbf", s.nbf), ("exp", s.exp))
        if value is not None
    )
    return _ok("exp_nbf", f"{limits}; now {_iso(now)} is inside ({skew:g} s of skew)")


def _check_ath(s: _Subject) -> Check:
    # RFC 9449 §4.3 (12): ath binds the proof to the access token sent with it.
    if s.payload is None:
        return _skip("ath", _NO_PAYLOAD)
    ath = s.payload.get("ath")
    if s.access_token is None:
        if ath is not None and not isinstance(ath, str):
            return _fail("ath", Reason.BAD_CLAIM, "ath, when present, must be a string")
        return _skip("ath", "pass --access-token to check ath")
    expected = access_token_hash(s.access_token)
    if ath is None:
        return _fail(
            "ath",
            Reason.MISSING_CLAIM,
            f"the proof has no ath; with this access token it needs ath={expected}: "
            "create the proof with --access-token",
        )
    if isinstance(ath, str) and ath.isascii() and hmac.compare_digest(ath, expected):
        return _ok("ath", "ath is the SHA-256 of the access token")
    return _fail(
        "ath",
        Reason.ATH_MISMATCH,
        f"ath is {json.dumps(ath)} but the token's hash is {expected}: the proof was made for "
        "another token (hash the token exactly as sent, without the 'DPoP ' prefix)",
    )


def _check_jkt(s: _Subject) -> Check:
    # RFC 9449 §4.3 (12), §6.1: the key the access token is bound to (cnf.jkt).
    jkt = s.result.jkt
    if s.expected_jkt is None:
        return _skip("jkt", "pass --jkt (the token's cnf.jkt) to check the key binding")
    if jkt is None:
        return _skip("jkt", "not checked: the jwk has no usable thumbprint")
    if hmac.compare_digest(jkt.encode(), s.expected_jkt.encode("utf-8", "replace")):
        return _ok("jkt", f"jkt is {jkt}")
    return _fail(
        "jkt",
        Reason.JKT_MISMATCH,
        f"the proof key's thumbprint is {jkt} but the token is bound to {s.expected_jkt}: "
        "sign with the key the token was issued for",
    )


# In CHECKS order, which also satisfies their dependencies (jwk before signature, nonce before iat).
_RUNNERS: tuple[Callable[[_Subject], Check], ...] = (
    _check_single,
    _check_jws,
    _check_crit,
    _check_claims,
    _check_typ,
    _check_alg,
    _check_jwk,
    _check_signature,
    _check_public_jwk,
    _check_htm,
    _check_htu,
    _check_nonce,
    _check_iat,
    _check_exp_nbf,
    _check_ath,
    _check_jkt,
)


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

    Unlike :func:`verify_proof`, which stops at the first failure, every check
    runs. A check whose input was not given (``htm`` for (8), ``htu`` for (9),
    the access token for ``ath``, ``expected_jkt``, a nonce issuer for (10)) is
    ``skipped``, and so is a check that needs a part that could not be decoded.
    The verdict is cross-checked with :func:`verify_proof` under the same
    policy; :attr:`Inspection.valid` needs both to accept.

    Args:
        proof: the compact proof (the ``DPoP`` header value).
        htm: the request method.
        htu: the request URL.
        access_token: the access token sent with the request.
        expected_jkt: the thumbprint the token is bound to (``cnf.jkt``).
        nonce_issuer: the server's nonce issuer; nonces are then required.
        now: the current time (seconds since the epoch).
        policy: what is accepted; by default :class:`ProofPolicy` defaults, with
            ``require_nonce`` when ``nonce_issuer`` is given.

    Returns:
        An :class:`Inspection` listing every check in the order of :data:`CHECKS`.

    Raises:
        ValueError: ``htu`` is not a valid http(s) URL.
    """
    pol = policy if policy is not None else ProofPolicy(require_nonce=nonce_issuer is not None)
    subject = _Subject(
        proof=proof,
        htm=htm,
        htu=normalize_htu(htu) if htu is not None else None,
        access_token=access_token,
        expected_jkt=expected_jkt,
        nonce_issuer=nonce_issuer,
        now=now,
        policy=pol,
        result=Inspection(),
    )
    result = subject.result
    result.checks = [run(subject) for run in _RUNNERS]
    _cross_check(subject, htu)
    return result


def _cross_check(s: _Subject, htu: str | None) -> None:
    # V-14: whatever order the checks run in, the verdict must be the core's.
    payload = s.payload or {}
    # For an input that was not given, hand the core the claim itself so that it passes there.
    claim_htm, claim_htu = payload.get("htm"), payload.get("htu")
    result = s.result
    try:
        verify_proof(
            s.proof,
            htm=s.htm if s.htm is not None else (claim_htm if isinstance(claim_htm, str) else "-"),
            htu=htu if htu is not None else (claim_htu if isinstance(claim_htu, str) else ""),
            policy=s.policy,
            access_token=s.access_token,
            expected_jkt=s.expected_jkt,
            nonce_check=s.nonce_issuer,
            now=s.now,
        )
    except DPoPError as exc:
        result.core_valid, result.core_reason = False, exc.reason.value
    else:
        result.core_valid, result.core_reason = True, None


# --- rendering ------------------------------------------------------------------------------

_MARK = {"pass": "pass", "fail": "FAIL", "skipped": "skip"}


def render_text(result: Inspection) -> str:
    """The inspection as ``dpopkit inspect`` prints it (text, one check a line)."""
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
