"""Several instances act as one server: docs/deployment.md, run for real.

Two ``dpopkit serve`` processes share one PostgreSQL grant store (its own schema) and one
Redis replay store (its own key prefix), with the configuration of docs/deployment.md
(only the addresses differ); two ``dpopkit serve-api`` processes share one Redis replay
store and one nonce secret. Every request goes over HTTP to real processes on 127.0.0.1.
The issuer is instance A's address: the public origin both AS instances serve.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx
import pytest

from dpopkit import DPoPKey, create_proof, parse_challenges
from dpopkit._private import make_private_dir, write_private_file
from dpopkit.cli import main
from tests.conftest import PG_DSN, REDIS_URL, _require_server, delete_redis_prefix
from tests.resource._rs_support import free_port
from tests.server.conftest import hidden_fields

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
REDIRECT = "http://127.0.0.1:9/cb"
RS_SECRET = "rs-introspection-secret"
API = "https://api.example"

_TEST_CLIENTS = """
[[users]]
username = "alice"
password = "{password}"

[[clients]]
client_id = "spa"
token_endpoint_auth_method = "none"
grant_types = ["authorization_code", "refresh_token"]
redirect_uris = ["{redirect}"]
scope = "read"
dpop_bound_access_tokens = true

[[clients]]
client_id = "rs"
client_secret = "{rs_secret}"
grant_types = ["client_credentials"]
introspection_audiences = ["{issuer}"]
"""


def documented_config(**values: object) -> str:
    """The TOML block of docs/deployment.md's "Configuration", with ``values`` put in."""
    page = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    found = re.search(r"^## Configuration\n.*?```toml\n(.*?)```", page, re.S | re.M)
    assert found is not None
    text = found.group(1)
    for key, value in values.items():
        literal = json.dumps(value) if isinstance(value, str) else str(value)
        text, count = re.subn(rf"^{key} = .*$", f"{key} = {literal}", text, count=1, flags=re.M)
        assert count == 1, f"docs/deployment.md sets no {key}"
    return text


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} does not answer: {log.read_text()}")
        time.sleep(0.1)


