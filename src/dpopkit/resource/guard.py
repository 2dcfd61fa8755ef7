"""The resource-server guard: one request view in, a principal out, or a DPoPError.

Pipeline (RFC 9449 §7, §4.3; the order matters only in that the replay record
comes last, so a rejected request never burns a ``jti``):

1. ``Authorization``: exactly one field (RS-21), scheme compared
   case-insensitively (RS-6), ``DPoP`` and, only when configured, ``Bearer``;
   one or more spaces, then a ``token68``. A token also sent in the query is
   ``invalid_request`` (RFC 6750 §2, Fig. 19); no credentials, or only an
   unsupported method (an unknown scheme, a query token), get the bare challenge
   without error information (RFC 6750 §3.1, RS-18). A ``Bearer`` token at an RS
   that accepts only DPoP is ``invalid_token`` saying the DPoP scheme is required
   (RFC 6750 §3.1, HD-16): the client did present a token, and a bare challenge
   left it no way to tell why it was refused.
2. ``DPoP`` scheme: exactly one ``DPoP`` header (§4.3 (1); a comma-folded value
   counts as two), the proof checked against the request (htm, htu from the
   adapter's configuration, ``ath`` of the presented token, the server nonce).
3. The token validated by the configured :class:`~dpopkit.resource.tokens.TokenValidator`.
4. Binding: a ``DPoP`` request needs a bound token whose ``cnf.jkt`` equals the
   proof key (constant time); a ``Bearer`` request needs an unbound token (RS-16).
   Both mismatches are ``invalid_token`` (RS-25).
5. Required scopes (403 ``insufficient_scope``).
6. The replay record (``check_and_store``); store errors are 503 (fail closed).

Each rejection is logged once (reason, ``jkt``, a short hash of ``jti``; never
a token or a proof) and counted in :class:`GuardMetrics`.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import hmac
import inspect
import logging
import math
import multiprocessing
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, urlsplit

from dpopkit._threads import to_thread
from dpopkit.core._slots import unfrozen_twin
from dpopkit.core.challenge import build_challenge
from dpopkit.core.http import DPOP_NONCE_HEADER, RequestView, ResponseView
from dpopkit.core.jws import b64url_decode, json_loads_object
from dpopkit.core.nonce import NonceIssuer
from dpopkit.core.proof import ProofPolicy, VerifiedProof, extract_proof, verify_proof
from dpopkit.core.replay import AsyncReplayCache, ReplayCache, arecord_proof, record_proof
from dpopkit.core.thumbprint import jwk_thumbprint
from dpopkit.errors import (
    DPoPError,
    InsufficientScopeError,
    InvalidRequestError,
    InvalidTokenError,
    Reason,
    ReplayStoreError,
    SecurityWarning,
    ServerConfigurationError,
    requires_extra,
)
from dpopkit.resource.validation import AsyncTokenValidator, TokenInfo, TokenValidator
from dpopkit.storage._health import StoreHealth
from dpopkit.storage.memory import AsyncMemoryReplayCache, MemoryReplayCache

__all__ = [
    "AsyncResourceGuard",
    "DPoPPrincipal",
    "GuardMetrics",
    "ResourceGuard",
]

logger = logging.getLogger("dpopkit.resource")

# RFC 9110 §11.4: credentials = auth-scheme [ 1*SP token68 ]; RFC 9449 §7.1 Fig. 12.
_CREDENTIALS_RE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)(?: +([A-Za-z0-9\-._~+/]+=*))?")
Scheme = Literal["DPoP", "Bearer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DPoPPrincipal:
    """Who made an accepted request.

    Attributes:
        claims: the access token's claims.
        sub: the subject, if any.
        client_id: the client the token was issued to, if known.
        scopes: the granted scopes.
        jkt: the thumbprint of the key the token is bound to (None for Bearer).
        scheme: ``"DPoP"`` or ``"Bearer"``.
        proof: the verified proof (None for Bearer).
        dpop_nonce: a fresh ``DPoP-Nonce`` to send with the response (RFC 9449 §8.2,
            §9), or None.
    """

    claims: Mapping[str, Any]
    sub: str | None
    client_id: str | None
    scopes: frozenset[str]
    jkt: str | None
    scheme: Scheme
    proof: VerifiedProof | None = None
    dpop_nonce: str | None = None

    @property
    def response_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers the adapter sets on the application's response (replacing same-named ones).

        A fresh ``DPoP-Nonce`` comes with ``Cache-Control: no-store`` (RFC 9449 §8.2, AS-19).
        """
        if self.dpop_nonce is None:
            return ()
        return ((DPOP_NONCE_HEADER, self.dpop_nonce), ("Cache-Control", "no-store"))


