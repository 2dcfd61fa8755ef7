"""Client commands: ``token`` (client credentials) and ``request`` (one DPoP request).

``dpopkit token`` discovers the authorization server (RFC 8414, then OIDC),
gets a DPoP-bound token with the client-credentials grant (nonce round trip
included) and prints the token response as JSON. ``dpopkit request`` sends one
request with a proof and ``Authorization: DPoP <token>``, retrying once on
``use_dpop_nonce``, and prints the status, the headers and the body; with
``--verbose`` it first prints the claims of every proof it sent.

Secrets can come from environment variables (``--client-secret-env``,
``--token-env``, ``--password-env``) so that they stay out of shell history.
Exit codes: 0 success, 1 the server refused (or a DPoP error), 2 usage or
configuration errors.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from dpopkit.cli import (
    KEY_HELP,
    KEY_UNLOCK_HELP,
    CommandError,
    add_insecure_http_flag,
    add_secret_flags,
    http_method,
    load_key_file,
    missing_extra,
    require_https,
    secret_from_env,
)
from dpopkit.core.jws import b64url_decode
from dpopkit.errors import DPoPError

__all__ = ["register"]


def _secret(value: str | None, env: str | None, what: str, *, flag: str) -> str | None:
    """``value`` from the command line, or the environment variable ``env`` (``flag``)."""
    return value if env is None else secret_from_env(env, what, flag=flag)


def _dpop_failure(exc: DPoPError) -> CommandError:
    if "error_description" in exc.detail:  # an error answer of the AS, as the token client keeps it
        return _as_failure(exc)
    return CommandError(f"{exc.error} ({exc.reason.value}): {exc.description}", 1)


def _as_failure(exc: DPoPError) -> CommandError:
    """One line with the AS's ``error``, status and ``error_description`` (RFC 6749 §5.2)."""
    code = exc.detail.get("error")
    status = exc.detail.get("status")
    if code is None:
        return CommandError(
            f"HTTP {status} from the authorization server, not an OAuth error object", 1
        )
    line = f"{code} (HTTP {status} from the authorization server)"
    description = exc.detail.get("error_description")
    if description is not None:
        line += f": {description}"
    return CommandError(line, 1)


def _cmd_token(args: argparse.Namespace) -> int:
    from dpopkit.client.tokens import TokenClient

    require_https(args.issuer, args.allow_insecure_http, flag="--issuer")
    key = load_key_file(args.key, args.password_env)
    secret = _secret(
        args.client_secret, args.client_secret_env, "client secret", flag="--client-secret-env"
    )
    try:
        client = TokenClient.from_issuer(
            args.issuer,
            key=key,
            client_id=args.client_id,
            client_secret=secret,
            allow_insecure_http=args.allow_insecure_http,
        )
        tokens = client.client_credentials(scope=args.scope, resource=args.resource)
    except DPoPError as exc:
        raise _dpop_failure(exc) from None
    except OSError as exc:
        raise CommandError(f"cannot reach {args.issuer}: {exc}", 1) from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(json.dumps(dict(tokens.raw), indent=2))
    return 0


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or name != name.strip():
        raise CommandError(f"-H {text!r}: expected 'Name: value'")
    if name.strip().lower() in ("dpop", "authorization"):
        raise CommandError(f"-H {name}: this header is set by dpopkit")
    if not value.isascii():
        raise CommandError(f"-H {name}: header values must be ASCII (RFC 9110 §5.5)")
    return name.strip(), value.strip()


