"""A real Flask app with Authlib's server and dpopkit's DPoP layer, served on 127.0.0.1.

The app is ``examples/authlib_server.py``, built from the same TOML ``dpopkit serve``
reads and served by werkzeug in a thread (bounded: shut down after the module).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from werkzeug.serving import WSGIRequestHandler, make_server

from dpopkit.server.config import load_config

ROOT = Path(__file__).resolve().parents[3]
CALLBACK = "http://127.0.0.1:9/callback"

CONFIG = """
issuer = "{issuer}"
replay_url = "memory"
test_mode_user = "alice"

[dpop]
nonce = "per_client"

[tokens]
audience = ["{issuer}"]

[[users]]
username = "alice"
password = "alice password"

[[clients]]
client_id = "rp"
client_secret = "rp-secret-value"
token_endpoint_auth_method = "client_secret_basic"
grant_types = ["client_credentials", "authorization_code", "refresh_token"]
redirect_uris = ["{callback}"]
scope = "read write"
dpop_bound_access_tokens = true

[[clients]]
client_id = "rp-nonce"
client_secret = "rp-nonce-secret-value"
grant_types = ["client_credentials", "authorization_code", "refresh_token"]
redirect_uris = ["{callback}"]
scope = "read"
dpop_nonce_required = true

[[clients]]
client_id = "legacy"
client_secret = "legacy-secret-value"
grant_types = ["client_credentials"]
scope = "read"

[[clients]]
client_id = "spa"
token_endpoint_auth_method = "none"
grant_types = ["authorization_code", "refresh_token"]
redirect_uris = ["{callback}"]
scope = "read"
"""


def load_example() -> ModuleType:
    """Import ``examples/authlib_server.py`` (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "authlib_server_example", ROOT / "examples" / "authlib_server.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


@dataclass
class AuthlibAS:
    issuer: str
    config_path: Path


@pytest.fixture(scope="module")
def authlib_as(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthlibAS]:
    example = load_example()
    data = tmp_path_factory.mktemp("authlib-as")
    httpd = make_server("127.0.0.1", 0, None, threaded=True, request_handler=_QuietHandler)  # type: ignore[arg-type]
    issuer = f"http://127.0.0.1:{httpd.server_port}"
    path = data / "as.toml"
    path.write_text(CONFIG.format(issuer=issuer, callback=CALLBACK), encoding="utf-8")
    config = load_config(path, data_dir=data, host="127.0.0.1", port=httpd.server_port)
    httpd.app = example.create_app(config)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield AuthlibAS(issuer=issuer, config_path=path)
    finally:
        httpd.shutdown()
        thread.join(10)
        httpd.server_close()
