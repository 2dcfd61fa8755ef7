"""The ``dpopkit`` command line (argparse; always installed with the core).

Each command group lives in its own module exposing ``register(subparsers)``,
which adds sub-commands whose ``func(args) -> int`` does the work. Commands
print one clear line on failure and return an exit code; no tracebacks.
Exit codes: 0 success, 1 a negative result (e.g. an invalid proof), 2 usage
or configuration errors (including a missing optional extra), 3 a server command
cannot listen on its address.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from dpopkit import __version__
from dpopkit.core.keys import DPoPKey
from dpopkit.core.nonce import parse_nonce_secrets
from dpopkit.errors import MissingExtraError
from dpopkit.signers import SignerError, load_key_reference, load_public_jwk_reference

__all__ = [
    "KEY_HELP",
    "KEY_UNLOCK_HELP",
    "CommandError",
    "add_insecure_http_flag",
    "add_nonce_secret_flag",
    "add_secret_flags",
    "command_parsers",
    "http_method",
    "join_dash_values",
    "load_key_file",
    "load_public_key_file",
    "main",
    "missing_extra",
    "nonce_secrets_from_env",
    "require_https",
    "secret_from_env",
    "value_options",
]

_T = TypeVar("_T")

#: Modules under dpopkit.cli that add commands (in help order).
COMMAND_MODULES: tuple[str, ...] = ("offline", "client_cmds", "serve_api", "serve", "demo")


class CommandError(Exception):
    """A failure to report in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def missing_extra(extra: str, exc: ImportError) -> CommandError:
    """The error for a command whose optional dependencies are not installed."""
    return CommandError(
        f"this command needs an optional dependency ({exc.name}): pip install 'dpopkit[{extra}]'"
    )


def secret_from_env(var: str | None, what: str, *, flag: str) -> str | None:
    """The value of environment variable ``var`` (None when no variable is named).

    Secrets come from the environment, not the command line (which ``ps`` shows).
    ``flag`` is the option that named the variable; errors name it.
    """
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise CommandError(f"{flag} {var}: environment variable (the {what}) is not set")
    if not value:
        raise CommandError(f"{flag} {var}: environment variable (the {what}) is empty")
    return value


def nonce_secrets_from_env(names: Sequence[str] | None) -> list[bytes] | None:
    """The nonce secrets held in the environment variables ``names``, newest first.

    The one reader behind every command's ``--nonce-secret-env`` (repeatable): each
    variable holds one secret or several separated by commas, each in the one text
    format (:func:`dpopkit.core.nonce.parse_nonce_secret`: base64url of >= 32 bytes).
    The first secret signs, all verify. None when no variable is named.
    """
    if not names:
        return None
    found: list[bytes] = []
    for name in names:
        value = (
            secret_from_env(name, "nonce secret", flag="--nonce-secret-env") or ""
        )  # never empty: it raised
        try:
            found.extend(parse_nonce_secrets(value))
        except ValueError as exc:
            raise CommandError(f"--nonce-secret-env {name}: {exc}") from None
    return found


def add_nonce_secret_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """``--nonce-secret-env VAR``, repeatable, the same flag on every command."""
    parser.add_argument(
        "--nonce-secret-env",
        action="append",
        metavar="VAR",
        help=help
        + ": VAR holds base64url secrets of >= 32 bytes, comma-separated; repeat the flag "
        "for more variables; the first secret signs, all verify",
    )


#: The help of every option that names a DPoP private key.
KEY_HELP = (
    "the DPoP private key: a key file (JWK or PEM), a PKCS#11 URI (pkcs11:token=...;object=...) "
    "or a TPM handle (tpm:0x81010010)"
)
#: The help of every ``--password-env`` next to such an option.
KEY_UNLOCK_HELP = "password of an encrypted PEM key file, or the PIN of a PKCS#11 token"


def _resolve(reference: str, flag: str, load: Callable[[], _T]) -> _T:
    """``load()``, its failures turned into one-line :class:`CommandError` naming ``flag``."""
    try:
        return load()
    except SignerError as exc:
        raise CommandError(f"{flag} {_shown(reference)}: {exc} ({exc.reason})") from None
    except MissingExtraError as exc:
        raise CommandError(f"{flag}: {exc}") from None
    except OSError as exc:
        raise CommandError(
            f"{flag} {reference}: cannot read the key file: {exc.strerror or exc}"
        ) from None
    except ValueError as exc:
        raise CommandError(f"{flag} {reference}: cannot load the key file: {exc}") from None


def _shown(reference: str) -> str:
    """A device reference without its query (which may name a PIN file)."""
    return reference.partition("?")[0]


def load_key_file(path: str, password_env: str | None, *, flag: str = "--key") -> DPoPKey:
    """The private key named by ``path``: every command that signs reads its key here.

    ``path`` is a key file (JWK or PEM, encrypted with the password in
    ``password_env``), a ``pkcs11:`` URI (``password_env`` then holds the PIN) or
    a ``tpm:`` handle (:func:`dpopkit.signers.load_key_reference`).
    ``flag`` is the option that named the key; errors name it.
    """
    password = secret_from_env(password_env, "key password", flag="--password-env")
    return _resolve(path, flag, lambda: load_key_reference(path, password=password))


