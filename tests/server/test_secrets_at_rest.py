"""Secrets at rest (HD-1) and ``serve --check`` (HD-26).

HD-1: the AS data directory is 0700 and every file the server writes in it is 0600,
whatever the umask; key material that group or others can read is refused at start;
private signing JWKs are sealed with AES-256-GCM key-encryption keys (bound to the row's
``kid``) on SQLite and PostgreSQL, and the KEK rotates (newest encrypts, all decrypt,
start re-encrypts).

HD-26: ``dpopkit serve --check`` writes nothing, and reaches every configured store.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from dpopkit import DPoPKey, create_proof
from dpopkit._private import write_private_file
from dpopkit.cli import main
from dpopkit.keyfile import save_key
from dpopkit.server.config import KEK_ENV, build_server, load_config
from dpopkit.server.jwt import KeyRing
from dpopkit.storage.kek import KeyEncryptionKeys
from dpopkit.storage.sql import SQLGrantStore, StoreError

from .test_serve_process import _free_port


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _tree_modes(root: Path) -> dict[str, int]:
    """Every directory and file under ``root`` (itself included) with its permission bits."""
    modes = {".": _mode(root)}
    for entry in root.rglob("*"):
        modes[str(entry.relative_to(root))] = _mode(entry)
    return modes


def _assert_private(modes: dict[str, int], root: Path) -> None:
    for name, mode in modes.items():
        want = 0o700 if (root / name).is_dir() else 0o600
        assert mode == want, f"{name}: {mode:04o}"


def _wait_up(proc: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"server exited: {err}")
        try:
            if httpx.get(base + "/jwks", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


# --- HD-1: permissions of everything the server writes -----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_serve_writes_every_data_file_private(tmp_path: Path, umask: int) -> None:
    """HD-1: a real ``dpopkit serve`` creates its data dir 0700 and every file in it 0600.

    Whatever the umask: the directory (and its missing parent), the grant store and
    both replay caches with their ``-wal``/``-shm`` files, the nonce, CSRF and demo
    secrets. Files are walked while the server runs (side files exist) and after.
    """
    data = tmp_path / "state" / "as-data"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "dpopkit", "serve", "--port", str(port), "--data-dir", str(data)]
    previous = os.umask(umask)  # inherited by the server process
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    finally:
        os.umask(previous)
    try:
        _wait_up(proc, base)
        # A token and an API call: the replay caches of the AS and of /api/whoami are used.
        secret = (data / "demo-client-secret").read_text().strip()
        key = DPoPKey.generate("ES256")
        proof = create_proof(key, htm="POST", htu=base + "/token", allow_insecure_http=True)
        resp = httpx.post(
            base + "/token",
            data={"grant_type": "client_credentials"},
            headers={"DPoP": proof},
            auth=("demo-client", secret),
        )
        assert resp.status_code == 200
        token = resp.json()["access_token"]
        url = base + "/api/whoami"
        api_proof = create_proof(
            key, htm="GET", htu=url, access_token=token, allow_insecure_http=True
        )
        api = httpx.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": api_proof})
        assert api.status_code == 200
        running = _tree_modes(data)
    finally:
        _stop(proc)
    expected = {
        "dpopkit-as.db",
        "dpopkit-as.db-wal",
        "dpopkit-as.db-shm",
        "replay.db",
        "replay.db-wal",
        "rs-replay.db",
        "rs-replay.db-wal",
        "nonce-secret",
        "csrf-secret",
        "demo-client-secret",
        "demo-user-password",
    }
    assert expected <= set(running), sorted(running)
    _assert_private(running, data)
    _assert_private(_tree_modes(data), data)
    # Only the directory the server made itself is 0700; its parent is an ordinary one.
    assert _mode(data.parent) == 0o777 & ~umask


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_build_server_and_stores_write_private_files(tmp_path: Path, umask: int) -> None:
    """HD-1: the service constructor and the SQLite stores, in process, under any umask."""
    from dpopkit.cli.serve import whoami_mounts

    data = tmp_path / "as-data"
    previous = os.umask(umask)
    try:
        config = load_config(None, data_dir=data, now=time.time())
        _app, service = build_server(
            config, mounts=lambda svc: whoami_mounts(svc, config.issuer, config.data_dir)
        )
        service.replay.check_and_store("k", time.time() + 60, now=time.time())
        modes = _tree_modes(data)
        service.close()
    finally:
        os.umask(previous)
    assert {"dpopkit-as.db", "dpopkit-as.db-wal", "replay.db", "nonce-secret"} <= set(modes)
    _assert_private(modes, data)


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_save_key_and_secrets_share_one_private_writer(tmp_path: Path, umask: int) -> None:
    """HD-1: ``save_key`` and the server's secrets are written 0600 by the same helper."""
    previous = os.umask(umask)
    try:
        save_key(DPoPKey.generate("ES256"), tmp_path / "key.jwk")
        write_private_file(tmp_path / "secret", b"x", overwrite=False)
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "key.jwk") == 0o600
    assert _mode(tmp_path / "secret") == 0o600


