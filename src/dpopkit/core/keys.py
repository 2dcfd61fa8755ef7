"""DPoP keys: generation, JWK/PEM import and export, and signers for non-exportable keys.

A :class:`DPoPKey` signs proofs. It holds either a ``cryptography`` private key
or any :class:`Signer` (an HSM, a cloud KMS, a TPM, an OS keystore) that
never reveals its private half. ``repr`` never shows private material and
pickling is refused (checklist C-23).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NoReturn, Protocol, runtime_checkable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from dpopkit.core.algorithms import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    EC_CURVES,
    Algorithm,
    AlgSpec,
    PrivateKey,
    spec_for,
)
from dpopkit.core.jws import (
    MIN_RSA_BITS,
    JWSError,
    b64url_decode,
    b64url_encode,
    json_dumps,
    public_key_from_jwk,
)
from dpopkit.core.thumbprint import access_token_hash, jwk_thumbprint
from dpopkit.errors import Reason

__all__ = ["DPoPKey", "Signer"]

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_CURVE_ALG: dict[str, Algorithm] = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


@runtime_checkable
class Signer(Protocol):
    """Anything that can sign a proof without exposing its private key.

    ``sign`` returns JWS signature bytes for ``alg`` (for ECDSA: raw ``R‖S`` of
    fixed length, not DER, RFC 7518 §3.4). ``public_jwk`` holds only public members.
    """

    @property
    def alg(self) -> str:
        """The JWS algorithm name."""
        ...

    @property
    def public_jwk(self) -> Mapping[str, str]:
        """The public key as a JWK."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``."""
        ...


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(size, "big"))


def _public_jwk_of(key: PrivateKey) -> dict[str, str]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        crv = _CURVE_NAMES[key.curve.name]
        size = EC_CURVES[crv][1]
        numbers = key.public_key().public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "x": _int_b64(numbers.x, size),
            "y": _int_b64(numbers.y, size),
        }
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    pub = key.public_key().public_numbers()
    return {"kty": "RSA", "e": _int_b64(pub.e), "n": _int_b64(pub.n)}


def _default_alg(key: PrivateKey) -> Algorithm:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        crv = _CURVE_NAMES.get(key.curve.name)
        if crv is None:
            raise ValueError("unsupported EC curve")
        return _CURVE_ALG[crv]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    return "PS256"


def _check_fit(spec: AlgSpec, key: PrivateKey) -> None:
    if spec.kty == "EC":
        ok = (
            isinstance(key, ec.EllipticCurvePrivateKey)
            and _CURVE_NAMES.get(key.curve.name) == spec.crv
        )
    elif spec.kty == "OKP":
        ok = isinstance(key, ed25519.Ed25519PrivateKey)
    else:
        ok = isinstance(key, rsa.RSAPrivateKey)
        if ok and key.key_size < MIN_RSA_BITS:  # type: ignore[union-attr]
            raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
    if not ok:
        raise ValueError(f"key type does not fit {spec.name}")


def _spec(alg: str) -> AlgSpec:
    spec = spec_for(alg)
    if spec is None:
        raise ValueError(f"unsupported algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")
    return spec


