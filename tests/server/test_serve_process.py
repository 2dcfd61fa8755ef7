"""``dpopkit serve`` as a real process: configuration errors, demo mode, and a kill -9 under load.

Crash: the server (uvicorn on SQLite) is killed with SIGKILL while clients request
tokens; restarted on the same database, every token a client received is still
introspectable as issued, and no jti was issued twice.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpopkit import DPoPKey, create_proof
from dpopkit.cli import main

from .conftest import jwt_parts

CONFIG = """
issuer = "http://127.0.0.1:{port}"
port = {port}
data_dir = "{data}"
replay_url = "sqlite"

[[clients]]
client_id = "loader"
client_secret = "loader-secret-value"
grant_types = ["client_credentials"]
scope = "read"
dpop_bound_access_tokens = true

[[clients]]
client_id = "rs"
client_secret = "rs-secret-value"
grant_types = ["client_credentials"]
introspection_audiences = ["http://127.0.0.1:{port}"]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _server(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpopkit", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"server exited: {err}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/jwks", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not start")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_serve_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad configuration → one clear line on stderr and exit status 2."""
    cases = {
        "unknown.toml": "nonsense = 1\n",
        "syntax.toml": "issuer = \n",
        "client.toml": '[[clients]]\nclient_id = "x"\n',
        "nonce.toml": '[dpop]\nnonce = "sometimes"\n',
        "testmode.toml": 'host = "0.0.0.0"\ntest_mode_user = "alice"\n',
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        code = main(["serve", "--config", str(path), "--data-dir", str(tmp_path / "d"), "--check"])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.count("\n") == 1, err
        assert "Traceback" not in err
    missing = main(["serve", "--config", str(tmp_path / "absent.toml"), "--check"])
    assert missing == 2
    capsys.readouterr()


def test_serve_demo_mode_refuses_public_address(tmp_path: Path) -> None:
    """Demo mode (no --config) listens on loopback only."""
    assert main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path), "--check"]) == 2  # noqa: S104


@pytest.mark.slow
def test_serve_demo_defaults_and_persisted_keys(tmp_path: Path) -> None:
    """No file → demo client and user printed; signing keys persist across restarts."""
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "dpopkit",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
    ]
    kids = []
    for _ in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    resp = httpx.get(f"http://127.0.0.1:{port}/jwks", timeout=1)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline
                    assert proc.poll() is None
                    time.sleep(0.1)
            kids.append(resp.json()["keys"][0]["kid"])
        finally:
            proc.terminate()
            proc.wait(10)
        assert proc.stderr is not None
        banner = proc.stderr.read().decode()
        proc.stderr.close()
        assert "demo-client" in banner
        assert "client_secret=" in banner
    assert kids[0] == kids[1]


def _load(base: str, stop: threading.Event, received: list[tuple[str, str]]) -> None:
    key = DPoPKey.generate("ES256")
    with httpx.Client(timeout=5) as http:
        while not stop.is_set():
            proof = create_proof(key, htm="POST", htu=base + "/token", allow_insecure_http=True)
            try:
                resp = http.post(
                    base + "/token",
                    data={"grant_type": "client_credentials"},
                    headers={"DPoP": proof},
                    auth=("loader", "loader-secret-value"),
                )
            except httpx.HTTPError:
                continue  # the server is gone: keep trying until told to stop
            if resp.status_code == 200:
                received.append((resp.json()["access_token"], key.jkt))


@pytest.mark.slow
def test_kill_9_under_load_keeps_every_issued_token(tmp_path: Path) -> None:
    """Crash safety: every token a client received is introspectable after kill -9 + restart."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "as.toml"
    config.write_text(CONFIG.format(port=port, data=tmp_path / "data"))
    received: list[tuple[str, str]] = []
    stop = threading.Event()
    with _server(config, port) as proc:
        workers = [threading.Thread(target=_load, args=(base, stop, received)) for _ in range(4)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 20
        while len(received) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests are in flight
        proc.wait(10)
        stop.set()
        for worker in workers:
            worker.join(10)
    assert len(received) >= 40
    jtis = [jwt_parts(token)[1]["jti"] for token, _ in received]
    assert len(set(jtis)) == len(jtis)  # nothing issued twice
    with _server(config, port), httpx.Client(timeout=5) as http:
        for token, jkt in received:
            claims = jwt_parts(token)[1]
            info: dict[str, Any] = http.post(
                base + "/introspect",
                data={"token": token},
                auth=("rs", "rs-secret-value"),
            ).json()
            assert info["active"] is True
            assert info["jti"] == claims["jti"]
            assert info["cnf"] == {"jkt": jkt}
            assert info["exp"] == claims["exp"]
            assert info["client_id"] == "loader"


def test_serve_workers_refuse_memory_replay(tmp_path: Path) -> None:
    """--workers > 1 with a per-process replay cache is refused (exit 2)."""
    path = tmp_path / "as.toml"
    path.write_text('replay_url = "memory"\n')
    assert (
        main(["serve", "--config", str(path), "--workers", "2", "--data-dir", str(tmp_path)]) == 2
    )


@pytest.mark.slow
def test_serve_two_workers_share_keys_and_replay(tmp_path: Path) -> None:
    """--workers 2: tokens from either worker verify everywhere; a proof is accepted once."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "as.toml"
    config.write_text(CONFIG.format(port=port, data=tmp_path / "data"))
    cmd = [sys.executable, "-m", "dpopkit", "serve", "--config", str(config), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/jwks", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                assert proc.poll() is None
                time.sleep(0.1)
        key = DPoPKey.generate("ES256")
        with httpx.Client(timeout=5) as http:  # new connections land on either worker
            for _ in range(6):
                proof = create_proof(key, htm="POST", htu=base + "/token", allow_insecure_http=True)
                form = {"grant_type": "client_credentials"}
                auth = ("loader", "loader-secret-value")
                first = http.post(base + "/token", data=form, headers={"DPoP": proof}, auth=auth)
                assert first.status_code == 200
                replay = httpx.post(base + "/token", data=form, headers={"DPoP": proof}, auth=auth)
                assert replay.json()["error"] == "invalid_dpop_proof"
                token = first.json()["access_token"]
                url = base + "/api/whoami"
                api_proof = create_proof(
                    key, htm="GET", htu=url, access_token=token, allow_insecure_http=True
                )
                api = httpx.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": api_proof})
                assert api.status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.postgres
def test_serve_on_postgresql_grant_store_and_replay(
    tmp_path: Path, pg_dsn: str, unique_prefix: str
) -> None:
    """PostgreSQL by URL for both the grant store and the replay cache (several hosts)."""
    import psycopg

    from dpopkit.server.config import build_server, load_config
    from tests.live import serve_in_thread

    schema = f"{unique_prefix}_as"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = pg_dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    in_schema = f"?options=-csearch_path%3D{schema}"  # every table lands in the test schema
    storage = url + in_schema
    try:

        def build(base: str) -> Any:
            path = tmp_path / "as.toml"
            path.write_text(
                f'issuer = "{base}"\nstorage_url = "{storage}"\nreplay_url = "{pg_dsn}"\n'
                f'replay_schema = "{schema}"\n'
                '[[clients]]\nclient_id = "svc"\nclient_secret = "svc-secret-value"\n'
                'grant_types = ["client_credentials"]\n'
            )
            app, service = build_server(load_config(path, data_dir=tmp_path))
            services.append(service)
            return app

        services: list[Any] = []
        with serve_in_thread(build) as base:
            key = DPoPKey.generate("ES256")
            proof = create_proof(key, htm="POST", htu=base + "/token", allow_insecure_http=True)
            form = {"grant_type": "client_credentials"}
            auth = ("svc", "svc-secret-value")
            ok = httpx.post(base + "/token", data=form, headers={"DPoP": proof}, auth=auth)
            assert ok.status_code == 200
            again = httpx.post(base + "/token", data=form, headers={"DPoP": proof}, auth=auth)
            assert again.json()["error"] == "invalid_dpop_proof"
        for service in services:
            service.close()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