def _first_start(data: Path) -> None:
    config = load_config(None, data_dir=data, now=time.time())
    build_server(config)[1].close()


@pytest.mark.parametrize("check", [False, True], ids=["start", "check"])
@pytest.mark.parametrize(
    ("target", "mode"),
    [
        (".", 0o755),
        (".", 0o750),
        (".", 0o701),
        ("dpopkit-as.db", 0o644),
        ("dpopkit-as.db", 0o640),
        ("nonce-secret", 0o604),
        ("csrf-secret", 0o620),
        ("demo-client-secret", 0o644),
    ],
)
def test_serve_refuses_exposed_key_material(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, mode: int, check: bool
) -> None:
    """HD-1: an existing data dir or key file open to group/others: one line, exit 2."""
    data = tmp_path / "as-data"
    _first_start(data)
    os.chmod(data / target, mode)
    with socket.socket() as busy:  # should the refusal not happen, uvicorn fails to bind
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        argv = ["serve", "--data-dir", str(data), "--port", str(busy.getsockname()[1])]
        capsys.readouterr()
        code = main([*argv, "--check"] if check else argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith("dpopkit serve: error: "), err
    assert _mode(data / target) == mode  # refused, not silently "fixed"


def test_serve_refuses_exposed_kek_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """HD-1: a key-encryption-key file readable by others is refused like a key file."""
    kek = tmp_path / "kek"
    kek.write_text(secrets.token_urlsafe(32) + "\n")
    os.chmod(kek, 0o644)
    conf = tmp_path / "as.toml"
    conf.write_text(f'data_dir = "{tmp_path / "d"}"\nkey_encryption_keys_file = "{kek}"\n')
    capsys.readouterr()
    assert main(["serve", "--config", str(conf), "--check"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    os.chmod(kek, 0o600)
    assert main(["serve", "--config", str(conf), "--check"]) == 0


# --- HD-1: encryption at rest -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A grant store URL on SQLite, or in a schema of its own on a real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'grants.db'}"
        return
    import psycopg

    pg_dsn = request.getfixturevalue("pg_dsn")
    schema = f"{request.getfixturevalue('unique_prefix')}_kek"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        url = pg_dsn.replace("postgresql://", "postgresql+psycopg://", 1)
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _kek() -> str:
    return secrets.token_urlsafe(32)


def _raw_rows(url: str) -> dict[str, str]:
    """The stored ``private_jwk`` column by kid, read with plain SQL (no dpopkit decoding)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT kid, private_jwk FROM dpopkit_signing_keys"))
            return {row.kid: row.private_jwk for row in rows}
    finally:
        engine.dispose()


def _assert_sealed(raw: str, store: SQLGrantStore, kid: str) -> None:
    stored = json.loads(raw)
    assert "d" not in stored
    assert "kty" not in stored
    assert stored["enc"] == "A256GCM"
    private = next(k for k in store.signing_keys() if k.kid == kid).private_jwk
    assert private["d"] not in raw


def _start(url: str, keks: list[str] | None, now: float = 1_700_000_000.0) -> SQLGrantStore:
    """Open the store as ``build_server`` does: re-encrypt, then load (or make) the keys."""
    kek = None if keks is None else KeyEncryptionKeys.from_text("\n".join(keks))
    store = SQLGrantStore(url, key_encryption=kek)
    try:
        store.reseal_signing_keys()
        KeyRing(store, alg="ES256", rotate_after=3600).refresh(now=now)
    except BaseException:
        store.close()
        raise
    return store


def test_signing_keys_are_encrypted_at_rest(storage_url: str) -> None:
    """HD-1: with a KEK, the raw row holds no ``d``; it decrypts with the KEK only.

    The ciphertext is bound to its row (AES-GCM additional data = kid): moved to
    another row it does not decrypt, and neither does it under another KEK.
    """
    kek = _kek()
    store = _start(storage_url, [kek])
    ring = KeyRing(store, alg="ES256", rotate_after=3600)
    ring.refresh(now=1_700_000_000.0 + 7200)  # rotation: a second key
    rows = _raw_rows(storage_url)
    assert len(rows) == 2
    for kid, raw in rows.items():
        _assert_sealed(raw, store, kid)
    signed = ring.current(now=1_700_000_000.0 + 7200).sign({"sub": "x"}, typ="at+jwt")
    assert signed.count(".") == 2
    store.close()

    with pytest.raises(StoreError):  # no KEK configured: refused, never guessed
        _start(storage_url, None)
    with pytest.raises(StoreError):  # another KEK
        _start(storage_url, [_kek()])
    # Swap the two ciphertexts between rows: neither decrypts any more.
    (kid_a, raw_a), (kid_b, raw_b) = rows.items()
    engine = sa.create_engine(storage_url)
    with engine.begin() as conn:
        update = sa.text("UPDATE dpopkit_signing_keys SET private_jwk = :v WHERE kid = :k")
        conn.execute(update, {"v": raw_b, "k": kid_a})
        conn.execute(update, {"v": raw_a, "k": kid_b})
    engine.dispose()
    with pytest.raises(StoreError):
        _start(storage_url, [kek])


def test_kek_rotation_reencrypts_at_start(storage_url: str) -> None:
    """HD-1: rotation: add the new KEK as a decrypter, make it the encrypter, drop the old.

    Step 1 (``old`` then ``new``): nothing changes, every instance reads. Step 2 (``new``
    then ``old``): the start re-encrypts every row under ``new``. Step 3 (``new`` alone):
    reads. A plain row stored before any KEK is encrypted at the first start with one.
    """
    _start(storage_url, None).close()
    (kid,) = _raw_rows(storage_url)
    assert "d" in json.loads(_raw_rows(storage_url)[kid])  # stored in clear without a KEK
    old, new = _kek(), _kek()
    old_id, new_id = (KeyEncryptionKeys.from_text(k).primary for k in (old, new))

    def sealed_with() -> str:
        return str(json.loads(_raw_rows(storage_url)[kid])["kek"])

    first = _start(storage_url, [old])
    assert sealed_with() == old_id
    _assert_sealed(_raw_rows(storage_url)[kid], first, kid)
    first.close()
    _start(storage_url, [old, new]).close()  # step 1
    assert sealed_with() == old_id
    _start(storage_url, [new, old]).close()  # step 2
    assert sealed_with() == new_id
    step3 = _start(storage_url, [new])
    assert [k.kid for k in step3.signing_keys()] == [kid]
    step3.close()
    with pytest.raises(StoreError):
        _start(storage_url, [old])


def test_serve_start_encrypts_with_kek_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HD-1: ``DPOPKIT_KEY_ENCRYPTION_KEYS`` reaches the store: a start seals, rotation reseals."""
    data = tmp_path / "as-data"
    url = f"sqlite:///{data / 'dpopkit-as.db'}"
    _first_start(data)  # no KEK: plain
    assert "d" in json.loads(next(iter(_raw_rows(url).values())))
    old, new = _kek(), _kek()
    monkeypatch.setenv(KEK_ENV, old)
    _first_start(data)
    assert (
        json.loads(next(iter(_raw_rows(url).values())))["kek"]
        == KeyEncryptionKeys.from_text(old).primary
    )
    monkeypatch.setenv(KEK_ENV, f"{new}\n{old}\n")
    _first_start(data)
    rows = _raw_rows(url)
    assert {json.loads(v)["kek"] for v in rows.values()} == {
        KeyEncryptionKeys.from_text(new).primary
    }
    monkeypatch.setenv(KEK_ENV, old)  # the old KEK alone no longer opens the store
    assert main(["serve", "--data-dir", str(data), "--check"]) == 1


@pytest.mark.parametrize(
    "value",
    ["", "not base64 !", secrets.token_urlsafe(16), "{a}\n{a}".format(a=_kek())],
    ids=["empty", "not-base64url", "16-bytes", "repeated"],
)
def test_malformed_kek_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """HD-1: an empty, non-base64url, short or repeated KEK is one line, exit 2."""
    monkeypatch.setenv(KEK_ENV, value)
    capsys.readouterr()
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--check"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "d").exists()


# --- HD-26: serve --check writes nothing and reaches every store -----------------------------


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under ``root``: mode, size, mtime and content hash."""
    snap = {}
    for entry in [root, *root.rglob("*")]:
        info = entry.lstat()
        digest = hashlib.sha256(entry.read_bytes()).hexdigest() if entry.is_file() else ""
        snap[str(entry)] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return snap


@pytest.mark.parametrize("existing", [False, True], ids=["new-data-dir", "existing-data-dir"])
@pytest.mark.parametrize("with_kek", [False, True], ids=["plain", "kek"])
def test_check_changes_nothing_on_disk(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    existing: bool,
    with_kek: bool,
) -> None:
    """HD-26: ``serve --check`` creates no dir, database, key or secret and changes no file."""
    data = tmp_path / "as-data"
    if with_kek:
        monkeypatch.setenv(KEK_ENV, _kek())
    if existing:
        _first_start(data)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main(["serve", "--data-dir", str(data), "--check"]) == 0
    assert json.loads(capsys.readouterr().out)["storage"] == "sqlite"
    assert main(["serve", "--check"]) == 0  # the default data dir (./dpopkit-data)
    assert _snapshot(tmp_path) == before
    assert data.exists() is existing


def _closed_port() -> int:
    return _free_port()  # bound and released: nothing listens there


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize(
    ("setting", "broken"),
    [
        ("storage_url", "postgresql+psycopg://postgres@127.0.0.1:{port}/test"),
        ("replay_url", "redis://127.0.0.1:{port}/0"),
        ("replay_url", "postgresql://postgres@127.0.0.1:{port}/test"),
    ],
    ids=["storage-postgres", "replay-redis", "replay-postgres"],
)
def test_check_fails_when_a_backend_does_not_answer(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pg_dsn: str,
    redis_url: str,
    setting: str,
    broken: str,
) -> None:
    """HD-26: every configured store is reached: the silent one fails, one line, exit 1.

    The same configuration with every store answering (real PostgreSQL and Redis) passes.
    """
    good = {"storage_url": pg_dsn, "replay_url": redis_url}
    if setting == "replay_url" and broken.startswith("postgresql"):
        good["replay_url"] = pg_dsn

    def write(values: dict[str, str]) -> Path:
        conf = tmp_path / "as.toml"
        lines = [f'data_dir = "{tmp_path / "d"}"', *(f'{k} = "{v}"' for k, v in values.items())]
        conf.write_text("\n".join(lines) + "\n")
        return conf

    capsys.readouterr()
    assert main(["serve", "--config", str(write(good)), "--check"]) == 0
    capsys.readouterr()
    bad = {**good, setting: broken.format(port=_closed_port())}
    started = time.monotonic()
    assert main(["serve", "--config", str(write(bad)), "--check"]) == 1
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"dpopkit serve: error: {setting}: "), err
    assert not (tmp_path / "d").exists()


def test_check_reads_sqlite_without_side_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """HD-26: a grant store file that is not SQLite is reported (exit 1), nothing created."""
    data = tmp_path / "as-data"
    _first_start(data)
    for side in ("-wal", "-shm"):
        assert not (data / f"dpopkit-as.db{side}").exists()
    database = data / "dpopkit-as.db"
    os.chmod(database, 0o600)
    database.write_bytes(b"not a database at all, just bytes")
    capsys.readouterr()
    assert main(["serve", "--data-dir", str(data), "--check"]) == 1
    assert capsys.readouterr().err.startswith("dpopkit serve: error: storage_url: ")
    assert sorted(p.name for p in data.iterdir() if p.name.startswith("dpopkit-as")) == [
        "dpopkit-as.db"
    ]