@contextmanager
def process(args: list[str], *, ready: str, log: Path, env: dict[str, str]) -> Iterator[None]:
    """``python -m dpopkit ARGS`` until the block ends; its stderr in ``log``."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dpopkit", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
    try:
        _wait(ready, proc, log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Deployment:
    issuer: str  # instance A's address, the public origin
    a: str
    b: str
    logs: list[Path]
    nonces: dict[str, str] = field(default_factory=dict)

    def rejections(self, reason: str) -> int:
        """How many requests both instances logged as refused with ``reason``."""
        return sum(log.read_text().count(f"reason={reason}") for log in self.logs)


@contextmanager
def as_pair(
    tmp: Path, name: str, *, top: str = "", tables: str = "", **tokens: object
) -> Iterator[Deployment]:
    """Two ``dpopkit serve`` instances on one new PostgreSQL schema and one Redis prefix.

    ``tokens`` replace values of the documented configuration; ``top`` adds top-level
    settings before it and ``tables`` adds TOML tables after it.
    """
    import psycopg

    _require_server("PostgreSQL", PG_DSN, 5432)
    _require_server("Redis", REDIS_URL, 6379)
    unique = f"t{secrets.token_hex(6)}"
    schema = f"{unique}_{name}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    port_a, port_b = free_port(), free_port()
    issuer = f"http://127.0.0.1:{port_a}"
    kek = tmp / f"{name}-kek"
    write_private_file(kek, secrets.token_urlsafe(32).encode(), overwrite=True)
    storage = PG_DSN.replace("postgresql://", "postgresql+psycopg://", 1)
    config = tmp / f"{name}.toml"
    config.write_text(
        top
        + documented_config(
            issuer=issuer,
            host="127.0.0.1",
            port=port_a,
            data_dir=str(tmp / f"{name}-a"),
            storage_url=f"{storage}?options=-csearch_path%3D{schema}",
            replay_url=REDIS_URL,
            replay_prefix=f"{unique}:as:",
            key_encryption_keys_file=str(kek),
            **tokens,
        )
        + _TEST_CLIENTS.format(
            password=PASSWORD, redirect=REDIRECT, rs_secret=RS_SECRET, issuer=issuer
        )
        + tables
    )
    csrf = secrets.token_urlsafe(32).encode()  # the one login-form key of every instance
    env = {"DPOPKIT_AS_NONCE_SECRETS": secrets.token_urlsafe(32)}
    logs = [tmp / f"{name}-a.log", tmp / f"{name}-b.log"]
    try:
        with ExitStack() as stack:
            for label, port, log in (("a", port_a, logs[0]), ("b", port_b, logs[1])):
                data = tmp / f"{name}-{label}"
                make_private_dir(data)
                write_private_file(data / "csrf-secret", csrf, overwrite=True)
                args = ["serve", "--config", str(config), "--port", str(port)]
                args += ["--data-dir", str(data), "--no-api"]
                args += ["--nonce-secret-env", "DPOPKIT_AS_NONCE_SECRETS"]
                ready = f"http://127.0.0.1:{port}/jwks"
                stack.enter_context(process(args, ready=ready, log=log, env=env))
            yield Deployment(issuer, issuer, f"http://127.0.0.1:{port_b}", logs)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        delete_redis_prefix(REDIS_URL, f"{unique}:")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with as_pair(tmp_path_factory.mktemp("deploy"), "main") as deployment:
        yield deployment


# -- a client of the pair -----------------------------------------------------------------


@dataclass
class Client:
    """A public client with one DPoP key, speaking to either instance of ``pair``."""

    pair: Deployment
    key: DPoPKey = field(default_factory=lambda: DPoPKey.generate("ES256"))
    nonce: str | None = None

    def proof(self, *, nonce: str | None = None) -> str:
        return create_proof(
            self.key,
            htm="POST",
            htu=self.pair.issuer + "/token",
            nonce=nonce or self.nonce,
            allow_insecure_http=True,
        )

    def token(self, base: str, form: dict[str, str], **kw: Any) -> httpx.Response:
        """POST /token at ``base``, answering one ``use_dpop_nonce`` (RFC 9449 §8)."""
        for _ in range(2):
            response = httpx.post(
                base + "/token", data=form, headers={"DPoP": self.proof()}, timeout=10, **kw
            )
            self.nonce = response.headers.get("dpop-nonce", self.nonce)
            if response.status_code != 400 or response.json()["error"] != "use_dpop_nonce":
                return response
        raise AssertionError("the nonce was refused twice")

    def authorize(self, first: str, second: str) -> tuple[str, str]:
        """Sign in and consent, each step at another instance; return (code, verifier)."""
        consent, verifier, cookie = sign_in_exchange(first, "alice", PASSWORD, post_to=second)
        assert consent.status_code == 200
        approve = {**hidden_fields(consent.text), "action": "approve"}
        done = httpx.post(f"{first}/authorize", data=approve, headers=cookie, timeout=10)
        assert done.status_code == 303
        answer = parse_qs(urlsplit(done.headers["location"]).query)
        assert answer["iss"] == [self.pair.issuer]
        return answer["code"][0], verifier

    def redeem(self, base: str, code: str, verifier: str) -> httpx.Response:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": REDIRECT,
            "client_id": "spa",
        }
        return self.token(base, form)

    def refresh(self, base: str, refresh_token: str) -> httpx.Response:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "spa"}
        return self.token(base, form)


def introspect(base: str, token: str) -> dict[str, Any]:
    response = httpx.post(
        base + "/introspect", data={"token": token}, auth=("rs", RS_SECRET), timeout=10
    )
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def kid_of(token: str) -> str:
    head = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


def jwks_kids(base: str) -> set[str]:
    return {key["kid"] for key in httpx.get(base + "/jwks", timeout=10).json()["keys"]}


def parallel(count: int, send: Callable[[int, httpx.AsyncClient], Any]) -> list[httpx.Response]:
    """``count`` requests at once (``send(index, client)``), answers in any order."""
    answers: list[httpx.Response] = []

    async def run() -> None:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:

            async def one(index: int) -> None:
                answers.append(await send(index, client))

            async with anyio.create_task_group() as group:
                for index in range(count):
                    group.start_soon(one, index)

    anyio.run(run)
    return answers


# -- the authorization server -------------------------------------------------------------


def test_code_issued_by_one_instance_is_redeemed_at_the_other(pair: Deployment) -> None:
    """RFC 6749 §4.1 with PKCE (RFC 7636 §4.6): the login page of A, the sign-in at B,
    the consent at A; the code is redeemed at B, its token is live at A; redeemed again
    at A it is refused and the token it gave is revoked (RFC 6749 §4.1.2)."""
    client = Client(pair)
    code, verifier = client.authorize(pair.a, pair.b)
    redeemed = client.redeem(pair.b, code, verifier)
    assert redeemed.status_code == 200, redeemed.text
    assert redeemed.json()["token_type"] == "DPoP"
    token = redeemed.json()["access_token"]
    info = introspect(pair.a, token)  # RFC 7662 §2.2
    assert info["active"] is True
    assert info["cnf"] == {"jkt": client.key.jkt}
    again = client.redeem(pair.a, code, verifier)
    assert again.json()["error"] == "invalid_grant"
    assert introspect(pair.b, token)["active"] is False


def test_refresh_rotation_and_reuse_detection_across_instances(pair: Deployment) -> None:
    """HD-9, RFC 9700 §4.14.2: redeemed at A, rotated at B; the old refresh token replayed
    at A is refused and revokes the family, so the newest one also fails at B."""
    client = Client(pair)
    code, verifier = client.authorize(pair.b, pair.a)
    first = client.redeem(pair.a, code, verifier)
    assert first.status_code == 200, first.text
    old = first.json()["refresh_token"]
    rotated = client.refresh(pair.b, old)
    assert rotated.status_code == 200, rotated.text
    newest = rotated.json()["refresh_token"]
    assert newest != old
    reused = client.refresh(pair.a, old)
    assert reused.json()["error"] == "invalid_grant"
    after = client.refresh(pair.b, newest)
    assert after.json()["error"] == "invalid_grant"
    assert introspect(pair.b, rotated.json()["access_token"])["active"] is False


def test_nonce_from_one_instance_is_accepted_by_the_other(pair: Deployment) -> None:
    """RFC 9449 §8, HD-21: the nonce A demands is accepted at B (shared nonce secrets)."""
    client = Client(pair)
    code, verifier = client.authorize(pair.a, pair.a)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT,
        "client_id": "spa",
    }
    demanded = httpx.post(
        pair.a + "/token", data=form, headers={"DPoP": client.proof()}, timeout=10
    )
    assert demanded.status_code == 400
    assert demanded.json()["error"] == "use_dpop_nonce"
    nonce = demanded.headers["dpop-nonce"]
    accepted = httpx.post(
        pair.b + "/token", data=form, headers={"DPoP": client.proof(nonce=nonce)}, timeout=10
    )
    assert accepted.status_code == 200, accepted.text


def test_one_proof_sent_50_times_to_both_instances_succeeds_once(pair: Deployment) -> None:
    """SEC-74, SEC-75 (RFC 9449 §11.1): 50 copies of one proof, split across A and B at
    once: one 200, 49 invalid_dpop_proof refused as replays (reason replayed_jti)."""
    client = Client(pair)
    code, verifier = client.authorize(pair.a, pair.b)
    tokens = client.redeem(pair.a, code, verifier)
    assert tokens.status_code == 200, tokens.text
    form = {
        "grant_type": "refresh_token",
        "refresh_token": tokens.json()["refresh_token"],
        "client_id": "spa",
    }
    proof = client.proof()  # with the nonce the redemption left: valid at both
    before = pair.rejections("replayed_jti")

    async def send(index: int, http: httpx.AsyncClient) -> httpx.Response:
        base = pair.a if index % 2 else pair.b
        return await http.post(base + "/token", data=form, headers={"DPoP": proof})

    answers = parallel(50, send)
    assert sorted(a.status_code for a in answers) == [200] + [400] * 49
    assert {a.json().get("error") for a in answers if a.status_code == 400} == {
        "invalid_dpop_proof"
    }
    deadline = time.monotonic() + 5
    while pair.rejections("replayed_jti") - before < 49 and time.monotonic() < deadline:
        time.sleep(0.1)  # the log lines of the last answers
    assert pair.rejections("replayed_jti") - before == 49


def test_signing_key_rotation_on_one_instance_is_seen_by_both(tmp_path: Path) -> None:
    """RFC 7517 §5, RFC 7662 §2.2: once the key rotates, a token A signs with the new key
    is active at B's /introspect and B's /jwks lists that key next to the old one; B signs
    with it too ([tokens] key_refresh_interval = 1: no minute-long wait)."""
    with as_pair(tmp_path, "rot", key_rotation=6, key_refresh_interval=1) as pair:
        client = Client(pair)
        service = {"grant_type": "client_credentials"}
        auth = ("rs", RS_SECRET)
        first = client.token(pair.a, service, auth=auth).json()["access_token"]
        old = kid_of(first)
        deadline = time.monotonic() + 20
        while True:
            token = client.token(pair.a, service, auth=auth).json()["access_token"]
            if kid_of(token) != old or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        new = kid_of(token)
        assert new != old
        # B reloads its keys every key_refresh_interval (1 s); the long deadline only
        # absorbs a busy host (each introspection may itself take seconds there).
        deadline = time.monotonic() + 30
        while not introspect(pair.b, token)["active"]:
            assert time.monotonic() < deadline, "B never saw the rotated key"
            time.sleep(0.2)
        assert {old, new} <= jwks_kids(pair.b)
        assert jwks_kids(pair.a) == jwks_kids(pair.b)
        from_b = client.token(pair.b, service, auth=auth).json()["access_token"]
        assert kid_of(from_b) == new
        assert introspect(pair.a, first)["active"] is True  # the old key still verifies


def sign_in_exchange(
    base: str, username: str, password: str, *, post_to: str | None = None
) -> tuple[httpx.Response, str, dict[str, str]]:
    """Open the sign-in page of a fresh PKCE request at ``base`` and post ``username`` and
    ``password`` to it (at ``post_to`` when given): (answer, code verifier, cookie header)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    query = {
        "client_id": "spa",
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
        "state": "st",
    }
    page = httpx.get(f"{base}/authorize?{urlencode(query)}", timeout=10)
    assert page.status_code == 200
    form = {**hidden_fields(page.text), "username": username, "password": password}
    cookie = {"Cookie": page.headers["set-cookie"].split(";")[0]}
    answer = httpx.post(
        f"{post_to or base}/authorize", data={**form, "action": "login"}, headers=cookie, timeout=10
    )
    return answer, verifier, cookie


