"""A token bound to a device key, then an API call, against ``dpopkit serve`` + ``serve-api``.

The authorization server is ``dpopkit serve``'s own builder, served on 127.0.0.1; the API
is a real ``dpopkit serve-api`` process. The key never leaves SoftHSM or the swtpm: the
CLI (``keygen``, ``thumbprint``, ``token``, ``request``), ``TokenClient`` and the httpx and
requests ``DPoPAuth`` all take it by reference, exactly like a key file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests

from dpopkit.cli import main
from dpopkit.cli.serve import _build
from dpopkit.client.httpx import DPoPAuth as HttpxAuth
from dpopkit.client.requests import DPoPAuth as RequestsAuth
from dpopkit.client.tokens import TokenClient
from dpopkit.signers import load_key_reference
from tests.live import serve_in_thread
from tests.resource.test_serve_api import serve_api
from tests.signers.devices import USER_PIN, SoftHSM, SwTPM

PIN_VAR = "DPOPKIT_TEST_PIN"
SECRET_VAR = "DPOPKIT_TEST_CLIENT_SECRET"
TOKEN_VAR = "DPOPKIT_TEST_ACCESS_TOKEN"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``dpopkit serve`` (demo mode) and a ``dpopkit serve-api`` trusting it."""
    data_dir = tmp_path_factory.mktemp("as-data")
    services: list[Any] = []

    def build(base: str) -> Any:
        spec = {"config": None, "host": "127.0.0.1", "port": urlsplit(base).port}
        _, app, service = _build({**spec, "data_dir": str(data_dir), "no_api": False})
        services.append(service)
        return app

    with serve_in_thread(build) as issuer:
        secret = (data_dir / "demo-client-secret").read_text(encoding="utf-8").strip()
        with serve_api("--issuer", issuer, "--allow-insecure-http") as api:
            yield {"issuer": issuer, "api": api, "secret": secret}
    for service in services:
        service.close()


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(params=["pkcs11", "tpm"])
def device_key(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh reference to a key that ``dpopkit keygen`` made inside the device."""
    monkeypatch.setenv(PIN_VAR, USER_PIN)
    if request.param == "pkcs11":
        hsm: SoftHSM = request.getfixturevalue("softhsm")
        reference = hsm.uri(hsm.new_label("e2e"))
        argv = ["keygen", "--pkcs11", reference, "--password-env", PIN_VAR]
    else:
        tpm: SwTPM = request.getfixturevalue("swtpm")
        reference = tpm.new_reference()
        argv = ["keygen", "--tpm", reference]
    capsys = request.getfixturevalue("capsys")
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert out.startswith("jkt: ")
    return reference


def _pin_args(reference: str) -> list[str]:
    return ["--password-env", PIN_VAR] if reference.startswith("pkcs11:") else []


def test_c23_cli_token_and_request_with_a_device_key(
    stack: dict[str, str],
    device_key: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """C-23: keygen in the device, thumbprint, token, request: the key never leaves it."""
    code, out, err = _run(["thumbprint", device_key, *_pin_args(device_key)], capsys)
    assert code == 0, err
    jkt = out.strip()
    monkeypatch.setenv(SECRET_VAR, stack["secret"])
    argv = ["token", "--issuer", stack["issuer"], "--client-id", "demo-client"]
    argv += ["--client-secret-env", SECRET_VAR, "--key", device_key, *_pin_args(device_key)]
    argv += ["--resource", stack["api"], "--allow-insecure-http"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    answer = json.loads(out)
    assert answer["token_type"] == "DPoP"
    monkeypatch.setenv(TOKEN_VAR, answer["access_token"])
    argv = ["request", f"{stack['api']}/api/whoami", "--key", device_key, *_pin_args(device_key)]
    argv += ["--token-env", TOKEN_VAR, "--allow-insecure-http"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert json.loads(out[out.index("{") :])["jkt"] == jkt


def test_c23_python_clients_with_a_device_key(
    stack: dict[str, str], device_key: str, tmp_path: Path
) -> None:
    """C-23: TokenClient and the httpx and requests DPoPAuth take a signer-backed DPoPKey."""
    key = load_key_reference(device_key, password=USER_PIN if "pkcs11" in device_key else None)
    client = TokenClient.from_issuer(
        stack["issuer"],
        key=key,
        client_id="demo-client",
        client_secret=stack["secret"],
        allow_insecure_http=True,
    )
    token = client.client_credentials(resource=stack["api"]).access_token
    url = f"{stack['api']}/api/whoami"
    with httpx.Client(auth=HttpxAuth(key, token=token, allow_insecure_http=True)) as http:
        answer = http.get(url)
    assert (answer.status_code, answer.json()["jkt"]) == (200, key.jkt)
    with requests.Session() as session:
        session.auth = RequestsAuth(key, token=token, allow_insecure_http=True)
        answer2 = session.get(url, timeout=10)
    assert (answer2.status_code, answer2.json()["jkt"]) == (200, key.jkt)
