"""Key files: atomic 0600 writes, no silent overwrite, JWK/PEM detection.

Checklist: C-23 (the private key is never exposed: files are owner-only, no
world-readable window), X-4 (private and public forms give the same jkt).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from dpopkit import DPoPKey, jwk_thumbprint
from dpopkit.keyfile import load_key, load_public_jwk, save_key

ALGS = ("ES256", "ES384", "ES512", "Ed25519", "PS256", "RS256")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A permissive umask, so that a 0600 result is not the umask's doing."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


class _Signer:
    def __init__(self, key: DPoPKey) -> None:
        self._key = key

    @property
    def alg(self) -> str:
        return self._key.alg

    @property
    def public_jwk(self) -> Mapping[str, str]:
        return self._key.public_jwk

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


@pytest.mark.parametrize("alg", ALGS)
def test_c23_jwk_file_round_trip_is_0600(alg: str, tmp_path: Path, open_umask: None) -> None:
    key = DPoPKey.generate(alg)
    path = save_key(key, tmp_path / "key.json")
    assert mode(path) == 0o600
    loaded = load_key(path)
    assert loaded.jkt == key.jkt
    assert loaded.alg == key.alg  # the private JWK keeps its alg
    assert "d" in json.loads(path.read_text())


@pytest.mark.parametrize("alg", ["ES256", "Ed25519", "PS256"])
def test_c23_pem_file_round_trip_is_0600(alg: str, tmp_path: Path, open_umask: None) -> None:
    key = DPoPKey.generate(alg)
    path = save_key(key, tmp_path / "key.pem", format="pem")
    assert mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert load_key(path).jkt == key.jkt


def test_c23_encrypted_pem_needs_the_right_password(tmp_path: Path) -> None:
    key = DPoPKey.generate()
    path = save_key(key, tmp_path / "key.pem", format="pem", password="correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert load_key(path, password="correct horse").jkt == key.jkt
    assert load_key(path, password=b"correct horse").jkt == key.jkt
    with pytest.raises(ValueError):
        load_key(path)
    with pytest.raises(ValueError):
        load_key(path, password="wrong")


def test_password_for_an_unencrypted_key_is_refused(tmp_path: Path) -> None:
    key = DPoPKey.generate()
    pem = save_key(key, tmp_path / "key.pem", format="pem")
    jwk = save_key(key, tmp_path / "key.json")
    for path in (pem, jwk):
        with pytest.raises(ValueError):
            load_key(path, password="x")


def test_jwk_format_cannot_be_encrypted(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_key(DPoPKey.generate(), tmp_path / "k.json", password="secret")
    with pytest.raises(ValueError):
        save_key(DPoPKey.generate(), tmp_path / "k.pem", format="pem", password="")
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_key(DPoPKey.generate(), tmp_path / "k", format="der")  # type: ignore[arg-type]


def test_existing_file_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    path.write_text("keep me")
    with pytest.raises(FileExistsError):
        save_key(DPoPKey.generate(), path)
    assert path.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.json"]  # no temporary left


def test_symlink_at_target_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "key.json"
    link.symlink_to(victim)
    with pytest.raises(FileExistsError):
        save_key(DPoPKey.generate(), link)
    assert victim.read_text() == "keep me"


def test_overwrite_replaces_atomically_with_0600(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "key.json"
    path.write_text("old")
    path.chmod(0o644)
    key = DPoPKey.generate()
    save_key(key, path, overwrite=True)
    assert mode(path) == 0o600
    assert load_key(path).jkt == key.jkt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.json"]


def test_missing_directory_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        save_key(DPoPKey.generate(), tmp_path / "nope" / "key.json")


def test_signer_key_cannot_be_saved(tmp_path: Path) -> None:
    key = DPoPKey.from_signer(_Signer(DPoPKey.generate()))
    with pytest.raises(ValueError):
        save_key(key, tmp_path / "k.json")
    assert list(tmp_path.iterdir()) == []


def test_load_key_refuses_public_keys_and_junk(tmp_path: Path) -> None:
    key = DPoPKey.generate()
    public_jwk = tmp_path / "pub.json"
    public_jwk.write_text(json.dumps(key.public_jwk))
    with pytest.raises(ValueError):
        load_key(public_jwk)
    public_pem = tmp_path / "pub.pem"
    public_pem.write_bytes(_public_pem(key))
    with pytest.raises(ValueError):
        load_key(public_pem)
    junk = tmp_path / "junk"
    junk.write_text("hello")
    with pytest.raises(ValueError):
        load_key(junk)
    array = tmp_path / "array.json"
    array.write_text("{[1, 2]")
    with pytest.raises(ValueError):
        load_key(array)
    huge = tmp_path / "huge.json"
    huge.write_text("{" + " " * 70_000 + "}")
    with pytest.raises(ValueError):
        load_key(huge)


def test_load_key_refuses_inconsistent_jwk(tmp_path: Path) -> None:
    one, two = DPoPKey.generate().private_jwk(), DPoPKey.generate().private_jwk()
    mixed = {**one, "d": two["d"]}
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(mixed))
    with pytest.raises(ValueError):
        load_key(path)


def _public_pem(key: DPoPKey) -> bytes:
    private = serialization.load_pem_private_key(key.to_pem(), password=None)
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("alg", ["ES256", "ES512", "Ed25519", "RS256"])
def test_x4_public_jwk_of_every_form_has_the_same_jkt(alg: str, tmp_path: Path) -> None:
    key = DPoPKey.generate(alg)
    files = {
        "private.json": json.dumps(key.private_jwk()).encode(),
        "public.json": json.dumps({**key.public_jwk, "kid": "k1", "use": "sig"}).encode(),
        "private.pem": key.to_pem(),
        "public.pem": _public_pem(key),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        jwk = load_public_jwk(tmp_path / name)
        assert jwk_thumbprint(jwk) == key.jkt, name
        assert "d" not in jwk


def test_load_public_jwk_validates_the_key(tmp_path: Path) -> None:
    jwk = DPoPKey.generate().public_jwk
    jwk["x"] = jwk["y"]  # not on the curve
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(jwk))
    with pytest.raises(ValueError):
        load_public_jwk(path)
    path.write_text(json.dumps({"kty": "oct", "k": "c2VjcmV0"}))
    with pytest.raises(ValueError):
        load_public_jwk(path)


@pytest.mark.parametrize("alg", ["PS256", "Ed25519", "ES384"])
def test_public_jwk_with_its_alg_member(alg: str, tmp_path: Path) -> None:
    key = DPoPKey.generate(alg)
    path = tmp_path / "pub.json"
    path.write_text(json.dumps({**key.public_jwk, "alg": alg}))
    assert jwk_thumbprint(load_public_jwk(path)) == key.jkt
    path.write_text(json.dumps({**key.public_jwk, "alg": "HS256"}))
    with pytest.raises(ValueError):
        load_public_jwk(path)


def test_public_pem_of_unsupported_keys_refused(tmp_path: Path) -> None:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    cases = {
        "k1.pem": ec.generate_private_key(ec.SECP256K1()).public_key().public_bytes(pem, spki),
        "x25519.pem": x25519.X25519PrivateKey.generate().public_key().public_bytes(pem, spki),
        "junk.pem": b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError):
            load_public_jwk(tmp_path / name)
