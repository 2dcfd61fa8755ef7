"""``python examples/authlib_server.py --config FILE --host H --port P``, started as documented.

The same TOML as ``dpopkit serve``; dpopkit's client runs the code flow (test-mode user on
loopback) and client credentials against it over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dpopkit import DPoPKey
from dpopkit.client.tokens import TokenClient

from .conftest import CALLBACK, CONFIG, ROOT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def started(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    issuer = f"http://127.0.0.1:{port}"
    config = tmp_path / "as.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n' + CONFIG.format(issuer=issuer, callback=CALLBACK),
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "examples/authlib_server.py",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=1)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    out = process.stdout.read().decode() if process.stdout else ""
                    pytest.fail(f"the example did not start: {out[-2000:]}")
                time.sleep(0.1)
        yield issuer
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def test_example_started_as_documented_issues_bound_tokens(started: str) -> None:
    """AS-1, AS-2, AS-21: the documented command serves the TOML's clients; the code flow
    with ``dpop_jkt`` (test-mode user) and client credentials give DPoP tokens."""
    key = DPoPKey.generate("ES256")
    spa = TokenClient.from_issuer(started, key=key, client_id="spa", allow_insecure_http=True)
    request = spa.authorization_request(redirect_uri=CALLBACK, scope="read")
    redirect = requests.get(request.url, allow_redirects=False, timeout=5)
    assert redirect.status_code == 302
    tokens = spa.exchange_code(request, redirect.headers["Location"])
    assert tokens.token_type == "DPoP"
    service = TokenClient.from_issuer(
        started,
        key=key,
        client_id="rp",
        client_secret="rp-secret-value",
        allow_insecure_http=True,
    )
    assert service.client_credentials(scope="read").token_type == "DPoP"


def test_example_refuses_test_mode_off_loopback(tmp_path: Path) -> None:
    """Test mode as in docs/authorization-server.md: ``test_mode_user`` (no person
    approves) needs a loopback host and issuer; otherwise one error line, exit status 2."""
    config = tmp_path / "as.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        + CONFIG.format(issuer="http://as.example", callback=CALLBACK),
        encoding="utf-8",
    )
    result = subprocess.run(
        [
            sys.executable,
            "examples/authlib_server.py",
            "--config",
            str(config),
            "--host",
            "0.0.0.0",  # noqa: S104 - refused, never bound
            "--port",
            str(_free_port()),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
