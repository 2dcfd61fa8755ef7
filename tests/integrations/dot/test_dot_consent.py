"""The code flow with a person: DOT's login and consent forms keep the ``dpop_jkt`` binding."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import pytest
import requests

from dpopkit import DPoPKey
from dpopkit.core.proof import create_proof

from .conftest import CALLBACK, PASSWORD, start, stop

pytestmark = pytest.mark.slow

CONFIG = f"""
[[users]]
username = "alice"
password = "{PASSWORD}"

[[clients]]
client_id = "spa"
token_endpoint_auth_method = "none"
grant_types = ["authorization_code", "refresh_token"]
redirect_uris = ["{CALLBACK}"]
scope = "read"
"""

_INPUT = re.compile(r"<input([^>]*)>")
_ATTR = re.compile(r'(\w+)="([^"]*)"')


def _fields(page: str) -> dict[str, str]:
    """The named inputs of a form page (hidden fields, CSRF token)."""
    fields: dict[str, str] = {}
    for tag in _INPUT.findall(page):
        attrs = dict(_ATTR.findall(tag))
        if "name" in attrs and attrs.get("type") != "submit":
            fields[attrs["name"]] = html.unescape(attrs.get("value", ""))
    return fields


@pytest.fixture(scope="module")
def person_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example server without test mode: a person signs in and consents."""
    workdir: Path = tmp_path_factory.mktemp("dot-person")
    config = workdir / "as.toml"
    config.write_text(CONFIG, encoding="utf-8")
    proc, base = start(config)
    try:
        yield base
    finally:
        stop(proc)


def _sign_in_and_consent(base: str, jkt: str, challenge: str) -> str:
    params = {
        "response_type": "code",
        "client_id": "spa",
        "redirect_uri": CALLBACK,
        "scope": "read",
        "state": "st-" + secrets.token_hex(4),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "dpop_jkt": jkt,
    }
    browser = requests.Session()
    authorize = base + "/authorize/?" + urlencode(params)
    to_login = browser.get(authorize, allow_redirects=False, timeout=10)
    assert to_login.status_code == 302
    login_url = urljoin(base, to_login.headers["Location"])
    page = browser.get(login_url, timeout=10)
    form = {**_fields(page.text), "username": "alice", "password": PASSWORD}
    signed_in = browser.post(login_url, data=form, allow_redirects=False, timeout=10)
    assert signed_in.status_code == 302, signed_in.text
    consent_url = urljoin(base, signed_in.headers["Location"])
    consent = browser.get(consent_url, timeout=10)
    assert consent.status_code == 200
    approved = browser.post(
        consent_url,
        data={**_fields(consent.text), "allow": "Authorize"},
        allow_redirects=False,
        timeout=10,
    )
    assert approved.status_code == 302, approved.text
    return parse_qs(urlsplit(approved.headers["Location"]).query)["code"][0]


def test_dot_consent_form_keeps_the_dpop_jkt_binding(person_server: str) -> None:
    """HD-22: RFC 9449 §10: a code approved by a person is still bound to dpop_jkt."""
    key = DPoPKey.generate()
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    code = _sign_in_and_consent(person_server, key.jkt, challenge)
    url = person_server + "/token/"
    form = {
        "grant_type": "authorization_code",
        "client_id": "spa",
        "code": code,
        "redirect_uri": CALLBACK,
        "code_verifier": verifier,
    }

    def post(with_key: DPoPKey) -> requests.Response:
        proof = create_proof(with_key, htm="POST", htu=url, allow_insecure_http=True)
        return requests.post(url, data=form, headers={"DPoP": proof}, timeout=10)

    other = post(DPoPKey.generate())
    assert (other.status_code, other.json()["error"]) == (400, "invalid_grant")
    good = post(key)
    assert good.status_code == 200, good.text
    assert good.json()["token_type"] == "DPoP"
