"""Our authorization server, the example MCP server and the example MCP client, end to end.

Three processes, nothing in between: ``dpopkit serve`` with a TOML configuration
(test mode on loopback, open dynamic registration admitting the MCP server as an
audience), ``examples/mcp/server.py`` trusting it, and ``examples/mcp/client.py URL
--no-browser --state DIR``, which discovers the AS from the MCP server's 401
(RFC 9728), registers itself (RFC 7591), runs the authorization code flow with PKCE,
``resource`` (RFC 8707) and ``dpop_jkt`` (RFC 9449 §10), lists the tools and calls
the first tool that needs no arguments (``whoami``). It runs twice: without nonces,
and with both servers demanding them (RFC 9449 §8, §9). The negatives then take the
token and key the client stored and misuse them against the same running MCP server
(RFC 9449 §4.3, §6, §7.2, §11.1).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpopkit import DPoPKey, create_proof
from dpopkit.core.challenge import parse_challenges
from dpopkit.keyfile import load_key

from ._mcp_support import EXAMPLE_SERVER, ROOT, Stack, mcp_stack, process

pytestmark = pytest.mark.slow

EXAMPLE_CLIENT = ROOT / "examples" / "mcp" / "client.py"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


@dataclass
class ClientRun:
    """One run of the example client against a running stack."""

    stack: Stack
    returncode: int
    stdout: str
    stderr: str
    state: Path
    nonces: bool

    def token(self) -> dict[str, Any]:
        """The token response the client stored (``tokens.json``)."""
        data = json.loads((self.state / "tokens.json").read_text(encoding="utf-8"))
        assert isinstance(data, dict)
        return data

    def key(self) -> DPoPKey:
        """The client's DPoP key (``key.jwk``)."""
        return load_key(self.state / "key.jwk")


