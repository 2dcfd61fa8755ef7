"""DPoP keys in a real SoftHSM 2 token: signing, public key, non-extractability, errors.

Every signature here is made by SoftHSM through PKCS#11; nothing is mocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pkcs11
import pytest

from dpopkit import DPoPKey
from dpopkit.signers import SignerError, load_key_reference, load_public_jwk_reference
from dpopkit.signers.pkcs11 import (
    PIN_ENV,
    Pkcs11Signer,
    Pkcs11Uri,
    generate_pkcs11_key,
    open_pkcs11_key,
)
from tests.signers._verify import check_proof_verifies
from tests.signers.devices import USER_PIN, SoftHSM, init_softhsm


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "PS256", "RS256", "PS384"])
def test_c23_key_made_in_the_token_signs_proofs_that_verify(softhsm: SoftHSM, alg: str) -> None:
    """C-23: a key generated in the token signs proofs verify_proof and joserfc accept.

    ECDSA goes through CKM_ECDSA over our own digest, whose output is already the raw
    R||S of RFC 7518 §3.4; RSA through CKM_RSA_PKCS_PSS or CKM_RSA_PKCS with DigestInfo.
    """
    uri = softhsm.uri(softhsm.new_label(alg))
    made = generate_pkcs11_key(uri, alg=alg, pin=USER_PIN)
    assert not made.is_exportable
    check_proof_verifies(made)
    again = open_pkcs11_key(uri, pin=USER_PIN, alg=alg)
    assert (again.jkt, again.alg) == (made.jkt, alg)
    check_proof_verifies(again)


def test_c23_public_jwk_and_thumbprint_come_from_the_token(softhsm: SoftHSM) -> None:
    """C-23: the public JWK is read from the token's public key object, with or without a PIN."""
    uri = softhsm.uri(softhsm.new_label("pub"))
    key = generate_pkcs11_key(uri, alg="ES256", pin=USER_PIN)
    assert load_public_jwk_reference(uri) == key.public_jwk  # no PIN: public objects only
    assert load_public_jwk_reference(uri, password=USER_PIN) == key.public_jwk
    lib = pkcs11.lib(softhsm.module)
    with lib.get_token(token_label="dpop").open() as session:
        public = session.get_key(
            object_class=pkcs11.ObjectClass.PUBLIC_KEY, label=uri.split("object=")[1].split("?")[0]
        )
        point = bytes(public[pkcs11.Attribute.EC_POINT])
    assert point.endswith(b"\x04" + _b64(key.public_jwk["x"]) + _b64(key.public_jwk["y"]))


def _b64(text: str) -> bytes:
    from dpopkit.core.jws import b64url_decode

    return b64url_decode(text)


def test_c23_the_token_refuses_to_export_the_private_key(softhsm: SoftHSM) -> None:
    """C-23: the private key is sensitive and never extractable: the token refuses to reveal it.

    Reading the private value fails (CKR_ATTRIBUTE_SENSITIVE) and wrapping it out under a
    key of our own fails (CKR_KEY_UNEXTRACTABLE), PKCS#11 v2.40 §4.9.
    """
    label = softhsm.new_label("noexport")
    for alg in ("ES256", "PS256"):
        generate_pkcs11_key(softhsm.uri(f"{label}-{alg}"), alg=alg, pin=USER_PIN)
    lib = pkcs11.lib(softhsm.module)
    # The dpopkit session logged the token in already; this one shares that login.
    with lib.get_token(token_label="dpop").open(rw=True) as session:
        wrapper: Any = session.generate_key(
            pkcs11.KeyType.AES, 256, template={pkcs11.Attribute.WRAP: True}
        )
        for alg, secret in (("ES256", "VALUE"), ("PS256", "PRIVATE_EXPONENT")):
            private = session.get_key(
                object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=f"{label}-{alg}"
            )
            assert private[pkcs11.Attribute.EXTRACTABLE] is False
            assert private[pkcs11.Attribute.NEVER_EXTRACTABLE] is True
            assert private[pkcs11.Attribute.SENSITIVE] is True
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                private[getattr(pkcs11.Attribute, secret)]
            with pytest.raises(pkcs11.exceptions.KeyUnextractable):
                wrapper.wrap_key(private, mechanism=pkcs11.Mechanism.AES_KEY_WRAP_PAD)
    key = open_pkcs11_key(softhsm.uri(f"{label}-ES256"), pin=USER_PIN)
    with pytest.raises(ValueError):
        key.private_jwk()