def sign_in(base: str, username: str, password: str) -> httpx.Response:
    """Open the sign-in page at ``base`` and post ``username`` and ``password`` to it."""
    return sign_in_exchange(base, username, password)[0]


def _signed_in(response: httpx.Response) -> bool:
    return response.status_code == 200 and 'name="step" value="consent"' in response.text


def _logged(pair: Deployment, reason: str, count: int) -> int:
    """The instances' count of refusals with ``reason``, once ``count`` are logged (or 5 s)."""
    deadline = time.monotonic() + 5
    while pair.rejections(reason) < count and time.monotonic() < deadline:
        time.sleep(0.1)  # the log lines of the last answers
    return pair.rejections(reason)


def test_login_throttle_and_registration_limit_are_shared(tmp_path: Path) -> None:
    """HD-3 (RFC 6749 §10.10), HD-2 (RFC 7591 §5): with the Redis replay store the
    instances share one login throttle and one ``/register`` limit. Three wrong
    passwords split over A and B lock alice out as three on one instance would
    (``[login] lockout_failures = 3``): the right password is then refused (429 with
    ``Retry-After``, reason ``rate_limited``) at both. Two registrations from one
    address, at A then B, spend ``registration_rate_limit = 2``: the third is refused
    (429 ``temporarily_unavailable``) at either instance."""
    top = "registration_enabled = true\nregistration_rate_limit = 2\n"
    tables = "\n[login]\nfree_failures = 2\nlockout_failures = 3\nlockout_seconds = 60\n"
    with as_pair(tmp_path, "limits", top=top, tables=tables) as pair:
        for base in (pair.a, pair.b):
            wrong = sign_in(base, "alice", "wrong password")
            assert wrong.status_code == 200  # the form again
            assert not _signed_in(wrong)
        third = sign_in(pair.a, "alice", "wrong password")
        assert third.status_code == 200  # checked and counted: the third failure locks
        for base in (pair.b, pair.a):
            refused = sign_in(base, "alice", PASSWORD)
            assert refused.status_code == 429
            assert 55 <= int(refused.headers["retry-after"]) <= 60
            assert not _signed_in(refused)
        assert _logged(pair, "rate_limited", 2) == 2

        metadata = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
        created = [httpx.post(base + "/register", json=metadata) for base in (pair.a, pair.b)]
        assert [r.status_code for r in created] == [201, 201], created[0].text
        for base in (pair.a, pair.b):
            spent = httpx.post(base + "/register", json=metadata)
            assert spent.status_code == 429
            assert spent.json()["error"] == "temporarily_unavailable"
            assert int(spent.headers["retry-after"]) > 3500
        assert _logged(pair, "rate_limited", 4) == 4


