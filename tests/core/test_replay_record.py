"""Recording verified proofs and the in-memory replay cache (RFC 9449 §11.1).

Checklist: AS-10 / RS-14 (replay refused), SEC-80 (a failing store never reports
"not seen"), SEC-107/108 (a full cache refuses rather than evicting).
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from dpopkit import (
    AsyncReplayCache,
    DPoPKey,
    InvalidProofError,
    Reason,
    ReplayCache,
    ReplayStoreError,
    TemporarilyUnavailableError,
    VerifiedProof,
    arecord_proof,
    create_proof,
    record_proof,
    verify_proof,
)
from dpopkit.storage.memory import AsyncMemoryReplayCache, MemoryReplayCache

NOW = 1_700_000_000.0
HTU = "https://api.example/items"
KEY = DPoPKey.generate("ES256")


def verified(now: float = NOW) -> VerifiedProof:
    proof = create_proof(KEY, htm="GET", htu=HTU, now=now)
    return verify_proof(proof, htm="GET", htu=HTU, now=now)


class BrokenCache:
    """A backend whose store fails with an arbitrary exception (a lost connection, a bug)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        raise self.exc


class AsyncBrokenCache:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        raise self.exc


def test_protocols_are_runtime_checkable() -> None:
    assert isinstance(MemoryReplayCache(), ReplayCache)
    assert isinstance(AsyncMemoryReplayCache(), AsyncReplayCache)
    assert not isinstance(object(), ReplayCache)


# -- record_proof / arecord_proof --------------------------------------------------------


def test_record_fresh_then_replayed() -> None:
    cache = MemoryReplayCache()
    proof = verified()
    record_proof(cache, proof, now=NOW)
    with pytest.raises(InvalidProofError) as info:
        record_proof(cache, proof, now=NOW + 1)
    assert info.value.reason is Reason.REPLAYED_JTI
    assert info.value.error == "invalid_dpop_proof"
    # A different proof by the same key is fresh.
    record_proof(cache, verified(), now=NOW)


def test_replay_is_refused_until_the_proof_could_no_longer_be_accepted() -> None:
    cache = MemoryReplayCache()
    proof = verified()
    record_proof(cache, proof, now=NOW)
    with pytest.raises(InvalidProofError):
        record_proof(cache, proof, now=proof.replay_expires_at - 0.001)
    # From its expiry on, the entry is gone; by then verify_proof refuses the proof on iat.
    expiry = proof.replay_expires_at
    assert cache.check_and_store(proof.replay_key, expiry + 60, now=expiry)
    with pytest.raises(InvalidProofError) as info:
        verify_proof(create_proof(KEY, htm="GET", htu=HTU, now=NOW), htm="GET", htu=HTU, now=expiry)
    assert info.value.reason is Reason.IAT_TOO_OLD


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("boom"), ConnectionError("down"), KeyError("k"), TimeoutError(), ValueError()],
    ids=lambda e: type(e).__name__,
)
def test_sec80_backend_failure_becomes_replay_store_error(exc: Exception) -> None:
    with pytest.raises(ReplayStoreError) as info:
        record_proof(BrokenCache(exc), verified(), now=NOW)
    assert info.value.reason is Reason.STORE_UNAVAILABLE
    assert info.value.__cause__ is exc
    assert info.value.as_response(role="rs").status == 503
    assert isinstance(info.value, TemporarilyUnavailableError)


def test_replay_store_error_from_the_backend_passes_unchanged() -> None:
    original = ReplayStoreError(Reason.STORE_FULL)
    with pytest.raises(ReplayStoreError) as info:
        record_proof(BrokenCache(original), verified(), now=NOW)
    assert info.value is original


