"""DPoP keys held in a PKCS#11 token (HSM, smart card, YubiKey PIV, SoftHSM): ``dpopkit[pkcs11]``.

The private key is created in the token as sensitive and not extractable and
only ever used through ``C_Sign``: proofs are signed inside the device, and the
public JWK (and so the ``jkt``) is read from the token's public key object.

Keys are named with RFC 7512 ``pkcs11:`` URIs::

    pkcs11:token=dpop;object=client?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin

* path attributes: ``token``, ``manufacturer``, ``serial``, ``model``, ``slot-id``
  choose the token; ``object`` (the label), ``id`` (percent-encoded bytes) and
  ``type`` (``private``) choose the key;
* query attributes: ``module-path`` (the PKCS#11 library; else the
  ``DPOPKIT_PKCS11_MODULE`` environment variable) and ``pin-source=file:...``.
  ``pin-value`` is refused: a PIN on a command line is visible to every user of
  the machine. Without ``pin-source`` the PIN is the ``pin`` argument, else the
  ``DPOPKIT_PKCS11_PIN`` environment variable.

Signatures: ECDSA keys (P-256, P-384, P-521) sign with ``CKM_ECDSA`` over a
digest computed here (the mechanism every token has), which returns the raw
``R‖S`` that JWS needs (PKCS#11 v2.40 §2.3.1, RFC 7518 §3.4); RSA keys sign with
``CKM_RSA_PKCS_PSS`` (``PS256``..., the default) or ``CKM_RSA_PKCS`` over a
DigestInfo (``RS256``...).

One logged-in session per token is opened and shared by every key of that
token in the process; signing holds that session's lock, so a key may be used
from many threads. A token that went away, a wrong or missing PIN and a key that
is not there are each a :class:`~dpopkit.signers.SignerError` with a ``reason``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from cryptography.hazmat.primitives.asymmetric import ec

from dpopkit.core.algorithms import EC_CURVES, spec_for
from dpopkit.core.jws import b64url_encode
from dpopkit.core.keys import DPoPKey
from dpopkit.errors import requires_extra
from dpopkit.signers._errors import SignerError

with requires_extra("pkcs11", needed_by=__name__):
    import pkcs11
    from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
    from pkcs11 import exceptions as p11
    from pkcs11.util.ec import encode_named_curve_parameters

__all__ = [
    "MODULE_ENV",
    "PIN_ENV",
    "Pkcs11Signer",
    "Pkcs11Uri",
    "generate_pkcs11_key",
    "open_pkcs11_key",
    "read_pkcs11_public_jwk",
]

#: The environment variable holding the token PIN when the URI has no ``pin-source``.
PIN_ENV = "DPOPKIT_PKCS11_PIN"
#: The environment variable naming the PKCS#11 library when the URI has no ``module-path``.
MODULE_ENV = "DPOPKIT_PKCS11_MODULE"

_PATH_ATTRS = {"token", "manufacturer", "serial", "model", "slot-id", "object", "id", "type"}
_QUERY_ATTRS = {"module-path", "module-name", "pin-source"}
_CURVES = {"P-256": "secp256r1", "P-384": "secp384r1", "P-521": "secp521r1"}
_EC_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_HASHES: dict[str, Callable[[bytes], Any]] = {
    "256": hashlib.sha256,
    "384": hashlib.sha384,
    "512": hashlib.sha512,
}
# DER DigestInfo prefixes for CKM_RSA_PKCS (RFC 8017 §9.2 note 1).
_DIGEST_INFO = {
    "256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_PSS = {
    "256": (Mechanism.SHA256, MGF.SHA256, 32),
    "384": (Mechanism.SHA384, MGF.SHA384, 48),
    "512": (Mechanism.SHA512, MGF.SHA512, 64),
}
# A device gone: the session (or the key's handle in it) cannot be used any more.
_GONE = (
    p11.TokenNotPresent,
    p11.DeviceRemoved,
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.ObjectHandleInvalid,
    p11.KeyHandleInvalid,
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Pkcs11Uri:
    """An RFC 7512 ``pkcs11:`` URI, parsed.

    Attributes:
        path: the path attributes (``token``, ``object``, ...), percent-decoded;
            ``id`` is kept apart as bytes.
        id: the ``id`` attribute (``CKA_ID``), or None.
        module_path: the ``module-path`` query attribute, or None.
        pin_source: the ``pin-source`` query attribute, or None.
    """

    path: Mapping[str, str]
    id: bytes | None
    module_path: str | None
    pin_source: str | None

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        """Parse ``text``; unknown attributes (other than ``x-`` ones) are refused.

        Raises:
            SignerError: ``bad_reference``.
        """
        if text[:7].lower() != "pkcs11:":
            raise SignerError("bad_reference", "a PKCS#11 URI starts with pkcs11: (RFC 7512)")
        body, _, query = text[7:].partition("?")
        path: dict[str, str] = {}
        key_id: bytes | None = None
        for part in filter(None, body.split(";")):
            name, value = _attribute(part, _PATH_ATTRS)
            if name == "id":
                key_id = unquote_to_bytes(value)
            elif name is not None:
                path[name] = _text(value, name)
        extra: dict[str, str] = {}
        for part in filter(None, query.split("&")):
            if part.partition("=")[0].lower() == "pin-value":
                raise SignerError(
                    "bad_reference",
                    "pin-value is refused: a PIN on a command line is visible to other users; "
                    f"use pin-source=file:... or the {PIN_ENV} environment variable",
                )
            name, value = _attribute(part, _QUERY_ATTRS)
            if name is not None:
                extra[name] = _text(value, name)
        if path.get("type", "private") not in ("private", "public"):
            raise SignerError("bad_reference", "type must name a private (or public) key")
        if "object" not in path and key_id is None:
            raise SignerError("bad_reference", "the URI names no key: add object=LABEL or id=...")
        return cls(
            path=path,
            id=key_id,
            module_path=extra.get("module-path"),
            pin_source=extra.get("pin-source"),
        )


def _attribute(part: str, known: set[str]) -> tuple[str | None, str]:
    name, eq, value = part.partition("=")
    name = name.lower()
    if not eq:
        raise SignerError("bad_reference", f"the URI attribute {name!r} has no value")
    if name.startswith("x-"):
        return None, value  # vendor attributes: ignored (RFC 7512 §2.3)
    if name not in known:
        raise SignerError("bad_reference", f"unknown PKCS#11 URI attribute {name!r}")
    return name, value


def _text(value: str, name: str) -> str:
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise SignerError("bad_reference", f"{name} is not UTF-8") from None


# --- the shared sessions -----------------------------------------------------------------------

_LOCK = threading.Lock()


class _Shared:
    """One logged-in session of one token, used by every key of that token."""

    def __init__(self, token: Any, pin: str) -> None:
        self.token = token
        self.lock = threading.RLock()
        self.pin_digest = hashlib.sha256(pin.encode()).digest()
        self.session: Any = _login(token, pin)


_SESSIONS: dict[tuple[str, str], _Shared] = {}


def _login(token: Any, pin: str) -> Any:
    try:
        return token.open(user_pin=pin, rw=True)
    except p11.PinIncorrect:
        raise SignerError("pin_incorrect", "the token refused the PIN") from None
    except p11.PinLocked:
        raise SignerError("pin_locked", "the token's PIN is locked") from None
    except (p11.PinLenRange, p11.PinInvalid):
        raise SignerError("pin_incorrect", "the token refused the PIN (bad length)") from None
    except _GONE:
        raise SignerError("token_not_present", "the token went away") from None
    except p11.PKCS11Error as exc:
        raise SignerError("device_error", f"cannot open the token: {type(exc).__name__}") from None


def _load_library(path: str) -> Any:
    try:
        return pkcs11.lib(path)
    except (p11.PKCS11Error, OSError, RuntimeError) as exc:
        raise SignerError(
            "module_not_found", f"cannot load the PKCS#11 module {path}: {exc}"
        ) from None


def _module_path(uri: Pkcs11Uri) -> str:
    path = uri.module_path or os.environ.get(MODULE_ENV)
    if not path:
        raise SignerError(
            "module_not_found", f"no PKCS#11 module: add ?module-path=... or set {MODULE_ENV}"
        )
    return path


def _find_token(lib: Any, uri: Pkcs11Uri) -> Any:
    wanted = uri.path
    found = []
    try:
        slots = lib.get_slots(token_present=True)
        for slot in slots:
            if "slot-id" in wanted and str(slot.slot_id) != wanted["slot-id"]:
                continue
            token = slot.get_token()
            if not token.flags & TokenFlag.TOKEN_INITIALIZED:
                continue  # an empty slot (SoftHSM always offers one)
            facts = {
                "token": token.label,
                "manufacturer": token.manufacturer_id,
                "model": token.model,
                "serial": _str(token.serial),
            }
            if all(wanted[name] == value for name, value in facts.items() if name in wanted):
                found.append(token)
    except p11.PKCS11Error as exc:
        raise SignerError("device_error", f"cannot list tokens: {type(exc).__name__}") from None
    if not found:
        raise SignerError("token_not_present", "no token matching the URI is present")
    if len(found) > 1:
        raise SignerError("bad_reference", "several tokens match the URI; add token= or serial=")
    return found[0]


def _str(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _pin(uri: Pkcs11Uri, pin: str | None) -> str:
    if uri.pin_source is not None:
        if not uri.pin_source.startswith("file:"):
            raise SignerError("bad_reference", "pin-source must be a file: URI")
        name = uri.pin_source[5:]
        if name.startswith("//"):
            name = name[2:] if name.startswith("///") else name[name.index("/", 2) :]
        try:
            with open(unquote_to_bytes(name).decode(), encoding="utf-8") as handle:
                value = handle.read(4096).rstrip("\r\n")
        except OSError as exc:
            raise SignerError(
                "pin_missing", f"cannot read the pin-source file: {exc.strerror or exc}"
            ) from None
        if not value:
            raise SignerError("pin_missing", "the pin-source file is empty")
        return value
    if pin:
        return pin
    from_env = os.environ.get(PIN_ENV)
    if not from_env:
        raise SignerError("pin_missing", f"no PIN: add pin-source=file:... or set {PIN_ENV}")
    return from_env


def _shared_session(uri: Pkcs11Uri, pin: str, *, fresh: bool = False) -> _Shared:
    module = _module_path(uri)
    with _LOCK:
        lib = _load_library(module)
        token = _find_token(lib, uri)
        key = (module, f"{_str(token.serial)}/{token.label}")
        shared = _SESSIONS.get(key)
        if shared is not None and not fresh:
            digest = hashlib.sha256(pin.encode()).digest()
            if hmac.compare_digest(digest, shared.pin_digest):
                return shared
        if shared is not None:
            _SESSIONS.pop(key, None)
            with shared.lock:  # not while one of its keys is signing
                _close_quietly(shared.session)
        shared = _Shared(token, pin)
        _SESSIONS[key] = shared
        return shared


def _close_quietly(session: Any) -> None:
    with contextlib.suppress(p11.PKCS11Error):  # the device is gone already
        session.close()


def _device(call: Callable[[], _T], what: str) -> _T:
    try:
        return call()
    except _GONE:
        raise SignerError("token_not_present", f"the token went away ({what})") from None
    except p11.UserNotLoggedIn:
        raise SignerError("pin_missing", f"the token needs a login ({what})") from None
    except p11.PKCS11Error as exc:
        raise SignerError("device_error", f"{what} failed: {type(exc).__name__}") from None


# --- keys ---------------------------------------------------------------------------------


def _find_one(session: Any, uri: Pkcs11Uri, object_class: Any) -> Any:
    attrs: dict[Any, Any] = {Attribute.CLASS: object_class}
    if "object" in uri.path:
        attrs[Attribute.LABEL] = uri.path["object"]
    if uri.id is not None:
        attrs[Attribute.ID] = uri.id
    found = list(session.get_objects(attrs))
    if len(found) > 1:
        raise SignerError("bad_reference", "several keys match the URI; add id=...")
    return found[0] if found else None


def _public_jwk(public: Any) -> dict[str, str]:
    key_type = public[Attribute.KEY_TYPE]
    if key_type == KeyType.EC:
        params = bytes(public[Attribute.EC_PARAMS])
        crv = next(
            (c for c, name in _CURVES.items() if encode_named_curve_parameters(name) == params),
            None,
        )
        if crv is None:
            raise SignerError("unsupported_key", "the EC key is not on P-256, P-384 or P-521")
        point = bytes(public[Attribute.EC_POINT])
        size = EC_CURVES[crv][1]
        if len(point) != 2 * size + 1:  # DER OCTET STRING around the point (PKCS#11 §2.3.3)
            point = _der_octets(point)
        try:
            numbers = ec.EllipticCurvePublicKey.from_encoded_point(
                EC_CURVES[crv][0], point
            ).public_numbers()
        except ValueError:
            raise SignerError("unsupported_key", "the token's EC point is not valid") from None
        return {
            "kty": "EC",
            "crv": crv,
            "x": b64url_encode(numbers.x.to_bytes(size, "big")),
            "y": b64url_encode(numbers.y.to_bytes(size, "big")),
        }
    if key_type == KeyType.RSA:
        n = int.from_bytes(bytes(public[Attribute.MODULUS]), "big")
        e = int.from_bytes(bytes(public[Attribute.PUBLIC_EXPONENT]), "big")
        return {
            "kty": "RSA",
            "e": b64url_encode(e.to_bytes((e.bit_length() + 7) // 8, "big")),
            "n": b64url_encode(n.to_bytes((n.bit_length() + 7) // 8, "big")),
        }
    raise SignerError("unsupported_key", "the key is neither EC nor RSA")


def _der_octets(der: bytes) -> bytes:
    """The content of a DER OCTET STRING (short or one/two-byte long length)."""
    if len(der) < 2 or der[0] != 0x04:
        raise SignerError("unsupported_key", "the token's EC point is not an OCTET STRING")
    if der[1] < 0x80:
        length, start = der[1], 2
    else:
        count = der[1] & 0x7F
        length, start = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    if len(der) != start + length:
        raise SignerError("unsupported_key", "the token's EC point has a bad length")
    return der[start:]


def _alg_for(jwk: Mapping[str, str], alg: str | None) -> str:
    if jwk["kty"] == "EC":
        chosen = alg or _EC_ALG[jwk["crv"]]
        if chosen != _EC_ALG[jwk["crv"]]:
            raise SignerError("unsupported_key", f"{chosen} does not fit an EC {jwk['crv']} key")
        return chosen
    chosen = alg or "PS256"
    if chosen[:2] not in ("RS", "PS") or spec_for(chosen) is None:
        raise SignerError("unsupported_key", f"{chosen} does not fit an RSA key")
    return chosen


class Pkcs11Signer:
    """A :class:`~dpopkit.Signer` whose private key stays in a PKCS#11 token.

    Build one with :meth:`open` (or :func:`open_pkcs11_key` for a ready
    :class:`~dpopkit.DPoPKey`). Safe to use from many threads.
    """

    def __init__(self, *, _uri: Pkcs11Uri, _pin: str, _alg: str | None) -> None:
        self._uri = _uri
        self._pin = _pin
        self._shared = _shared_session(_uri, _pin)
        with self._shared.lock:
            self._private, public = self._objects(self._shared.session)
            self._jwk = _device(lambda: _public_jwk(public), "reading the public key")
        self._alg = _alg_for(self._jwk, _alg)

    @classmethod
    def open(cls, uri: str, *, pin: str | None = None, alg: str | None = None) -> Pkcs11Signer:
        """Open the key named by ``uri`` (RFC 7512).

        Args:
            uri: the ``pkcs11:`` URI of the private key.
            pin: the user PIN when the URI has no ``pin-source`` (else ``DPOPKIT_PKCS11_PIN``).
            alg: the JWS ``alg`` (an EC key's curve decides; an RSA key defaults to ``PS256``).

        Raises:
            SignerError: a bad URI, a missing module, token or key, a wrong PIN.
        """
        parsed = Pkcs11Uri.parse(uri)
        return cls(_uri=parsed, _pin=_pin(parsed, pin), _alg=alg)

    def _objects(self, session: Any) -> tuple[Any, Any]:
        private = _device(
            lambda: _find_one(session, self._uri, ObjectClass.PRIVATE_KEY), "finding the key"
        )
        if private is None:
            raise SignerError("key_not_found", "no private key in the token matches the URI")
        key_id = private[Attribute.ID] if self._uri.id is None else self._uri.id
        wanted = replace(self._uri, id=key_id or None)
        public = _device(
            lambda: _find_one(session, wanted, ObjectClass.PUBLIC_KEY), "finding the public key"
        )
        if public is None:
            raise SignerError("key_not_found", "the token holds no public key for this key")
        return private, public

    @property
    def alg(self) -> str:
        """The JWS ``alg`` of the proofs."""
        return self._alg

    @property
    def public_jwk(self) -> Mapping[str, str]:
        """The public key read from the token."""
        return dict(self._jwk)

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` inside the token (raw ``R‖S`` for ECDSA).

        A session the token closed (a token pulled out and put back) is reopened
        once; a token that stays away is a ``token_not_present`` :class:`SignerError`.
        """
        try:
            with self._shared.lock:
                return self._sign_once(data)
        except SignerError as exc:
            if exc.reason != "token_not_present":
                raise
        try:
            self._shared = _shared_session(self._uri, self._pin, fresh=True)
            with self._shared.lock:
                self._private, _ = self._objects(self._shared.session)
                return self._sign_once(data)
        except SignerError as exc:
            raise SignerError(
                "token_not_present", f"the token or its key went away ({exc.reason})"
            ) from None

    def _sign_once(self, data: bytes) -> bytes:
        bits = self._alg[2:]
        digest = _HASHES[bits](data).digest()
        private = self._private
        if self._alg.startswith("ES"):
            signature = _device(lambda: private.sign(digest, mechanism=Mechanism.ECDSA), "signing")
            size = EC_CURVES[self._jwk["crv"]][1]
            if len(signature) != 2 * size:
                raise SignerError("device_error", "the token's ECDSA signature is not raw R||S")
            return bytes(signature)
        if self._alg.startswith("PS"):
            return bytes(
                _device(
                    lambda: private.sign(
                        digest, mechanism=Mechanism.RSA_PKCS_PSS, mechanism_param=_PSS[bits]
                    ),
                    "signing",
                )
            )
        info = _DIGEST_INFO[bits] + digest
        return bytes(_device(lambda: private.sign(info, mechanism=Mechanism.RSA_PKCS), "signing"))

    def __repr__(self) -> str:
        return f"Pkcs11Signer(alg={self._alg!r}, object={self._uri.path.get('object')!r})"


def open_pkcs11_key(uri: str, *, pin: str | None = None, alg: str | None = None) -> DPoPKey:
    """A :class:`~dpopkit.DPoPKey` signing with the token key named by ``uri``.

    See :meth:`Pkcs11Signer.open` for the arguments. One signature is made and
    verified at once (:meth:`DPoPKey.from_signer`), so a key that cannot sign
    fails here, not at the server.

    Raises:
        SignerError: the URI, module, token, PIN or key is wrong.
    """
    signer = Pkcs11Signer.open(uri, pin=pin, alg=alg)
    try:
        return DPoPKey.from_signer(signer)
    except ValueError as exc:
        raise SignerError("unsupported_key", str(exc)) from None


def read_pkcs11_public_jwk(uri: str, *, pin: str | None = None) -> dict[str, str]:
    """The public JWK of the key named by ``uri``, read from the token.

    Logs in only when a PIN is at hand (``pin``, ``pin-source`` or the
    environment); most tokens show public keys without a login.

    Raises:
        SignerError: the URI, module, token or key is wrong.
    """
    parsed = Pkcs11Uri.parse(uri)
    try:
        secret: str | None = _pin(parsed, pin)
    except SignerError as exc:
        if exc.reason != "pin_missing" or parsed.pin_source is not None:
            raise
        secret = None
    if secret is not None:
        return open_pkcs11_key(uri, pin=secret).public_jwk
    with _LOCK:
        token = _find_token(_load_library(_module_path(parsed)), parsed)
    session = _device(lambda: token.open(), "opening the token")
    try:
        public = _find_one(session, parsed, ObjectClass.PUBLIC_KEY)
        if public is None:
            raise SignerError("key_not_found", "no public key in the token matches the URI")
        return _device(lambda: _public_jwk(public), "reading the public key")
    finally:
        _close_quietly(session)


def _objects_with(session: Any, attrs: dict[Any, Any]) -> list[Any]:
    return list(session.get_objects(attrs))


def generate_pkcs11_key(
    uri: str, *, alg: str = "ES256", pin: str | None = None, rsa_bits: int = 2048
) -> DPoPKey:
    """Generate a key pair inside the token: the private half is sensitive and never extractable.

    The URI names the new key by ``object`` (label, required) and optionally
    ``id`` (else 16 random bytes). A key that already carries the label or id is
    never overwritten.

    Raises:
        SignerError: ``key_exists``, or a URI, module, token or PIN problem.
        ValueError: an unsupported ``alg`` (EdDSA is not offered by PKCS#11 v2.40) or
            ``rsa_bits`` below 2048.
    """
    parsed = Pkcs11Uri.parse(uri)
    spec = spec_for(alg)
    if spec is None or spec.kty not in ("EC", "RSA"):
        raise ValueError(f"{alg} keys cannot be made in a PKCS#11 token: use ES* or RS*/PS*")
    if spec.kty == "RSA" and rsa_bits < 2048:
        raise ValueError("RSA keys must have at least 2048 bits")
    label = parsed.path.get("object")
    if label is None:
        raise SignerError("bad_reference", "a new key needs object=LABEL in the URI")
    key_id = parsed.id or secrets.token_bytes(16)
    shared = _shared_session(parsed, _pin(parsed, pin))
    session = shared.session
    common = {Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id}
    private_template = {
        **common,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
    }
    public_template = {**common, Attribute.VERIFY: True}
    with shared.lock:
        for attrs in ({Attribute.LABEL: label}, {Attribute.ID: key_id}):
            if _device(partial(_objects_with, session, attrs), "searching the token"):
                raise SignerError("key_exists", "the token already holds a key with that label/id")
        if spec.crv is not None:
            curve = encode_named_curve_parameters(_CURVES[spec.crv])
            params = _device(
                lambda: session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: curve},
                    local=True,
                ),
                "preparing the curve",
            )
            _device(
                lambda: params.generate_keypair(
                    store=True, public_template=public_template, private_template=private_template
                ),
                "generating the key",
            )
        else:
            _device(
                lambda: session.generate_keypair(
                    KeyType.RSA,
                    rsa_bits,
                    store=True,
                    public_template=public_template,
                    private_template=private_template,
                ),
                "generating the key",
            )
    named = replace(parsed, id=key_id)
    signer = Pkcs11Signer(_uri=named, _pin=_pin(parsed, pin), _alg=alg)
    return DPoPKey.from_signer(signer)