def _run_client(stack: Stack, state: Path, *extra: str, nonces: bool = False) -> ClientRun:
    argv = [sys.executable, str(EXAMPLE_CLIENT), stack.mcp, "--no-browser"]
    argv += ["--state", str(state), *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    return ClientRun(stack, done.returncode, done.stdout, done.stderr, state, nonces)


@pytest.fixture(scope="module", params=["plain", "nonces"])
def client_run(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[ClientRun]:
    """Our AS and the example server (nonces off or demanded by both), then the client once."""
    tmp = tmp_path_factory.mktemp("mcp-e2e")
    with mcp_stack(tmp, nonces=request.param == "nonces") as stack:
        yield _run_client(stack, tmp / "client-state", nonces=request.param == "nonces")


def _claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert isinstance(data, dict)
    return data


def _whoami(stdout: str) -> dict[str, Any]:
    """The ``whoami`` tool's answer as the client printed it (``whoami: {json}``)."""
    text = stdout.split("whoami:", 1)[1]
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def test_mcp_example_client_authorizes_with_our_as_and_calls_a_tool(client_run: ClientRun) -> None:
    """HD-32: AS, MCP server and MCP client as processes: a DPoP-bound token (RFC 9449 §5, §6)."""
    run = client_run
    assert run.returncode == 0, run.stderr[-4000:]
    tools = next(line for line in run.stdout.splitlines() if line.startswith("tools:"))
    assert {"add", "whoami"} <= {name.strip() for name in tools[len("tools:") :].split(",")}
    stored = run.token()
    assert stored["token_type"] == "DPoP"
    key = run.key()
    claims = _claims(stored["access_token"])
    assert claims["cnf"]["jkt"] == key.jkt
    assert claims["iss"] == run.stack.issuer
    assert claims["aud"] in (run.stack.mcp, [run.stack.mcp])
    assert claims["sub"] == "alice"
    registered = json.loads((run.state / "client.json").read_text(encoding="utf-8"))
    assert claims["client_id"] == registered["client_id"]
    # what the MCP server's tool saw: the verified principal, bound to the client's key
    who = _whoami(run.stdout)
    assert who["authenticated"] is True
    assert who["sub"] == "alice"
    assert who["client_id"] == registered["client_id"]
    assert who["scopes"] == ["mcp:tools"]
    assert who["jkt"] == key.jkt
    assert who["cnf_jkt"] == key.jkt


def test_mcp_example_client_reuses_its_stored_bound_token(client_run: ClientRun) -> None:
    """HD-32: a rerun with the same state keeps its registration and key (RFC 9449 §5)."""
    assert client_run.returncode == 0, client_run.stderr[-4000:]
    first_client = json.loads((client_run.state / "client.json").read_text(encoding="utf-8"))
    first_jkt = client_run.key().jkt
    again = _run_client(client_run.stack, client_run.state, nonces=client_run.nonces)
    assert again.returncode == 0, again.stderr[-4000:]
    who = _whoami(again.stdout)
    assert who["jkt"] == first_jkt
    assert who["client_id"] == first_client["client_id"]
    assert again.key().jkt == first_jkt


def test_mcp_example_client_exit_status_is_the_tool_call(client_run: ClientRun) -> None:
    """HD-32: the example client exits 0 only when the tool answered without an error."""
    assert client_run.returncode == 0, client_run.stderr[-4000:]
    added = _run_client(
        client_run.stack, client_run.state, "--tool", "add", "--args", '{"a": 2, "b": 3}'
    )
    assert added.returncode == 0, added.stderr[-4000:]
    assert "add: 5" in added.stdout.splitlines()
    missing = _run_client(client_run.stack, client_run.state, "--tool", "add")
    assert missing.returncode == 1
    assert "tools:" in missing.stdout  # authorized and listed; the call itself failed


def test_mcp_end_to_end_nonces_were_demanded(client_run: ClientRun) -> None:
    """HD-32: in the nonce run both servers refuse a proof without a nonce (RFC 9449 §8, §9).

    So the client's success there means it answered the AS's 400 and the MCP server's
    401 ``use_dpop_nonce``; in the plain run neither asks.
    """
    key = client_run.key()
    token = client_run.token()["access_token"]
    mcp = httpx.post(
        client_run.stack.mcp,
        json=INIT,
        headers={
            "Accept": "application/json, text/event-stream",
            "Authorization": f"DPoP {token}",
            "DPoP": _proof(key, htu=client_run.stack.mcp, token=token, nonce=None),
        },
        timeout=10,
    )
    token_url = client_run.stack.issuer + "/token"
    registered = json.loads((client_run.state / "client.json").read_text(encoding="utf-8"))
    as_answer = httpx.post(
        token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": "not-a-refresh-token",
            "client_id": registered["client_id"],
        },
        headers={"DPoP": create_proof(key, htm="POST", htu=token_url, allow_insecure_http=True)},
        timeout=10,
    )
    if client_run.nonces:
        assert mcp.status_code == 401
        assert _challenge(mcp)["error"] == "use_dpop_nonce"
        assert mcp.headers["DPoP-Nonce"]
        assert as_answer.status_code == 400
        assert as_answer.json()["error"] == "use_dpop_nonce"
        assert as_answer.headers["DPoP-Nonce"]
    else:
        assert mcp.status_code == 200, mcp.text
        assert as_answer.status_code == 400
        assert as_answer.json()["error"] == "invalid_grant"


# -- the client's own token and key, misused ----------------------------------------------


def _challenge(response: httpx.Response) -> dict[str, str]:
    (dpop,) = [
        c for c in parse_challenges(response.headers["WWW-Authenticate"]) if c.is_scheme("DPoP")
    ]
    return dict(dpop.params)


def _proof(key: DPoPKey, *, htu: str, token: str, htm: str = "POST", nonce: str | None) -> str:
    return create_proof(
        key, htm=htm, htu=htu, access_token=token, nonce=nonce, allow_insecure_http=True
    )


def _call(
    run: ClientRun,
    *,
    key: DPoPKey,
    token: str,
    scheme: str = "DPoP",
    htu: str | None = None,
    htm: str = "POST",
    target: str | None = None,
    with_proof: bool = True,
) -> tuple[httpx.Response, str | None]:
    """One MCP ``initialize`` with ``token`` and a proof by ``key`` for ``htm htu``.

    A server that demands nonces answers the first proof with ``use_dpop_nonce``;
    like any client, the call is then made once more with the fresh nonce (RFC 9449 §9),
    so the answer is about the misuse under test, not the missing nonce.
    """
    url = target or run.stack.mcp
    nonce: str | None = None
    for _ in range(2):
        headers = {
            "Accept": "application/json, text/event-stream",
            "Authorization": f"{scheme} {token}",
        }
        proof = None
        if with_proof:
            proof = _proof(key, htu=htu or url, token=token, htm=htm, nonce=nonce)
            headers["DPoP"] = proof
        response = httpx.post(url, json=INIT, headers=headers, timeout=10)
        fresh = response.headers.get("DPoP-Nonce")
        if response.status_code != 401 or not fresh or fresh == nonce or not with_proof:
            break
        if _challenge(response).get("error") != "use_dpop_nonce":
            break
        nonce = fresh
    return response, proof


def test_mcp_end_to_end_token_works_with_its_key(client_run: ClientRun) -> None:
    """HD-32: the control for the negatives: the stored token and key are accepted (§7.1)."""
    response, _ = _call(client_run, key=client_run.key(), token=client_run.token()["access_token"])
    assert response.status_code == 200, response.text


def test_mcp_end_to_end_stolen_token_without_the_key_is_refused(client_run: ClientRun) -> None:
    """HD-32: the client's token with a thief's proof is invalid_token (RFC 9449 §6)."""
    token = client_run.token()["access_token"]
    response, _ = _call(client_run, key=DPoPKey.generate(), token=token)
    assert response.status_code == 401
    assert _challenge(response)["error"] == "invalid_token"


def test_mcp_end_to_end_replayed_proof_is_refused(client_run: ClientRun) -> None:
    """HD-32: a proof accepted once is invalid_dpop_proof the second time (RFC 9449 §11.1)."""
    token = client_run.token()["access_token"]
    first, proof = _call(client_run, key=client_run.key(), token=token)
    assert first.status_code == 200, first.text
    assert proof is not None
    again = httpx.post(
        client_run.stack.mcp,
        json=INIT,
        headers={
            "Accept": "application/json, text/event-stream",
            "Authorization": f"DPoP {token}",
            "DPoP": proof,
        },
        timeout=10,
    )
    assert again.status_code == 401
    assert _challenge(again)["error"] == "invalid_dpop_proof"


@pytest.mark.parametrize("with_proof", [True, False])
def test_mcp_end_to_end_bearer_downgrade_is_refused(
    client_run: ClientRun, with_proof: bool
) -> None:
    """HD-32: the client's DPoP-bound token sent as Bearer is refused (RFC 9449 §7.2)."""
    token = client_run.token()["access_token"]
    response, _ = _call(
        client_run, key=client_run.key(), token=token, scheme="Bearer", with_proof=with_proof
    )
    assert response.status_code == 401
    assert _challenge(response)["error"] == "invalid_token"


@pytest.mark.parametrize(
    ("htm", "where"), [("POST", "other-path"), ("GET", "same"), ("POST", "other-host")]
)
def test_mcp_end_to_end_proof_for_another_request_is_refused(
    client_run: ClientRun, htm: str, where: str
) -> None:
    """HD-32: the client's key, a proof for another URL or method: invalid_dpop_proof (§4.3)."""
    mcp = client_run.stack.mcp
    htu = {
        "other-path": client_run.stack.other,
        "same": mcp,
        "other-host": mcp.replace("127.0.0.1", "localhost"),
    }[where]
    token = client_run.token()["access_token"]
    response, _ = _call(client_run, key=client_run.key(), token=token, htu=htu, htm=htm)
    assert response.status_code == 401
    assert _challenge(response)["error"] == "invalid_dpop_proof"


def test_mcp_end_to_end_token_for_another_resource_is_refused(
    client_run: ClientRun, tmp_path: Path
) -> None:
    """HD-32: a second MCP server of the same AS refuses the first one's token (RFC 8707 §2)."""
    port = client_run.stack.inproc_port
    second = f"http://127.0.0.1:{port}/mcp"
    argv = [sys.executable, str(EXAMPLE_SERVER), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--issuer", client_run.stack.issuer, "--allow-insecure-http"]
    metadata = f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
    token = client_run.token()["access_token"]
    with process(argv, metadata):
        response, _ = _call(client_run, key=client_run.key(), token=token, target=second)
    assert response.status_code == 401
    assert _challenge(response)["error"] == "invalid_token"
