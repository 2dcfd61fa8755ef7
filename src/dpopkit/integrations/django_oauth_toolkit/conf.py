"""The plug-in's configuration: the ``DPOPKIT_DOT`` Django setting.

Keys (all optional except ``PUBLIC_URL``):

* ``PUBLIC_URL``: scheme, host and port the clients use (``https://as.example``);
  the ``htu`` every proof must carry is this plus the request path (RFC 9449 §4.3
  (9)), never taken from ``Host`` alone.
* ``REPLAY_URL``: the replay cache (``memory``, ``sqlite:///path``, ``redis://...``,
  ``postgresql://...``; default ``memory``, one process only) or ``REPLAY_CACHE``:
  a ready :class:`~dpopkit.ReplayCache`; ``REPLAY_SCHEMA``: the PostgreSQL schema.
* ``NONCE_POLICY``: ``off`` (default), ``per_client`` (clients whose
  :class:`~.models.ClientDPoPSettings` say ``dpop_nonce_required``) or ``always``;
  ``NONCE_SECRETS``: base64url secrets of at least 32 bytes (the first signs).
* ``ALGORITHMS`` (default: every asymmetric algorithm dpopkit supports) and
  ``PROOF_MAX_AGE`` (seconds, default 60).
* ``REQUIRE_DPOP``: every client must send a proof (default False: clients without
  DPoP keep receiving Bearer tokens, unless their own settings say otherwise).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal, cast

from dpopkit.core.nonce import NonceIssuer
from dpopkit.core.proof import ProofPolicy
from dpopkit.core.replay import ReplayCache
from dpopkit.errors import requires_extra
from dpopkit.storage.urls import replay_cache_from_url

with requires_extra("django-oauth-toolkit", needed_by=__name__):
    from django.conf import settings as django_settings  # type: ignore[import-untyped]
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

__all__ = ["DPoPSettings", "dpop_settings", "reset"]

NoncePolicy = Literal["off", "per_client", "always"]
_KEYS = {
    "PUBLIC_URL",
    "REPLAY_URL",
    "REPLAY_CACHE",
    "REPLAY_SCHEMA",
    "NONCE_POLICY",
    "NONCE_SECRETS",
    "ALGORITHMS",
    "PROOF_MAX_AGE",
    "REQUIRE_DPOP",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DPoPSettings:
    """The parsed ``DPOPKIT_DOT`` setting.

    Attributes:
        public_url: the origin clients address (no trailing slash).
        replay: the replay cache for proof ``jti`` values (RFC 9449 §11.1).
        nonce_policy: ``off``, ``per_client`` or ``always`` (RFC 9449 §8).
        nonces: the nonce issuer, None when the policy is ``off``.
        policy: proofs without a required nonce.
        nonce_policy_proofs: proofs that must carry a nonce.
        require_dpop: every client must use DPoP.
    """

    public_url: str
    replay: ReplayCache
    nonce_policy: NoncePolicy
    nonces: NonceIssuer | None
    policy: ProofPolicy
    nonce_policy_proofs: ProofPolicy
    require_dpop: bool

    def htu(self, path: str) -> str:
        """The ``htu`` a proof for ``path`` on this server carries."""
        return self.public_url + path


_lock = threading.Lock()
_cached: DPoPSettings | None = None


def _build(raw: dict[str, Any]) -> DPoPSettings:
    unknown = set(raw) - _KEYS
    if unknown:
        raise ImproperlyConfigured(f"DPOPKIT_DOT: unknown keys {sorted(unknown)}")
    public_url = raw.get("PUBLIC_URL")
    if not isinstance(public_url, str) or "://" not in public_url:
        raise ImproperlyConfigured("DPOPKIT_DOT['PUBLIC_URL'] must be an absolute URL")
    replay = raw.get("REPLAY_CACHE")
    if replay is None:
        try:
            replay = replay_cache_from_url(
                str(raw.get("REPLAY_URL", "memory")), schema=raw.get("REPLAY_SCHEMA")
            )
        except ValueError as exc:
            raise ImproperlyConfigured(f"DPOPKIT_DOT['REPLAY_URL']: {exc}") from None
    nonce_policy = raw.get("NONCE_POLICY", "off")
    if nonce_policy not in ("off", "per_client", "always"):
        raise ImproperlyConfigured("DPOPKIT_DOT['NONCE_POLICY'] must be off, per_client or always")
    nonces = None
    if nonce_policy != "off":
        secrets_ = raw.get("NONCE_SECRETS")
        if not secrets_:
            raise ImproperlyConfigured("DPOPKIT_DOT: a NONCE_POLICY needs NONCE_SECRETS")
        try:
            nonces = NonceIssuer(list(secrets_), context="as")
        except ValueError as exc:
            raise ImproperlyConfigured(f"DPOPKIT_DOT['NONCE_SECRETS']: {exc}") from None
    extra: dict[str, Any] = {}
    if "ALGORITHMS" in raw:
        extra["algorithms"] = frozenset(raw["ALGORITHMS"])
    if "PROOF_MAX_AGE" in raw:
        extra["max_age"] = float(raw["PROOF_MAX_AGE"])
    try:
        policy = ProofPolicy(**extra)
        with_nonce = ProofPolicy(**extra, require_nonce=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DPOPKIT_DOT: {exc}") from None
    return DPoPSettings(
        public_url=public_url.rstrip("/"),
        replay=cast(ReplayCache, replay),
        nonce_policy=cast(NoncePolicy, nonce_policy),
        nonces=nonces,
        policy=policy,
        nonce_policy_proofs=with_nonce,
        require_dpop=bool(raw.get("REQUIRE_DPOP", False)),
    )


def dpop_settings() -> DPoPSettings:
    """The parsed setting, built once per process.

    Raises:
        ImproperlyConfigured: a missing or invalid key.
    """
    global _cached
    with _lock:
        if _cached is None:
            _cached = _build(dict(getattr(django_settings, "DPOPKIT_DOT", {})))
        return _cached


def reset() -> None:
    """Forget the parsed setting (after changing ``settings.DPOPKIT_DOT`` in tests)."""
    global _cached
    with _lock:
        _cached = None
