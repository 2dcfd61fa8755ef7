"""``dpopkit inspect`` explains the optional-claim checks: ``exp``/``nbf`` and an empty nonce."""

from __future__ import annotations

from typing import Any

import pytest

from dpopkit import DPoPKey, NonceIssuer
from dpopkit.cli.inspector import inspect_proof
from dpopkit.errors import Reason

from .helpers import HTU, NOW, Run, forge, run

SECRET_TEXT = "bm9uY2Utc2VjcmV0LWZvci1pbnNwZWN0LXRlc3RzLTAxMjM0NTY3ODk"  # base64url, 41 bytes
ARGS = ("--method", "GET", "--url", HTU, "--now", str(NOW), "--json")


@pytest.fixture(scope="module")
def key() -> DPoPKey:
    return DPoPKey.generate("ES256")


def check(result: Run, check_id: str) -> dict[str, Any]:
    (found,) = [c for c in result.json()["checks"] if c["id"] == check_id]
    assert isinstance(found, dict)
    return found


@pytest.mark.parametrize(
    ("claims", "status", "reason"),
    [
        ({}, "pass", None),
        ({"exp": NOW + 60}, "pass", None),
        ({"nbf": NOW - 60, "exp": NOW + 60}, "pass", None),
        ({"exp": NOW - 5}, "fail", Reason.EXP_IN_PAST),
        ({"exp": 1}, "fail", Reason.EXP_IN_PAST),
        ({"nbf": NOW + 6}, "fail", Reason.NBF_IN_FUTURE),
        ({"exp": NOW - 60, "nbf": NOW + 60}, "fail", Reason.EXP_IN_PAST),
        ({"exp": "soon"}, "skipped", None),
        ({"nbf": None}, "skipped", None),
    ],
)
def test_hd14_inspect_explains_exp_and_nbf(
    key: DPoPKey,
    capsys: pytest.CaptureFixture[str],
    claims: dict[str, Any],
    status: str,
    reason: Reason | None,
) -> None:
    """HD-14: the (11) ``exp_nbf`` check passes, fails with exp_in_past / nbf_in_future, or
    leaves a badly typed claim to the ``claims`` check (bad_claim); verify_proof agrees."""
    result = run(capsys, "inspect", forge(key, payload=claims), *ARGS)
    found = check(result, "exp_nbf")
    assert found["status"] == status
    assert found["reason"] == (reason.value if reason is not None else None)
    data = result.json()
    assert data["verify_proof"]["agrees"] is True
    if status == "skipped":
        assert check(result, "claims")["reason"] == Reason.BAD_CLAIM.value
    assert result.code == (0 if status == "pass" else 1)
    assert data["verify_proof"]["reason"] == (
        None if status == "pass" else (reason or Reason.BAD_CLAIM).value
    )


def test_hd14_inspect_text_names_the_expiry(
    key: DPoPKey, capsys: pytest.CaptureFixture[str]
) -> None:
    """HD-14: the text output prints the check line with its reason code."""
    proof = forge(key, payload={"exp": NOW - 3600})
    result = run(capsys, "inspect", proof, "--now", str(NOW))
    assert result.code == 1
    (line,) = [ln for ln in result.out.splitlines() if " exp_nbf " in ln]
    assert line.startswith("  FAIL  (11)")
    assert "[exp_in_past]" in line


@pytest.mark.parametrize("require", [True, False])
def test_hd15_inspect_empty_nonce_is_a_wrong_nonce(key: DPoPKey, require: bool) -> None:
    """HD-15: with the server's nonce secret an empty nonce fails the (10) nonce check as
    nonce_mismatch (not a malformed claim), like verify_proof's use_dpop_nonce."""
    issuer = NonceIssuer([SECRET_TEXT], context="rs")
    result = inspect_proof(
        forge(key, payload={"nonce": ""}),
        htm="GET",
        htu=HTU,
        now=NOW,
        nonce_issuer=issuer,
        policy=None if require else _optional_nonce_policy(),
    )
    by_id = {c.id: c for c in result.checks}
    assert by_id["claims"].status == "pass"
    assert by_id["nonce"].reason == Reason.NONCE_MISMATCH.value
    assert result.core_reason == Reason.NONCE_MISMATCH.value
    assert result.agrees


def test_hd15_inspect_cli_empty_nonce(
    key: DPoPKey, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HD-15: the same through ``dpopkit inspect --nonce-secret-env``."""
    monkeypatch.setenv("DPOPKIT_TEST_NONCE_SECRET", SECRET_TEXT)
    result = run(
        capsys,
        "inspect",
        forge(key, payload={"nonce": ""}),
        *ARGS,
        "--nonce-secret-env",
        "DPOPKIT_TEST_NONCE_SECRET",
    )
    assert result.code == 1
    assert check(result, "nonce")["reason"] == Reason.NONCE_MISMATCH.value
    assert check(result, "claims")["status"] == "pass"


def _optional_nonce_policy() -> Any:
    from dpopkit import ProofPolicy

    return ProofPolicy(require_nonce=False)
