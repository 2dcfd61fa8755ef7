"""DPoP keys in a TPM 2.0 (a real swtpm started for the session): signing, public key, errors.

Every signature here is made by the TPM simulator through tpm2-pytss; nothing is mocked.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import pytest

from tests.conftest import IN_CI

if importlib.util.find_spec("tpm2_pytss") is None:
    # dpopkit[tpm] builds against libtss2, so it is not in ``test``: .ci/run installs it.
    if IN_CI:
        raise ImportError("tpm2-pytss is not installed: CI=true requires pip install '.[tpm]'")
    pytest.skip(
        "!!! SKIPPED: tpm2-pytss is not installed (pip install '.[tpm]', needs libtss2-dev) !!!",
        allow_module_level=True,
    )

from dpopkit.signers import SignerError, load_key_reference, load_public_jwk_reference
from dpopkit.signers.tpm import generate_tpm_key, open_tpm_key, parse_tpm_reference
from tests.signers._verify import check_proof_verifies
from tests.signers.devices import SwTPM, run_swtpm


def test_c23_key_made_in_the_tpm_signs_proofs_that_verify(swtpm: SwTPM) -> None:
    """C-23: a P-256 key made in the TPM signs proofs verify_proof and joserfc accept.

    TPM2_Sign returns (r, s); they become the fixed-length R||S of RFC 7518 §3.4.
    """
    reference = swtpm.new_reference()
    made = generate_tpm_key(reference)
    assert (made.alg, made.is_exportable) == ("ES256", False)
    for _ in range(20):  # some signatures have short r or s: the padding must hold
        check_proof_verifies(made)
    again = load_key_reference(reference)
    assert again.jkt == made.jkt
    assert load_public_jwk_reference(reference) == made.public_jwk


def test_c23_the_tpm_key_is_bound_to_the_tpm(swtpm: SwTPM) -> None:
    """C-23: the TPM made the key (sensitiveDataOrigin) and will not let it leave.

    fixedTPM and fixedParent, as the TPM itself reports them (TPM2_ReadPublic), forbid
    duplication (TPM 2.0 Part 1 §27.2); TPM2_Duplicate is refused.
    """
    from tpm2_pytss import ESAPI, TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CC, TPM2_SE, TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_DATA, TPMT_SYM_DEF, TPMT_SYM_DEF_OBJECT

    reference = swtpm.new_reference()
    generate_tpm_key(reference)
    handle, tcti = parse_tpm_reference(reference)
    esapi = ESAPI(tcti)
    try:
        key = esapi.tr_from_tpmpublic(handle)
        public, _, _ = esapi.read_public(key)
        attrs = public.publicArea.objectAttributes
        for flag in ("FIXEDTPM", "FIXEDPARENT", "SENSITIVEDATAORIGIN", "SIGN_ENCRYPT"):
            assert attrs & getattr(TPMA_OBJECT, flag), flag
        assert not attrs & TPMA_OBJECT.ENCRYPTEDDUPLICATION
        session = esapi.start_auth_session(
            ESYS_TR.NONE,
            ESYS_TR.NONE,
            TPM2_SE.POLICY,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            TPM2_ALG.SHA256,
        )
        try:
            esapi.policy_command_code(session, TPM2_CC.Duplicate)
            with pytest.raises(TSS2_Exception):
                esapi.duplicate(
                    key,
                    ESYS_TR.RH_NULL,
                    TPM2B_DATA(),
                    TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
                    session1=session,
                )
        finally:
            esapi.flush_context(session)
    finally:
        esapi.close()


def test_c23_one_tpm_key_signs_from_many_threads(swtpm: SwTPM) -> None:
    """C-23: the ESAPI context is locked around TPM2_Sign: concurrent proofs all verify."""
    key = generate_tpm_key(swtpm.new_reference())
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                check_proof_verifies(key)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_c23_an_occupied_handle_is_never_overwritten(swtpm: SwTPM) -> None:
    """C-23: generating at a handle in use is key_exists; the old key still signs."""
    reference = swtpm.new_reference()
    first = generate_tpm_key(reference)
    with pytest.raises(SignerError) as caught:
        generate_tpm_key(reference)
    assert caught.value.reason == "key_exists"
    assert open_tpm_key(reference).jkt == first.jkt


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda t: t.new_reference(), "key_not_found"),
        (lambda t: "tpm:0x81010005?tcti=swtpm:host=127.0.0.1,port=1", "token_not_present"),
        (lambda t: "tpm:0x80000001", "bad_reference"),
        (lambda t: "tpm:owner", "bad_reference"),
        (lambda t: f"tpm:0x81010001?tcti={t.tcti}&pin=1", "bad_reference"),
    ],
    ids=["no-key", "no-tpm", "transient-handle", "not-a-handle", "unknown-attr"],
)
def test_c23_each_wrong_tpm_reference_is_one_typed_error(
    swtpm: SwTPM, make: object, reason: str
) -> None:
    """C-23: no key at the handle, no TPM, a bad handle: a SignerError with its reason."""
    with pytest.raises(SignerError) as caught:
        load_key_reference(make(swtpm))  # type: ignore[operator]
    assert caught.value.reason == reason
    assert "\n" not in str(caught.value)


def test_c23_tcti_from_the_environment(swtpm: SwTPM, monkeypatch: pytest.MonkeyPatch) -> None:
    """C-23: without ?tcti= the TPM is the one DPOPKIT_TPM_TCTI names."""
    reference = swtpm.new_reference()
    made = generate_tpm_key(reference)
    monkeypatch.setenv("DPOPKIT_TPM_TCTI", swtpm.tcti)
    assert open_tpm_key(reference.partition("?")[0]).jkt == made.jkt


def test_c23_a_tpm_gone_mid_use_is_one_typed_error(tmp_path: Path) -> None:
    """C-23: signing after the TPM went away is token_not_present, one line, no traceback."""
    with run_swtpm(tmp_path / "state") as tpm:
        key = generate_tpm_key(tpm.new_reference())
        check_proof_verifies(key)
    with pytest.raises(SignerError) as caught:
        key.sign(b"after")
    assert caught.value.reason == "token_not_present"
    assert "\n" not in str(caught.value)
