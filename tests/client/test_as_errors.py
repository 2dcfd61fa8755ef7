"""Error answers of an authorization server reach the caller as sent (RFC 6749 §5.2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpopkit import DPoPKey, InvalidClientError, InvalidGrantError, InvalidRequestError
from dpopkit.client.tokens import TokenClient
from dpopkit.errors import (
    AuthorizationServerError,
    DPoPError,
    InvalidScopeError,
    Reason,
    TemporarilyUnavailableError,
)
from dpopkit.keyfile import save_key

from .servers import CLIENT_SECRET, Servers
from .test_cli import run

_JSON = "application/json"

#: (status, content type, body, expected class, expected code, expected description)
CASES: dict[str, tuple[int, str, bytes, type[DPoPError], str, str | None]] = {
    "invalid_grant": (
        400,
        _JSON,
        b'{"error":"invalid_grant","error_description":"code expired"}',
        InvalidGrantError,
        "invalid_grant",
        "code expired",
    ),
    "invalid_request": (
        400,
        _JSON,
        b'{"error":"invalid_request","error_description":"resource given twice"}',
        InvalidRequestError,
        "invalid_request",
        "resource given twice",
    ),
    "invalid_client": (
        401,
        _JSON,
        b'{"error":"invalid_client","error_description":"unknown client"}',
        InvalidClientError,
        "invalid_client",
        "unknown client",
    ),
    "invalid_scope": (
        400,
        _JSON,
        b'{"error":"invalid_scope","error_description":"admin is not allowed"}',
        InvalidScopeError,
        "invalid_scope",
        "admin is not allowed",
    ),
    "temporarily_unavailable": (
        503,
        _JSON,
        b'{"error":"temporarily_unavailable","error_description":"store down"}',
        AuthorizationServerError,
        "temporarily_unavailable",
        "store down",
    ),
    "server_error": (
        500,
        _JSON,
        b'{"error":"server_error"}',
        AuthorizationServerError,
        "server_error",
        None,
    ),
    "non-json 502": (
        502,
        "text/html",
        b"<html><body>Bad Gateway</body></html>",
        AuthorizationServerError,
        "server_error",
        None,
    ),
    "hostile description": (
        400,
        _JSON,
        b'{"error":"invalid_target","error_description":"\\u001b[31mred\\nline \\"q\\""}',
        AuthorizationServerError,
        "invalid_target",
        "?[31mred?line ?q?",
    ),
}


def _client(servers: Servers, key: DPoPKey) -> TokenClient:
    return TokenClient.from_issuer(
        servers.state.issuer,
        key=key,
        client_id="cli",
        client_secret=CLIENT_SECRET,
        allow_insecure_http=True,
    )


@pytest.mark.parametrize("case", list(CASES))
def test_token_client_keeps_the_servers_error(servers: Servers, key: DPoPKey, case: str) -> None:
    """HD-24: every AS error answer keeps its code, description and status (RFC 6749 §5.2).

    A 503 ``temporarily_unavailable`` is no longer reported as ``invalid_request``;
    a 502 that is not JSON is told apart from an OAuth error object.
    """
    status, ctype, body, cls, code, description = CASES[case]
    servers.state.error_answers["/token"] = (status, ctype, body)
    client = _client(servers, key)
    with pytest.raises(DPoPError) as info:
        client.client_credentials(scope="read")
    exc = info.value
    assert type(exc) is cls
    assert exc.error == code
    assert exc.detail["status"] == status
    assert exc.detail["error_description"] == description
    assert exc.detail["error"] == (None if ctype != _JSON else code)
    if description is not None:
        assert exc.description == description
    if isinstance(exc, AuthorizationServerError):
        assert exc.status == status
        assert exc.reason is Reason.TOKEN_RESPONSE
        assert exc.server_error_code == exc.detail["error"]
        assert exc.server_description == description
    # The nonce round trip happened first: the error came after a valid proof.
    assert len(servers.state.token_requests) == 2


@pytest.mark.parametrize("endpoint", ["/par", "/revoke"])
@pytest.mark.parametrize("case", ["invalid_request", "temporarily_unavailable", "non-json 502"])
def test_every_as_endpoint_keeps_the_servers_error(
    servers: Servers, key: DPoPKey, endpoint: str, case: str
) -> None:
    """HD-24: PAR (RFC 9126 §2.3) and revocation (RFC 7009 §2.2.1) errors are kept alike."""
    status, ctype, body, cls, code, description = CASES[case]
    servers.state.error_answers[endpoint] = (status, ctype, body)
    client = _client(servers, key)

    def call() -> None:
        if endpoint == "/par":
            client.authorization_request(redirect_uri="http://127.0.0.1/cb", use_par=True)
        else:
            client.revoke("some-token")

    with pytest.raises(DPoPError) as info:
        call()
    exc = info.value
    assert type(exc) is cls
    assert (exc.error, exc.detail["status"]) == (code, status)
    assert exc.detail["error_description"] == description


def test_temporarily_unavailable_is_not_the_server_side_class(
    servers: Servers, key: DPoPKey
) -> None:
    """HD-24: a 503 from the AS is a client-side error, not the server's fail-closed class."""
    servers.state.error_answers["/token"] = (503, _JSON, b'{"error":"temporarily_unavailable"}')
    with pytest.raises(AuthorizationServerError) as info:
        _client(servers, key).client_credentials()
    assert not isinstance(info.value, TemporarilyUnavailableError)
    assert info.value.error == "temporarily_unavailable"


@pytest.mark.parametrize("case", list(CASES))
def test_token_command_prints_code_and_description(
    servers: Servers,
    key: DPoPKey,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    """HD-24: ``dpopkit token`` prints the AS's status, code and description on one line."""
    status, ctype, body, _cls, code, description = CASES[case]
    servers.state.error_answers["/token"] = (status, ctype, body)
    keyfile = save_key(key, tmp_path / "key.jwk")
    argv = ["token", "--issuer", servers.state.issuer, "--client-id", "cli"]
    argv += ["--client-secret", CLIENT_SECRET, "--key", str(keyfile), "--allow-insecure-http"]
    exit_code, out, err = run(argv, capsys)
    assert (exit_code, out) == (1, "")
    assert err.count("\n") == 1
    line = err.rstrip("\n")
    if ctype == _JSON:
        assert line.startswith(f"dpopkit token: error: {code} (HTTP {status} ")
    else:
        assert line.startswith(f"dpopkit token: error: HTTP {status} ")
        assert code not in line
    if description is not None:
        assert line.endswith(f": {description}")
    assert "\x1b" not in err


def test_error_description_is_cut(servers: Servers, key: DPoPKey) -> None:
    """HD-24: a huge error_description is cut, so one answer cannot flood a log line."""
    long = "x" * 5000
    body = json.dumps({"error": "invalid_grant", "error_description": long}).encode()
    servers.state.error_answers["/token"] = (400, _JSON, body)
    with pytest.raises(InvalidGrantError) as info:
        _client(servers, key).client_credentials()
    assert info.value.description == "x" * 300 + "..."