#: DPoPPrincipal's slot layout without its frozen ``__setattr__`` (one per accepted
#: request): about 0.3 µs against 1 µs for the generated frozen ``__init__``.
_PrincipalBuilder = unfrozen_twin(DPoPPrincipal, field_count=8, fill="_GuardBase._accept")


# --- metrics ------------------------------------------------------------------------------

_IAT_BUCKETS = (-5.0, -1.0, 0.0, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0)


class GuardMetrics:
    """Counters by outcome/reason and a histogram of ``now - iat`` of accepted proofs.

    Thread-safe. Read with :meth:`snapshot`, or :meth:`prometheus_text` for the
    Prometheus text exposition format (no dependency needed).
    """

    def __init__(self, *, prefix: str = "dpopkit_rs") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self.accepted: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self._buckets = [0] * (len(_IAT_BUCKETS) + 1)
        self._iat_sum = 0.0
        self._iat_count = 0

    def record_accept(self, scheme: str, iat_offset: float | None) -> None:
        """Count an accepted request (and its proof's age)."""
        with self._lock:
            self.accepted[scheme] = self.accepted.get(scheme, 0) + 1
            if iat_offset is not None and math.isfinite(iat_offset):
                self._buckets[bisect.bisect_left(_IAT_BUCKETS, iat_offset)] += 1
                self._iat_sum += iat_offset
                self._iat_count += 1

    def record_reject(self, reason: Reason) -> None:
        """Count a rejection by reason."""
        with self._lock:
            self.rejected[reason.value] = self.rejected.get(reason.value, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """Return a copy of every counter."""
        with self._lock:
            return {
                "accepted": dict(self.accepted),
                "rejected": dict(self.rejected),
                "iat_offset_buckets": dict(
                    zip((*_IAT_BUCKETS, math.inf), self._buckets, strict=True)
                ),
                "iat_offset_sum": self._iat_sum,
                "iat_offset_count": self._iat_count,
            }

    def prometheus_text(self) -> str:
        """Render the counters in the Prometheus text exposition format (version 0.0.4)."""
        snap = self.snapshot()
        p = self.prefix
        lines = [f"# TYPE {p}_accepted_total counter"]
        lines += [f'{p}_accepted_total{{scheme="{k}"}} {v}' for k, v in snap["accepted"].items()]
        lines.append(f"# TYPE {p}_rejected_total counter")
        lines += [f'{p}_rejected_total{{reason="{k}"}} {v}' for k, v in snap["rejected"].items()]
        lines.append(f"# TYPE {p}_proof_iat_offset_seconds histogram")
        running = 0
        for bound, count in snap["iat_offset_buckets"].items():
            running += count
            le = "+Inf" if bound == math.inf else repr(bound)
            lines.append(f'{p}_proof_iat_offset_seconds_bucket{{le="{le}"}} {running}')
        lines.append(f"{p}_proof_iat_offset_seconds_sum {snap['iat_offset_sum']}")
        lines.append(f"{p}_proof_iat_offset_seconds_count {snap['iat_offset_count']}")
        return "\n".join(lines) + "\n"

    def register_prometheus(self, registry: Any = None) -> Any:
        """Expose these counters through ``prometheus_client`` (when it is installed).

        Args:
            registry: a ``prometheus_client`` ``CollectorRegistry``; the default one when None.

        Returns:
            The registered collector (pass it to ``registry.unregister`` to remove it).

        Raises:
            MissingExtraError: ``prometheus_client`` is not installed (``dpopkit[metrics]``).
        """
        with requires_extra("metrics", needed_by="GuardMetrics.register_prometheus"):
            from prometheus_client import REGISTRY
            from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        metrics, p = self, self.prefix

        class _Collector:
            def collect(self) -> Iterable[Any]:
                snap = metrics.snapshot()
                accepted = CounterMetricFamily(
                    f"{p}_accepted", "Accepted requests by scheme", labels=["scheme"]
                )
                for scheme, count in snap["accepted"].items():
                    accepted.add_metric([scheme], count)
                rejected = CounterMetricFamily(
                    f"{p}_rejected", "Rejected requests by reason", labels=["reason"]
                )
                for reason, count in snap["rejected"].items():
                    rejected.add_metric([reason], count)
                running, buckets = 0, []
                for bound, count in snap["iat_offset_buckets"].items():
                    running += count
                    buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
                histogram = HistogramMetricFamily(
                    f"{p}_proof_iat_offset_seconds",
                    "now - iat of accepted proofs",
                    buckets=buckets,
                    sum_value=snap["iat_offset_sum"],
                )
                return [accepted, rejected, histogram]

        collector = _Collector()
        (registry if registry is not None else REGISTRY).register(collector)
        return collector


# --- helpers ------------------------------------------------------------------------------


def several_workers() -> bool:
    """Best-effort detection of a multi-process server (uvicorn/gunicorn workers).

    True when ``WEB_CONCURRENCY`` > 1, when this process was started by
    :mod:`multiprocessing` (uvicorn ``--workers``), or under a gunicorn arbiter.
    """
    try:
        if int(os.environ.get("WEB_CONCURRENCY", "1")) > 1:
            return True
    except ValueError:
        return True
    return multiprocessing.parent_process() is not None or "gunicorn.arbiter" in sys.modules


def _check_replay_cache(replay: object) -> None:
    if replay is None:
        raise ServerConfigurationError(description="a replay cache is required (RFC 9449 §11.1)")
    memory = isinstance(replay, MemoryReplayCache | AsyncMemoryReplayCache)
    if memory and not getattr(replay, "single_process", False) and several_workers():
        raise ServerConfigurationError(
            description=(
                "the memory replay cache cannot see other worker processes: use the SQLite,"
                " Redis or PostgreSQL cache, or pass single_process=True if this really is"
                " the only process"
            )
        )


def _short_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:12]


