"""The example DOT project (examples/dot_project/serve.py) as a subprocess, per database.

Django settings live only in that process, so nothing leaks into other tests. The
database is SQLite in a temporary directory, or a fresh PostgreSQL schema dropped
afterwards.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SERVE = ROOT / "examples" / "dot_project" / "serve.py"
PG_DSN = os.environ.get("DPOPKIT_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
CALLBACK = "http://127.0.0.1:9/callback"
PASSWORD = "alice wonderland password"

CONFIG = """
test_mode_user = "alice"
{storage}

[dpop]
nonce = "per_client"

[[users]]
username = "alice"
password = "{password}"

[[clients]]
client_id = "svc"
client_secret = "svc-secret-value-0123"
grant_types = ["client_credentials"]
scope = "read"
dpop_bound_access_tokens = true

[[clients]]
client_id = "nonced"
client_secret = "nonced-secret-value-0123"
token_endpoint_auth_method = "client_secret_post"
grant_types = ["client_credentials"]
scope = "read"
dpop_bound_access_tokens = true
dpop_nonce_required = true

[[clients]]
client_id = "legacy"
client_secret = "legacy-secret-value-0123"
grant_types = ["client_credentials"]
scope = "read"

[[clients]]
client_id = "spa"
token_endpoint_auth_method = "none"
grant_types = ["authorization_code", "refresh_token"]
redirect_uris = ["{callback}"]
scope = "read"

[[clients]]
client_id = "spa-nonce"
token_endpoint_auth_method = "none"
grant_types = ["authorization_code", "refresh_token"]
redirect_uris = ["{callback}"]
scope = "read"
dpop_nonce_required = true
"""


@dataclass(frozen=True)
class DOTServer:
    """A running example server."""

    base: str
    database: str


def start(config: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVE), "--config", str(config), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
    if found is None:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise RuntimeError(f"the DOT server did not start: {line}{err[-3000:]}")
    return proc, found.group(1)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def dot(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DOTServer]:
    """The example DOT server on SQLite or on a fresh PostgreSQL schema."""
    workdir = tmp_path_factory.mktemp("dot")
    schema = None
    storage = ""
    if request.param == "postgres":
        import psycopg

        schema = f"dot_{secrets.token_hex(6)}"
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        storage = f'storage_url = "{PG_DSN}?options=-csearch_path%3D{schema}"'
    config = workdir / "as.toml"
    config.write_text(
        CONFIG.format(storage=storage, password=PASSWORD, callback=CALLBACK), encoding="utf-8"
    )
    proc, base = start(config)
    try:
        yield DOTServer(base=base, database=request.param)
    finally:
        stop(proc)
        if schema is not None:
            import psycopg

            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
