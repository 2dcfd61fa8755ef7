"""``dpopkit inspect``: every RFC 9449 §4.3 check reported, all failures at once.

Each invalid case names the checklist row (V-1..V-12) or attack it covers and
lists *every* reason code the inspector must report; the verdict is
cross-checked against ``verify_proof`` (V-14: the result does not depend on
which check fails first).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from dpopkit import DPoPError, DPoPKey, NonceIssuer, access_token_hash, verify_proof
from dpopkit.cli.inspector import CHECKS, inspect_proof
from dpopkit.core.jws import b64url_encode
from dpopkit.errors import Reason

from .helpers import HTU, NOW, TOKEN, Run, assert_one_line_error, forge, run

CHECK_IDS = [
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
    "exp_nbf",
    "ath",
    "jkt",
]
NONCE_SECRET = b64url_encode(b"n" * 40)  # the text form: base64url of >= 32 bytes
BASE_ARGS = ("--method", "GET", "--url", HTU, "--now", str(NOW), "--json")


@pytest.fixture(scope="module")
def key() -> DPoPKey:
    return DPoPKey.generate("ES256")


@pytest.fixture(scope="module")
def other() -> DPoPKey:
    return DPoPKey.generate("ES256")


def inspect(capsys: pytest.CaptureFixture[str], proof: str, *extra: str) -> Run:
    return run(capsys, "inspect", proof, *BASE_ARGS, *extra)


def failing(data: dict[str, object]) -> set[str]:
    checks = data["checks"]
    assert isinstance(checks, list)
    return {c["reason"] for c in checks if c["status"] == "fail"}


def status(data: dict[str, object], check_id: str) -> str:
    checks = data["checks"]
    assert isinstance(checks, list)
    (check,) = [c for c in checks if c["id"] == check_id]
    assert isinstance(check["status"], str)
    return check["status"]


def _flip(proof: str, segment: int, index: int) -> str:
    parts = proof.split(".")
    seg = parts[segment]
    parts[segment] = seg[:index] + ("A" if seg[index] != "A" else "B") + seg[index + 1 :]
    return ".".join(parts)


def _b64json(text: str) -> str:
    return b64url_encode(text.encode())


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[DPoPKey, DPoPKey], str]
    reasons: set[str]
    args: tuple[str, ...] = field(default=())
    token: str | None = None


OTHER_ATH = access_token_hash("another-token")
VALID_BODY = json.dumps({"jti": "changed-jti-0123456", "htm": "GET", "htu": HTU, "iat": NOW})
CASES = [
    # V-1: one DPoP field; a comma means two joined fields.
    Case(
        "v1_two_proofs_joined",
        lambda k, o: forge(k) + "," + forge(k),
        {"multiple_proofs", "malformed"},
    ),
    # V-2: one well-formed compact JWS.
    Case("v2_two_parts", lambda k, o: "abc.def", {"malformed"}),
    Case("v2_padded_header", lambda k, o: _pad(forge(k)), {"malformed"}),
    Case(
        "v2_header_not_json",
        lambda k, o: _b64json("not json") + "." + forge(k).split(".", 1)[1],
        {"malformed"},
    ),
    Case(
        "v2_payload_array",
        lambda k, o: _swap_payload(forge(k), "[1,2]"),
        {"malformed", "bad_signature"},
    ),
    Case(
        "v2_duplicate_member",
        lambda k, o: _swap_payload(forge(k), '{"iat":1,"iat":2}'),
        {"malformed", "bad_signature"},
    ),
    Case("v2_proof_too_large", lambda k, o: forge(k, payload={"pad": "x" * 9000}), {"too_large"}),
    Case("v2_header_too_large", lambda k, o: forge(k, header={"pad": "x" * 3500}), {"too_large"}),
    Case(
        "v2_unknown_crit",
        lambda k, o: forge(k, header={"crit": ["exp"], "exp": 1}),
        {"unsupported_crit"},
    ),
    Case(
        "v2_signature_not_base64url", lambda k, o: forge(k).rsplit(".", 1)[0] + ".a", {"malformed"}
    ),
    # V-3: required claims, typed.
    Case("v3_missing_jti", lambda k, o: forge(k, drop=("jti",)), {"missing_claim"}),
    Case("v3_missing_iat", lambda k, o: forge(k, drop=("iat",)), {"missing_claim"}),
    Case("v3_iat_string", lambda k, o: forge(k, payload={"iat": str(NOW)}), {"bad_claim"}),
    Case("v11_iat_boolean", lambda k, o: forge(k, payload={"iat": True}), {"bad_claim"}),
    Case("v3_htm_number", lambda k, o: forge(k, payload={"htm": 5}), {"bad_claim"}),
    Case(
        "v11_iat_overflows_a_float", lambda k, o: forge(k, payload={"iat": 10**400}), {"bad_claim"}
    ),
    Case("v3_jti_too_long", lambda k, o: forge(k, payload={"jti": "j" * 300}), {"bad_claim"}),
    Case("v3_nonce_not_string", lambda k, o: forge(k, payload={"nonce": 7}), {"bad_claim"}),
    # V-4: typ.
    Case("v4_typ_jwt", lambda k, o: forge(k, header={"typ": "JWT"}), {"bad_typ"}),
    Case("v4_typ_missing", lambda k, o: forge(k, drop=("typ",)), {"bad_typ"}),
    # V-5: alg and key type (attack family: algorithm confusion).
    Case("v5_alg_none", lambda k, o: forge(k, header={"alg": "none"}), {"unsupported_alg"}),
    Case(
        "v5_alg_hs256_with_oct_key",
        lambda k, o: forge(k, header={"alg": "HS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}}),
        {"unsupported_alg", "private_jwk"},
    ),
    Case("v5_es384_with_p256_key", lambda k, o: forge(k, header={"alg": "ES384"}), {"bad_jwk"}),
    Case("v5_jwk_missing", lambda k, o: forge(k, drop=("jwk",)), {"bad_jwk"}),
    # V-6: signature by the jwk.
    Case("v6_signature_byte_flipped", lambda k, o: _flip(forge(k), 2, 10), {"bad_signature"}),
    Case("v6_signed_by_other_key", lambda k, o: forge(k, signer=o), {"bad_signature"}),
    Case(
        "v6_claims_changed_after_signing",
        lambda k, o: _swap_payload(forge(k), VALID_BODY),
        {"bad_signature"},
    ),
    # V-7: public jwk only.
    Case("v7_private_jwk", lambda k, o: forge(k, header={"jwk": k.private_jwk()}), {"private_jwk"}),
    # V-8: htm, case-sensitive.
    Case("v8_htm_lowercase", lambda k, o: forge(k, payload={"htm": "get"}), {"htm_mismatch"}),
    Case("v8_htm_post_on_get", lambda k, o: forge(k, payload={"htm": "POST"}), {"htm_mismatch"}),
    # V-9: htu.
    Case("v9_htu_other_path", lambda k, o: forge(k, payload={"htu": HTU + "/x"}), {"htu_mismatch"}),
    Case(
        "v9_htu_http_scheme",
        lambda k, o: forge(k, payload={"htu": "http://api.example/items"}),
        {"htu_mismatch"},
    ),
    Case(
        "v9_htu_userinfo",
        lambda k, o: forge(k, payload={"htu": "https://u@api.example/items"}),
        {"htu_mismatch"},
    ),
    Case("v9_htu_not_a_url", lambda k, o: forge(k, payload={"htu": "items"}), {"htu_mismatch"}),
    # V-11: iat window (60 s old, 5 s ahead by default).
    Case("v11_iat_61s_old", lambda k, o: forge(k, payload={"iat": NOW - 61}), {"iat_too_old"}),
    Case("v11_iat_year_3e12", lambda k, o: forge(k, payload={"iat": 10**20}), {"iat_in_future"}),
    Case("v11_iat_6s_ahead", lambda k, o: forge(k, payload={"iat": NOW + 6}), {"iat_in_future"}),
    # V-12: ath and key binding.
    Case(
        "v12_ath_other_token",
        lambda k, o: forge(k, payload={"ath": OTHER_ATH}),
        {"ath_mismatch"},
        token=TOKEN,
    ),
    Case("v12_ath_missing", lambda k, o: forge(k), {"missing_claim"}, token=TOKEN),
    Case("v12_ath_not_string", lambda k, o: forge(k, payload={"ath": 5}), {"bad_claim"}),
    Case(
        "v12_jkt_with_unusable_jwk",
        lambda k, o: forge(k, header={"alg": "ES384"}),
        {"bad_jwk"},
        args=("--jkt", "x"),
    ),
    Case("v12_jkt_mismatch", lambda k, o: forge(k), {"jkt_mismatch"}, args=("--jkt", "other")),
    # Several failures at once: all of them are reported.
    Case(
        "many_claim_failures",
        lambda k, o: forge(
            k, payload={"htm": "POST", "htu": HTU + "/x", "iat": NOW - 3600, "ath": OTHER_ATH}
        ),
        {"htm_mismatch", "htu_mismatch", "iat_too_old", "ath_mismatch"},
        token=TOKEN,
    ),
    Case(
        "header_claims_and_signature",
        lambda k, o: forge(k, header={"typ": "JWT"}, drop=("jti",), signer=o),
        {"bad_typ", "missing_claim", "bad_signature"},
    ),
]


def _pad(proof: str) -> str:
    head, rest = proof.split(".", 1)
    return head + "==." + rest


def _swap_payload(proof: str, payload: str) -> str:
    head, _, sig = proof.split(".")
    return f"{head}.{_b64json(payload)}.{sig}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_v14_invalid_proof_reports_every_failure_and_agrees_with_verify_proof(
    case: Case, key: DPoPKey, other: DPoPKey, capsys: pytest.CaptureFixture[str]
) -> None:
    proof = case.build(key, other)
    extra = list(case.args)
    if case.token is not None:
        extra += ["--access-token", case.token]
    result = inspect(capsys, proof, *extra)
    assert result.code == 1
    data = result.json()
    assert data["valid"] is False
    assert failing(data) == case.reasons
    assert [c["id"] for c in data["checks"]] == CHECK_IDS == list(CHECKS)
    # The verdict agrees with the core, whose (first) reason is among those reported.
    jkt = case.args[1] if case.args[:1] == ("--jkt",) else None
    with pytest.raises(DPoPError) as exc:
        verify_proof(proof, htm="GET", htu=HTU, access_token=case.token, expected_jkt=jkt, now=NOW)
    assert exc.value.reason.value in case.reasons
    assert data["verify_proof"] == {
        "valid": False,
        "reason": exc.value.reason.value,
        "agrees": True,
    }


@pytest.mark.parametrize("alg", ["ES256", "ES512", "Ed25519", "PS256", "RS256"])
def test_v6_valid_proof_every_check_passes(alg: str, capsys: pytest.CaptureFixture[str]) -> None:
    key = DPoPKey.generate(alg)
    proof = forge(key, payload={"ath": access_token_hash(TOKEN)})
    result = inspect(capsys, proof, "--access-token", TOKEN, f"--jkt={key.jkt}")
    assert result.code == 0, result.out
    data = result.json()
    assert data["valid"] is True
    assert data["verify_proof"] == {"valid": True, "reason": None, "agrees": True}
    statuses = {c["id"]: c["status"] for c in data["checks"]}
    assert statuses == {i: "skipped" if i == "nonce" else "pass" for i in CHECK_IDS}
    assert data["jkt"] == key.jkt
    assert data["payload"]["htu"] == HTU
    assert data["header"]["alg"] == alg


def test_v13_htu_normalised_and_typ_media_type_accepted(
    key: DPoPKey, capsys: pytest.CaptureFixture[str]
) -> None:
    """V-4 (application/dpop+jwt), V-9 (query ignored), V-13 (RFC 3986 normalisation)."""
    proof = forge(
        key,
        header={"typ": "application/DPoP+JWT"},
        payload={"htu": "HTTPS://API.example:443/./items"},
    )
    result = run(
        capsys, "inspect", proof, "--method", "GET", "--url", HTU + "?page=2#x", "--now", str(NOW)
    )
    assert result.code == 0


def test_skipped_checks_without_inputs(key: DPoPKey, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --method/--url/--access-token/--jkt those checks are skipped, not passed."""
    result = run(capsys, "inspect", forge(key), "--now", str(NOW), "--json")
    assert result.code == 0
    data = result.json()
    for check_id in ("htm", "htu", "nonce", "ath", "jkt"):
        assert status(data, check_id) == "skipped"
    assert status(data, "signature") == "pass"