class DPoPKey:
    """A key pair (or a signer) that creates DPoP proofs.

    Build one with :meth:`generate`, :meth:`from_jwk`, :meth:`from_pem` or
    :meth:`from_signer`. ``alg`` is the JWS name put into proofs; an Ed25519 key
    emits ``EdDSA`` unless it was created with ``alg="Ed25519"`` (RFC 9864).
    """

    __slots__ = (
        "_ath_memo",
        "_header_b64",
        "_header_dot",
        "_jkt",
        "_private",
        "_public_jwk",
        "_sign",
        "_signer",
        "_spec",
    )

    def __init__(
        self,
        *,
        _spec: AlgSpec,
        _private: PrivateKey | None,
        _signer: Signer | None,
        _public_jwk: dict[str, str],
    ) -> None:
        self._spec = _spec
        self._private = _private
        self._signer = _signer
        self._public_jwk = _public_jwk
        self._jkt = jwk_thumbprint(_public_jwk)
        header = {"typ": "dpop+jwt", "alg": _spec.name, "jwk": _public_jwk}
        # The protected header is the same for every proof: encode it once.
        self._header_b64 = b64url_encode(json_dumps(header))
        # What create_proof needs per proof, ready: the header segment and its dot as the
        # signing input starts, and the signing callable without DPoPKey.sign's frame.
        self._header_dot = f"{self._header_b64}.".encode("ascii")
        self._sign: Callable[[bytes], bytes] = (
            _signer.sign if _signer is not None else partial(_spec.sign, _private)  # type: ignore[arg-type]
        )
        # The last access token this key made a proof for, and its ath: a client sends
        # many proofs with one token, so ath is computed once per token, not per proof.
        self._ath_memo: tuple[str, str] = ("", "")

    # -- construction --------------------------------------------------------------------

    @classmethod
    def generate(cls, alg: str = DEFAULT_ALGORITHM, *, rsa_bits: int = 2048) -> DPoPKey:
        """Generate a new key for ``alg`` (ES256 by default).

        Raises:
            ValueError: an unknown algorithm or ``rsa_bits`` below 2048.
        """
        spec = _spec(alg)
        private: PrivateKey
        if spec.kty == "EC":
            assert spec.crv is not None
            private = ec.generate_private_key(EC_CURVES[spec.crv][0])
        elif spec.kty == "OKP":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            if rsa_bits < MIN_RSA_BITS:
                raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
            private = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        return cls._from_private(private, spec)

    @classmethod
    def from_private_key(cls, key: PrivateKey, *, alg: str | None = None) -> DPoPKey:
        """Wrap a ``cryptography`` private key (EC P-256/384/521, Ed25519, RSA >= 2048)."""
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
        ):
            raise TypeError("unsupported private key type")
        spec = _spec(alg if alg is not None else _default_alg(key))
        return cls._from_private(key, spec)

    @classmethod
    def _from_private(cls, key: PrivateKey, spec: AlgSpec) -> DPoPKey:
        _check_fit(spec, key)
        return cls(_spec=spec, _private=key, _signer=None, _public_jwk=_public_jwk_of(key))

    @classmethod
    def from_pem(
        cls, data: bytes | str, *, password: bytes | str | None = None, alg: str | None = None
    ) -> DPoPKey:
        """Load a PKCS#8 / traditional PEM private key, encrypted when ``password`` is given.

        Raises:
            ValueError: not a supported private key, or a wrong password.
        """
        raw = data.encode() if isinstance(data, str) else data
        pwd = password.encode() if isinstance(password, str) else password
        try:
            key = serialization.load_pem_private_key(raw, password=pwd)
        except (TypeError, ValueError) as exc:
            raise ValueError("cannot load the PEM private key (wrong password or format)") from exc
        if not isinstance(
            key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
        ):
            raise ValueError("unsupported private key type")
        return cls.from_private_key(key, alg=alg)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any] | str, *, alg: str | None = None) -> DPoPKey:
        """Load a private JWK (EC, OKP Ed25519 or RSA).

        Raises:
            ValueError: not a private key of a supported type, or inconsistent members.
        """
        data: Any = json.loads(jwk) if isinstance(jwk, str) else dict(jwk)
        if not isinstance(data, dict):
            raise ValueError("a JWK must be a JSON object")
        try:
            key = _private_from_jwk(data)
        except JWSError as exc:
            raise ValueError(exc.description) from None
        chosen = alg if alg is not None else data.get("alg")
        dpop_key = cls.from_private_key(key, alg=chosen if isinstance(chosen, str) else None)
        # The JWK's public members must describe the private key (no mismatched x/y).
        pub = dpop_key.public_jwk
        if any(data.get(name) != pub[name] for name in pub if name != "kty"):
            raise ValueError("the JWK's public members do not match its private key")
        return dpop_key

    @classmethod
    def from_signer(cls, signer: Signer, *, self_test: bool = True) -> DPoPKey:
        """Use an external :class:`Signer` (HSM, KMS, TPM, OS keystore).

        With ``self_test`` (the default) one signature is made and verified at
        once, so that a signer returning DER instead of raw ``R‖S`` fails here
        and not at the server.

        Raises:
            ValueError: an unsupported ``alg``, a ``public_jwk`` that is not a valid
                public key for it, or a failed self-test.
        """
        spec = _spec(signer.alg)
        jwk = dict(signer.public_jwk)
        try:
            public = public_key_from_jwk(jwk, spec)
        except JWSError as exc:
            raise ValueError(f"signer public_jwk: {exc.description}") from None
        allowed = {"kty", "crv", "x", "y", "n", "e"}
        clean = {k: v for k, v in jwk.items() if k in allowed}
        key = cls(_spec=spec, _private=None, _signer=signer, _public_jwk=clean)
        if self_test:
            probe = b"dpopkit signer self-test"
            if not spec.verify(public, signer.sign(probe), probe):
                raise ValueError("the signer's signature does not verify (DER instead of R||S?)")
        return key

    # -- use --------------------------------------------------------------------------------

    @property
    def alg(self) -> Algorithm:
        """The JWS ``alg`` put into proofs."""
        return self._spec.name

    @property
    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK (a fresh copy, required members only)."""
        return dict(self._public_jwk)

    @property
    def jkt(self) -> str:
        """The RFC 7638 SHA-256 thumbprint of the public key (``cnf.jkt``, ``dpop_jkt``)."""
        return self._jkt

    @property
    def is_exportable(self) -> bool:
        """Whether the private key is held here (False for a :class:`Signer`)."""
        return self._private is not None

    @property
    def proof_header_b64(self) -> str:
        """The encoded protected header ``{typ, alg, jwk}`` shared by all proofs."""
        return self._header_b64

    def _access_token_hash(self, access_token: str) -> str:
        """``ath`` of ``access_token`` (RFC 9449 §4.2), remembered for the last token."""
        memo = self._ath_memo
        if memo[0] == access_token:
            return memo[1]
        ath = access_token_hash(access_token)
        self._ath_memo = (access_token, ath)  # one tuple: atomic under concurrent use
        return ath

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` and return JWS signature bytes."""
        if self._signer is not None:
            return self._signer.sign(data)
        assert self._private is not None
        return self._spec.sign(self._private, data)

    def with_alg(self, alg: str) -> DPoPKey:
        """Return the same key emitting another fitting ``alg`` (e.g. ``Ed25519`` for ``EdDSA``)."""
        spec = _spec(alg)
        if self._private is not None:
            return DPoPKey._from_private(self._private, spec)
        raise ValueError("a signer-backed key keeps its signer's alg")

    def private_jwk(self) -> dict[str, str]:
        """Export the private key as a JWK (includes ``alg``).

        Raises:
            ValueError: the key is held by a :class:`Signer` and cannot be exported.
        """
        if self._private is None:
            raise ValueError("this key is held by a signer and cannot be exported")
        key = self._private
        jwk = {**self._public_jwk, "alg": self.alg}
        if isinstance(key, ec.EllipticCurvePrivateKey):
            size = EC_CURVES[self._public_jwk["crv"]][1]
            jwk["d"] = _int_b64(key.private_numbers().private_value, size)
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            raw = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            jwk["d"] = b64url_encode(raw)
        else:
            nums = key.private_numbers()
            jwk.update(
                d=_int_b64(nums.d),
                p=_int_b64(nums.p),
                q=_int_b64(nums.q),
                dp=_int_b64(nums.dmp1),
                dq=_int_b64(nums.dmq1),
                qi=_int_b64(nums.iqmp),
            )
        return jwk

    def to_pem(self, *, password: bytes | str | None = None) -> bytes:
        """Export the private key as PKCS#8 PEM, encrypted when ``password`` is given."""
        if self._private is None:
            raise ValueError("this key is held by a signer and cannot be exported")
        pwd = password.encode() if isinstance(password, str) else password
        algorithm: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(pwd) if pwd else serialization.NoEncryption()
        )
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm
        )

    def __repr__(self) -> str:
        kind = "signer" if self._signer is not None else "local"
        return f"DPoPKey(alg={self.alg!r}, jkt={self._jkt!r}, {kind})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DPoPKey) and other._jkt == self._jkt and other.alg == self.alg

    def __hash__(self) -> int:
        return hash((self._jkt, self.alg))

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "DPoPKey cannot be pickled; export it explicitly with private_jwk()/to_pem()"
        )


