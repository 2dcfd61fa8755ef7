"""Every command behaves alike: help, flag names in errors, ``-`` values, secret pairs, stores.

Each test walks the parser :func:`dpopkit.cli.build_parser` builds, so an option
added later is covered (or the walk fails and names it).
"""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpopkit import DPoPKey
from dpopkit.cli import build_parser, command_parsers, join_dash_values
from dpopkit.cli._serving import EXIT_CANNOT_LISTEN
from dpopkit.core.jws import b64url_decode
from dpopkit.keyfile import save_key

from .helpers import run

PARSER = build_parser()
COMMANDS = command_parsers(PARSER)

#: The least each command needs to parse ("{key}": a key file, "{tmp}": a directory).
REQUIRED: dict[str, list[str]] = {
    "keygen": [],
    "thumbprint": ["{key}"],
    "proof": ["--key", "{key}", "--method", "GET", "--url", "https://api.example/x"],
    "inspect": ["P"],
    "token": ["--issuer", "https://as.example", "--client-id", "c", "--key", "{key}"],
    "request": ["https://api.example/x", "--key", "{key}"],
    "serve-api": ["--issuer", "https://as.example", "--port", "{port}"],
    "serve": ["--data-dir", "{tmp}/as", "--port", "{port}"],
    "demo": [],
}

UNSET = "DPOPKIT_TEST_UNSET_VARIABLE"

#: (command, option, bad arguments): the error line must name the option.
BAD_VALUES: list[tuple[str, str, list[str]]] = [
    ("keygen", "--alg", ["--alg", "HS256"]),
    ("keygen", "--format", ["--format", "xml"]),
    ("keygen", "--out", ["--out", "{tmp}/no/such/dir/key.jwk"]),
    ("keygen", "--password-env", ["--format", "pem", "--password-env", UNSET]),
    ("keygen", "--pkcs11", ["--pkcs11", "pkcs11:token=no-object"]),
    ("keygen", "--tpm", ["--tpm", "tpm:owner"]),
    ("thumbprint", "--password-env", ["--password-env", UNSET]),
    ("proof", "--key", ["--key", "{tmp}/missing.jwk"]),
    ("proof", "--key", ["--key", "pkcs11:token=no-object"]),
    ("proof", "--key", ["--key", "tpm:0x80000001"]),
    ("proof", "--password-env", ["--password-env", UNSET]),
    ("proof", "--method", ["--method", "G E T"]),
    ("proof", "--url", ["--url", "http://api.example/x"]),
    ("proof", "--url", ["--url", "ftp://api.example/x"]),
    ("proof", "--nonce", ["--nonce", 'say "hi"']),
    ("proof", "--access-token", ["--access-token", ""]),
    ("proof", "--claims", ["--claims", "[1]"]),
    ("proof", "--claims", ["--claims", '{{"htm": "GET"}}']),
    ("inspect", "--method", ["--method", "G E T"]),
    ("inspect", "--url", ["--url", "ftp://api.example/x"]),
    ("inspect", "--now", ["--now", "yesterday"]),
    ("inspect", "--nonce-secret-env", ["--nonce-secret-env", UNSET]),
    ("token", "--issuer", ["--issuer", "http://as.example"]),
    ("token", "--key", ["--key", "{tmp}/missing.jwk"]),
    ("token", "--key", ["--key", "pkcs11:token=x;object=y;pin-value=1"]),
    ("token", "--password-env", ["--password-env", UNSET]),
    ("token", "--client-secret-env", ["--client-secret-env", UNSET]),
    ("request", "--key", ["--key", "{tmp}/missing.jwk"]),
    ("request", "--key", ["--key", "tpm:not-a-handle"]),
    ("request", "--password-env", ["--password-env", UNSET]),
    ("request", "--token-env", ["--token-env", UNSET]),
    ("request", "--data", ["--data", "@{tmp}/missing-body"]),
    ("request", "--header", ["--header", "no colon"]),
    ("request", "--timeout", ["--timeout", "-1"]),
    ("request", "--timeout", ["--timeout", "soon"]),
    ("serve-api", "--issuer", ["--issuer", "as.example"]),
    ("serve-api", "--port", ["--port", "70000"]),
    ("serve-api", "--public-origin", ["--public-origin", "http://api.example"]),
    ("serve-api", "--replay", ["--replay", "mysql://db/replay"]),
    ("serve-api", "--replay-prefix", ["--replay", "memory", "--replay-prefix", "p:"]),
    ("serve-api", "--replay-schema", ["--replay", "memory", "--replay-schema", "s"]),
    ("serve-api", "--store-timeout", ["--store-timeout", "0"]),
    ("serve-api", "--nonce-secret-env", ["--nonce-secret-env", UNSET]),
    ("serve-api", "--metrics-allow", ["--metrics", "--metrics-allow", "nope"]),
    ("serve-api", "--log-level", ["--log-level", "loud"]),
    ("serve-api", "--workers", ["--workers", "0"]),
    ("serve-api", "--workers", ["--workers", "2"]),
    ("serve", "--config", ["--config", "{tmp}/missing.toml"]),
    ("serve", "--data-dir", ["--data-dir", "{tmp}/a-file"]),
    ("serve", "--port", ["--port", "70000"]),
    ("serve", "--workers", ["--workers", "0"]),
    ("serve", "--nonce-secret-env", ["--nonce-secret-env", UNSET]),
    ("serve", "--log-level", ["--log-level", "loud"]),
]