def _claims(proof: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(b64url_decode(proof.split(".")[1]))
    return payload


def _cmd_request(args: argparse.Namespace) -> int:
    try:
        import httpx

        from dpopkit.client.httpx import DPoPAuth, dpop_error
    except ImportError as exc:
        raise missing_extra("httpx", exc) from None
    if len(args.target) == 1:
        method, url = ("POST" if args.data is not None else "GET"), args.target[0]
    elif len(args.target) == 2:
        method, url = http_method(args.target[0], flag="METHOD"), args.target[1]
    else:
        raise CommandError("expected [METHOD] URL")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise CommandError("--timeout must be a positive number of seconds")
    require_https(url, args.allow_insecure_http, flag="URL")
    key = load_key_file(args.key, args.password_env)
    token = _secret(args.token, args.token_env, "access token", flag="--token-env")
    headers = [_parse_header(h) for h in args.header]
    body: bytes | None = None
    if args.data is not None:
        if args.data.startswith("@"):
            try:
                with open(args.data[1:], "rb") as fh:
                    body = fh.read()
            except OSError as exc:
                raise CommandError(
                    f"--data {args.data}: cannot read {args.data[1:]}: {exc.strerror}"
                ) from None
        else:
            body = args.data.encode()
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    try:
        auth = DPoPAuth(key, token=token, allow_insecure_http=args.allow_insecure_http)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    sent: list[str] = []

    def record(request: httpx.Request) -> None:
        sent.append(request.headers["DPoP"])

    try:
        with httpx.Client(
            auth=auth, timeout=args.timeout, event_hooks={"request": [record]}
        ) as client:
            response = client.request(method, url, headers=headers, content=body)
    except DPoPError as exc:
        raise _dpop_failure(exc) from None
    except httpx.InvalidURL as exc:
        raise CommandError(f"invalid URL {url!r}: {exc}") from None
    except httpx.HTTPError as exc:
        raise CommandError(f"request failed: {exc}", 1) from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.verbose:
        for number, proof in enumerate(sent, 1):
            print(f"* proof {number}: {json.dumps(_claims(proof), sort_keys=True)}")
    print(f"HTTP {response.status_code} {response.reason_phrase}")
    for name, value in response.headers.multi_items():
        print(f"{name}: {value}")
    print()
    sys.stdout.write(response.text)
    if response.text and not response.text.endswith("\n"):
        print()
    sys.stdout.flush()
    reason = dpop_error(response)
    if reason is not None:
        raise _dpop_failure(reason)
    if response.status_code >= 400:
        raise CommandError(f"the server answered {response.status_code}", 1)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``token`` and ``request``."""
    p = subparsers.add_parser(
        "token",
        help="get a DPoP-bound token (client credentials)",
        description="Discover the AS, get a DPoP-bound token with the client-credentials "
        "grant and print the token response as JSON.",
    )
    p.set_defaults(func=_cmd_token)
    p.add_argument("--issuer", required=True, metavar="URL", help="the AS issuer identifier")
    p.add_argument("--client-id", required=True, metavar="ID", help="the client's client_id")
    add_secret_flags(
        p,
        "client-secret",
        metavar="S",
        help="the client secret (client_secret_basic); prefer --client-secret-env",
        env_help="read the client secret from VAR (not with --client-secret)",
    )
    p.add_argument("--key", required=True, metavar="KEY", help=KEY_HELP)
    p.add_argument("--password-env", metavar="VAR", help=KEY_UNLOCK_HELP)
    p.add_argument("--scope", metavar="S", help="the scope to ask for (space-separated)")
    p.add_argument("--resource", metavar="R", help="RFC 8707 resource indicator")
    add_insecure_http_flag(p, "allow http:// (loopback tests only)")

    r = subparsers.add_parser(
        "request",
        usage="dpopkit request [METHOD] URL --key KEYFILE [--token TOKEN | --token-env VAR] "
        "[-d DATA] [-H 'Name: value'] [--verbose]",
        help="send one request with DPoP (nonce retry included)",
        description="Send one request with a DPoP proof and Authorization: DPoP <token>; "
        "print the status, headers and body.",
    )
    r.set_defaults(func=_cmd_request)
    r.add_argument(
        "target",
        nargs="+",
        metavar="[METHOD] URL",
        help="the method (default GET, or POST with --data; upper-cased) and the URL",
    )
    r.add_argument("--key", required=True, metavar="KEY", help=KEY_HELP)
    r.add_argument("--password-env", metavar="VAR", help=KEY_UNLOCK_HELP)
    add_secret_flags(
        r,
        "token",
        metavar="TOKEN",
        help="the DPoP-bound access token; prefer --token-env",
        env_help="read the access token from VAR (not with --token)",
    )
    r.add_argument("-d", "--data", metavar="DATA", help="request body (@FILE reads a file)")
    r.add_argument(
        "-H", "--header", action="append", default=[], metavar="'Name: value'", help="add a header"
    )
    r.add_argument("--verbose", "-v", action="store_true", help="print the proofs' claims")
    r.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up on the request after SECONDS (default 30)",
    )
    add_insecure_http_flag(r, "allow http:// (loopback tests only)")