def _private_from_jwk(jwk: dict[str, Any]) -> PrivateKey:
    kty = jwk.get("kty")
    if "d" not in jwk:
        raise _bad_jwk("the JWK has no private member d")
    d = _b64_member(jwk, "d")
    if kty == "EC":
        crv = jwk.get("crv")
        if crv not in EC_CURVES:
            raise _bad_jwk("unsupported EC curve")
        curve, size = EC_CURVES[crv]
        if len(d) != size:
            raise _bad_jwk("EC private key of wrong length")
        try:
            return ec.derive_private_key(int.from_bytes(d, "big"), curve)
        except ValueError:
            raise _bad_jwk("invalid EC private key") from None
    if kty == "OKP":
        if jwk.get("crv") != "Ed25519" or len(d) != 32:
            raise _bad_jwk("unsupported OKP key")
        return ed25519.Ed25519PrivateKey.from_private_bytes(d)
    if kty == "RSA":
        names = ("n", "e", "p", "q", "dp", "dq", "qi")
        vals = {n: int.from_bytes(_b64_member(jwk, n), "big") for n in names}
        try:
            public = rsa.RSAPublicNumbers(vals["e"], vals["n"])
            numbers = rsa.RSAPrivateNumbers(
                vals["p"],
                vals["q"],
                int.from_bytes(d, "big"),
                vals["dp"],
                vals["dq"],
                vals["qi"],
                public,
            )
            return numbers.private_key()
        except ValueError:
            raise _bad_jwk("invalid RSA private key") from None
    raise _bad_jwk("the JWK kty must be EC, OKP or RSA")


def _b64_member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise _bad_jwk(f"JWK member {name} missing")
    return b64url_decode(value)


def _bad_jwk(message: str) -> JWSError:
    return JWSError(Reason.BAD_JWK, message)