#: Options every value of which the command accepts (the far side judges it, or the
#: check reports it as a finding rather than a usage error), and why.
FREE_FORM: dict[tuple[str, str], str] = {
    ("inspect", "--access-token"): "inspect reports a mismatching ath as a failed check",
    ("inspect", "--jkt"): "inspect reports a mismatching jkt as a failed check",
    ("inspect", "--nonce-context"): "any text is a context",
    ("token", "--client-id"): "the authorization server judges it",
    ("token", "--client-secret"): "the authorization server judges it",
    ("token", "--scope"): "the authorization server judges it",
    ("token", "--resource"): "the authorization server judges it (RFC 8707 §2)",
    ("request", "--token"): "the resource server judges it",
    ("serve-api", "--audience"): "any string is an audience (RFC 7519 §4.1.3)",
    ("serve-api", "--host"): "bind() reports 'cannot listen on HOST:PORT' (exit 3)",
    ("serve-api", "--replay-prefix"): "any text is a key prefix",
    ("serve-api", "--replay-schema"): "PostgreSQL quotes the identifier",
    ("serve", "--host"): "bind() reports 'cannot listen on HOST:PORT' (exit 3)",
}


def _value_actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if action.option_strings and action.nargs != 0:
            yield action


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def fill(tmp_path: Path, es256_key: DPoPKey, occupied_port: int) -> dict[str, str]:
    save_key(es256_key, tmp_path / "key.jwk")
    (tmp_path / "a-file").write_text("not a directory")
    return {"key": str(tmp_path / "key.jwk"), "tmp": str(tmp_path), "port": str(occupied_port)}


def _argv(command: str, extra: list[str], fill: dict[str, str]) -> list[str]:
    return [command, *(word.format(**fill) for word in [*REQUIRED[command], *extra])]


def test_the_tables_cover_every_command() -> None:
    """HD-30: the walks below know every sub-command."""
    assert set(REQUIRED) == set(COMMANDS)


# --- help text -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_text(command: str) -> None:
    """HD-30: every option and argument of every command says what it is for in --help."""
    for action in COMMANDS[command]._actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{command} {name}"
        assert action.help != argparse.SUPPRESS, f"{command} {name}"


# --- errors name the flag --------------------------------------------------------------------


