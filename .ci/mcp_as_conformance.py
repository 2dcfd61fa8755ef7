"""Run the MCP conformance harness's authorization-server scenarios against ``dpopkit serve``.

Starts ``dpopkit serve`` (test mode: the authorization endpoint logs in a test user and
redirects at once, on loopback only) with a public client for the harness, runs

    mcp_conformance authorization --url ISSUER --client-id conformance --resource MCP_URL

(``.ci/mcp-harness.sh``), opens the authorization URL the harness prints (as a browser
would) and exits non-zero unless every scenario passed. Usage (from the repository root):

    python .ci/mcp_as_conformance.py
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALLBACK_PORT = 3000

CONFIG = """
issuer = "http://127.0.0.1:{port}"
host = "127.0.0.1"
port = {port}
data_dir = "{data}"
replay_url = "sqlite"
test_mode_user = "conformance-user"
registration_enabled = true
registration_allowed_scopes = ["mcp:tools"]

[tokens]
audience = ["{resource}"]

[[clients]]
client_id = "conformance"
token_endpoint_auth_method = "none"
grant_types = ["authorization_code", "refresh_token"]
redirect_uris = ["http://127.0.0.1:{callback}/callback"]
scope = "mcp:tools"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _open_like_a_browser(url: str) -> None:
    """Follow the authorization redirects up to the harness's callback server."""
    opener = urllib.request.build_opener(_NoRedirect)
    for _ in range(5):
        try:
            opener.open(url, timeout=10).close()
            return
        except urllib.error.HTTPError as answer:
            location = answer.headers.get("Location")
            if answer.code not in (301, 302, 303, 307, 308) or not location:
                print(f"authorization answered {answer.code}", file=sys.stderr)
                return
            url = urllib.parse.urljoin(url, location)
        except urllib.error.URLError:
            time.sleep(0.5)  # the harness's callback server is starting


def main() -> int:
    """Serve, run the scenarios, return 0 when every one passed."""
    port = _free_port()
    issuer = f"http://127.0.0.1:{port}"
    resource = "http://127.0.0.1:8001/mcp"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "as.toml"
        config.write_text(
            CONFIG.format(
                port=port, data=Path(tmp) / "data", resource=resource, callback=CALLBACK_PORT
            ),
            encoding="utf-8",
        )
        server = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "dpopkit", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(issuer + "/jwks", timeout=1).close()  # noqa: S310
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        print("dpopkit serve did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            args = ["authorization", "--url", issuer, "--client-id", "conformance"]
            args += ["--resource", resource, "--port", str(CALLBACK_PORT)]
            shell = 'source .ci/mcp-harness.sh && mcp_conformance "$@"'
            harness = subprocess.Popen(  # noqa: S603
                [
                    "/bin/bash",
                    "-c",
                    shell,
                    "mcp_harness",
                    *args,
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert harness.stdout is not None
            output = []
            for line in harness.stdout:
                sys.stdout.write(line)
                output.append(line)
                if re.match(r"^https?://\S+\?\S*response_type=code", line.strip()):
                    threading.Thread(
                        target=_open_like_a_browser, args=(line.strip(),), daemon=True
                    ).start()
            code = harness.wait()
        finally:
            server.terminate()
            server.wait(10)
    total = [line for line in output if line.startswith("Total:")]
    if code != 0 or not total or not re.search(r" 0 failed", total[-1]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
