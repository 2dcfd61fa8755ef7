"""The MCP client's token storage takes a key that never leaves its device (C-23, C-8).

A SoftHSM 2 key signs every proof of the MCP authorization flow and of the MCP request;
the storage keeps the tokens and the registration, never the key.
"""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from dpopkit.integrations.mcp.client import FileTokenStorage
from dpopkit.signers.pkcs11 import generate_pkcs11_key
from tests.client.test_mcp_client import Lab, build_app, call_mcp, provider
from tests.signers.devices import USER_PIN, SoftHSM


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_c23_mcp_storage_uses_a_device_key_and_never_writes_it(
    softhsm: SoftHSM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C-23: tokens are bound to the device key's jkt; no key file is written beside them."""
    uri = softhsm.uri(softhsm.new_label("mcp"))
    made = generate_pkcs11_key(uri, alg="ES256", pin=USER_PIN)
    monkeypatch.setenv("DPOPKIT_PKCS11_PIN", USER_PIN)  # the URI names no pin-source
    storage = FileTokenStorage(tmp_path, key=uri)
    assert storage.key.jkt == made.jkt
    assert not storage.key.is_exportable
    lab = Lab()
    transport = httpx2.ASGITransport(app=build_app(lab))
    assert await call_mcp(provider(lab, storage, transport), transport) == 200
    assert set(lab.tokens.values()) == {made.jkt}  # every token bound to the device key
    assert [a.get("dpop_jkt") for a in lab.authorize] == [made.jkt]
    assert not (tmp_path / "key.jwk").exists()
    tokens = await storage.get_tokens()
    assert tokens is not None
    assert tokens.token_type.lower() == "dpop"
