"""The browser client as ``dpopkit serve`` assembles it, without a browser.

Through httpx's ASGITransport on the exact app ``dpopkit serve`` builds: the SPA's
files and headers (CSP, no Referer), nothing loaded from another origin, the demo
public client's redirect URI, and CORS on the AS and the demo API exposing
``DPoP-Nonce`` and ``WWW-Authenticate`` to scripts (AS-20, RS-15).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpopkit.cli.serve import _build
from dpopkit.demo.api import WHOAMI_PATH
from dpopkit.server.config import load_config
from dpopkit.server.spa import SPA_PATH

ISSUER = "http://127.0.0.1:8000"
ASSETS = files("dpopkit.server.spa")
CROSS_ORIGIN = "https://spa.example"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _client(
    tmp_path: Path, *, no_api: bool = False, config: Path | None = None
) -> httpx.AsyncClient:
    spec: dict[str, Any] = {
        "config": None if config is None else str(config),
        "host": "127.0.0.1",
        "port": 8000,
        "data_dir": str(tmp_path / "as"),
        "no_api": no_api,
    }
    _config, app, _service = _build(spec)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    return httpx.AsyncClient(transport=transport, base_url=ISSUER)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(tmp_path) as http:
        yield http


@pytest.mark.parametrize(
    ("path", "name", "ctype"),
    [
        ("/app/", "index.html", "text/html; charset=utf-8"),
        ("/app/index.html", "index.html", "text/html; charset=utf-8"),
        ("/app/app.js", "app.js", "text/javascript; charset=utf-8"),
        ("/app/style.css", "style.css", "text/css; charset=utf-8"),
        ("/app/favicon.svg", "favicon.svg", "image/svg+xml"),
    ],
)
async def test_spa_files_served_with_strict_headers(
    client: httpx.AsyncClient, path: str, name: str, ctype: str
) -> None:
    resp = await client.get(path)
    assert resp.status_code == 200
    assert resp.content == ASSETS.joinpath(name).read_bytes()
    assert resp.headers["content-type"] == ctype
    csp = {d.split()[0]: d.split()[1:] for d in resp.headers["content-security-policy"].split("; ")}
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]  # no inline or foreign scripts (SEC-11)
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert resp.headers["referrer-policy"] == "no-referrer"  # the code is in the page URL
    assert resp.headers["x-content-type-options"] == "nosniff"


async def test_spa_bare_prefix_redirects_to_slash(client: httpx.AsyncClient) -> None:
    resp = await client.get(SPA_PATH)
    assert resp.status_code in (307, 308)
    assert resp.headers["location"] == f"{ISSUER}{SPA_PATH}/"


@pytest.mark.parametrize("path", ["/app/__init__.py", "/app/x/app.js", "/app/app.jsx"])
async def test_spa_serves_only_its_own_files(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


async def test_spa_methods(client: httpx.AsyncClient) -> None:
    post = await client.post("/app/")
    assert post.status_code == 405
    assert post.headers["allow"] == "GET, HEAD"
    head = await client.head("/app/app.js")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(ASSETS.joinpath("app.js").read_bytes())


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline_scripts = 0
        self.inline_handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]
        self.inline_handlers += [k for k, _ in attrs if k.startswith("on")]
        if tag == "script" and "src" not in values:
            self.inline_scripts += 1


def test_spa_loads_everything_from_its_own_origin() -> None:
    """No CDN, no build step: only relative references, no inline code (CSP-compatible)."""
    parser = _Refs()
    parser.feed(ASSETS.joinpath("index.html").read_text("utf-8"))
    assert sorted(parser.refs) == ["app.js", "favicon.svg", "style.css"]
    assert parser.inline_scripts == 0
    assert parser.inline_handlers == []
    for name in ("app.js", "style.css"):
        text = ASSETS.joinpath(name).read_text("utf-8")
        assert "://" not in text
        assert "@import" not in text
        assert "import(" not in text


def test_demo_public_client_registers_the_spa_redirect_uri(tmp_path: Path) -> None:
    config = load_config(None, host="127.0.0.1", port=8123, data_dir=tmp_path)
    public = {c.client_id: c for c in config.clients}["demo-public"]
    assert "http://127.0.0.1:8123/app/" in public.redirect_uris
    assert public.token_endpoint_auth_method == "none"
    assert public.dpop_bound_access_tokens


@pytest.mark.parametrize("path", ["/token", WHOAMI_PATH])
async def test_as20_rs15_cors_preflight_allows_dpop_headers(
    client: httpx.AsyncClient, path: str
) -> None:
    resp = await client.options(
        path,
        headers={
            "Origin": CROSS_ORIGIN,
            "Access-Control-Request-Method": "POST" if path == "/token" else "GET",
            "Access-Control-Request-Headers": "authorization, dpop",
        },
    )
    assert resp.status_code in (200, 204)
    assert resp.headers["access-control-allow-origin"] == "*"
    allowed = {h.strip().lower() for h in resp.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "dpop"} <= allowed


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/token", 400), ("GET", WHOAMI_PATH, 401)],
)
async def test_as20_rs15_cors_exposes_dpop_nonce_and_challenge(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    resp = await client.request(method, path, headers={"Origin": CROSS_ORIGIN})
    assert resp.status_code == status
    assert resp.headers["access-control-allow-origin"] == "*"
    exposed = {h.strip().lower() for h in resp.headers["access-control-expose-headers"].split(",")}
    assert {"dpop-nonce", "www-authenticate"} <= exposed


async def test_rs15_api_cors_follows_configured_origins(tmp_path: Path) -> None:
    config = tmp_path / "as.toml"
    config.write_text(f'issuer = "{ISSUER}"\ncors_origins = ["{CROSS_ORIGIN}"]\n')
    async with _client(tmp_path, config=config) as http:
        allowed = await http.get(WHOAMI_PATH, headers={"Origin": CROSS_ORIGIN})
        other = await http.get(WHOAMI_PATH, headers={"Origin": "https://evil.example"})
    assert allowed.status_code == other.status_code == 401
    assert allowed.headers["access-control-allow-origin"] == CROSS_ORIGIN
    assert "access-control-allow-origin" not in other.headers


async def test_no_api_still_serves_the_spa(tmp_path: Path) -> None:
    async with _client(tmp_path, no_api=True) as http:
        assert (await http.get("/app/")).status_code == 200
        assert (await http.get(WHOAMI_PATH)).status_code == 404
