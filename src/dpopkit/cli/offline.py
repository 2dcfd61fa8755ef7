"""Offline commands: ``keygen``, ``thumbprint``, ``proof`` and ``inspect``.

None of them touches the network. ``inspect`` prints what
:func:`dpopkit.cli.inspector.inspect_proof` finds (every RFC 9449 §4.3 check).
Secrets (key passwords, nonce secrets) are read from environment variables
named on the command line, never from the command line itself.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dpopkit.cli import (
    KEY_HELP,
    KEY_UNLOCK_HELP,
    CommandError,
    add_insecure_http_flag,
    add_nonce_secret_flag,
    http_method,
    load_key_file,
    load_public_key_file,
    nonce_secrets_from_env,
    require_https,
    secret_from_env,
)
from dpopkit.cli.inspector import CHECKS, Check, Inspection, inspect_proof, render_text
from dpopkit.core.algorithms import ALGORITHMS, DEFAULT_ALGORITHM
from dpopkit.core.htu import normalize_htu
from dpopkit.core.jws import (
    JWSError,
    json_loads_object,
)
from dpopkit.core.keys import DPoPKey
from dpopkit.core.nonce import NonceIssuer
from dpopkit.core.proof import (
    _NQCHAR_RE,
    _RESERVED_CLAIMS,
    create_proof,
)
from dpopkit.core.thumbprint import jwk_thumbprint
from dpopkit.errors import MissingExtraError
from dpopkit.keyfile import save_key

__all__ = ["CHECKS", "Check", "Inspection", "inspect_proof", "register"]

#: Largest input ``inspect`` reads (the policy's proof limit applies on top).
_MAX_INPUT = 1024 * 1024


# --- helpers for the commands ---------------------------------------------------------------


def _parse_now(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise CommandError(
                f"--now {text!r}: give seconds since the epoch or an ISO 8601 time"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if not math.isfinite(value):
        raise CommandError("--now must be a finite number")
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# --- commands -------------------------------------------------------------------------------


def _keygen_in_device(args: argparse.Namespace, pin: str | None) -> int:
    """``keygen --pkcs11 URI`` / ``--tpm HANDLE``: the key is made inside the device."""
    from dpopkit.signers import SignerError

    if args.out is not None or args.force or args.format != "jwk":
        raise CommandError("--out, --format and --force are for key files, not device keys")
    flag, reference = ("--pkcs11", args.pkcs11) if args.pkcs11 else ("--tpm", args.tpm)
    try:
        if args.pkcs11:
            from dpopkit.signers.pkcs11 import generate_pkcs11_key

            key = generate_pkcs11_key(args.pkcs11, alg=args.alg, pin=pin)
        else:
            if args.alg != DEFAULT_ALGORITHM:
                raise CommandError("--tpm makes ES256 keys (ECDSA P-256)")
            if pin is not None:
                raise CommandError("--password-env: a TPM key takes no password")
            from dpopkit.signers.tpm import generate_tpm_key

            if not reference.lower().startswith("tpm:"):
                reference = f"tpm:{reference}"
            key = generate_tpm_key(reference)
    except SignerError as exc:
        raise CommandError(f"{flag} {reference.partition('?')[0]}: {exc} ({exc.reason})") from None
    except MissingExtraError as exc:
        raise CommandError(f"{flag}: {exc}") from None
    except ValueError as exc:
        raise CommandError(f"{flag}: {exc}") from None
    print(f"made the key inside the device; it cannot be exported: {reference}", file=sys.stderr)
    print(f"jkt: {key.jkt}")
    print(f"public_jwk: {json.dumps(key.public_jwk)}")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    password = secret_from_env(args.password_env, "key password", flag="--password-env")
    if args.pkcs11 or args.tpm:
        return _keygen_in_device(args, password)
    if password is not None and args.format != "pem":
        raise CommandError("a password needs --format pem (a JWK file cannot be encrypted)")
    key = DPoPKey.generate(args.alg)  # argparse already restricted alg to ALGORITHMS
    if args.out is None:
        if args.format == "pem":
            sys.stdout.write(key.to_pem(password=password).decode("ascii"))
        else:
            _print_json(key.private_jwk())
        print(
            "note: this is a PRIVATE key: keep it secret "
            "(--out FILE writes it with 0600 permissions)",
            file=sys.stderr,
        )
        return 0
    try:
        save_key(key, args.out, password=password, format=args.format, overwrite=args.force)
    except FileExistsError:
        raise CommandError(
            f"--out {args.out}: the file exists (use --force to replace it)"
        ) from None
    except OSError as exc:
        raise CommandError(f"--out {args.out}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote the private key to {args.out} (mode 0600)", file=sys.stderr)
    print(f"jkt: {key.jkt}")
    print(f"public_jwk: {json.dumps(key.public_jwk)}")
    return 0


def _cmd_thumbprint(args: argparse.Namespace) -> int:
    print(jwk_thumbprint(load_public_key_file(args.keyfile, args.password_env)))
    return 0


def _cmd_proof(args: argparse.Namespace) -> int:
    claims: dict[str, Any] | None = None
    if args.claims is not None:
        try:
            claims = json_loads_object(args.claims.encode("utf-8"))
        except JWSError:
            raise CommandError("--claims must be a JSON object") from None
    reserved = sorted(_RESERVED_CLAIMS.intersection(claims or ()))
    if reserved:
        raise CommandError(f"--claims may not set {', '.join(reserved)} (the command sets them)")
    if args.nonce is not None and not _NQCHAR_RE.fullmatch(args.nonce):
        raise CommandError("--nonce must be 1*NQCHAR (RFC 9449 §8.1)")
    if args.access_token is not None and not args.access_token:
        raise CommandError("--access-token must not be empty")
    key = load_key_file(args.key, args.password_env)
    require_https(args.url, args.allow_insecure_http, flag="--url")
    try:
        normalize_htu(args.url)
    except ValueError as exc:
        raise CommandError(f"--url {args.url!r} is not a valid http(s) URL: {exc}") from None
    try:
        proof = create_proof(
            key,
            htm=http_method(args.method),
            htu=args.url,
            access_token=args.access_token,
            nonce=args.nonce,
            claims=claims,
            allow_insecure_http=args.allow_insecure_http,
        )
    except ValueError as exc:
        raise CommandError(f"cannot create the proof: {exc}") from None
    print(proof)
    return 0


def _read_proof(arg: str) -> str:
    if arg == "-":
        data = sys.stdin.read(_MAX_INPUT + 1)
        if len(data) > _MAX_INPUT:
            raise CommandError(f"the input is larger than {_MAX_INPUT} characters")
        arg = data
    text = arg.strip()
    if text.lower().startswith("dpop:"):  # pasted as a header line
        text = text[5:].strip()
    if not text:
        raise CommandError("no proof given")
    return text


def _cmd_inspect(args: argparse.Namespace) -> int:
    proof = _read_proof(args.proof)
    now = _parse_now(args.now) if args.now is not None else time.time()
    if args.url is not None:
        try:
            normalize_htu(args.url)
        except ValueError as exc:
            raise CommandError(f"--url {args.url!r} is not a valid http(s) URL: {exc}") from None
    issuer: NonceIssuer | None = None
    nonce_secrets = nonce_secrets_from_env(args.nonce_secret_env)
    if nonce_secrets is not None:
        issuer = NonceIssuer(nonce_secrets, context=args.nonce_context)
    result = inspect_proof(
        proof,
        htm=None if args.method is None else http_method(args.method),
        htu=args.url,
        access_token=args.access_token,
        expected_jkt=args.jkt,
        nonce_issuer=issuer,
        now=now,
    )
    if args.json:
        _print_json(result.as_dict())
    else:
        print(render_text(result))
    return 0 if result.valid else 1


# --- registration ---------------------------------------------------------------------------


def _add(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Callable[[argparse.Namespace], int],
    help_text: str,
    description: str,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=description)
    parser.set_defaults(func=func)
    return parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keygen``, ``thumbprint``, ``proof`` and ``inspect``."""
    p = _add(
        subparsers,
        "keygen",
        _cmd_keygen,
        "generate a DPoP key pair",
        "Generate a DPoP private key. Without --out the private JWK (or PEM) is printed; "
        "with --out it is written with 0600 permissions and the jkt and public JWK are printed. "
        "With --pkcs11 or --tpm the key is made inside the device and never leaves it.",
    )
    p.add_argument(
        "--alg",
        default=DEFAULT_ALGORITHM,
        choices=ALGORITHMS,
        help="signing algorithm (default ES256)",
    )
    p.add_argument("--out", metavar="FILE", help="write the private key to FILE (mode 0600)")
    p.add_argument(
        "--format", choices=("jwk", "pem"), default="jwk", help="key file format (default jwk)"
    )
    p.add_argument(
        "--password-env",
        metavar="VAR",
        help="encrypt the PEM with the password in environment variable VAR "
        "(with --pkcs11: the token PIN)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    device = p.add_mutually_exclusive_group()
    device.add_argument(
        "--pkcs11",
        metavar="URI",
        help="make the key inside a PKCS#11 token, named by an RFC 7512 URI "
        "(pkcs11:token=T;object=LABEL?module-path=...); the PIN comes from pin-source=file:..., "
        "--password-env or DPOPKIT_PKCS11_PIN",
    )
    device.add_argument(
        "--tpm",
        metavar="HANDLE",
        help="make an ES256 key inside the TPM at a persistent handle "
        "(tpm:0x81010010[?tcti=swtpm:port=2321]; TCTI default DPOPKIT_TPM_TCTI or "
        "device:/dev/tpmrm0)",
    )

    p = _add(
        subparsers,
        "thumbprint",
        _cmd_thumbprint,
        "print the RFC 7638 thumbprint (jkt) of a key",
        "Print the jkt (RFC 7638 SHA-256 thumbprint) of a private or public JWK or PEM file, "
        "or of a key in a PKCS#11 token (pkcs11:...) or a TPM (tpm:0x81...).",
    )
    p.add_argument(
        "keyfile",
        metavar="KEY",
        help="a private or public key file (JWK or PEM), a pkcs11: URI or a tpm: handle",
    )
    p.add_argument("--password-env", metavar="VAR", help=KEY_UNLOCK_HELP)

    p = _add(
        subparsers,
        "proof",
        _cmd_proof,
        "create a DPoP proof",
        'Print a DPoP proof for one request, e.g. curl -H "DPoP: $(dpopkit proof ...)".',
    )
    p.add_argument("--key", required=True, metavar="KEY", help=KEY_HELP)
    p.add_argument("--password-env", metavar="VAR", help=KEY_UNLOCK_HELP)
    p.add_argument(
        "--method",
        required=True,
        metavar="M",
        help="HTTP method (upper-cased, as `request` sends it)",
    )
    p.add_argument("--url", required=True, metavar="U", help="request URL (https)")
    p.add_argument("--nonce", metavar="N", help="the server's DPoP-Nonce value")
    p.add_argument("--access-token", metavar="T", help="adds ath (RFC 9449 §4.2)")
    p.add_argument("--claims", metavar="JSON", help="extra claims as a JSON object")
    add_insecure_http_flag(p, "allow an http:// URL (loopback tests only)")

    p = _add(
        subparsers,
        "inspect",
        _cmd_inspect,
        "decode a DPoP proof and show every RFC 9449 §4.3 check",
        "Decode a proof and run every RFC 9449 §4.3 check (pass, FAIL or skip). "
        "Exit 0 valid, 1 invalid, 2 usage error.",
    )
    p.add_argument("proof", metavar="PROOF", help="the proof, or - to read it from stdin")
    p.add_argument("--method", metavar="M", help="the request method (upper-cased; checks htm)")
    p.add_argument("--url", metavar="U", help="the request URL (checks htu)")
    p.add_argument("--access-token", metavar="T", help="the access token (checks ath)")
    p.add_argument("--jkt", metavar="J", help="the token's cnf.jkt (checks the key binding)")
    p.add_argument(
        "--now", metavar="T", help="the time to check iat against (epoch seconds or ISO 8601)"
    )
    add_nonce_secret_flag(p, "check the nonce with the server's nonce secrets")
    p.add_argument(
        "--nonce-context", default="", metavar="C", help="the nonce issuer's context (default '')"
    )
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
