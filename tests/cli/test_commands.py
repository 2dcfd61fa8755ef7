"""``dpopkit keygen``, ``thumbprint`` and ``proof``.

Checklist: C-23 (key files 0600, the private key printed only when asked),
G-1 (``http://`` needs an explicit insecure flag), P-* (the printed proof
verifies with ``verify_proof``), X-4 (jkt of the private and public key agree).
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from dpopkit import ALGORITHMS, DPoPKey, access_token_hash, jwk_thumbprint, verify_proof
from dpopkit.core.jws import b64url_decode, json_loads_object
from dpopkit.keyfile import load_key

from .helpers import HTU, TOKEN, assert_one_line_error, run


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def payload_of(proof: str) -> dict[str, object]:
    return json_loads_object(b64url_decode(proof.split(".")[1]))


# -- keygen ----------------------------------------------------------------------------------


def test_c23_keygen_prints_private_jwk_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "keygen")
    assert result.code == 0
    jwk = json.loads(result.out)
    assert jwk["kty"] == "EC"
    assert jwk["alg"] == "ES256"
    assert "d" in jwk
    assert DPoPKey.from_jwk(jwk).jkt == jwk_thumbprint(jwk)
    assert len(result.err.splitlines()) == 1  # a note on stderr, never mixed into the key


@pytest.mark.parametrize("alg", ["ES384", "Ed25519", "RS256"])
def test_keygen_alg(alg: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "keygen", "--alg", alg)
    assert result.code == 0
    assert DPoPKey.from_jwk(result.out).alg == alg


def test_keygen_unknown_alg_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(capsys, "keygen", "--alg", "HS256")
    assert exc.value.code == 2


def test_c23_keygen_out_writes_0600_and_prints_public_facts(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = os.umask(0)
    try:
        result = run(capsys, "keygen", "--out", "key.json")
    finally:
        os.umask(old)
    assert result.code == 0
    path = in_tmp / "key.json"
    assert mode(path) == 0o600
    key = load_key(path)
    lines = result.out.splitlines()
    assert lines[0] == f"jkt: {key.jkt}"
    assert lines[1].startswith("public_jwk: ")
    public = json.loads(lines[1].removeprefix("public_jwk: "))
    assert public == key.public_jwk
    assert '"d"' not in result.out
    assert key.private_jwk()["d"] not in result.out + result.err


def test_keygen_refuses_to_overwrite_without_force(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = in_tmp / "key.json"
    path.write_text("precious")
    assert_one_line_error(run(capsys, "keygen", "--out", "key.json"), "keygen")
    assert path.read_text() == "precious"
    assert run(capsys, "keygen", "--out", "key.json", "--force").code == 0
    assert mode(path) == 0o600
    assert load_key(path).alg == "ES256"


def test_keygen_into_missing_directory_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(run(capsys, "keygen", "--out", "no/such/dir/key.json"), "keygen")


def test_c23_keygen_encrypted_pem(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEY_PASSWORD", "s3cret pass")
    result = run(
        capsys,
        "keygen",
        "--out",
        "key.pem",
        "--format",
        "pem",
        "--password-env",
        "KEY_PASSWORD",
    )
    assert result.code == 0
    data = (in_tmp / "key.pem").read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert mode(in_tmp / "key.pem") == 0o600
    assert load_key(in_tmp / "key.pem", password="s3cret pass").jkt in result.out


def test_keygen_pem_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "keygen", "--format", "pem")
    assert result.code == 0
    key = serialization.load_pem_private_key(result.out.encode(), password=None)
    assert key.public_key() is not None


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (("--password-env", "KEY_PASSWORD"), {"KEY_PASSWORD": "x"}),  # a JWK cannot be encrypted
        (("--format", "pem", "--password-env", "KEY_PASSWORD"), {}),  # variable not set
        (("--format", "pem", "--password-env", "KEY_PASSWORD"), {"KEY_PASSWORD": ""}),
    ],
)
def test_keygen_password_usage_errors(
    argv: tuple[str, ...],
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEY_PASSWORD", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert_one_line_error(run(capsys, "keygen", *argv), "keygen")


# -- thumbprint ----------------------------------------------------------------------------


def test_x4_thumbprint_of_private_and_public_files(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = DPoPKey.generate("Ed25519")
    (in_tmp / "private.json").write_text(json.dumps(key.private_jwk()))
    (in_tmp / "public.json").write_text(json.dumps(key.public_jwk))
    (in_tmp / "private.pem").write_bytes(key.to_pem())
    for name in ("private.json", "public.json", "private.pem"):
        result = run(capsys, "thumbprint", name)
        assert result.code == 0
        assert result.out == key.jkt + "\n"


def test_thumbprint_of_encrypted_pem_needs_password(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = DPoPKey.generate()
    (in_tmp / "k.pem").write_bytes(key.to_pem(password="pw"))
    assert_one_line_error(run(capsys, "thumbprint", "k.pem"), "thumbprint")
    monkeypatch.setenv("PW", "pw")
    assert run(capsys, "thumbprint", "k.pem", "--password-env", "PW").out == key.jkt + "\n"
    monkeypatch.setenv("PW", "wrong")
    assert_one_line_error(run(capsys, "thumbprint", "k.pem", "--password-env", "PW"), "thumbprint")


@pytest.mark.parametrize("content", [None, "not a key", '{"kty": "oct", "k": "c2VjcmV0"}', "dir"])
def test_thumbprint_bad_files_are_one_line_errors(
    content: str | None, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if content == "dir":
        (in_tmp / "key").mkdir()
    elif content is not None:
        (in_tmp / "key").write_text(content)
    assert_one_line_error(run(capsys, "thumbprint", "key"), "thumbprint")


# -- proof -----------------------------------------------------------------------------------


@pytest.fixture
def key_file(in_tmp: Path) -> tuple[Path, DPoPKey]:
    key = DPoPKey.generate()
    path = in_tmp / "key.json"
    path.write_text(json.dumps(key.private_jwk()))
    return path, key


def test_proof_prints_only_a_verifiable_proof(
    key_file: tuple[Path, DPoPKey], capsys: pytest.CaptureFixture[str]
) -> None:
    path, key = key_file
    result = run(
        capsys,
        "proof",
        "--key",
        str(path),
        "--method",
        "POST",
        "--url",
        HTU + "?q=1#frag",
        "--access-token",
        TOKEN,
        "--nonce",
        "server-nonce_1",
    )
    assert result.code == 0
    assert result.err == ""
    assert result.out.count("\n") == 1
    proof = result.out.strip()
    checked = verify_proof(proof, htm="POST", htu=HTU, access_token=TOKEN, now=time.time())
    assert checked.jkt == key.jkt
    assert checked.nonce == "server-nonce_1"
    assert checked.ath == access_token_hash(TOKEN)
    assert checked.htu == HTU  # query and fragment dropped


def test_proof_extra_claims(
    key_file: tuple[Path, DPoPKey], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = key_file
    argv = ("proof", "--key", str(path), "--method", "GET", "--url", HTU)
    result = run(capsys, *argv, "--claims", '{"client_id": "cli"}')
    assert result.code == 0
    assert payload_of(result.out.strip())["client_id"] == "cli"
    for claims in ('["x"]', "{bad", '{"htm": "POST"}', '{"iat": 1}'):
        assert_one_line_error(run(capsys, *argv, "--claims", claims), "proof")


def test_g1_http_url_needs_insecure_flag(
    key_file: tuple[Path, DPoPKey], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = key_file
    argv = ("proof", "--key", str(path), "--method", "GET", "--url", "http://127.0.0.1:8000/x")
    assert_one_line_error(run(capsys, *argv), "proof")
    result = run(capsys, *argv, "--insecure-http")
    assert result.code == 0
    assert payload_of(result.out.strip())["htu"] == "http://127.0.0.1:8000/x"


@pytest.mark.parametrize(
    "argv",
    [
        ("--method", "GET", "--url", "not a url"),
        ("--method", "GET", "--url", "https://user@api.example/"),
        ("--method", "G E T", "--url", HTU),
        ("--method", "GET", "--url", HTU, "--nonce", 'has"quote'),
    ],
)
def test_proof_bad_input_is_one_line(
    argv: tuple[str, ...], key_file: tuple[Path, DPoPKey], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = key_file
    assert_one_line_error(run(capsys, "proof", "--key", str(path), *argv), "proof")


@pytest.mark.parametrize("content", [None, "garbage", "{}"])
def test_proof_unreadable_key_is_one_line(
    content: str | None, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if content is not None:
        (in_tmp / "k.json").write_text(content)
    result = run(capsys, "proof", "--key", "k.json", "--method", "GET", "--url", HTU)
    assert_one_line_error(result, "proof")


def test_proof_with_encrypted_pem(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = DPoPKey.generate("PS256")
    (in_tmp / "k.pem").write_bytes(key.to_pem(password="pw"))
    argv = ("proof", "--key", "k.pem", "--method", "GET", "--url", HTU)
    assert_one_line_error(run(capsys, *argv), "proof")
    monkeypatch.setenv("PW", "wrong")
    assert_one_line_error(run(capsys, *argv, "--password-env", "PW"), "proof")
    monkeypatch.setenv("PW", "pw")
    result = run(capsys, *argv, "--password-env", "PW")
    assert result.code == 0
    assert verify_proof(result.out.strip(), htm="GET", htu=HTU, now=time.time()).jkt == key.jkt


def test_proof_requires_method_and_url(
    key_file: tuple[Path, DPoPKey], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        run(capsys, "proof", "--key", str(key_file[0]), "--url", HTU)
    assert exc.value.code == 2


# -- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "Ed25519", "PS256"])
def test_round_trip_keygen_proof_inspect(
    alg: str, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert alg in ALGORITHMS
    assert run(capsys, "keygen", "--alg", alg, "--out", "k.json").code == 0
    jkt = run(capsys, "thumbprint", "k.json").out.strip()
    proof = run(
        capsys,
        "proof",
        "--key",
        "k.json",
        "--method",
        "DELETE",
        "--url",
        HTU,
        "--access-token",
        TOKEN,
    ).out.strip()
    result = run(
        capsys,
        "inspect",
        proof,
        "--method",
        "DELETE",
        "--url",
        HTU,
        "--access-token",
        TOKEN,
        f"--jkt={jkt}",  # a jkt may start with "-": always use the = form
        "--json",
    )
    assert result.code == 0
    data = result.json()
    assert data["valid"] is True
    assert data["jkt"] == jkt
    assert {c["status"] for c in data["checks"]} == {"pass", "skipped"}
    # The same proof inspected as if sent with another method and token fails both checks.
    bad = run(
        capsys, "inspect", proof, "--method", "GET", "--access-token", "other", "--json"
    ).json()
    assert {c["reason"] for c in bad["checks"] if c["status"] == "fail"} == {
        "htm_mismatch",
        "ath_mismatch",
    }