# -- the resource server ------------------------------------------------------------------


@contextmanager
def rs_pair(pair: Deployment, tmp: Path, prefix: str) -> Iterator[tuple[str, str]]:
    """Two ``serve-api`` instances for ``pair``'s tokens: one Redis, one nonce secret."""
    env = {"DPOPKIT_RS_NONCE_SECRETS": secrets.token_urlsafe(32)}
    bases = []
    with ExitStack() as stack:
        for label in ("a", "b"):
            port = free_port()
            args = ["serve-api", "--issuer", pair.issuer, "--audience", pair.issuer]
            args += ["--public-origin", API, "--port", str(port), "--allow-insecure-http"]
            args += ["--replay", REDIS_URL, "--replay-prefix", prefix, "--metrics"]
            args += ["--require-nonce", "--nonce-secret-env", "DPOPKIT_RS_NONCE_SECRETS"]
            base = f"http://127.0.0.1:{port}"
            ready = base + "/.well-known/oauth-protected-resource"
            log = tmp / f"rs-{label}.log"
            stack.enter_context(process(args, ready=ready, log=log, env=env))
            bases.append(base)
        yield bases[0], bases[1]


def api_headers(key: DPoPKey, token: str, nonce: str | None = None) -> dict[str, str]:
    proof = create_proof(key, htm="GET", htu=API + "/api/whoami", access_token=token, nonce=nonce)
    return {"Authorization": f"DPoP {token}", "DPoP": proof}


