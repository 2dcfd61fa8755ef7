"""The JWS algorithms dpopkit accepts: asymmetric signatures only (RFC 9449 §4.2, §11.6).

Each name maps to an :class:`AlgSpec` that says which key type fits it and how
to turn the JWS signature bytes into what ``cryptography`` expects. ECDSA
signatures are raw ``R‖S`` on the wire (RFC 7518 §3.4, checklist P-14) and DER
inside ``cryptography``; the conversion lives here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias, cast, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "AlgSpec",
    "Algorithm",
    "PrivateKey",
    "PublicKey",
    "spec_for",
]

Algorithm: TypeAlias = Literal[
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
    "PS256",
    "PS384",
    "PS512",
    "RS256",
    "RS384",
    "RS512",
]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
DEFAULT_ALGORITHM: Algorithm = "ES256"

PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey

# DER of ECDSA-Sig-Value (RFC 3279 §2.2.3: SEQUENCE { r INTEGER, s INTEGER }) for the
# curves whose signature fits DER's one-octet lengths (P-256, P-384): SEQUENCE headers
# by content length, and per coordinate size the INTEGER header of a value without a
# leading zero octet whose top bit is clear (index 0) or set (index 1, a 0x00 octet
# keeps it positive). About 8,000 instructions less per signature than
# int.from_bytes + encode_dss_signature (and decode_dss_signature + to_bytes).
_DER_SEQUENCE = tuple(bytes((0x30, n)) for n in range(128))
_DER_SHORT_MAX = 60  # 2 * (2 + 60 + 1) = 126 content octets; 61 would need 128


def _der_int_heads(size: int) -> tuple[bytes, bytes]:
    return bytes((0x02, size)), bytes((0x02, size + 1, 0x00))


@dataclass(frozen=True, slots=True)
class AlgSpec:
    """What an algorithm needs: key type, curve, hash, and signature shape."""

    name: Algorithm
    kty: Literal["EC", "OKP", "RSA"]
    crv: str | None
    hash_alg: hashes.HashAlgorithm | None
    coord_size: int = 0  # EC: octets per coordinate (and per R, S)
    pss: bool = False
    # Built once here instead of on every signature (the hot path of verify and create):
    # ec.ECDSA(hash) for EC, the padding object for RSA.
    _ecdsa: ec.ECDSA | None = field(init=False, repr=False, compare=False, default=None)
    _padding: padding.AsymmetricPadding | None = field(
        init=False, repr=False, compare=False, default=None
    )
    # EC with one-octet DER lengths: the INTEGER headers (see _der_int_heads).
    _der_heads: tuple[bytes, bytes] | None = field(
        init=False, repr=False, compare=False, default=None
    )

    def __post_init__(self) -> None:
        if self.kty == "EC" and self.hash_alg is not None:
            object.__setattr__(self, "_ecdsa", ec.ECDSA(self.hash_alg))
            if self.coord_size <= _DER_SHORT_MAX:
                object.__setattr__(self, "_der_heads", _der_int_heads(self.coord_size))
        elif self.kty == "RSA" and self.hash_alg is not None:
            object.__setattr__(self, "_padding", self._rsa_padding())

    def verify(self, key: PublicKey, signature: bytes, data: bytes) -> bool:
        """Check ``signature`` over ``data``; return False (never raise) when it does not verify.

        The caller has already checked that ``key`` fits this algorithm.
        """
        # No isinstance asserts here: the key was imported for this spec (hot path).
        kty = self.kty
        try:
            if kty == "EC":
                size = self.coord_size
                if len(signature) != 2 * size:
                    return False
                heads = self._der_heads
                high_r, high_s = signature[0], signature[size]
                if heads is not None and high_r and high_s:
                    # R‖S → DER directly: neither half has a leading zero octet, so each
                    # is a minimal INTEGER, with a 0x00 prefix when its top bit is set.
                    high_r >>= 7
                    high_s >>= 7
                    der = b"".join(
                        (
                            _DER_SEQUENCE[2 * size + 4 + high_r + high_s],
                            heads[high_r],
                            signature[:size],
                            heads[high_s],
                            signature[size:],
                        )
                    )
                else:  # leading zero octets (zero included), or P-521's long DER lengths
                    der = encode_dss_signature(
                        int.from_bytes(signature[:size], "big"),
                        int.from_bytes(signature[size:], "big"),
                    )
                # (no typing.cast here: it is a Python call at run time)
                key.verify(der, data, self._ecdsa)  # type: ignore[arg-type,call-arg]
            elif kty == "OKP":
                if len(signature) != 64:
                    return False
                cast(ed25519.Ed25519PublicKey, key).verify(signature, data)
            else:
                rsa_key = cast(rsa.RSAPublicKey, key)
                if len(signature) != (rsa_key.key_size + 7) // 8:
                    return False
                rsa_key.verify(signature, data, self._padding, self.hash_alg)  # type: ignore[arg-type]
        except InvalidSignature:
            return False
        return True

    def sign(self, key: PrivateKey, data: bytes) -> bytes:
        """Sign ``data`` and return the JWS signature bytes (raw ``R‖S`` for ECDSA)."""
        kty = self.kty
        if kty == "EC":
            size = self.coord_size
            # (no typing.cast here: it is a Python call at run time)
            der: bytes = key.sign(data, self._ecdsa)  # type: ignore[arg-type,call-arg]
            if der[1] < 0x80:
                # One-octet lengths: 30 L 02 Lr r 02 Ls s, each INTEGER minimal (at most
                # one 0x00 octet before a set top bit, fewer octets for a small value).
                r_len = der[3]
                return (
                    der[4 : 4 + r_len].rjust(size + 1, b"\x00")[-size:]
                    + der[6 + r_len :].rjust(size + 1, b"\x00")[-size:]
                )
            r, s = decode_dss_signature(der)
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        if kty == "OKP":
            return cast(ed25519.Ed25519PrivateKey, key).sign(data)
        return cast(rsa.RSAPrivateKey, key).sign(data, self._padding, self.hash_alg)  # type: ignore[arg-type]

    def _rsa_padding(self) -> padding.AsymmetricPadding:
        if self.pss:
            assert self.hash_alg is not None
            # RFC 7518 §3.5: salt length equals the hash output length.
            return padding.PSS(
                mgf=padding.MGF1(self.hash_alg), salt_length=self.hash_alg.digest_size
            )
        return padding.PKCS1v15()


_SPECS: dict[str, AlgSpec] = {
    "ES256": AlgSpec("ES256", "EC", "P-256", hashes.SHA256(), 32),
    "ES384": AlgSpec("ES384", "EC", "P-384", hashes.SHA384(), 48),
    "ES512": AlgSpec("ES512", "EC", "P-521", hashes.SHA512(), 66),
    "EdDSA": AlgSpec("EdDSA", "OKP", "Ed25519", None),
    "Ed25519": AlgSpec("Ed25519", "OKP", "Ed25519", None),
    "PS256": AlgSpec("PS256", "RSA", None, hashes.SHA256(), pss=True),
    "PS384": AlgSpec("PS384", "RSA", None, hashes.SHA384(), pss=True),
    "PS512": AlgSpec("PS512", "RSA", None, hashes.SHA512(), pss=True),
    "RS256": AlgSpec("RS256", "RSA", None, hashes.SHA256()),
    "RS384": AlgSpec("RS384", "RSA", None, hashes.SHA384()),
    "RS512": AlgSpec("RS512", "RSA", None, hashes.SHA512()),
}

EC_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}


def spec_for(alg: object) -> AlgSpec | None:
    """Return the :class:`AlgSpec` for a supported JWS ``alg`` name, else None."""
    return _SPECS.get(alg) if isinstance(alg, str) else None
