"""``examples/dot_project/serve.py`` refuses what ``dpopkit serve`` refuses, in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpopkit import DPoPKey

from .conftest import ROOT, SERVE


def _run(config: Path, host: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SERVE), "--config", str(config), "--host", host, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def _private_key_jwt_client() -> str:
    jwk = json.dumps(DPoPKey.generate().public_jwk)
    return (
        '[[clients]]\nclient_id = "x"\ntoken_endpoint_auth_method = "private_key_jwt"\n'
        f'grant_types = ["client_credentials"]\njwks = {{keys = [{_inline(jwk)}]}}\n'
    )


def _inline(jwk: str) -> str:
    """A JSON object as a TOML inline table."""
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in json.loads(jwk).items()) + "}"


@pytest.mark.parametrize(
    ("toml", "host"),
    [
        ('test_mode_user = "alice"\n', "0.0.0.0"),  # noqa: S104 - refused: test mode, public
        ('[[clients]]\nclient_id = "x"\nbogus = 1\n', "127.0.0.1"),  # an unknown key
        (_private_key_jwt_client(), "127.0.0.1"),  # valid for dpopkit serve, not for DOT
    ],
    ids=["test-mode-public", "unknown-key", "private-key-jwt"],
)
def test_dot_serve_refuses_bad_configuration(tmp_path: Path, toml: str, host: str) -> None:
    """HD-30: exit 2 with one ``error:`` line, nothing served (same TOML as dpopkit serve)."""
    config = tmp_path / "as.toml"
    config.write_text(toml, encoding="utf-8")
    run = _run(config, host)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert run.stdout == ""
