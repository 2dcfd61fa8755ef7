"""DPoP keys held in a TPM 2.0 (``/dev/tpmrm0``, or ``swtpm`` in tests): ``dpopkit[tpm]``.

:func:`generate_tpm_key` creates an ECDSA P-256 signing key under the storage
hierarchy: the TPM generates it (``sensitiveDataOrigin``) under an ECC P-256
storage primary key made from the standard template, bound to this TPM and this
parent (``fixedTPM``, ``fixedParent``, so ``TPM2_Duplicate`` is refused), and
makes it persistent at a handle in the owner range ``0x81000000``-``0x817FFFFF``
(TPM 2.0 Part 1 §36.3). The private half never leaves the chip; proofs are signed
with ``TPM2_Sign`` over a SHA-256 digest computed here and the TPM's ``(r, s)``
becomes the raw ``R‖S`` of JWS (RFC 7518 §3.4).

Keys are named ``tpm:0x81010010``; the TPM is chosen by a TCTI: the
``?tcti=...`` query (``tpm:0x81010010?tcti=swtpm:port=2321``), else the
``DPOPKIT_TPM_TCTI`` environment variable, else ``device:/dev/tpmrm0`` (the
kernel's resource manager). The owner hierarchy and the key have empty
authorization values, as ``tpm2-tools`` creates them by default: the TPM keeps
the key from being copied, the operating system decides who may use the device.

One ESAPI context per key is opened and guarded by a lock, so a key may be used
from many threads.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qs

from dpopkit.core.jws import b64url_encode
from dpopkit.core.keys import DPoPKey
from dpopkit.errors import requires_extra
from dpopkit.signers._errors import SignerError

# libtss2 logs every failed call to stderr; dpopkit reports them as one SignerError line.
os.environ.setdefault("TSS2_LOG", "all+NONE")

with requires_extra("tpm", needed_by=__name__):
    from tpm2_pytss import ESAPI, TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RH, TPM2_ST, TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_SIG_SCHEME, TPMT_TK_HASHCHECK

__all__ = ["DEFAULT_TCTI", "TCTI_ENV", "TpmSigner", "generate_tpm_key", "open_tpm_key"]

#: The environment variable naming the TCTI when the reference has no ``tcti=``.
TCTI_ENV = "DPOPKIT_TPM_TCTI"
#: The TCTI used otherwise: the kernel's TPM resource manager.
DEFAULT_TCTI = "device:/dev/tpmrm0"

_PERSISTENT_OWNER = range(0x81000000, 0x81800000)
#: A TPM-made, TPM-bound, unrestricted signing key (TPM 2.0 Part 2 §8.3).
_KEY_ATTRIBUTES = (
    "SIGN_ENCRYPT",
    "FIXEDTPM",
    "FIXEDPARENT",
    "SENSITIVEDATAORIGIN",
    "USERWITHAUTH",
)

_T = TypeVar("_T")

#: The TSS2 layer of errors from the transport to the TPM (TSS2_TCTI_RC_LAYER >> 16).
_TCTI_LAYER = 10
#: TPM_RC_HANDLE in a format-one response code, whatever handle number it names.
_RC_HANDLE, _RC_HANDLE_MASK = 0x08B, 0xFFFF00BF


def parse_tpm_reference(reference: str) -> tuple[int, str]:
    """``(persistent handle, TCTI)`` of ``tpm:0x81010010[?tcti=...]``.

    Raises:
        SignerError: ``bad_reference``.
    """
    if reference[:4].lower() != "tpm:":
        raise SignerError("bad_reference", "a TPM key reference starts with tpm:")
    body, _, query = reference[4:].partition("?")
    try:
        handle = int(body, 16) if body.lower().startswith("0x") else int(body)
    except ValueError:
        raise SignerError(
            "bad_reference", "a TPM key reference is tpm:0x81XXXXXX (a persistent handle)"
        ) from None
    if handle not in _PERSISTENT_OWNER:
        raise SignerError(
            "bad_reference", "the handle must be a persistent owner handle 0x81000000-0x817FFFFF"
        )
    params = parse_qs(query, keep_blank_values=True) if query else {}
    unknown = set(params) - {"tcti"}
    if unknown:
        raise SignerError("bad_reference", f"unknown TPM reference attribute {sorted(unknown)[0]}")
    tcti = params.get("tcti", [""])[-1] or os.environ.get(TCTI_ENV) or DEFAULT_TCTI
    return handle, tcti


def _connect(tcti: str) -> Any:
    try:
        return ESAPI(tcti)
    except (TSS2_Exception, RuntimeError, OSError) as exc:
        raise SignerError("token_not_present", f"cannot reach the TPM at {tcti}: {exc}") from None


def _tpm(call: Callable[[], _T], what: str) -> _T:
    try:
        return call()
    except TSS2_Exception as exc:
        text = str(exc)
        if (int(exc.rc) >> 16) & 0xFF == _TCTI_LAYER:
            raise SignerError("token_not_present", f"{what}: the TPM went away ({text})") from None
        if int(exc.rc) & _RC_HANDLE_MASK == _RC_HANDLE:
            raise SignerError("key_not_found", f"{what}: the TPM has no such key") from None
        raise SignerError("device_error", f"{what}: {text}") from None


def _jwk(public: Any) -> dict[str, str]:
    area = public.publicArea
    if area.type != TPM2_ALG.ECC or area.parameters.eccDetail.curveID != 0x0003:  # NIST P-256
        raise SignerError("unsupported_key", "the TPM key is not an ECC P-256 key")
    x = bytes(area.unique.ecc.x).rjust(32, b"\0")
    y = bytes(area.unique.ecc.y).rjust(32, b"\0")
    return {"kty": "EC", "crv": "P-256", "x": b64url_encode(x), "y": b64url_encode(y)}


class TpmSigner:
    """A :class:`~dpopkit.Signer` whose ECDSA P-256 key stays in a TPM 2.0.

    Build one with :meth:`open` (or :func:`open_tpm_key`). Safe to use from many threads.
    """

    def __init__(self, *, _handle: int, _tcti: str) -> None:
        self._handle = _handle
        self._tcti = _tcti
        self._lock = threading.Lock()
        self._esapi: Any = _connect(_tcti)
        try:
            self._tr = _tpm(lambda: self._esapi.tr_from_tpmpublic(_handle), "opening the key")
            public, _, _ = _tpm(lambda: self._esapi.read_public(self._tr), "reading the key")
            self._jwk = _jwk(public)
            attrs = public.publicArea.objectAttributes
            if not attrs & TPMA_OBJECT.SIGN_ENCRYPT or attrs & TPMA_OBJECT.RESTRICTED:
                raise SignerError(
                    "unsupported_key", "the TPM key is not an unrestricted signing key"
                )
        except BaseException:
            self._esapi.close()
            raise
        self._scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        self._scheme.details.any.hashAlg = TPM2_ALG.SHA256
        self._ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)

    @classmethod
    def open(cls, reference: str) -> TpmSigner:
        """Open the persistent key named ``tpm:0x81XXXXXX[?tcti=...]``.

        Raises:
            SignerError: a bad reference, no TPM at the TCTI, no key at the handle.
        """
        handle, tcti = parse_tpm_reference(reference)
        return cls(_handle=handle, _tcti=tcti)

    @property
    def alg(self) -> str:
        """Always ``ES256``."""
        return "ES256"

    @property
    def public_jwk(self) -> Mapping[str, str]:
        """The public key, read from the TPM."""
        return dict(self._jwk)

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` in the TPM; returns the raw 64-byte ``R‖S``."""
        digest = hashlib.sha256(data).digest()
        with self._lock:
            signature = _tpm(
                lambda: self._esapi.sign(self._tr, digest, self._scheme, self._ticket), "signing"
            )
        ecdsa = signature.signature.ecdsa
        r = bytes(ecdsa.signatureR)
        s = bytes(ecdsa.signatureS)
        if len(r) > 32 or len(s) > 32:
            raise SignerError("device_error", "the TPM's ECDSA signature is too long")
        return r.rjust(32, b"\0") + s.rjust(32, b"\0")  # a TPM may drop leading zero bytes

    def close(self) -> None:
        """Close the connection to the TPM (the key stays in it)."""
        with self._lock:
            self._esapi.close()

    def __repr__(self) -> str:
        return f"TpmSigner(handle={self._handle:#x}, tcti={self._tcti!r})"