def test_every_value_option_has_a_bad_value_row_or_is_free_form() -> None:
    """HD-30: a new value-taking option needs a row in BAD_VALUES (or a reason to be free)."""
    covered = {(command, flag) for command, flag, _ in BAD_VALUES} | set(FREE_FORM)
    missing = [
        (command, action.option_strings[-1])
        for command, parser in COMMANDS.items()
        for action in _value_actions(parser)
        if not any((command, option) in covered for option in action.option_strings)
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("command", "flag", "extra"), BAD_VALUES, ids=[f"{c} {f} {e[-1]}" for c, f, e in BAD_VALUES]
)
def test_error_line_names_the_flag(
    command: str,
    flag: str,
    extra: list[str],
    fill: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HD-30: a bad option value is one error line naming ``--flag``, not a Python parameter."""
    monkeypatch.delenv(UNSET, raising=False)
    try:
        result = run(capsys, *_argv(command, extra, fill))
        code, err = result.code, result.err
    except SystemExit as exc:  # argparse's own usage errors
        code, err = int(exc.code or 0), capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"dpopkit {command}: error: "), err
    action = next(a for a in COMMANDS[command]._actions if flag in a.option_strings)
    assert any(option in last for option in action.option_strings), last
    assert "_" not in last.split(": error: ", 1)[1].split()[0], last  # no python_name first


# --- --X and --X-env -------------------------------------------------------------------------


def _secret_pairs() -> list[tuple[str, str]]:
    return [
        (command, option)
        for command, parser in COMMANDS.items()
        for option in value_options_of(parser)
        if option.endswith("-env") and option[: -len("-env")] in value_options_of(parser)
    ]


def value_options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in _value_actions(parser) for option in action.option_strings}


def test_secret_pairs_exist() -> None:
    """HD-30: the walk finds the value/environment pairs (token, client secret)."""
    assert {("request", "--token-env"), ("token", "--client-secret-env")} <= set(_secret_pairs())


@pytest.mark.parametrize(("command", "env_flag"), _secret_pairs())
def test_value_and_env_flags_are_mutually_exclusive(
    command: str, env_flag: str, fill: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """HD-30: ``--token`` with ``--token-env`` (any ``--X``/``--X-env`` pair) is a usage error."""
    parser = COMMANDS[command]
    flag = env_flag[: -len("-env")]
    alone = _argv(command, [flag, "x"], fill)[1:]
    assert getattr(parser.parse_args(alone), flag[2:].replace("-", "_")) == "x"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(_argv(command, [flag, "x", env_flag, "VAR"], fill)[1:])
    assert exc.value.code == 2
    capsys.readouterr()


# --- values that start with - ----------------------------------------------------------------


def _dash_cases() -> list[tuple[str, str]]:
    return [
        (command, option)
        for command, parser in COMMANDS.items()
        for action in _value_actions(parser)
        if action.choices is None
        for option in action.option_strings
    ]


@pytest.mark.parametrize(("command", "option"), _dash_cases())
def test_value_starting_with_dash_is_taken_as_a_separate_argument(
    command: str, option: str, fill: dict[str, str]
) -> None:
    """HD-30: ``--jkt -abc`` means ``--jkt=-abc`` for every value-taking option.

    base64url (RFC 4648 §5) thumbprints, tokens and nonces may begin with ``-``.
    """
    action = next(a for a in COMMANDS[command]._actions if option in a.option_strings)
    numeric = action.type in (int, float)
    value = "-1" if numeric else "-Kz8mXK1EalYznw"
    for argv in (
        _argv(command, [option, value], fill),
        _argv(command, [f"{option}={value}" if option.startswith("--") else option + value], fill),
    ):
        parsed = PARSER.parse_args(join_dash_values(PARSER, argv))
        got = getattr(parsed, action.dest)
        if isinstance(got, list):
            got = got[-1]
        expected = action.type(value) if callable(action.type) else value
        assert got == expected, argv


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"


@pytest.mark.parametrize(("command", "option"), _dash_cases())
def test_any_base64url_value_after_a_dash_is_a_value(
    command: str, option: str, fill: dict[str, str]
) -> None:
    """HD-30: ``-`` then any base64url character (RFC 4648 §5) is a value, also when
    ``-c`` is a flag of the command that takes no value (``-h``): only a short option
    that takes a value may be written ``-cVALUE``."""
    action = next(a for a in COMMANDS[command]._actions if option in a.option_strings)
    if action.type in (int, float):
        return
    short_with_value = {
        o for a in _value_actions(COMMANDS[command]) for o in a.option_strings if len(o) == 2
    }
    for char in _B64URL:
        if f"-{char}" in short_with_value:
            continue  # ``-Hxyz`` is that option's value: write ``--jkt=-Hxyz``
        value = f"-{char}z8mXK1Ealy"
        parsed = PARSER.parse_args(join_dash_values(PARSER, _argv(command, [option, value], fill)))
        got = getattr(parsed, action.dest)
        expected = action.type(value) if callable(action.type) else value
        assert (got[-1] if isinstance(got, list) else got) == expected


def test_an_option_after_a_value_option_is_still_an_option() -> None:
    """HD-30: ``--jkt --json`` is a missing value, not the value ``--json``."""
    argv = ["inspect", "P", "--jkt", "--json"]
    assert join_dash_values(PARSER, argv) == argv
    assert join_dash_values(PARSER, ["inspect", "P", "--jkt", "-", "--"]) == [
        "inspect",
        "P",
        "--jkt",
        "-",
        "--",
    ]


def test_inspect_with_a_dash_jkt_runs(
    es256_key: DPoPKey, capsys: pytest.CaptureFixture[str]
) -> None:
    """HD-30: ``dpopkit inspect PROOF --jkt -...`` checks the binding (exit 1), no usage error."""
    from dpopkit import create_proof

    proof = create_proof(es256_key, htm="GET", htu="https://api.example/x")
    other = "-" + es256_key.jkt[1:]
    if other == es256_key.jkt:  # the thumbprint itself starts with a dash (1 in 64)
        other = "-" + ("B" if other[1] == "A" else "A") + other[2:]
    result = run(capsys, "inspect", proof, "--jkt", other, "--json")
    assert result.code == 1
    jkt = [c for c in result.json()["checks"] if c["id"] == "jkt"]
    assert jkt
    assert jkt[0]["status"] == "fail"


# --- methods ---------------------------------------------------------------------------------


def test_proof_method_is_upper_cased_like_request(
    fill: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """HD-30: ``proof --method get`` signs htm GET, as ``request get`` sends GET (RFC 9110 §9.1)."""
    result = run(capsys, *_argv("proof", ["--method", "get"], fill))
    assert result.code == 0, result.err
    payload = json.loads(b64url_decode(result.out.strip().split(".")[1]))
    assert payload["htm"] == "GET"


# --- replay store URLs -----------------------------------------------------------------------

ACCEPTED_REPLAY_URLS = [
    "memory",
    "sqlite:///{tmp}/replay.db",
    "redis://127.0.0.1:6379/0",
    "rediss://127.0.0.1:6379/0",
    "unix:///tmp/redis.sock",
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgres://postgres@127.0.0.1:5432/test",
]
REFUSED_REPLAY_URLS = ["", "mysql://db/x", "sqlite:", "sqlite:///", "redis://", "http://x/", "mem"]


def _serve_argv(url: str, fill: dict[str, str], tmp: Path) -> list[str]:
    config = tmp / "as.toml"
    port = fill["port"]
    config.write_text(
        f'issuer = "http://127.0.0.1:{port}"\nport = {port}\n'
        f"data_dir = {json.dumps(str(tmp / 'as'))}\nreplay_url = {json.dumps(url)}\n",
        encoding="utf-8",
    )
    return ["serve", "--config", str(config)]


def _serve_api_argv(url: str, fill: dict[str, str], tmp: Path) -> list[str]:
    return _argv("serve-api", ["--replay", url], fill)


@pytest.mark.parametrize("command", ["serve", "serve-api"])
@pytest.mark.parametrize("url", ACCEPTED_REPLAY_URLS + REFUSED_REPLAY_URLS)
def test_serve_and_serve_api_take_the_same_replay_urls(
    command: str,
    url: str,
    fill: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """HD-30: ``serve``'s replay_url and ``serve-api --replay`` accept and refuse the same URLs.

    Accepted: the command builds its stores and reaches bind(), which fails on the
    occupied port (exit 3). Refused: one error line naming the setting, exit 2.
    """
    url = url.format(**fill)
    argv = (_serve_argv if command == "serve" else _serve_api_argv)(url, fill, tmp_path)
    result = run(capsys, *argv)
    if url.replace(fill["tmp"], "{tmp}") in ACCEPTED_REPLAY_URLS:
        assert result.code == EXIT_CANNOT_LISTEN, result.err
    else:
        assert result.code == 2, result.err
        assert ("replay_url" if command == "serve" else "--replay") in result.err


def test_serve_api_bare_sqlite_is_one_clear_line(
    fill: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """HD-30: serve-api has no data directory: ``--replay sqlite`` asks for sqlite:///PATH."""
    result = run(capsys, *_argv("serve-api", ["--replay", "sqlite"], fill))
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "--replay" in result.err
    assert "sqlite:///" in result.err


# --- module layout ---------------------------------------------------------------------------


def test_the_inspector_is_below_the_commands() -> None:
    """HD-30: the proof inspector imports only the core; the commands import it, not back.

    ``dpopkit.cli.COMMAND_MODULES`` still names every command module.
    """
    import ast
    import importlib

    import dpopkit.cli
    import dpopkit.cli.inspector

    tree = ast.parse(Path(dpopkit.cli.inspector.__file__).read_text(encoding="utf-8"))
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not {name for name in imported if name.startswith("dpopkit.cli")}
    assert "argparse" not in imported
    for name in dpopkit.cli.COMMAND_MODULES:
        assert callable(importlib.import_module(f"dpopkit.cli.{name}").register)