def replays_counted(base: str) -> int:
    text = httpx.get(base + "/metrics", timeout=10).text
    found = re.search(r'^dpopkit_rs_rejected_total\{reason="replayed_jti"\} (\d+)$', text, re.M)
    return int(found.group(1)) if found else 0


def test_two_resource_servers_share_nonces_and_replay(pair: Deployment, tmp_path: Path) -> None:
    """RFC 9449 §9, §11.1 (HD-21, SEC-75): a nonce from RS A is accepted at RS B; 50
    copies of one request split across both at once: exactly one 200, 49 replays."""
    client = Client(pair)
    code, verifier = client.authorize(pair.a, pair.b)
    token = client.redeem(pair.b, code, verifier).json()["access_token"]
    prefix = f"t{secrets.token_hex(6)}:rs:"
    with rs_pair(pair, tmp_path, prefix) as (a, b):
        demanded = httpx.get(a + "/api/whoami", headers=api_headers(client.key, token))
        assert demanded.status_code == 401
        challenge = parse_challenges(demanded.headers["www-authenticate"])[0]
        assert challenge.params["error"] == "use_dpop_nonce"
        nonce = demanded.headers["dpop-nonce"]
        headers = api_headers(client.key, token, nonce)
        ok = httpx.get(b + "/api/whoami", headers=headers)
        assert ok.status_code == 200, ok.text
        assert ok.json()["jkt"] == client.key.jkt
        copies = api_headers(client.key, token, nonce)

        async def send(index: int, http: httpx.AsyncClient) -> httpx.Response:
            return await http.get((a if index % 2 else b) + "/api/whoami", headers=copies)

        answers = parallel(50, send)
        assert sorted(r.status_code for r in answers) == [200] + [401] * 49
        errors = {
            parse_challenges(r.headers["www-authenticate"])[0].params["error"]
            for r in answers
            if r.status_code == 401
        }
        assert errors == {"invalid_dpop_proof"}
        assert replays_counted(a) + replays_counted(b) == 49
    assert delete_redis_prefix(REDIS_URL, prefix) == 2  # the two proofs accepted, a record each


