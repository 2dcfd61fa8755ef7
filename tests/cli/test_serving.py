"""``serve`` and ``serve-api`` as real processes: binding first, and the logging flags.

One table of the serving commands; every test runs over all of them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from dpopkit.cli._serving import EXIT_CANNOT_LISTEN

pytestmark = pytest.mark.slow

#: Command -> its arguments besides --port (each must start without any other server).
COMMANDS: dict[str, list[str]] = {
    "serve": ["serve", "--data-dir", "{tmp}/as-data"],
    "serve-api": [
        "serve-api",
        "--issuer",
        "http://127.0.0.1:9/",
        "--allow-insecure-http",
    ],
}
#: A path each command answers without credentials (for the access log).
PROBE = {"serve": "/.well-known/oauth-authorization-server", "serve-api": "/api/whoami"}


def _args(command: str, tmp: Path, port: int, *extra: str) -> list[str]:
    args = [a.format(tmp=tmp) for a in COMMANDS[command]]
    return [sys.executable, "-m", "dpopkit", *args, "--port", str(port), *extra]


@contextmanager
def _listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_hd27_port_in_use_is_one_line_before_any_banner(command: str, tmp_path: Path) -> None:
    """HD-27: a port in use gives one error line and the documented exit code, no banner."""
    with _listener() as port:
        done = subprocess.run(
            _args(command, tmp_path, port), capture_output=True, text=True, timeout=60
        )
    assert done.returncode == EXIT_CANNOT_LISTEN
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"dpopkit {command}: error: cannot listen on 127.0.0.1:{port}")
    secret_files = list((tmp_path / "as-data").glob("*secret*")) if command == "serve" else []
    for path in secret_files:  # the demo banner prints secrets: none of them may show
        assert path.read_text().strip() not in done.stderr


@contextmanager
def _running(command: str, tmp: Path, *extra: str) -> Iterator[tuple[str, list[str]]]:
    """The command serving on a free port; after the block, the list holds its output."""
    port = _free_port()
    proc = subprocess.Popen(
        _args(command, tmp, port, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command} did not start") from None
                time.sleep(0.1)
        output: list[str] = []
        yield base, output
    finally:
        proc.terminate()
        output.append(proc.communicate(timeout=20)[0])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_hd25_access_log_and_log_level(command: str, tmp_path: Path) -> None:
    """HD-25: ``--access-log`` logs each request; ``--log-level warning`` hides info lines."""
    with _running(command, tmp_path, "--access-log") as (base, out):
        httpx.get(base + PROBE[command], timeout=5)
    assert f"GET {PROBE[command]} HTTP/1.1" in out[0]
    if command == "serve-api":  # a request without credentials is a rejection: one line
        assert "dpop rejected reason=missing_token" in out[0]
    with _running(command, tmp_path, "--log-level", "warning") as (base, quiet):
        httpx.get(base + PROBE[command], timeout=5)
    assert "INFO" not in quiet[0]
    assert f"GET {PROBE[command]}" not in quiet[0]
