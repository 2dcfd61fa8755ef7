"""Keys that never leave a device, and one resolver for every way of naming a key.

A DPoP key can live in a file (:mod:`dpopkit.keyfile`), in a PKCS#11 token
(:mod:`dpopkit.signers.pkcs11`, extra ``pkcs11``) or in a TPM 2.0
(:mod:`dpopkit.signers.tpm`, extra ``tpm``). :func:`load_key_reference` turns any
of these references into a :class:`~dpopkit.DPoPKey`:

* ``pkcs11:token=dpop;object=client?module-path=/usr/lib/softhsm/libsofthsm2.so``
  (RFC 7512; the PIN comes from ``pin-source=file:...`` or an environment variable);
* ``tpm:0x81010010`` (a persistent handle; ``?tcti=swtpm:port=2321`` or the
  ``DPOPKIT_TPM_TCTI`` environment variable picks the TPM, ``device:/dev/tpmrm0``
  by default);
* anything else is a key file (private JWK or PEM).

The device modules are imported only when a reference names them, so a key file
never needs the optional packages.
"""

from __future__ import annotations

import os

from dpopkit.core.keys import DPoPKey
from dpopkit.keyfile import load_key, load_public_jwk
from dpopkit.signers._errors import SignerError, SignerErrorReason

__all__ = ["SignerError", "SignerErrorReason", "load_key_reference", "load_public_jwk_reference"]


def _scheme(reference: str) -> str:
    head = reference.split(":", 1)[0].lower() if ":" in reference else ""
    return head if head in ("pkcs11", "tpm") else ""


def load_key_reference(
    reference: str | os.PathLike[str], *, password: bytes | str | None = None
) -> DPoPKey:
    """The :class:`~dpopkit.DPoPKey` named by a key file path, a ``pkcs11:`` or a ``tpm:`` URI.

    Args:
        reference: a key file path, an RFC 7512 ``pkcs11:`` URI or a ``tpm:`` handle.
        password: the password of an encrypted PEM file, or the PIN of a PKCS#11
            token (when the URI has no ``pin-source``).

    Raises:
        SignerError: the device, token, PIN or key is wrong (see ``reason``).
        dpopkit.MissingExtraError: the extra of that device is not installed.
        ValueError: a key file that holds no usable private key.
        OSError: a key file that cannot be read.
    """
    text = os.fspath(reference)
    scheme = _scheme(text)
    if scheme == "pkcs11":
        from dpopkit.signers.pkcs11 import open_pkcs11_key

        pin = password.decode() if isinstance(password, bytes) else password
        return open_pkcs11_key(text, pin=pin)
    if scheme == "tpm":
        if password is not None:
            raise SignerError("bad_reference", "a TPM key takes no password")
        from dpopkit.signers.tpm import open_tpm_key

        return open_tpm_key(text)
    return load_key(text, password=password)


def load_public_jwk_reference(
    reference: str | os.PathLike[str], *, password: bytes | str | None = None
) -> dict[str, str]:
    """The public JWK of a key file (private or public) or of a device key.

    A PKCS#11 public key is read without logging in when no PIN is at hand.

    Raises:
        SignerError, MissingExtraError, ValueError, OSError: as :func:`load_key_reference`.
    """
    text = os.fspath(reference)
    scheme = _scheme(text)
    if scheme == "pkcs11":
        from dpopkit.signers.pkcs11 import read_pkcs11_public_jwk

        pin = password.decode() if isinstance(password, bytes) else password
        return read_pkcs11_public_jwk(text, pin=pin)
    if scheme == "tpm":
        return load_key_reference(text, password=password).public_jwk
    return load_public_jwk(text, password=password)