def test_arecord_fresh_replayed_and_failing() -> None:
    async def scenario() -> None:
        cache = AsyncMemoryReplayCache()
        proof = verified()
        await arecord_proof(cache, proof, now=NOW)
        with pytest.raises(InvalidProofError) as replayed:
            await arecord_proof(cache, proof, now=NOW)
        assert replayed.value.reason is Reason.REPLAYED_JTI
        boom = RuntimeError("boom")
        with pytest.raises(ReplayStoreError) as failed:
            await arecord_proof(AsyncBrokenCache(boom), proof, now=NOW)
        assert failed.value.__cause__ is boom
        original = ReplayStoreError(Reason.STORE_FULL)
        with pytest.raises(ReplayStoreError) as passed:
            await arecord_proof(AsyncBrokenCache(original), proof, now=NOW)
        assert passed.value is original

    asyncio.run(scenario())


# -- the memory cache --------------------------------------------------------------------


def test_memory_cache_first_store_wins() -> None:
    cache = MemoryReplayCache()
    assert cache.check_and_store("k", NOW + 60, now=NOW)
    assert not cache.check_and_store("k", NOW + 60, now=NOW)
    assert not cache.check_and_store("k", NOW + 120, now=NOW + 59)
    assert len(cache) == 1


def test_memory_cache_full_refuses_and_never_evicts_a_live_entry() -> None:
    cache = MemoryReplayCache(max_entries=3)
    for i in range(3):
        assert cache.check_and_store(f"k{i}", NOW + 60, now=NOW)
    with pytest.raises(ReplayStoreError) as info:
        cache.check_and_store("new", NOW + 60, now=NOW)
    assert info.value.reason is Reason.STORE_FULL
    # Every live entry is still there: replays are still refused.
    for i in range(3):
        assert not cache.check_and_store(f"k{i}", NOW + 60, now=NOW + 1)
    assert len(cache) == 3
    # record_proof passes the STORE_FULL error through (the caller fails closed).
    with pytest.raises(ReplayStoreError) as recorded:
        record_proof(cache, verified(), now=NOW)
    assert recorded.value.reason is Reason.STORE_FULL


def test_memory_cache_purges_expired_entries_by_injected_time() -> None:
    cache = MemoryReplayCache(max_entries=2)
    assert cache.check_and_store("a", NOW + 10, now=NOW)
    assert cache.check_and_store("b", NOW + 20, now=NOW)
    # At NOW + 10 "a" has expired: room for a new entry, and "a" is new again.
    assert cache.check_and_store("c", NOW + 30, now=NOW + 10)
    assert len(cache) == 2
    assert not cache.check_and_store("b", NOW + 40, now=NOW + 10)
    with pytest.raises(ReplayStoreError):
        cache.check_and_store("a", NOW + 40, now=NOW + 19.999)
    assert cache.check_and_store("a", NOW + 40, now=NOW + 20)
    assert len(cache) == 2
    # Everything expired: the table empties.
    assert cache.check_and_store("z", NOW + 1000, now=NOW + 999)
    assert len(cache) == 1


def test_memory_cache_configuration() -> None:
    with pytest.raises(ValueError):
        MemoryReplayCache(max_entries=0)
    assert MemoryReplayCache(single_process=True).single_process
    assert not MemoryReplayCache().single_process
    async_cache = AsyncMemoryReplayCache(max_entries=1, single_process=True)
    assert async_cache.single_process
    assert asyncio.run(async_cache.check_and_store("k", NOW + 1, now=NOW))
    assert len(async_cache) == 1
    with pytest.raises(ReplayStoreError):
        asyncio.run(async_cache.check_and_store("other", NOW + 1, now=NOW))


def test_fifty_threads_storing_one_key_exactly_one_wins() -> None:
    cache = MemoryReplayCache()
    barrier = threading.Barrier(50)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        fresh = cache.check_and_store("dpopkit:jti:same", NOW + 60, now=NOW)
        with lock:
            results.append(fresh)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 50
    assert results.count(True) == 1


def test_fifty_threads_recording_one_proof_exactly_one_succeeds() -> None:
    cache = MemoryReplayCache()
    proof = verified()
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            record_proof(cache, proof, now=NOW)
            outcome = "ok"
        except InvalidProofError as exc:
            outcome = exc.reason.value
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(outcomes)) == ["ok", "replayed_jti"]
    assert outcomes.count("ok") == 1
