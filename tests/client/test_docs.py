"""docs/client.md: every Python snippet compiles, and the runnable ones run against a real
https test server on 127.0.0.1 (a throw-away certificate trusted through SSL_CERT_FILE and
REQUESTS_CA_BUNDLE), exactly as written."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpopkit import DPoPKey
from tests.tls import loopback_certificate

from .servers import CLIENT_SECRET, Servers, issue_token, running

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
#: Blocks that need a person at a browser: compiled, not run.
INTERACTIVE = ("login_native", "send the user's browser")


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Servers, str]]:
    cert_path, key_path = loopback_certificate(tmp_path_factory.mktemp("tls"))
    certfile, keyfile = str(cert_path), str(key_path)
    with running(Servers(), certfile=certfile, keyfile=keyfile) as servers:
        yield servers, certfile


def test_docs_have_python_snippets() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_docs_snippet_compiles(index: int) -> None:
    compile(BLOCKS[index], f"{DOC.name}[{index}]", "exec")


def test_docs_snippets_run_as_written(
    tls_servers: tuple[Servers, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    servers, certfile = tls_servers
    monkeypatch.setenv("SSL_CERT_FILE", certfile)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certfile)
    base = servers.state.base
    namespace: dict[str, Any] = {
        "access_token": issue_token(servers, None),  # binds to the snippet's key at first use
        "api_url": base + "/api/orders",
        "issuer": base,
        "secret": CLIENT_SECRET,
    }
    ran = 0
    for index, block in enumerate(BLOCKS):
        if any(marker in block for marker in INTERACTIVE):
            continue
        exec(compile(block, f"{DOC.name}[{index}]", "exec"), namespace)  # noqa: S102
        ran += 1
        if "response" in namespace:
            assert namespace["response"].status_code == 200
    assert ran >= 4
    assert namespace["tokens"].is_dpop
    assert namespace["auth"].source is namespace["source"]
    # The requests snippet's session made a real call with a DPoP proof and nonce retry;
    # the redirect snippet's httpx client made one more.
    api_calls = [r for r in servers.state.rs_requests if r.get("path") == "/api/orders"]
    assert len([r for r in api_calls if "jti" in r]) == 3


def test_readme_httpx_snippet_runs_as_written(
    tls_servers: tuple[Servers, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README calls a DPoP API with httpx in five lines."""
    servers, certfile = tls_servers
    monkeypatch.setenv("SSL_CERT_FILE", certfile)
    readme = DOC.parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.DOTALL)
    (block,) = [b for b in blocks if "dpopkit.client.httpx" in b]
    assert len([line for line in block.splitlines() if line.strip()]) <= 5
    namespace: dict[str, Any] = {
        "key": DPoPKey.generate(),  # the README's token block made it
        "access_token": issue_token(servers, None),
        "api_url": servers.state.base + "/api/readme",
    }
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["response"].status_code == 200
    assert len(namespace["response"].history) == 1  # the RS nonce round trip
