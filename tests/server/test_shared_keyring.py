"""Signing keys shared by several servers on one grant store (RFC 7517 §5 key sets).

Every server re-reads the keys every ``key_refresh_interval`` seconds, and a rotation
that falls due on several servers at once makes exactly one new key, on SQLite and
on a real PostgreSQL.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dpopkit.errors import ServerConfigurationError
from dpopkit.server.config import load_config
from dpopkit.server.jwt import KeyRing
from dpopkit.server.service import ServerSettings
from dpopkit.storage.sql import SQLGrantStore

from .conftest import ISSUER

T0 = 1_700_000_000.0


def kids(ring: KeyRing, now: float) -> set[str]:
    return {key["kid"] for key in ring.jwks(now=now)["keys"]}


def test_a_rotation_due_on_two_servers_makes_one_key(both_stores: SQLGrantStore) -> None:
    """Two key rings on one store, both finding the rotation due: one new key, both sign
    with it, and the old one stays published for the grace period (RFC 7517 §5)."""
    a = KeyRing(both_stores, rotate_after=100, retire_grace=1000, refresh_interval=10)
    b = KeyRing(both_stores, rotate_after=100, retire_grace=1000, refresh_interval=10)
    first = a.current(now=T0).kid
    assert b.current(now=T0).kid == first
    later = T0 + 150
    a.refresh(now=later)
    b.refresh(now=later)  # re-reads: nothing is due any more
    assert len(both_stores.signing_keys()) == 2
    made = both_stores.signing_keys()[0].kid
    assert kids(a, later) == kids(b, later) == {first, made}  # published at once
    assert a.current(now=later).kid == b.current(now=later).kid == first
    ripe = later + a.publish_ahead  # published for a refresh interval: now it signs
    assert a.current(now=ripe).kid == b.current(now=ripe).kid == made


def test_concurrent_rotation_keeps_the_first_rotators_key(both_stores: SQLGrantStore) -> None:
    """Both rings read the old key, then both rotate: the second rotation stores nothing
    and that ring signs with the key the first one made."""
    a = KeyRing(both_stores, rotate_after=100, retire_grace=1000, refresh_interval=10)
    b = KeyRing(both_stores, rotate_after=100, retire_grace=1000, refresh_interval=10)
    first = a.current(now=T0).kid
    assert b.current(now=T0).kid == first
    later = T0 + 150
    made = a._rotate(now=later, replacing=first)
    kept = b._rotate(now=later, replacing=first)  # b still believes `first` signs
    assert kept.kid == made.kid
    assert [r.kid for r in both_stores.signing_keys()] == [made.kid, first]


@pytest.mark.parametrize("servers", [2, 8])
def test_simultaneous_rotations_make_one_key(both_stores: SQLGrantStore, servers: int) -> None:
    """Rings on one store find the rotation due and rotate at the same moment, each in
    its own thread: the claim on the old key (one UPDATE under a row or write lock)
    lets exactly one store a new key, every ring publishes it after a refresh, and every
    ring signs with it once it has been published for ``publish_ahead`` seconds."""
    rings = [
        KeyRing(both_stores, rotate_after=100, retire_grace=1000, refresh_interval=10)
        for _ in range(servers)
    ]
    first = rings[0].current(now=T0).kid
    assert {ring.current(now=T0).kid for ring in rings} == {first}
    later = T0 + 150
    start = threading.Barrier(servers)

    def rotate(ring: KeyRing) -> str:
        start.wait(timeout=30)
        # What refresh() does once it finds the rotation due: every ring read `first`.
        return ring._rotate(now=later, replacing=first).kid

    with ThreadPoolExecutor(max_workers=servers) as pool:
        seen = list(pool.map(rotate, rings))
    records = both_stores.signing_keys()
    assert len(records) == 2, [r.kid for r in records]
    new = records[0].kid
    assert new != first
    assert [r.kid for r in records] == [new, first]
    assert seen == [new] * servers  # a ring whose claim failed loads the winner's key
    for ring in rings:
        ring.refresh(now=later + 1)  # re-reads: nothing is due any more
        assert kids(ring, later + 1) == {first, new}
        ripe = later + ring.publish_ahead  # published for a refresh interval: it signs
        assert ring.current(now=ripe).kid == new


def test_a_key_made_elsewhere_is_seen_within_the_refresh_interval(store: SQLGrantStore) -> None:
    """A key another server made is published and verified here after at most
    ``refresh_interval`` seconds (no store read per request), and signs nowhere before
    every server has had that time to read it."""
    a = KeyRing(store, rotate_after=10**6, retire_grace=1000, refresh_interval=5)
    b = KeyRing(store, rotate_after=10**6, retire_grace=1000, refresh_interval=5)
    first = b.current(now=T0).kid
    new = a.rotate(now=T0 + 1).kid
    assert a.current(now=T0 + 1).kid == first  # not signing yet, even where it was made
    assert b.current(now=T0 + 4).kid == first
    assert new not in kids(b, T0 + 4)
    assert kids(b, T0 + 5) == {first, new}
    assert b.current(now=T0 + 5).kid == first
    assert a.current(now=T0 + 6).kid == b.current(now=T0 + 6).kid == new


def test_a_token_signed_with_an_unknown_key_makes_the_ring_reread(store: SQLGrantStore) -> None:
    """A key this server has not read yet (two servers that each made a first key at
    once): the ring re-reads at once, at most once a second, instead of waiting for the
    refresh interval."""
    a = KeyRing(store, rotate_after=10**6, retire_grace=1000, refresh_interval=60)
    a.current(now=T0)
    b = KeyRing(store, rotate_after=10**6, retire_grace=1000, refresh_interval=60)
    made_elsewhere = b.rotate(now=T0 + 1).kid
    assert made_elsewhere not in kids(a, T0 + 2)
    assert a.reread(now=T0 + 2) is True
    assert made_elsewhere in kids(a, T0 + 2)
    assert a.reread(now=T0 + 2.5) is False  # at most once a second


def test_key_refresh_interval_setting(tmp_path: Path) -> None:
    """``[tokens] key_refresh_interval`` reaches the key ring; it must be >= 1 second."""
    path = tmp_path / "as.toml"
    path.write_text(f'issuer = "{ISSUER}"\n[tokens]\nkey_refresh_interval = 2\n')
    config = load_config(path, data_dir=tmp_path / "d")
    assert config.settings["key_refresh_interval"] == 2
    assert ServerSettings(issuer=ISSUER).key_refresh_interval == 60
    with pytest.raises(ServerConfigurationError):
        ServerSettings(issuer=ISSUER, key_refresh_interval=0)
    with pytest.raises(ServerConfigurationError):  # a new key would never get to sign
        ServerSettings(issuer=ISSUER, key_rotation=60, key_refresh_interval=60)
    store = SQLGrantStore(f"sqlite:///{tmp_path}/g.db")
    try:
        with pytest.raises(ValueError):
            KeyRing(store, refresh_interval=0)
    finally:
        store.close()