def test_v2_malformed_skips_dependent_checks(capsys: pytest.CaptureFixture[str]) -> None:
    data = inspect(capsys, "abc.def").json()
    assert data["header"] is None
    assert data["payload"] is None
    assert status(data, "single") == "pass"
    for check_id in CHECK_IDS[2:]:
        assert status(data, check_id) == "skipped", check_id


def test_v11_now_accepts_iso_8601(key: DPoPKey, capsys: pytest.CaptureFixture[str]) -> None:
    proof = forge(key)
    assert run(capsys, "inspect", proof, "--now", "2023-11-14T22:13:20Z").code == 0
    assert run(capsys, "inspect", proof, "--now", "2023-11-14T22:15:00+00:00").code == 1


def test_v11_now_defaults_to_the_wall_clock(
    key: DPoPKey, capsys: pytest.CaptureFixture[str]
) -> None:
    data = run(capsys, "inspect", forge(key), "--json").json()
    assert failing(data) == {"iat_too_old"}  # NOW lies in 2023


def test_v6_rfc9449_figure_13_proof_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """The RFC 9449 §7.1 Figure 13 proof verifies with the clock pinned to its iat."""
    result = run(
        capsys,
        "inspect",
        FIG13,
        "--method",
        "GET",
        "--url",
        "https://resource.example.org/protectedresource",
        "--access-token",
        TOKEN,
        "--jkt",
        "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
        "--now",
        "1562262618",
        "--json",
    )
    assert result.code == 0
    assert result.json()["jkt"] == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