def load_public_key_file(
    path: str, password_env: str | None, *, flag: str = "KEYFILE"
) -> dict[str, str]:
    """The public JWK of a key file (private or public), a ``pkcs11:`` URI or a ``tpm:`` handle."""
    password = secret_from_env(password_env, "key password", flag="--password-env")
    return _resolve(path, flag, lambda: load_public_jwk_reference(path, password=password))


def add_insecure_http_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """``--allow-insecure-http`` (alias ``--insecure-http``), the same flag on every command."""
    parser.add_argument(
        "--allow-insecure-http",
        "--insecure-http",
        dest="allow_insecure_http",
        action="store_true",
        help=help,
    )


def require_https(url: str, allowed: bool, *, flag: str) -> None:
    """Refuse an ``http://`` URL unless ``--allow-insecure-http`` was given (G-1).

    ``flag`` is the option that gave the URL; the error names it.
    """
    if url[:7].lower() == "http://" and not allowed:
        raise CommandError(
            f"{flag}: DPoP needs https; add --allow-insecure-http for a loopback test server"
        )


def add_secret_flags(
    parser: argparse.ArgumentParser, flag: str, *, metavar: str, help: str, env_help: str
) -> None:
    """``--FLAG VALUE`` and ``--FLAG-env VAR``: one or the other, never both.

    The pair is an argparse mutually exclusive group, so giving both is a usage
    error (exit 2) instead of one silently winning.
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument(f"--{flag}", metavar=metavar, help=help)
    group.add_argument(f"--{flag}-env", metavar="VAR", help=env_help)


#: RFC 9110 §5.6.2 ``token`` characters: what a method name may hold.
_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def http_method(text: str, *, flag: str = "--method") -> str:
    """The request method every command uses: upper-cased, an RFC 9110 §9.1 token.

    Methods are case-sensitive on the wire (RFC 9110 §9.1) and ``htm`` must equal
    the method sent (RFC 9449 §4.3), so the CLI normalises ``get`` to ``GET`` once,
    here, for ``proof``, ``inspect`` and ``request`` alike (HTTP clients such as
    httpx upper-case the method they send).

    Raises:
        CommandError: ``text`` is empty or not a token.
    """
    if not text or not set(text) <= _TCHARS:
        raise CommandError(f"{flag} {text!r} is not an HTTP method (RFC 9110 §9.1)")
    return text.upper()


def command_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each sub-command's parser in ``parser`` (from :func:`build_parser`), by name."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def value_options(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """Every option string of ``parser``, mapped to whether it takes a value."""
    options: dict[str, bool] = {}
    for action in parser._actions:
        takes_value = action.nargs != 0
        for option in action.option_strings:
            options[option] = takes_value
    return options


def _is_option(token: str, options: dict[str, bool]) -> bool:
    """Whether argparse reads ``token`` as one of ``options`` (exact, prefix, ``-xVALUE``)."""
    name = token.split("=", 1)[0]
    if name in options:
        return True
    if token.startswith("--"):
        return any(option.startswith(name) for option in options if option.startswith("--"))
    # ``-xVALUE`` is an option only when ``-x`` takes a value: ``-hAbc`` is a value, not
    # ``-h`` (which takes none) followed by letters.
    return len(token) > 2 and options.get(token[:2], False)


def join_dash_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` with each value that starts with ``-`` joined to its option.

    A base64url ``jkt``, access token or nonce may begin with ``-``; argparse takes
    ``--jkt -abc`` for two options. When an option that takes one value is followed
    by a word starting with ``-`` that is not an option of that command, the two
    become ``--jkt=-abc`` (``-H-abc`` for a one-letter option). Nothing after ``--``
    changes.
    """
    out = list(argv)
    commands = command_parsers(parser)
    start = next((i for i, word in enumerate(out) if word in commands), None)
    if start is None:
        return out
    options = value_options(commands[out[start]])
    options.update(value_options(parser))
    i = start + 1
    while i < len(out) - 1:
        word, following = out[i], out[i + 1]
        if word == "--":
            break
        if (
            options.get(word)
            and following.startswith("-")
            and following not in ("-", "--")
            and not _is_option(following, options)
        ):
            out[i : i + 2] = [f"{word}={following}" if word.startswith("--") else word + following]
        i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpopkit", description="DPoP (RFC 9449) keys, proofs, servers and demos."
    )
    parser.add_argument(
        "--version", action="version", version=f"dpopkit {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"dpopkit.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_dash_values(parser, sys.argv[1:] if argv is None else argv))
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe must surface here, not at interpreter exit
    except CommandError as exc:
        print(f"dpopkit {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except UnicodeEncodeError as exc:
        if not _undecodable(exc):
            raise
        # POSIX hands Python argument bytes that are not UTF-8 as lone surrogates
        # (PEP 383); they fail wherever the value is encoded or printed.
        print(f"dpopkit {args.command}: error: an argument is not valid UTF-8", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `dpopkit inspect ... | head -1`): no traceback, and
        # no second error when Python flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a process killed by it
    return code


def _undecodable(exc: UnicodeEncodeError) -> bool:
    """Whether the text that failed holds bytes that were not UTF-8 (surrogate escapes)."""
    return any("\udc80" <= char <= "\udcff" for char in exc.object[exc.start : exc.end])
