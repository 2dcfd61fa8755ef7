"""The browser client (``dpopkit.server.spa``) driven in a real headless Chromium.

Debian's Chromium (``/usr/bin/chromium``, or ``DPOPKIT_CHROMIUM``) through
Playwright's Python package with ``executable_path``: no browser download. Under
``CI=true`` a missing Chromium fails the run (``.ci/run`` installs it with apt);
elsewhere these tests are skipped loudly.

1. ``dpopkit serve`` in demo mode as a real process: sign in as the demo user
   through the AS's login and consent pages, get a DPoP-bound token, call
   ``/api/whoami`` (200, same ``jkt`` as the browser's key), reload and check the
   key is reused from IndexedDB (same ``jkt``, and the stored token still works
   with it). Covers C-18 (``dpop_jkt``), AS-21, C-23 (non-extractable key).
2. An AS that always demands nonces and an API that demands its own: the page
   retries exactly once at each (C-10) and keeps AS and RS nonces apart (C-11, C-14).
3. On a 390 px wide screen, through a wrong password and a full sign-in: no console
   error on any page (HD-31), no word wrapped mid-word outside token blocks and no
   horizontal scrolling, and the login page keeps the username.

A screenshot of the final page is saved under the test's ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from dpopkit.cli.serve import _build
from dpopkit.core.thumbprint import access_token_hash, jwk_thumbprint
from dpopkit.demo.api import WHOAMI_PATH, create_whoami_app
from dpopkit.server.config import build_server, load_config
from dpopkit.server.spa import spa_mounts
from tests.live import serve_in_thread

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("DPOPKIT_CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000

# Reads the stored key back from IndexedDB, independently of the app's code.
READ_STORED_KEY = """async () => {
  const db = await new Promise((resolve, reject) => {
    const open = indexedDB.open("dpopkit-spa");
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
  const record = await new Promise((resolve, reject) => {
    const req = db.transaction("keys").objectStore("keys").get("dpop-key");
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  db.close();
  const { privateKey, publicKey } = record.keyPair;
  let exportError = null;
  try {
    await crypto.subtle.exportKey("jwk", privateKey);
  } catch (err) {
    exportError = err.name;
  }
  return {
    extractable: privateKey.extractable,
    usages: privateKey.usages,
    algorithm: privateKey.algorithm,
    exportError,
    publicJwk: await crypto.subtle.exportKey("jwk", publicKey),
  };
}"""


@pytest.fixture
def chromium() -> str:
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    if IN_CI:
        pytest.fail(f"{message}: CI=true requires it", pytrace=False)
    pytest.skip(f"!!! SKIPPED: {message}; install it to run the browser tests !!!")


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[BrowserContext]:
    """A fresh profile (IndexedDB survives reloads within the test)."""
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 900},
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _dpopkit_serve(data_dir: Path, log: Path) -> Iterator[str]:
    """``dpopkit serve`` (demo mode) as a process on a free loopback port; yields the issuer."""
    for _ in range(3):  # another process may grab the port between probe and bind
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "dpopkit", "serve", "--host", "127.0.0.1"),
                    *("--port", str(port), "--data-dir", str(data_dir)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    metadata = httpx.get(f"{base}/.well-known/oauth-authorization-server")
                    if metadata.status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            else:
                if proc.poll() is None:
                    raise AssertionError(f"dpopkit serve did not start: {log.read_text()}")
                continue  # exited (port taken?): try another port
            yield base
            return
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    raise AssertionError(f"dpopkit serve failed to start: {log.read_text()}")


def _open_app(page: Page, base: str) -> str:
    """Load the SPA, wait until it is ready, return the jkt it shows."""
    page.goto(f"{base}/app/")
    page.wait_for_selector("body[data-ready=true]")
    return page.inner_text("#jkt")


def _sign_in(page: Page, username: str, password: str) -> None:
    """Click sign-in, fill the AS's login page, approve consent, wait for the app."""
    page.click("#login")
    page.wait_for_url("**/authorize?**")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[value=login]")
    page.wait_for_selector("button[value=approve]")
    page.click("button[value=approve]")
    page.wait_for_url("**/app/")
    page.wait_for_selector("body[data-ready=true]")


def _call_api(page: Page) -> dict[str, Any]:
    page.click("#call-api")
    page.wait_for_selector("#api-result.ok, #api-result.error")
    body: dict[str, Any] = json.loads(page.inner_text("#api-body") or "null")
    return body


def _exchanges(page: Page) -> list[dict[str, str]]:
    """The HTTP exchanges the page logged (its data attributes)."""
    rows: list[dict[str, str]] = page.eval_on_selector_all(
        "#log li", "items => items.map(li => ({...li.dataset}))"
    )
    return rows


def _screenshot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot of the final page: {path}")


def test_c18_c23_spa_signs_in_calls_api_and_reuses_stored_key(
    browser: BrowserContext, tmp_path: Path
) -> None:
    """C-18/AS-21/C-23: login + consent, DPoP token for the browser key, API 200, reload."""
    data_dir = tmp_path / "as"
    with _dpopkit_serve(data_dir, tmp_path / "serve.log") as base:
        password = (data_dir / "demo-user-password").read_text().strip()
        page = browser.new_page()
        jkt = _open_app(page, base)
        assert "generated" in page.inner_text("#key-origin")

        # C-23: the private key in IndexedDB is a non-extractable WebCrypto key, and the
        # page's RFC 7638 thumbprint agrees with ours.
        stored = page.evaluate(READ_STORED_KEY)
        assert stored["extractable"] is False
        assert stored["exportError"] == "InvalidAccessError"
        assert stored["algorithm"] == {"name": "ECDSA", "namedCurve": "P-256"}
        assert stored["usages"] == ["sign"]
        assert "d" not in stored["publicJwk"]
        assert jwk_thumbprint(stored["publicJwk"]) == jkt

        _sign_in(page, "demo", password)
        assert "code=" not in page.url  # the code left the address bar
        assert page.get_attribute("#auth-status", "class") == "ok"
        assert page.get_attribute("#token-status", "class") == "ok"  # cnf.jkt == jkt
        claims = json.loads(page.inner_text("#token-claims"))
        assert claims["cnf"] == {"jkt": jkt}
        assert claims["client_id"] == "demo-public"
        assert claims["sub"] == "demo"

        whoami = _call_api(page)
        assert page.inner_text("#api-status") == "200"
        assert whoami == {"sub": "demo", "client_id": "demo-public", "scope": "read", "jkt": jkt}
        assert page.inner_text("#api-jkt") == jkt
        header = json.loads(page.inner_text("#proof-header"))
        payload = json.loads(page.inner_text("#proof-payload"))
        assert header["typ"] == "dpop+jwt"
        assert header["alg"] == "ES256"
        assert sorted(header["jwk"]) == ["crv", "kty", "x", "y"]
        assert jwk_thumbprint(header["jwk"]) == jkt
        tokens = json.loads(page.evaluate("sessionStorage.getItem('dpopkit.tokens')"))
        assert payload["htm"] == "GET"
        assert payload["htu"] == base + WHOAMI_PATH
        assert payload["ath"] == access_token_hash(tokens["access_token"])
        assert [(x["path"], x["status"]) for x in _exchanges(page)] == [
            ("/token", "200"),
            (WHOAMI_PATH, "200"),
        ]

        # A reload reuses the stored key (same jkt) and the kept token still works with it.
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        assert page.inner_text("#jkt") == jkt
        assert "reused" in page.inner_text("#key-origin")
        assert _call_api(page)["jkt"] == jkt
        assert page.inner_text("#api-status") == "200"
        assert page.get_attribute("#overall", "class") == "status ok"
        _screenshot(page, tmp_path / "spa-final.png")


NONCE_CONFIG = """
issuer = "{base}"
replay_url = "memory"

[dpop]
nonce = "always"

[[users]]
username = "alice"
password = "alice-password-1"

[[clients]]
client_id = "demo-public"
token_endpoint_auth_method = "none"
grant_types = ["authorization_code", "refresh_token"]
redirect_uris = ["{base}/app/"]
scope = "read write"
dpop_bound_access_tokens = true
"""


def test_c10_c14_spa_retries_once_per_nonce_and_keeps_as_and_rs_nonces_apart(
    browser: BrowserContext, tmp_path: Path
) -> None:
    """C-10/C-11/C-14, AS-20/RS-15: 400 and 401 use_dpop_nonce each cost one retry."""

    def build(base: str) -> Any:
        config_file = tmp_path / "as.toml"
        config_file.write_text(NONCE_CONFIG.format(base=base))
        config = load_config(config_file, data_dir=tmp_path / "as")
        # The API validates the AS's JWT access tokens by discovery and wants RS nonces.
        api = create_whoami_app(
            issuer=base, public_origin=base, require_nonce=True, allow_insecure_http=True
        )
        app, _ = build_server(config, mounts=lambda _svc: [*spa_mounts(), (WHOAMI_PATH, api)])
        return app

    with serve_in_thread(build) as base:
        page = browser.new_page()
        jkt = _open_app(page, base)
        _sign_in(page, "alice", "alice-password-1")
        assert page.get_attribute("#auth-status", "class") == "ok"
        assert _call_api(page)["jkt"] == jkt
        page.click("#refresh")
        page.wait_for_selector("#log li:nth-child(5)")  # the refresh exchange
        assert _call_api(page)["jkt"] == jkt
        log = _exchanges(page)

        assert [(x["server"], x["path"], x["status"], x["attempt"]) for x in log] == [
            ("as", "/token", "400", "1"),  # use_dpop_nonce at the AS (RFC 9449 §8)
            ("as", "/token", "200", "2"),
            ("rs", WHOAMI_PATH, "401", "1"),  # use_dpop_nonce at the API (§9)
            ("rs", WHOAMI_PATH, "200", "2"),
            ("as", "/token", "200", "1"),  # refresh: the AS nonce is already known
            ("rs", WHOAMI_PATH, "200", "1"),
        ]
        # Every proof carries the latest nonce of *its* server, never the other's.
        latest: dict[str, str] = {}
        for row in log:
            assert row["proofNonce"] == latest.get(row["server"], "")
            if row["responseNonce"]:
                latest[row["server"]] = row["responseNonce"]
        assert latest["as"] != latest["rs"]
        assert page.get_attribute("#api-result", "class") == "ok"
        _screenshot(page, tmp_path / "spa-nonces.png")


@pytest.fixture
def demo_as(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The app ``dpopkit serve`` builds (demo mode), in a thread; yields (issuer, password)."""
    data_dir = tmp_path / "demo-as"

    def build(base: str) -> Any:
        spec = {"config": None, "host": "127.0.0.1", "no_api": False, "data_dir": str(data_dir)}
        return _build({**spec, "port": int(base.rsplit(":", 1)[1])})[1]

    with serve_in_thread(build) as base:
        yield base, (data_dir / "demo-user-password").read_text().strip()


def _pending_state(page: Page) -> str:
    """The state the app stored before leaving for /authorize (same origin, same tab)."""
    pending: dict[str, str] = json.loads(page.evaluate("sessionStorage.getItem('dpopkit.pending')"))
    return pending["state"]


def test_spa_refuses_callback_with_forged_state(
    browser: BrowserContext, demo_as: tuple[str, str]
) -> None:
    """RFC 6749 §10.12 (CSRF): a code with a state this tab did not send is not redeemed."""
    base, _ = demo_as
    page = browser.new_page()
    _open_app(page, base)
    page.click("#login")  # a sign-in is pending: the attacker's state must still not match
    page.wait_for_url("**/authorize?**")
    assert _pending_state(page) != "forged"
    page.goto(f"{base}/app/?code=attacker-code&state=forged&iss={base}")
    page.wait_for_selector("body[data-ready=error]")
    assert page.get_attribute("#overall", "class") == "status error"
    assert _exchanges(page) == []  # nothing sent to /token
    assert page.url == f"{base}/app/"  # the code left the address bar anyway


def test_spa_refuses_authorization_response_from_another_issuer(
    browser: BrowserContext, demo_as: tuple[str, str]
) -> None:
    """RFC 9207 §2.4 (mix-up): a response whose iss is not our AS is not redeemed."""
    base, _ = demo_as
    page = browser.new_page()
    _open_app(page, base)
    page.click("#login")
    page.wait_for_url("**/authorize?**")
    state = _pending_state(page)
    page.goto(f"{base}/app/?code=some-code&state={state}&iss=https%3A%2F%2Fevil.example")
    page.wait_for_selector("body[data-ready=error]")
    assert page.get_attribute("#overall", "class") == "status error"
    assert _exchanges(page) == []


def test_spa_reports_denied_consent(browser: BrowserContext, demo_as: tuple[str, str]) -> None:
    """The user denies consent: the AS redirects with access_denied and no token is requested."""
    base, password = demo_as
    page = browser.new_page()
    _open_app(page, base)
    page.click("#login")
    page.wait_for_url("**/authorize?**")
    page.fill("#username", "demo")
    page.fill("#password", password)
    page.click("button[value=login]")
    page.click("button[value=deny]")
    page.wait_for_url("**/app/")
    page.wait_for_selector("body[data-ready=error]")
    assert "access_denied" in page.inner_text("#overall")
    assert _exchanges(page) == []
    assert page.is_disabled("#call-api")


def test_c19_spa_forget_replaces_the_key(browser: BrowserContext, demo_as: tuple[str, str]) -> None:
    """C-19: "Forget key and tokens" deletes the stored key; the next load makes a new one."""
    base, _ = demo_as
    page = browser.new_page()
    first = _open_app(page, base)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.inner_text("#jkt") == first
    with page.expect_navigation():
        page.click("#forget")
    page.wait_for_selector("body[data-ready=true]")
    second = page.inner_text("#jkt")
    assert second != first
    assert "generated" in page.inner_text("#key-origin")
    assert jwk_thumbprint(page.evaluate(READ_STORED_KEY)["publicJwk"]) == second
    assert page.evaluate("sessionStorage.getItem('dpopkit.tokens')") is None


# Every word (split at spaces, hyphens and slashes) of every text outside code/pre must
# sit on one line; tokens and thumbprints (code, pre) may wrap anywhere.
MID_WORD_WRAPS = """() => {
  const bad = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest("code, pre, script, style, noscript")) continue;
    const words = /[^\\s\\-\\/]+/g;
    let m;
    while ((m = words.exec(node.data))) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const lines = new Set(
        [...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top))
      );
      if (lines.size > 1) bad.push(m[0]);
    }
  }
  return { bad, overflow: document.documentElement.scrollWidth - window.innerWidth };
}"""


def _layout_ok(page: Page, where: str) -> None:
    result = page.evaluate(MID_WORD_WRAPS)
    assert result["bad"] == [], f"{where}: words wrapped mid-word: {result['bad']}"
    assert result["overflow"] <= 0, f"{where}: {result['overflow']} px horizontal overflow"


def test_hd31_phone_width_no_console_errors_no_mid_word_wraps(
    browser: BrowserContext, demo_as: tuple[str, str]
) -> None:
    """HD-31: at 390 px, every page of the flow (the app, the AS's login page after a
    wrong password, consent, the app with a token and an API answer) logs no console
    error (a favicon is served), wraps no word mid-word and does not scroll sideways;
    the login page keeps the username after a wrong password."""
    base, password = demo_as
    page = browser.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    errors: list[str] = []
    page.on(
        "console", lambda m: errors.append(f"{m.text} @ {page.url}") if m.type == "error" else None
    )
    page.on("pageerror", lambda exc: errors.append(f"{exc} @ {page.url}"))
    _open_app(page, base)
    _layout_ok(page, "app")
    page.click("#login")
    page.wait_for_url("**/authorize?**")
    _layout_ok(page, "login")
    page.fill("#username", "demo")
    page.fill("#password", "not-the-password")
    page.click("button[value=login]")
    page.wait_for_selector("p.error")
    assert page.input_value("#username") == "demo"
    assert page.input_value("#password") == ""
    _layout_ok(page, "login after a wrong password")
    page.fill("#password", password)
    page.click("button[value=login]")
    page.wait_for_selector("button[value=approve]")
    _layout_ok(page, "consent")
    page.click("button[value=approve]")
    page.wait_for_url("**/app/")
    page.wait_for_selector("body[data-ready=true]")
    assert _call_api(page)["sub"] == "demo"
    _layout_ok(page, "app with a token")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert errors == []