def _peek(proof: str | None, max_length: int) -> tuple[str | None, str | None]:
    """Unverified ``jkt`` and ``jti`` hash of a rejected proof, for the log only."""
    if proof is None or len(proof) > max_length:
        return None, None
    try:
        header_b64, payload_b64, _ = proof.split(".")
        jwk = json_loads_object(b64url_decode(header_b64)).get("jwk")
        jkt = jwk_thumbprint(jwk) if isinstance(jwk, dict) else None
        jti = json_loads_object(b64url_decode(payload_b64)).get("jti")
        return jkt, _short_hash(jti) if isinstance(jti, str) else None
    except Exception:  # best effort for a log line
        return None, None


@dataclass(slots=True)
class _Attempt:
    """What the pipeline learned so far (for the principal, the log and the challenge)."""

    scheme: Scheme | None = None
    token: str = ""
    raw_proof: str | None = None
    proof: VerifiedProof | None = None
    info: TokenInfo | None = None


class _GuardBase:
    def __init__(
        self,
        *,
        policy: ProofPolicy | None,
        nonces: NonceIssuer | None,
        accept_bearer: bool,
        required_scopes: Iterable[str],
        realm: str | None,
        clock: Callable[[], float],
        metrics: GuardMetrics | None,
        replay: object,
    ) -> None:
        self.policy = policy if policy is not None else ProofPolicy()
        if self.policy.require_nonce and nonces is None:
            raise ServerConfigurationError(description="require_nonce needs a NonceIssuer")
        _check_replay_cache(replay)
        if accept_bearer:
            warnings.warn(
                "accept_bearer=True: unbound Bearer tokens are accepted next to DPoP",
                SecurityWarning,
                stacklevel=3,
            )
        self.nonces = nonces
        self.accept_bearer = accept_bearer
        self.required_scopes = frozenset(required_scopes)
        self.realm = realm
        self.clock = clock
        self.metrics = metrics if metrics is not None else GuardMetrics()
        #: outages and recoveries of the replay cache, logged on ``dpopkit.storage``
        self.replay_health = StoreHealth("replay")
        self._algs = self.policy.algs_param.split()

    # -- rendering -------------------------------------------------------------------------

    def challenge_response(self) -> ResponseView:
        """The 401 for a request without usable credentials: no error information.

        RFC 9449 §7.1 Fig. 15 (RS-7), §7.2 (RS-18); RFC 6750 §3.1: no error code when
        the request had no authentication or used an unsupported method.
        """
        base = [("realm", self.realm)] if self.realm is not None else []
        challenges = []
        if self.accept_bearer:
            challenges.append(build_challenge("Bearer", base))
        challenges.append(build_challenge("DPoP", [*base, ("algs", " ".join(self._algs))]))
        return ResponseView(
            status=401,
            headers=(
                ("WWW-Authenticate", ", ".join(challenges)),
                ("Cache-Control", "no-store"),
            ),
        )

    def error_response(self, error: DPoPError) -> ResponseView:
        """Render a rejection as the RS answer (RFC 9449 §7.1, §7.2; RFC 6750 §3).

        No credentials: a challenge without error (RS-18). A Bearer attempt: the
        error on the Bearer challenge only (RS-19). Ambiguous (two Authorization
        fields): the error on both (RS-20). ``use_dpop_nonce`` carries ``DPoP-Nonce``.
        """
        if error.reason in (Reason.MISSING_TOKEN, Reason.UNSUPPORTED_SCHEME):
            return self.challenge_response()
        return error.as_response(
            role="rs",
            algs=self._algs,
            realm=self.realm,
            bearer=self.accept_bearer,
            bearer_error=self.accept_bearer and error.detail.get("scheme") == "Bearer",
        )

    # -- pipeline --------------------------------------------------------------------------

    def _parse_authorization(self, request: RequestView, attempt: _Attempt) -> None:
        values = request.headers.get_all("Authorization")
        url = request.url
        query_token = "access_token" in url and any(
            name == "access_token" for name, _ in parse_qsl(urlsplit(url).query)
        )
        # RFC 6750 §2, RFC 9449 §7.2 Fig. 19: one method, one field (RS-21).
        if len(values) > 1 or (values and "," in values[0]) or (values and query_token):
            raise InvalidRequestError(
                Reason.MULTIPLE_AUTHORIZATION, "more than one access token in the request"
            )
        if query_token:
            # RFC 9449 §7.2 (RS-16): never a token in the URI; an unsupported method.
            raise InvalidTokenError(Reason.UNSUPPORTED_SCHEME, "send the token in Authorization")
        if not values:
            raise InvalidTokenError(Reason.MISSING_TOKEN, "no access token")
        found = _CREDENTIALS_RE.fullmatch(values[0].strip(" \t"))
        if found is None or found.group(2) is None:
            raise InvalidRequestError(Reason.MALFORMED, "malformed Authorization header")
        scheme = found.group(1).lower()
        attempt.token = found.group(2)
        # RFC 9110 §11.1 (RS-6): scheme names compare case-insensitively.
        if scheme == "dpop":
            attempt.scheme = "DPoP"
        elif scheme == "bearer":
            attempt.scheme = "Bearer"
            if not self.accept_bearer:
                # RFC 9449 §7.1, §7.2: a token came, with the wrong scheme.
                raise InvalidTokenError(Reason.DPOP_REQUIRED, "the DPoP scheme is required")
        else:
            raise InvalidTokenError(Reason.UNSUPPORTED_SCHEME, "unsupported scheme")

    def _verify_proof(self, request: RequestView, attempt: _Attempt, now: float) -> None:
        # RFC 9449 §4.3 (1), (2): exactly one DPoP header, one token68.
        attempt.raw_proof = extract_proof(request.headers)
        # RFC 9449 §4.3 (3)-(11), (12) ath: htm, htu (from configuration), ath, nonce.
        attempt.proof = verify_proof(
            attempt.raw_proof,
            htm=request.method,
            htu=request.url,
            policy=self.policy,
            access_token=attempt.token,
            nonce_check=self.nonces,
            now=now,
        )

    def _check_binding(
        self, attempt: _Attempt, info: TokenInfo, required: Collection[str] | None
    ) -> None:
        attempt.info = info
        if attempt.scheme == "Bearer":
            # RFC 9449 §7.2 (RS-16): a DPoP-bound token is never accepted as Bearer.
            if info.jkt is not None:
                raise InvalidTokenError(Reason.BOUND_TOKEN_AS_BEARER, "the token is DPoP-bound")
        else:
            proof = attempt.proof
            assert proof is not None
            # RS-25: Authorization: DPoP with an unbound token.
            if info.jkt is None:
                raise InvalidTokenError(Reason.UNBOUND_TOKEN_AS_DPOP, "the token is not DPoP-bound")
            # RFC 9449 §4.3 (12), §6 (RS-2): cnf.jkt equals the proof key, constant time.
            if not hmac.compare_digest(info.jkt.encode(), proof.jkt.encode()):
                raise InvalidTokenError(Reason.JKT_MISMATCH, "the token is bound to another key")
        # RFC 6750 §3.1: required scopes.
        needed = self.required_scopes.union(required) if required else self.required_scopes
        if needed and not needed <= info.scopes:
            raise InsufficientScopeError(
                Reason.SCOPE_MISSING,
                "the token lacks a required scope",
                scope=" ".join(sorted(needed)),
            )

    def _accept(self, attempt: _Attempt, now: float) -> DPoPPrincipal:
        info = attempt.info
        assert info is not None
        assert attempt.scheme is not None
        proof = attempt.proof
        if proof is not None:
            self.replay_health.ok()  # the proof was recorded
        nonce: str | None = None
        # RFC 9449 §8.2, §9: a fresh nonce whenever the client's is not current.
        stale = proof is not None and (proof.nonce_info is None or not proof.nonce_info.current)
        if self.nonces is not None and stale:
            nonce = self.nonces.issue(now=now)
        self.metrics.record_accept(attempt.scheme, None if proof is None else now - proof.iat)
        principal: Any = _PrincipalBuilder()
        principal.claims = info.claims
        principal.sub = info.sub
        principal.client_id = info.client_id
        principal.scopes = info.scopes
        principal.jkt = info.jkt
        principal.scheme = attempt.scheme
        principal.proof = proof
        principal.dpop_nonce = nonce
        principal.__class__ = DPoPPrincipal
        accepted: DPoPPrincipal = principal
        return accepted

    def _reject(self, error: DPoPError, attempt: _Attempt, request: RequestView) -> None:
        if attempt.scheme is not None:
            error.detail.setdefault("scheme", attempt.scheme)
        if isinstance(error, ReplayStoreError):
            self.replay_health.failed(str(error.detail.get("error", error.reason.value)))
        self.metrics.record_reject(error.reason)
        jkt: str | None
        jti_hash: str | None
        if attempt.proof is not None:
            jkt, jti_hash = attempt.proof.jkt, _short_hash(attempt.proof.jti)
        else:
            jkt, jti_hash = _peek(attempt.raw_proof, self.policy.max_proof_length)
        extra = ""
        if error.reason is Reason.HTU_MISMATCH:
            # The log, never the response, shows what we expected and what came (RFC 6750 §3).
            expected, received = error.detail.get("expected"), error.detail.get("received")
            extra = f" expected_htu={expected!r} received_htu={received!r}"
        elif "claim" in error.detail:
            extra = f" claim={error.detail['claim']!r}"
        logger.info(
            "dpop rejected reason=%s error=%s method=%s jkt=%s jti_hash=%s%s",
            error.reason.value,
            error.error,
            request.method,
            jkt,
            jti_hash,
            extra,
        )