FIG13 = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNo"
    "UklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERW"
    "clUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1"
    "IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwi"
    "YXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey7"
    "1EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
)


# -- nonces (V-10) ---------------------------------------------------------------------------


@pytest.fixture
def nonce_env(monkeypatch: pytest.MonkeyPatch) -> NonceIssuer:
    monkeypatch.setenv("DPOP_NONCE_SECRET", NONCE_SECRET)
    return NonceIssuer([NONCE_SECRET], context="rs")


def _nonce_args() -> tuple[str, ...]:
    return ("--nonce-secret-env", "DPOP_NONCE_SECRET", "--nonce-context", "rs")


def test_v10_valid_nonce_passes(
    key: DPoPKey, nonce_env: NonceIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    proof = forge(key, payload={"nonce": nonce_env.issue(now=NOW)})
    result = inspect(capsys, proof, *_nonce_args())
    assert result.code == 0
    assert status(result.json(), "nonce") == "pass"


def test_v10_nonce_of_another_context_rejected(
    key: DPoPKey, nonce_env: NonceIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = NonceIssuer([NONCE_SECRET], context="as").issue(now=NOW)
    data = inspect(capsys, forge(key, payload={"nonce": wrong}), *_nonce_args()).json()
    assert failing(data) == {Reason.NONCE_MISMATCH.value}
    assert data["verify_proof"]["agrees"] is True


def test_v10_missing_nonce_when_checking_nonces(
    key: DPoPKey, nonce_env: NonceIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    result = inspect(capsys, forge(key), *_nonce_args())
    assert result.code == 1
    assert failing(result.json()) == {Reason.NONCE_REQUIRED.value}


def test_v11_valid_nonce_carries_freshness(
    key: DPoPKey, nonce_env: NonceIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    """SEC-6: a client with a wrong clock is accepted when its server nonce is valid."""
    proof = forge(key, payload={"nonce": nonce_env.issue(now=NOW), "iat": NOW - 3600})
    result = inspect(capsys, proof, *_nonce_args())
    assert result.code == 0
    assert status(result.json(), "iat") == "pass"


def test_v11_stale_iat_and_bad_nonce_both_reported(
    key: DPoPKey, nonce_env: NonceIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    proof = forge(key, payload={"nonce": "x" * 32, "iat": NOW - 3600})
    data = inspect(capsys, proof, *_nonce_args()).json()
    assert failing(data) == {"nonce_mismatch", "iat_too_old"}
    assert data["verify_proof"]["agrees"] is True


# -- agreement under tampering ----------------------------------------------------------------


def test_v14_any_tampered_character_agrees_with_verify_proof(key: DPoPKey) -> None:
    """Flip characters all over a proof: the inspector and verify_proof always agree."""
    proof = forge(key, payload={"ath": access_token_hash(TOKEN)})
    for index in range(0, len(proof), 3):
        if proof[index] == ".":
            continue
        tampered = proof[:index] + ("A" if proof[index] != "A" else "B") + proof[index + 1 :]
        result = inspect_proof(tampered, htm="GET", htu=HTU, access_token=TOKEN, now=NOW)
        assert result.agrees, (index, result.core_reason, [c.reason for c in result.failed])
        reason = _core_reason(tampered)
        if reason is None:
            assert result.valid
        else:
            assert not result.valid
            assert reason in {c.reason for c in result.failed}


def _core_reason(proof: str) -> str | None:
    try:
        verify_proof(proof, htm="GET", htu=HTU, access_token=TOKEN, now=NOW)
    except DPoPError as exc:
        return exc.reason.value
    return None


# -- input and usage -----------------------------------------------------------------------


def test_proof_from_stdin(
    key: DPoPKey, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("DPoP: " + forge(key) + "\n"))
    result = run(capsys, "inspect", "-", "--now", str(NOW), "--json")
    assert result.code == 0
    assert json.loads(result.out)["valid"] is True


def test_text_output_one_line_per_check(key: DPoPKey, capsys: pytest.CaptureFixture[str]) -> None:
    proof = forge(key, payload={"htm": "POST", "iat": NOW - 3600})
    result = run(capsys, "inspect", proof, "--method", "GET", "--url", HTU, "--now", str(NOW))
    assert result.code == 1
    lines = [ln for ln in result.out.splitlines() if ln[:7] in ("  pass ", "  FAIL ", "  skip ")]
    assert len(lines) == len(CHECK_IDS)
    assert sum(ln.startswith("  FAIL ") for ln in lines) == 2
    assert "[htm_mismatch]" in result.out
    assert "[iat_too_old]" in result.out


@pytest.mark.parametrize(
    "argv",
    [
        ("--url", "ftp://api.example/items"),
        ("--now", "yesterday"),
        ("--now", "nan"),
        ("--nonce-secret-env", "DPOPKIT_TEST_UNSET_VARIABLE"),
        ("--nonce-secret-env", "DPOPKIT_TEST_SHORT_SECRET"),
    ],
)
def test_usage_errors_exit_2(
    argv: tuple[str, ...],
    key: DPoPKey,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DPOPKIT_TEST_UNSET_VARIABLE", raising=False)
    monkeypatch.setenv("DPOPKIT_TEST_SHORT_SECRET", "short")
    assert_one_line_error(run(capsys, "inspect", forge(key), *argv), "inspect")


def test_empty_proof_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(run(capsys, "inspect", "  "), "inspect")


def test_missing_proof_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(capsys, "inspect")
    assert exc.value.code == 2


def test_values_starting_with_dash_use_the_equals_form(
    key: DPoPKey, capsys: pytest.CaptureFixture[str]
) -> None:
    """A jkt, token or nonce may start with "-" (base64url): ``--jkt=-...`` must work."""
    proof = forge(key, payload={"ath": access_token_hash("-token")})
    result = inspect(capsys, proof, "--jkt=-not-the-key", "--access-token=-token")
    assert result.code == 1
    assert failing(result.json()) == {"jkt_mismatch"}


def test_v3_nonce_not_string_with_nonce_check(
    key: DPoPKey, nonce_env: NonceIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    data = inspect(capsys, forge(key, payload={"nonce": 7}), *_nonce_args()).json()
    assert failing(data) == {"bad_claim"}
    assert status(data, "nonce") == "skipped"
    assert data["verify_proof"]["agrees"] is True


def test_v11_now_naive_iso_is_utc(key: DPoPKey, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "inspect", forge(key), "--now", "2023-11-14T22:13:20").code == 0


def test_text_output_of_undecodable_proof(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "inspect", "abc.def.ghi", "--now", str(NOW))
    assert result.code == 1
    assert "header:" not in result.out
    assert "[malformed]" in result.out


def test_stdin_too_large_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a" * (1024 * 1024 + 1)))
    assert_one_line_error(run(capsys, "inspect", "-"), "inspect")