def test_serve_api_workers_share_the_replay_store(pair: Deployment, tmp_path: Path) -> None:
    """SEC-75: ``serve-api --workers 2`` on Redis answers, and a proof it accepted once is
    refused as a replay on every new connection, whichever worker takes it."""
    client = Client(pair)
    code, verifier = client.authorize(pair.a, pair.a)
    token = client.redeem(pair.a, code, verifier).json()["access_token"]
    prefix = f"t{secrets.token_hex(6)}:rsw:"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["serve-api", "--issuer", pair.issuer, "--audience", pair.issuer]
    args += ["--public-origin", API, "--port", str(port), "--allow-insecure-http"]
    args += ["--replay", REDIS_URL, "--replay-prefix", prefix, "--workers", "2"]
    ready = base + "/.well-known/oauth-protected-resource"
    with process(args, ready=ready, log=tmp_path / "rsw.log", env={}):
        headers = api_headers(client.key, token)
        first = httpx.get(base + "/api/whoami", headers=headers, timeout=10)
        assert first.status_code == 200, first.text
        for _ in range(8):  # a new connection each: the kernel spreads them over the workers
            again = httpx.get(base + "/api/whoami", headers=headers, timeout=10)
            assert again.status_code == 401
            challenge = parse_challenges(again.headers["www-authenticate"])[0]
            assert challenge.params["error"] == "invalid_dpop_proof"
        fresh = httpx.get(base + "/api/whoami", headers=api_headers(client.key, token))
        assert fresh.status_code == 200
    assert delete_redis_prefix(REDIS_URL, prefix) == 2


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("--replay", "memory"),
        ("--replay", REDIS_URL, "--require-nonce"),
    ],
    ids=["default-memory", "memory", "nonce-without-shared-secret"],
)
def test_serve_api_workers_refuse_per_process_state(
    extra: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """RFC 9449 §11.1, §9: ``--workers 2`` with a per-process replay store or nonce secret
    is one line and exit status 2, before anything listens."""
    code = main(
        ["serve-api", "--issuer", "https://as.example", "--workers", "2", "--port", "1", *extra]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("dpopkit serve-api: error: ")
