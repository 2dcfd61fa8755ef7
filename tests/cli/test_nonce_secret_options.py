"""Every command that takes a nonce secret reads it the same way (one text form, one reader).

``serve`` (``--nonce-secret-env`` and ``[dpop] nonce_secrets``), ``serve-api`` and
``inspect`` accept the same values and refuse the same bad ones with one line, exit 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dpopkit import DPoPKey, NonceIssuer
from dpopkit.core.jws import b64url_encode
from tests.core.test_nonce_secret_text import BAD_SECRET_TEXTS

from .helpers import HTU, NOW, Run, assert_one_line_error, forge, run

VAR = "DPOPKIT_TEST_NONCE_SECRETS"
NEW = b64url_encode(b"N" * 32)
OLD = b64url_encode(b"O" * 32)

Command = Callable[[pytest.CaptureFixture[str], Path], Run]


def _inspect(capsys: pytest.CaptureFixture[str], tmp: Path) -> Run:
    proof = forge(DPoPKey.generate("ES256"), payload={"nonce": "x" * 32})
    return run(capsys, "inspect", proof, "--now", str(NOW), "--nonce-secret-env", VAR)


def _serve(capsys: pytest.CaptureFixture[str], tmp: Path) -> Run:
    return run(capsys, "serve", "--data-dir", str(tmp / "as"), "--nonce-secret-env", VAR, "--check")


def _serve_api(capsys: pytest.CaptureFixture[str], tmp: Path) -> Run:
    # Refused before anything listens; with good secrets it would start uvicorn (the
    # processes in tests/resource/test_nonce_rotation.py show that it accepts them).
    return run(
        capsys,
        "serve-api",
        "--issuer",
        "http://127.0.0.1:9",
        "--allow-insecure-http",
        "--require-nonce",
        "--nonce-secret-env",
        VAR,
    )


def _serve_toml(capsys: pytest.CaptureFixture[str], tmp: Path) -> Run:
    import json
    import os

    values = os.environ[VAR].split(",")
    config = tmp / "as.toml"
    config.write_text(
        f'issuer = "http://127.0.0.1:8000"\ndata_dir = "data"\n'
        f"[dpop]\nnonce_secrets = {json.dumps(values)}\n",
        encoding="utf-8",
    )
    return run(capsys, "serve", "--config", str(config), "--check")


COMMANDS: dict[str, Command] = {
    "inspect": _inspect,
    "serve": _serve,
    "serve-toml": _serve_toml,
    "serve-api": _serve_api,
}


@pytest.mark.parametrize("bad", BAD_SECRET_TEXTS.values(), ids=BAD_SECRET_TEXTS.keys())
@pytest.mark.parametrize("command", COMMANDS, ids=COMMANDS.keys())
def test_hd23_every_command_refuses_the_same_bad_secrets(
    command: str,
    bad: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """HD-23: a nonce secret that is not base64url of >= 32 bytes (hex, padded, standard
    base64, short...) is refused by every command with one line and exit 2, never the
    value echoed; as the second of two secrets too."""
    for value in (bad, f"{NEW},{bad}"):
        monkeypatch.setenv(VAR, value)
        result = COMMANDS[command](capsys, tmp_path)
        assert_one_line_error(result, "serve" if command == "serve-toml" else command)
        if bad.strip():
            assert bad.strip() not in result.err


@pytest.mark.parametrize("command", ["inspect", "serve", "serve-toml"])
def test_hd23_every_command_accepts_the_same_secrets(
    command: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """HD-23: the same text (one secret, or several comma-separated, newest first) is
    accepted by every command; ``inspect`` then verifies nonces made from those secrets."""
    monkeypatch.setenv(VAR, f"{NEW},{OLD}")
    if command == "inspect":
        key = DPoPKey.generate("ES256")
        for secret in (NEW, OLD):
            nonce = NonceIssuer([secret]).issue(now=NOW)
            result = run(
                capsys,
                "inspect",
                forge(key, payload={"nonce": nonce}),
                "--method",
                "GET",
                "--url",
                HTU,
                "--now",
                str(NOW),
                "--nonce-secret-env",
                VAR,
            )
            assert result.code == 0, result.out
    else:
        result = COMMANDS[command](capsys, tmp_path)
        assert result.code == 0, result.err


def test_hd21_serve_builds_the_issuer_from_the_configured_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """HD-21: ``serve``'s AS signs with the first secret and verifies all of them, from
    ``[dpop] nonce_secrets`` or ``--nonce-secret-env`` (repeatable, overriding the TOML);
    without either it keeps one secret in the data dir, in the same text form."""
    from dpopkit.cli.serve import _build

    def as_nonce(secret: str) -> str:
        return NonceIssuer([secret], context="as").issue(now=NOW)

    def issuer(toml_secrets: str, env: list[str] | None) -> NonceIssuer:
        config = tmp_path / "as.toml"
        config.write_text(
            'issuer = "http://127.0.0.1:8000"\ndata_dir = "d"\n'
            f'[dpop]\nnonce = "always"\n{toml_secrets}',
            encoding="utf-8",
        )
        spec = {"config": str(config), "host": None, "port": None, "data_dir": None}
        _, _, service = _build({**spec, "no_api": True, "nonce_secret_env": env})
        nonces: NonceIssuer | None = service.nonces
        assert nonces is not None
        return nonces

    monkeypatch.setenv("NEW_SECRET", NEW)
    monkeypatch.setenv("OLD_SECRET", OLD)
    monkeypatch.setenv("DPOPKIT_BOTH", f"{NEW},{OLD}")
    for nonces in (
        issuer(f'nonce_secrets = ["{NEW}", "{OLD}"]\n', None),
        issuer("", ["NEW_SECRET", "OLD_SECRET"]),
        issuer("", ["DPOPKIT_BOTH"]),
    ):
        assert nonces.issue(now=NOW) == as_nonce(NEW)
        assert not nonces.verify(as_nonce(OLD), now=NOW).current  # accepted, not the signer's
    overridden = issuer(f'nonce_secrets = ["{NEW}"]\n', ["OLD_SECRET"])
    assert overridden.issue(now=NOW) == as_nonce(OLD)
    kept = issuer("", None)
    stored = (tmp_path / "d" / "nonce-secret").read_text(encoding="utf-8")
    assert kept.issue(now=NOW) == as_nonce(stored)


def test_hd23_serve_refuses_a_bad_kept_secret(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """HD-23: the secret ``serve`` keeps in its data dir is read by the same reader; a file
    that is not base64url of >= 32 bytes is one error line naming the file, exit 2."""
    data = tmp_path / "as"
    data.mkdir(mode=0o700)
    (data / "nonce-secret").write_text("ab" * 32, encoding="utf-8")
    (data / "nonce-secret").chmod(0o600)
    config = tmp_path / "as.toml"
    config.write_text(
        f'issuer = "http://127.0.0.1:8000"\ndata_dir = "{data}"\n[dpop]\nnonce = "always"\n',
        encoding="utf-8",
    )
    result = run(capsys, "serve", "--config", str(config), "--check")
    assert_one_line_error(result, "serve")
    assert "nonce-secret" in result.err
