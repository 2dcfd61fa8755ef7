"""``dpopkit token`` and ``dpopkit request`` against the real 127.0.0.1 test servers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpopkit import DPoPKey
from dpopkit.cli import main
from dpopkit.keyfile import save_key

from .servers import CLIENT_SECRET, Servers, issue_token


@pytest.fixture
def keyfile(tmp_path: Path, key: DPoPKey) -> Path:
    return save_key(key, tmp_path / "key.jwk")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_token_command(
    servers: Servers, keyfile: Path, key: DPoPKey, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        [
            "token",
            "--issuer",
            servers.state.issuer,
            "--client-id",
            "cli",
            "--client-secret",
            CLIENT_SECRET,
            "--key",
            str(keyfile),
            "--scope",
            "read",
            "--resource",
            "https://api.example",
            "--allow-insecure-http",
        ],
        capsys,
    )
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["token_type"] == "DPoP"
    assert servers.state.tokens[data["access_token"]].jkt == key.jkt


def test_token_command_secret_from_env(
    servers: Servers,
    keyfile: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DPOPKIT_TEST_SECRET", CLIENT_SECRET)
    argv = ["token", "--issuer", servers.state.issuer, "--client-id", "cli"]
    argv += ["--client-secret-env", "DPOPKIT_TEST_SECRET", "--key", str(keyfile)]
    code, out, _ = run([*argv, "--allow-insecure-http"], capsys)
    assert code == 0
    assert json.loads(out)["token_type"] == "DPoP"


def test_token_command_errors_are_one_line(
    servers: Servers, keyfile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["token", "--issuer", servers.state.issuer, "--client-id", "cli", "--key"]
    code, out, err = run(
        [*base, str(keyfile), "--client-secret", "bad", "--allow-insecure-http"], capsys
    )
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("dpopkit token: error: invalid_client")
    code, _, err = run([*base, str(tmp_path / "missing.jwk")], capsys)
    assert code == 2
    assert err.count("\n") == 1
    code, _, err = run([*base, str(keyfile), "--client-secret", "x"], capsys)
    assert code == 2  # http:// without --allow-insecure-http
    assert err.count("\n") == 1
    servers.state.token_type = "Bearer"
    code, _, err = run(
        [*base, str(keyfile), "--client-secret", CLIENT_SECRET, "--allow-insecure-http"], capsys
    )
    assert code == 1
    assert "token_response" in err


def test_request_command_with_nonce_retry_and_verbose(
    servers: Servers, keyfile: Path, key: DPoPKey, capsys: pytest.CaptureFixture[str]
) -> None:
    at = issue_token(servers, key.jkt)
    code, out, err = run(
        [
            "request",
            "PUT",
            servers.state.base + "/api/items?x=1",
            "--key",
            str(keyfile),
            "--token",
            at,
            "-d",
            '{"a": 1}',
            "-H",
            "Content-Type: application/json",
            "--verbose",
            "--allow-insecure-http",
        ],
        capsys,
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    proofs = [json.loads(line.split(": ", 1)[1]) for line in lines if line.startswith("* proof")]
    assert len(proofs) == 2  # use_dpop_nonce, then success
    assert "nonce" not in proofs[0]
    assert "nonce" in proofs[1]
    assert proofs[0]["jti"] != proofs[1]["jti"]
    assert proofs[1]["htm"] == "PUT"
    assert "HTTP 200 OK" in lines
    assert json.loads(lines[-1])["len"] == 8
    assert servers.state.rs_requests[-1]["headers"]["content-type"] == "application/json"


def test_request_command_refused_exits_1(
    servers: Servers, keyfile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["request", servers.state.base + "/api/items", "--key", str(keyfile), "--token", "nope"]
    code, out, err = run([*argv, "--allow-insecure-http"], capsys)
    assert code == 1
    assert out.startswith("HTTP 401")
    assert err.count("\n") == 1


def test_request_command_nonce_loop_exits_1(
    servers: Servers, keyfile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["request", servers.state.base + "/loop/new-nonce", "--key", str(keyfile)]
    code, out, err = run([*argv, "--token", "t", "--allow-insecure-http"], capsys)
    assert code == 1
    assert out == ""
    assert "nonce_retry_exhausted" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "extra",
    [
        ["-H", "no colon"],
        ["-H", "DPoP: x"],
        ["-d", "@/nonexistent/file"],
    ],
)
def test_request_command_usage_errors(
    servers: Servers, keyfile: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    argv = ["request", servers.state.base + "/api/x", "--key", str(keyfile), "--token", "t"]
    code, _, err = run([*argv, *extra, "--allow-insecure-http"], capsys)
    assert code == 2
    assert err.count("\n") == 1


def test_request_command_three_positionals(
    servers: Servers, keyfile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["request", "GET", "POST", servers.state.base + "/api/x", "--key", str(keyfile)]
    code, _, err = run([*argv, "--allow-insecure-http"], capsys)
    assert code == 2
    assert err.count("\n") == 1


def test_request_command_connection_refused(
    keyfile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["request", "http://127.0.0.1:9/x", "--key", str(keyfile), "--token", "t"]
    code, _, err = run([*argv, "--allow-insecure-http", "--timeout", "2"], capsys)
    assert code == 1
    assert err.count("\n") == 1


@pytest.fixture
def not_http() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that answers every connection with a line that is not HTTP."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HELLO THERE\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_token_command_against_a_server_that_does_not_speak_http(
    not_http: str, keyfile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["token", "--issuer", not_http, "--client-id", "c", "--client-secret", "s"]
    code, out, err = run([*argv, "--key", str(keyfile), "--allow-insecure-http"], capsys)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(f"dpopkit token: error: cannot reach {not_http}")


def test_urllib_sender_reports_a_non_http_reply_as_oserror(not_http: str) -> None:
    from dpopkit.client.tokens import urllib_sender
    from dpopkit.core.http import RequestView

    send = urllib_sender(timeout=5)
    with pytest.raises(OSError, match="not an HTTP response"):
        send(RequestView(method="GET", url=not_http + "/x"))


@pytest.mark.parametrize(
    ("argv_tail", "expected"),
    [
        (["http://[::1/x"], "invalid URL"),
        (["https://api.example/x", "-H", "X-Name: caf\u00e9"], "must be ASCII"),
    ],
)
def test_request_command_bad_url_or_header_is_a_usage_error(
    keyfile: Path, capsys: pytest.CaptureFixture[str], argv_tail: list[str], expected: str
) -> None:
    argv = ["request", *argv_tail, "--key", str(keyfile), "--token", "t"]
    code, out, err = run([*argv, "--allow-insecure-http"], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert expected in err


@pytest.mark.parametrize("command", ["token", "request", "proof"])
def test_g1_every_command_names_the_same_insecure_http_flag(
    command: str, keyfile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {
        "token": ["token", "--issuer", "http://127.0.0.1:9", "--client-id", "c"],
        "request": ["request", "http://127.0.0.1:9/x", "--token", "t"],
        "proof": ["proof", "--method", "GET", "--url", "http://127.0.0.1:9/x"],
    }[command]
    code, out, err = run([*argv, "--key", str(keyfile)], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "--allow-insecure-http" in err
    if command == "proof":  # the older spelling still works
        for flag in ("--allow-insecure-http", "--insecure-http"):
            code, out, _ = run([*argv, "--key", str(keyfile), flag], capsys)
            assert code == 0
            assert out.count(".") == 2


def test_request_lower_case_method_is_sent_and_signed_upper_case(
    servers: Servers, keyfile: Path, key: DPoPKey, capsys: pytest.CaptureFixture[str]
) -> None:
    """HD-30: ``request get`` signs and sends GET, as ``proof --method get`` signs GET.

    RFC 9110 §9.1: methods are case-sensitive; the CLI normalises them once
    (:func:`dpopkit.cli.http_method`) so htm always equals the method sent.
    """
    at = issue_token(servers, key.jkt)
    url = servers.state.base + "/api/items"
    code, out, err = run(
        [
            "request",
            "get",
            url,
            "--key",
            str(keyfile),
            "--token",
            at,
            "-v",
            "--allow-insecure-http",
        ],
        capsys,
    )
    assert (code, err) == (0, "")
    proofs = [
        json.loads(line.split(": ", 1)[1])
        for line in out.splitlines()
        if line.startswith("* proof")
    ]
    assert {proof["htm"] for proof in proofs} == {"GET"}
    assert "HTTP 200 OK" in out.splitlines()  # the RS checked htm against the method it got
