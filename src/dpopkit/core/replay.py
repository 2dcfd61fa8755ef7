"""Replay protection: the cache protocol and how a verified proof is recorded (RFC 9449 §11.1).

A replay cache offers one atomic operation, ``check_and_store(key, expires_at,
now=...)``: it stores ``key`` until ``expires_at`` and returns True if the key
was not present, False if it was. Check-then-add in two steps is not allowed:
two concurrent presenters of one proof must not both win. A backend that
cannot answer raises :class:`~dpopkit.errors.ReplayStoreError`; it never
reports "not seen" when it does not know (fail closed, SEC-80).

The key is ``dpopkit:jti:<sha256(jkt|jti)>`` (fixed size, SEC-4) and the
expiry absolute, computed by :func:`~dpopkit.core.proof.verify_proof` from the
real acceptance window.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from dpopkit.errors import InvalidProofError, Reason, ReplayStoreError

if TYPE_CHECKING:
    from dpopkit.core.proof import VerifiedProof

__all__ = ["AsyncReplayCache", "ReplayCache", "arecord_proof", "record_proof"]


@runtime_checkable
class ReplayCache(Protocol):
    """A synchronous replay cache."""

    def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        """Atomically store ``key`` until ``expires_at``; True if it was new.

        Raises:
            ReplayStoreError: the store cannot answer (or is full); the caller fails closed.
        """
        ...


@runtime_checkable
class AsyncReplayCache(Protocol):
    """An asynchronous replay cache."""

    async def check_and_store(self, key: str, expires_at: float, *, now: float) -> bool:
        """Atomically store ``key`` until ``expires_at``; True if it was new.

        Raises:
            ReplayStoreError: the store cannot answer (or is full); the caller fails closed.
        """
        ...


def _replayed() -> InvalidProofError:
    return InvalidProofError(Reason.REPLAYED_JTI, "the proof was already used")


def record_proof(cache: ReplayCache, proof: VerifiedProof, *, now: float) -> None:
    """Record a fully verified proof; raise if its ``jti`` was seen (RFC 9449 §11.1).

    Call it only after every other check passed, so that a rejected request
    never burns a ``jti``.

    Raises:
        InvalidProofError: (REPLAYED_JTI) the proof was already used.
        ReplayStoreError: the store failed; refuse the request (503).
    """
    try:
        fresh = cache.check_and_store(proof.replay_key, proof.replay_expires_at, now=now)
    except ReplayStoreError:
        raise
    except Exception as exc:  # a backend bug must not turn into "not seen"
        raise ReplayStoreError(detail={"error": type(exc).__name__}) from exc
    if not fresh:
        raise _replayed()


async def arecord_proof(cache: AsyncReplayCache, proof: VerifiedProof, *, now: float) -> None:
    """Asynchronous :func:`record_proof`."""
    try:
        fresh = await cache.check_and_store(proof.replay_key, proof.replay_expires_at, now=now)
    except ReplayStoreError:
        raise
    except Exception as exc:
        raise ReplayStoreError(detail={"error": type(exc).__name__}) from exc
    if not fresh:
        raise _replayed()