class ResourceGuard(_GuardBase):
    """Authenticate DPoP (and optionally Bearer) requests at a resource server.

    RFC 9449 §7 (checklist RS-1..RS-25). Framework-free: adapters build the
    :class:`~dpopkit.RequestView` (with ``url`` from configuration, never from
    ``Host`` alone) and render :meth:`error_response`.

    Args:
        tokens: validates access tokens (:class:`~dpopkit.resource.tokens.JWTAccessTokens`,
            :class:`~dpopkit.resource.tokens.IntrospectionTokens`, any ``TokenValidator``).
        replay: the replay cache (memory for one process; SQLite, Redis or
            PostgreSQL for several). A memory cache under several workers is refused
            unless it was built with ``single_process=True``.
        policy: the proof policy (algorithms, window, ``require_nonce``).
        nonces: a :class:`~dpopkit.NonceIssuer` for RS nonces (RFC 9449 §9).
        accept_bearer: also accept *unbound* tokens with the Bearer scheme (warns).
        required_scopes: scopes every request needs.
        realm: an optional ``realm`` for challenges.
        clock: returns the current time (seconds since the epoch).
        metrics: where counters go (a fresh :class:`GuardMetrics` by default).

    Raises:
        ServerConfigurationError: at construction, for an unusable setup.
    """

    def __init__(
        self,
        *,
        tokens: TokenValidator | Callable[[str], TokenInfo],
        replay: ReplayCache,
        policy: ProofPolicy | None = None,
        nonces: NonceIssuer | None = None,
        accept_bearer: bool = False,
        required_scopes: Iterable[str] = (),
        realm: str | None = None,
        clock: Callable[[], float] = time.time,
        metrics: GuardMetrics | None = None,
    ) -> None:
        super().__init__(
            policy=policy,
            nonces=nonces,
            accept_bearer=accept_bearer,
            required_scopes=required_scopes,
            realm=realm,
            clock=clock,
            metrics=metrics,
            replay=replay,
        )
        if inspect.iscoroutinefunction(getattr(tokens, "validate", None)):
            raise TypeError("ResourceGuard needs a synchronous token validator")
        self.tokens = tokens
        self.replay = replay
        # Decided once: a runtime Protocol check per request costs ~30 µs.
        if isinstance(tokens, TokenValidator):
            self._validate_with: Callable[[str, float], TokenInfo] = lambda token, now: (
                tokens.validate(token, now=now)
            )
        else:
            self._validate_with = lambda token, now: tokens(token)

    def _validate(self, token: str, now: float) -> TokenInfo:
        return self._validate_with(token, now)

    def authenticate(
        self, request: RequestView, *, required_scopes: Collection[str] | None = None
    ) -> DPoPPrincipal:
        """Authenticate ``request`` (RFC 9449 §7.1, §4.3).

        Args:
            request: the request, with ``url`` as the client addressed it.
            required_scopes: scopes this route needs on top of the guard's.

        Returns:
            The :class:`DPoPPrincipal`.

        Raises:
            InvalidTokenError: no, bad, unbound (DPoP) or bound (Bearer) token, key mismatch.
            InvalidProofError: the proof failed a check (``reason`` says which), or a replay.
            UseNonceError: a (fresh) server nonce is required.
            InvalidRequestError: two ways of sending the token, malformed Authorization.
            InsufficientScopeError: a required scope is missing.
            TemporarilyUnavailableError: the replay store or the token source is down.
        """
        now = self.clock()
        attempt = _Attempt()
        try:
            self._parse_authorization(request, attempt)
            if attempt.scheme == "DPoP":
                self._verify_proof(request, attempt, now)
            info = self._validate(attempt.token, now)
            self._check_binding(attempt, info, required_scopes)
            if attempt.proof is not None:
                # RFC 9449 §11.1: the replay record, last, atomic.
                record_proof(self.replay, attempt.proof, now=now)
        except DPoPError as error:
            self._reject(error, attempt, request)
            raise
        return self._accept(attempt, now)