def open_tpm_key(reference: str) -> DPoPKey:
    """A :class:`~dpopkit.DPoPKey` signing with the TPM key ``tpm:0x81XXXXXX[?tcti=...]``.

    Raises:
        SignerError: a bad reference, no TPM at the TCTI, no key at the handle.
    """
    signer = TpmSigner.open(reference)
    try:
        return DPoPKey.from_signer(signer)
    except ValueError as exc:  # a signature that does not verify: a broken TPM
        signer.close()
        raise SignerError("device_error", str(exc)) from None


def generate_tpm_key(reference: str) -> DPoPKey:
    """Create an ECDSA P-256 key in the TPM and make it persistent at the handle of ``reference``.

    The key is made by the TPM under the owner's storage hierarchy and cannot be
    duplicated (``fixedTPM``, ``fixedParent``). A handle already in use is refused.

    Raises:
        SignerError: ``key_exists``, a bad reference or no TPM at the TCTI.
    """
    handle, tcti = parse_tpm_reference(reference)
    esapi = _connect(tcti)
    try:
        taken = _tpm(lambda: esapi.get_capability(0x00000001, 0x81000000, 256), "listing handles")[
            1
        ]
        if handle in list(taken.data.handles):
            raise SignerError("key_exists", f"the TPM already holds a key at {handle:#x}")
        srk_template = TPM2B_PUBLIC.parse(
            "ecc256:aes128cfb",
            objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS,
        )
        srk = _tpm(
            lambda: esapi.create_primary(None, srk_template, ESYS_TR.OWNER)[0],
            "creating the storage key",
        )
        try:
            attrs = TPMA_OBJECT(0)
            for name in _KEY_ATTRIBUTES:
                attrs |= getattr(TPMA_OBJECT, name)
            template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=attrs)
            private, public, *_ = _tpm(
                lambda: esapi.create(srk, None, template), "creating the key"
            )
            loaded = _tpm(lambda: esapi.load(srk, private, public), "loading the key")
            try:
                _tpm(
                    lambda: esapi.evict_control(ESYS_TR.OWNER, loaded, handle),
                    "making the key persistent",
                )
            finally:
                esapi.flush_context(loaded)
        finally:
            esapi.flush_context(srk)
    finally:
        esapi.close()
    return open_tpm_key(reference)