def test_c23_one_key_signs_from_many_threads(softhsm: SoftHSM) -> None:
    """C-23: the shared session is locked around C_Sign: concurrent proofs all verify."""
    key = generate_pkcs11_key(softhsm.uri(softhsm.new_label("threads")), pin=USER_PIN)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                check_proof_verifies(key)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_c23_keys_of_one_token_share_one_session(softhsm: SoftHSM) -> None:
    """C-23: opening keys of one token reuses its logged-in session (no login per key)."""
    uri_a = softhsm.uri(softhsm.new_label("share"))
    uri_b = softhsm.uri(softhsm.new_label("share"))
    generate_pkcs11_key(uri_a, pin=USER_PIN)
    generate_pkcs11_key(uri_b, pin=USER_PIN)
    a = Pkcs11Signer.open(uri_a, pin=USER_PIN)
    b = Pkcs11Signer.open(uri_b, pin=USER_PIN)
    assert a._shared is b._shared
    assert DPoPKey.from_signer(a).jkt != DPoPKey.from_signer(b).jkt


def test_c23_pin_from_a_file_or_the_environment(
    softhsm: SoftHSM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C-23: the PIN comes from pin-source=file: (RFC 7512 §2.3) or an environment variable."""
    label = softhsm.new_label("pin")
    made = generate_pkcs11_key(softhsm.uri(label), pin=USER_PIN)
    pin_file = tmp_path / "pin"
    pin_file.write_text(USER_PIN + "\n", encoding="utf-8")
    from_file = load_key_reference(softhsm.uri(label, query=f"pin-source=file:{pin_file}"))
    assert from_file.jkt == made.jkt
    monkeypatch.setenv(PIN_ENV, USER_PIN)
    assert load_key_reference(softhsm.uri(label)).jkt == made.jkt


@pytest.mark.parametrize(
    ("uri_of", "reason"),
    [
        (lambda h, lab: h.uri(lab, token="absent"), "token_not_present"),
        (lambda h, lab: h.uri("no-such-key"), "key_not_found"),
        (lambda h, lab: h.uri(lab, query="pin-value=1234"), "bad_reference"),
        (lambda h, lab: h.uri(lab, query="pin-source=file:/nonexistent/pin"), "pin_missing"),
        (lambda h, lab: h.uri(lab) + "&colour=blue", "bad_reference"),
        (lambda h, lab: h.uri(lab).replace(h.module, "/nonexistent/libp11.so"), "module_not_found"),
        (lambda h, lab: "pkcs11:token=dpop", "bad_reference"),
    ],
    ids=[
        "no-token",
        "no-key",
        "pin-value",
        "pin-file-missing",
        "unknown-attr",
        "no-module",
        "no-object",
    ],
)
def test_c23_each_wrong_reference_is_one_typed_error(
    softhsm: SoftHSM, uri_of: object, reason: str
) -> None:
    """C-23: a missing token, key, module or PIN source is a SignerError with its reason."""
    label = softhsm.new_label("err")
    generate_pkcs11_key(softhsm.uri(label), pin=USER_PIN)
    uri = uri_of(softhsm, label)  # type: ignore[operator]
    with pytest.raises(SignerError) as caught:
        load_key_reference(uri, password=USER_PIN)
    assert caught.value.reason == reason
    assert "\n" not in str(caught.value)
    assert USER_PIN not in str(caught.value)


def test_c23_wrong_pin_is_refused_even_while_the_token_is_logged_in(softhsm: SoftHSM) -> None:
    """C-23: a wrong PIN is pin_incorrect, though an open session is logged in already."""
    label = softhsm.new_label("wrongpin")
    key = generate_pkcs11_key(softhsm.uri(label), pin=USER_PIN)
    with pytest.raises(SignerError) as caught:
        load_key_reference(softhsm.uri(label), password="0000")
    assert caught.value.reason == "pin_incorrect"
    check_proof_verifies(key)  # the key opened with the right PIN logs in again and signs
    assert load_key_reference(softhsm.uri(label), password=USER_PIN).jkt == key.jkt


def test_c23_generation_never_overwrites_a_key(softhsm: SoftHSM) -> None:
    """C-23: generating at a label that exists is key_exists; the old key still signs."""
    uri = softhsm.uri(softhsm.new_label("exists"))
    first = generate_pkcs11_key(uri, pin=USER_PIN)
    with pytest.raises(SignerError) as caught:
        generate_pkcs11_key(uri, pin=USER_PIN)
    assert caught.value.reason == "key_exists"
    assert open_pkcs11_key(uri, pin=USER_PIN).jkt == first.jkt


REMOVED = """
import subprocess, sys
from dpopkit.signers import SignerError
from dpopkit.signers.pkcs11 import generate_pkcs11_key
key = generate_pkcs11_key(sys.argv[1], pin=sys.argv[2])
key.sign(b"before")
subprocess.run(["softhsm2-util", "--delete-token", "--token", "gone"], check=True,
               capture_output=True)
try:
    key.sign(b"after")
except SignerError as exc:
    print(exc.reason, str(exc).count("\\n"))
else:
    print("signed")
"""


def test_c23_a_removed_token_is_one_typed_error(tmp_path: Path) -> None:
    """C-23: signing after the token went away is token_not_present, one line, no traceback.

    Runs in its own process and SoftHSM directory: SoftHSM reads its slots once per process.
    """
    hsm = init_softhsm(tmp_path, tokens=("gone",))
    run = subprocess.run(
        [sys.executable, "-c", REMOVED, hsm.uri("k", token="gone"), USER_PIN],
        capture_output=True,
        text=True,
        env={**os.environ, "SOFTHSM2_CONF": str(hsm.conf)},
        timeout=60,
    )
    assert run.stdout.split() == ["token_not_present", "0"], run.stderr[-2000:]


def test_c23_uri_parsing_follows_rfc7512() -> None:
    """C-23: percent-encoded labels and ids, x- attributes ignored (RFC 7512 §2.3)."""
    parsed = Pkcs11Uri.parse(
        "pkcs11:token=My%20Token;object=a%3Bb;id=%01%02;x-vendor=1?module-path=/m.so"
    )
    assert parsed.path == {"token": "My Token", "object": "a;b"}
    assert parsed.id == b"\x01\x02"
    assert parsed.module_path == "/m.so"


def test_c23_a_uri_without_token_picks_the_one_initialised_token(tmp_path: Path) -> None:
    """C-23: a URI naming no token finds the only initialised one (empty slots do not count).

    Its own process and SoftHSM directory: SoftHSM reads its slots once per process.
    """
    hsm = init_softhsm(tmp_path, tokens=("only",))
    code = (
        "import sys\n"
        "from dpopkit.signers.pkcs11 import generate_pkcs11_key\n"
        "print(generate_pkcs11_key(sys.argv[1], pin=sys.argv[2]).alg)\n"
    )
    uri = f"pkcs11:object=anywhere?module-path={hsm.module}"
    run = subprocess.run(
        [sys.executable, "-c", code, uri, USER_PIN],
        capture_output=True,
        text=True,
        env={**os.environ, "SOFTHSM2_CONF": str(hsm.conf)},
        timeout=60,
    )
    assert run.stdout.split() == ["ES256"], run.stderr[-2000:]