class AsyncResourceGuard(_GuardBase):
    """The asynchronous :class:`ResourceGuard` (for ASGI; asyncio and trio).

    Takes an :class:`~dpopkit.core.replay.AsyncReplayCache` (or a synchronous
    cache, run in a worker thread: how Redis or PostgreSQL serve trio apps) and an
    async or sync token validator (a static JWKS needs no I/O). Arguments as for
    :class:`ResourceGuard`, plus ``offload_verification``: verify the proof in a
    worker thread (``anyio.to_thread``) instead of on the event loop;
    ``cryptography`` releases the GIL while it verifies (see ``bench/rs.py``).
    """

    def __init__(
        self,
        *,
        tokens: AsyncTokenValidator | TokenValidator | Callable[[str], TokenInfo],
        replay: AsyncReplayCache | ReplayCache,
        policy: ProofPolicy | None = None,
        nonces: NonceIssuer | None = None,
        accept_bearer: bool = False,
        required_scopes: Iterable[str] = (),
        realm: str | None = None,
        clock: Callable[[], float] = time.time,
        metrics: GuardMetrics | None = None,
        offload_verification: bool = False,
    ) -> None:
        super().__init__(
            policy=policy,
            nonces=nonces,
            accept_bearer=accept_bearer,
            required_scopes=required_scopes,
            realm=realm,
            clock=clock,
            metrics=metrics,
            replay=replay,
        )
        self.offload_verification = offload_verification
        store = getattr(replay, "check_and_store", None)
        if store is None:
            raise TypeError("AsyncResourceGuard needs a replay cache")
        # A synchronous cache (e.g. Redis under trio) runs in a worker thread.
        self._replay_in_thread = not inspect.iscoroutinefunction(store)
        self.tokens = tokens
        self.replay = replay
        validate = getattr(tokens, "validate", None)
        self._validate_is_async = inspect.iscoroutinefunction(validate)
        self._validate_fn: Callable[..., Any] = (
            validate if validate is not None else (lambda token, now: tokens(token))  # type: ignore[operator]
        )

    async def _record_in_thread(self, proof: VerifiedProof, now: float) -> None:
        record = functools.partial(record_proof, cast(ReplayCache, self.replay), proof, now=now)
        await to_thread(record)

    async def authenticate(
        self, request: RequestView, *, required_scopes: Collection[str] | None = None
    ) -> DPoPPrincipal:
        """Authenticate ``request``; see :meth:`ResourceGuard.authenticate`."""
        now = self.clock()
        attempt = _Attempt()
        try:
            self._parse_authorization(request, attempt)
            if attempt.scheme == "DPoP":
                if self.offload_verification:
                    verify = functools.partial(self._verify_proof, request, attempt, now)
                    await to_thread(verify)
                else:
                    self._verify_proof(request, attempt, now)
            # The token (awaited only when the validator is async: a coroutine frame per
            # request shows in a profile).
            result = self._validate_fn(attempt.token, now=now)
            if self._validate_is_async or (
                type(result) is not TokenInfo and inspect.isawaitable(result)
            ):
                result = await result
            self._check_binding(attempt, cast(TokenInfo, result), required_scopes)
            proof = attempt.proof
            if proof is not None:
                # RFC 9449 §11.1: the replay record, last, atomic.
                if self._replay_in_thread:
                    await self._record_in_thread(proof, now)
                else:
                    await arecord_proof(cast(AsyncReplayCache, self.replay), proof, now=now)
        except DPoPError as error:
            self._reject(error, attempt, request)
            raise
        return self._accept(attempt, now)
