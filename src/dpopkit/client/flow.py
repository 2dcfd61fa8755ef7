"""The sans-I/O client flow: proofs, per-origin nonces, bounded retry, clock-skew learning.

A :class:`DPoPFlow` handles **one** request. ``prepare`` returns the headers to
send (a new proof with a new ``jti`` every time, and ``Authorization: DPoP
<token>`` when a token is given); ``on_response`` looks at the answer and says
:class:`Retry` (with new headers) or :class:`Done`. It never performs I/O, so
the httpx and requests adapters, the token client and the tests all drive the
same state machine.

State shared by many requests lives in a :class:`NonceCache`: per origin, the
last ``DPoP-Nonce`` the server sent (RFC 9449 §8.2, §9, checklist C-11..C-14)
and the clock offset learned from that server's ``Date`` header.

Design decisions:

* ``DPoP-Nonce`` is harvested from **every** response, success too (C-11).
* A retry happens only for ``use_dpop_nonce``: a 400 JSON error at an AS
  (RFC 9449 §8) or a 401 ``WWW-Authenticate: DPoP error="use_dpop_nonce"`` at
  an RS (§9); scheme and parameter names compare case-insensitively.
* At most ``max_nonce_retries`` (default 1) nonce retries per request (C-10).
  A challenge without a usable ``DPoP-Nonce`` raises :class:`MissingNonceError`;
  a challenge repeating the nonce just sent, or asking again once the budget
  is spent, raises :class:`NonceRetryExhaustedError`. The flow never loops.
* Clock skew is learned **per origin**: one server's clock (or a lying
  ``Date``) never moves the ``iat`` of proofs sent to another server. It is
  learned only from ``use_dpop_nonce`` / ``invalid_dpop_proof`` answers whose
  ``Date`` differs from the local clock by more than ``skew_threshold``
  seconds, and ignored beyond ``max_clock_offset``.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any, Final, Literal

from dpopkit.core.challenge import ChallengeSyntaxError, parse_challenges
from dpopkit.core.http import AUTH_SCHEME, DPOP_HEADER, DPOP_NONCE_HEADER, Headers
from dpopkit.core.htu import normalize_htu
from dpopkit.core.keys import DPoPKey
from dpopkit.core.proof import create_proof
from dpopkit.errors import ChallengeError, MissingNonceError, NonceRetryExhaustedError, Reason

__all__ = [
    "DONE",
    "Clock",
    "DPoPFlow",
    "Done",
    "NonceCache",
    "Retry",
    "origin_of",
    "parse_json_body",
    "wants_body",
]

Clock = Callable[[], float]

USE_DPOP_NONCE: Final = "use_dpop_nonce"
INVALID_DPOP_PROOF: Final = "invalid_dpop_proof"
INVALID_TOKEN: Final = "invalid_token"  # noqa: S105 - an OAuth error code
#: Longest ``DPoP-Nonce`` value the client stores (anything longer is ignored).
MAX_NONCE_LENGTH: Final = 1024
#: Largest error body (bytes) the adapters parse to find ``use_dpop_nonce``.
MAX_ERROR_BODY: Final = 64 * 1024
_EQUIVALENT_ALGS = {"EdDSA": "Ed25519", "Ed25519": "EdDSA"}  # RFC 9864 names
_NQCHAR_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 9449 §8.1, RFC 6749 App. A


@lru_cache(maxsize=1024)  # one parse per URL, not one per request
def origin_of(url: str) -> str:
    """Return the origin ``scheme://host[:port]`` of ``url`` in normal form (RFC 6454 §4).

    The default port is dropped and scheme and host are lower-cased, so
    ``HTTPS://API.example:443/x`` and ``https://api.example/y`` share nonces.

    Raises:
        ValueError: not an absolute http(s) URL.
    """
    normal = normalize_htu(url)
    scheme, _, rest = normal.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


@dataclass(slots=True)
class _OriginState:
    nonce: str | None = None
    clock_offset: float = 0.0


class NonceCache:
    """Per-origin client state: the current server nonce and the learned clock offset.

    A bounded LRU (least recently used origins are evicted first), safe to share
    between threads and between many requests (RFC 9449 §8.2, §9; C-12, C-14).
    A nonce is kept until the server sends a new one and is sent verbatim (C-13).

    Args:
        maxsize: how many origins to remember.
    """

    __slots__ = ("_data", "_lock", "maxsize")

    def __init__(self, maxsize: int = 128) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._data: OrderedDict[str, _OriginState] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return True  # an empty cache is still a cache (``cache or NonceCache()`` must keep it)

    def __repr__(self) -> str:
        return f"NonceCache(origins={len(self._data)}, maxsize={self.maxsize})"

    def _entry(self, origin: str) -> _OriginState:
        # Caller holds the lock.
        state = self._data.get(origin)
        if state is None:
            state = self._data[origin] = _OriginState()
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        else:
            self._data.move_to_end(origin)
        return state

    def lookup(self, origin: str) -> tuple[str | None, float]:
        """Return ``(nonce, clock_offset)`` for ``origin`` (``(None, 0.0)`` when unknown).

        What one proof needs, read under a single lock acquisition; the origin
        counts as used (LRU), as with :meth:`get`.
        """
        # An unknown origin is answered without the lock: one dict read is atomic, and
        # an entry added right after it is the same race as one added after the lock.
        if origin not in self._data:
            return None, 0.0
        with self._lock:
            state = self._data.get(origin)
            if state is None:
                return None, 0.0
            self._data.move_to_end(origin)
            return state.nonce, state.clock_offset

    def get(self, origin: str) -> str | None:
        """Return the current nonce for ``origin``, or None."""
        with self._lock:
            state = self._data.get(origin)
            if state is None:
                return None
            self._data.move_to_end(origin)
            return state.nonce

    def put(self, origin: str, nonce: str) -> None:
        """Remember ``nonce`` as the current nonce of ``origin``."""
        with self._lock:
            self._entry(origin).nonce = nonce

    def clock_offset(self, origin: str) -> float:
        """Seconds to add to the local clock for proofs sent to ``origin`` (0 when unknown)."""
        with self._lock:
            state = self._data.get(origin)
            return 0.0 if state is None else state.clock_offset

    def set_clock_offset(self, origin: str, offset: float) -> None:
        """Record the clock offset learned for ``origin``."""
        with self._lock:
            self._entry(origin).clock_offset = offset


@dataclass(frozen=True, slots=True)
class Retry:
    """Send the request again with these headers (a new proof, maybe a new token).

    Attributes:
        headers: header fields to set on the retried request (replacing old values).
        reason: ``"nonce"`` (a ``use_dpop_nonce`` answer) or ``"token"`` (the
            token was refreshed after ``invalid_token``).
    """

    headers: dict[str, str]
    reason: Literal["nonce", "token"] = "nonce"


@dataclass(frozen=True, slots=True)
class Done:
    """The response is final: hand it to the caller."""


#: The single :class:`Done` value.
DONE: Final = Done()
_new_flow = object.__new__


def _valid_nonce(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip(" \t")
    if len(value) > MAX_NONCE_LENGTH or not _NQCHAR_RE.fullmatch(value):
        return None
    return value


def _server_time(headers: Headers) -> float | None:
    value = headers.get("date")
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # RFC 9110 §5.6.7: HTTP-date is always GMT
        return None
    stamp = parsed.timestamp()
    return stamp if math.isfinite(stamp) else None


def wants_body(status: int, headers: Mapping[str, str]) -> bool:
    """Whether an adapter must read the body for :meth:`DPoPFlow.on_response`.

    Only a 400 that carries ``DPoP-Nonce`` or a JSON content type can be an AS
    ``use_dpop_nonce`` / ``invalid_dpop_proof`` error (RFC 9449 §5, §8); every
    other body is left alone (streaming responses stay streaming).
    """
    if status != 400:
        return False
    if DPOP_NONCE_HEADER in headers or DPOP_NONCE_HEADER.lower() in headers:
        return True
    ctype = headers.get("content-type") or headers.get("Content-Type") or ""
    media = ctype.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def parse_json_body(body: bytes) -> Mapping[str, Any] | None:
    """Decode an error body as a JSON object, or return None (never raises)."""
    if len(body) > MAX_ERROR_BODY:
        return None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(slots=True, kw_only=True)
class DPoPFlow:
    """The client side of one DPoP request, as a state machine without I/O.

    RFC 9449 §4 (proofs), §7 (``Authorization: DPoP``), §8/§9 (nonces).

    Args:
        key: the client's :class:`~dpopkit.DPoPKey`.
        nonces: the shared per-origin :class:`NonceCache` (one per client, not per key).
        clock: returns the current time in seconds (injected; ``time.time`` by default).
        max_nonce_retries: how many ``use_dpop_nonce`` retries one request may make.
        learn_clock_skew: learn a per-origin clock offset from ``Date`` (see module doc).
        skew_threshold: seconds of difference below which no offset is learned.
        max_clock_offset: a larger apparent offset is ignored (a lying server).
        allow_insecure_http: permit ``http://`` targets (loopback tests only).
        extra_claims: claims added to every proof (e.g. none by default).

    Example:
        ``flow.prepare("GET", url, access_token)`` → headers; send; then
        ``flow.on_response(status, headers, json_or_none)`` → :class:`Retry` or :data:`DONE`.
    """

    key: DPoPKey
    nonces: NonceCache = field(default_factory=NonceCache)
    clock: Clock = time.time
    max_nonce_retries: int = 1
    learn_clock_skew: bool = True
    skew_threshold: float = 5.0
    max_clock_offset: float = 86400.0
    allow_insecure_http: bool = False
    extra_claims: Mapping[str, Any] | None = None
    _method: str = field(default="", init=False)
    _url: str = field(default="", init=False)
    _origin: str = field(default="", init=False)
    _token: str | None = field(default=None, init=False)
    _retries: int = field(default=0, init=False)
    _sent_nonce: str | None = field(default=None, init=False)  # the nonce of the last proof
    _error: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, DPoPKey):
            raise TypeError("key must be a DPoPKey")
        if not 0 <= self.max_nonce_retries <= 5:
            raise ValueError("max_nonce_retries must be between 0 and 5")
        if not (0 < self.skew_threshold <= self.max_clock_offset):
            raise ValueError("need 0 < skew_threshold <= max_clock_offset")

    # -- requests ----------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """The origin of the prepared request (the nonce-cache key)."""
        return self._origin

    @property
    def last_error(self) -> str | None:
        """The OAuth ``error`` code of the last response (see :meth:`error_code`)."""
        return self._error

    @property
    def retries(self) -> int:
        """How many nonce retries this request has made."""
        return self._retries

    def prepare(self, method: str, url: str, access_token: str | None = None) -> dict[str, str]:
        """Return the headers for the first send of a request (RFC 9449 §4.2, §7.1).

        Args:
            method: the HTTP method, exactly as sent (``htm``).
            url: the absolute request URL (``htu``: query and fragment are dropped).
            access_token: when given, ``Authorization: DPoP <token>`` is added and the
                proof carries ``ath`` (C-4, C-5). Never ``Proxy-Authorization`` (C-6).

        Returns:
            ``{"DPoP": proof}`` plus ``Authorization`` when a token is given.

        Raises:
            ValueError: a malformed method or URL, or ``http://`` without
                ``allow_insecure_http``.
        """
        self._method = method
        self._url = url
        self._origin = origin_of(url)
        self._token = access_token
        self._retries = 0
        self._sent_nonce = None
        return self._headers()

    def _headers(self) -> dict[str, str]:
        headers, self._sent_nonce = self._signed(self._method, self._url, self._token, self._origin)
        return headers

    def _signed(
        self, method: str, url: str, token: str | None, origin: str
    ) -> tuple[dict[str, str], str | None]:
        """The headers of one send and the nonce its proof carries; no state is changed.

        An adapter signs a request's first send with it on a flow it shares between
        requests, and makes a flow of the request's own (:meth:`_fresh`, then
        :meth:`_resume`) only when an answer needs one; most answers (no 400 or 401,
        no ``DPoP-Nonce``) do not.
        """
        nonces = self.nonces
        # (an origin without state is answered here, as lookup would, without its call)
        nonce, offset = nonces.lookup(origin) if origin in nonces._data else (None, 0.0)
        # RFC 9449 §4.2: a new jti and a current iat for every send, retries too (C-2).
        proof = create_proof(
            self.key,
            htm=method,
            htu=url,
            access_token=token,
            nonce=nonce,
            claims=self.extra_claims,
            now=self.clock() + offset,
            allow_insecure_http=self.allow_insecure_http,
        )
        if token is None:
            return {DPOP_HEADER: proof}, nonce
        # RFC 9449 §7.1: "DPoP" scheme, token68, one space (C-5).
        return {DPOP_HEADER: proof, "Authorization": f"{AUTH_SCHEME} {token}"}, nonce

    def _resume(
        self, method: str, url: str, origin: str, access_token: str | None, sent: str | None
    ) -> None:
        """Take the state :meth:`prepare` leaves, for a first send made by :meth:`_signed`."""
        self._method = method
        self._url = url
        self._origin = origin
        self._token = access_token
        self._retries = 0
        self._sent_nonce = sent

    def answered_without_error(self) -> None:
        """Record an answer that :meth:`on_response` would find :data:`DONE` without acting.

        For an adapter that saw a status other than 400 and 401 and no ``DPoP-Nonce``
        field: no nonce to keep, no error code, nothing to learn.
        """
        self._error = None

    def _fresh(self) -> DPoPFlow:
        """A flow with this one's settings and no request state yet.

        The settings were checked when this flow was built (``__post_init__``); the
        copy skips the generated ``__init__`` and those checks (an auth object makes
        one flow per request from a checked one).
        """
        flow = _new_flow(DPoPFlow)
        flow.key = self.key
        flow.nonces = self.nonces
        flow.clock = self.clock
        flow.max_nonce_retries = self.max_nonce_retries
        flow.learn_clock_skew = self.learn_clock_skew
        flow.skew_threshold = self.skew_threshold
        flow.max_clock_offset = self.max_clock_offset
        flow.allow_insecure_http = self.allow_insecure_http
        flow.extra_claims = self.extra_claims
        flow._method = flow._url = flow._origin = ""
        flow._token = flow._sent_nonce = flow._error = None
        flow._retries = 0
        return flow

    def with_token(self, access_token: str) -> Retry:
        """Return a :class:`Retry` carrying a new access token (after a refresh).

        Used once per request by auth objects that refresh on ``invalid_token``.
        """
        self._token = access_token
        return Retry(self._headers(), reason="token")

    # -- responses ---------------------------------------------------------------------------

    def on_response(
        self,
        status: int,
        headers: Mapping[str, str] | Headers,
        body: Mapping[str, Any] | None = None,
    ) -> Retry | Done:
        """Look at a response: harvest ``DPoP-Nonce``, learn clock skew, maybe retry.

        Args:
            status: the HTTP status.
            headers: the response header fields (a :class:`~dpopkit.Headers` keeps
                repeated ``WWW-Authenticate`` fields apart).
            body: the decoded JSON body of a 400 (see :func:`wants_body`), else None.

        Returns:
            :class:`Retry` with fresh headers for a ``use_dpop_nonce`` answer within
            the budget (C-10), else :data:`DONE`.

        Raises:
            ChallengeError: (UNSUPPORTED_ALG) a 401 ``DPoP`` challenge whose ``algs``
                leaves out this key's algorithm (C-16): no retry can succeed.
            MissingNonceError: ``use_dpop_nonce`` without a usable ``DPoP-Nonce``.
            NonceRetryExhaustedError: the server asked again once the budget was
                spent, or repeated the nonce that was just sent (loop protection).
        """
        if not self._origin:
            raise RuntimeError("prepare() must be called before on_response()")
        view = headers if isinstance(headers, Headers) else Headers(headers)
        # RFC 9449 §8.2, §9: a DPoP-Nonce on any response replaces the cached one (C-11).
        nonces = view.get_all(DPOP_NONCE_HEADER)  # (Mapping.get raises KeyError inside when absent)
        fresh = _valid_nonce(nonces[0] if nonces else None)
        if fresh is not None:
            self.nonces.put(self._origin, fresh)
        error = self._error = self.error_code(status, view, body)
        if status == 401:
            self._check_algs(view)
        if error is None or error not in (USE_DPOP_NONCE, INVALID_DPOP_PROOF):
            return DONE
        learned = self._learn_skew(view)
        if error != USE_DPOP_NONCE:
            return DONE
        # RFC 9449 §8, §9: retry with the nonce the server supplied.
        if fresh is None:
            raise MissingNonceError(
                Reason.MISSING_NONCE,
                "the server asked for a nonce but sent no usable DPoP-Nonce",
                detail={"status": status, "origin": self._origin},
            )
        repeated = self._sent_nonce == fresh and not learned
        if repeated or self._retries >= self.max_nonce_retries:
            raise NonceRetryExhaustedError(
                Reason.NONCE_RETRY_EXHAUSTED,
                "the server keeps asking for a nonce",
                detail={"status": status, "origin": self._origin, "retries": self._retries},
            )
        self._retries += 1
        return Retry(self._headers())

    @staticmethod
    def error_code(status: int, headers: Headers, body: Mapping[str, Any] | None) -> str | None:
        """Return the DPoP-relevant OAuth ``error`` code of a response, or None.

        At an AS: a 400 JSON body ``{"error": ...}`` (RFC 6749 §5.2, RFC 9449 §8).
        At an RS: a 401 whose ``WWW-Authenticate`` holds a ``DPoP`` challenge with an
        ``error`` parameter (RFC 9449 §7.1, §9); schemes compare case-insensitively,
        several challenges per field and several fields are all read, unknown
        parameters are ignored (C-15). A ``Bearer``-only challenge is not acted on (C-17).
        """
        if status == 400 and body is not None:
            code = body.get("error")
            return code if isinstance(code, str) else None
        if status != 401:
            return None
        values = headers.get_all("www-authenticate")
        if not values:
            return None
        try:
            challenges = parse_challenges(values)
        except ChallengeSyntaxError:
            return None
        codes = [c.params.get("error") for c in challenges if c.is_scheme(AUTH_SCHEME)]
        for wanted in (USE_DPOP_NONCE, INVALID_DPOP_PROOF, INVALID_TOKEN):
            if wanted in codes:
                return wanted
        return next((c for c in codes if c is not None), None)

    def _check_algs(self, headers: Headers) -> None:
        """Refuse to go on when the RS's ``algs`` excludes our key's algorithm (C-16)."""
        try:
            challenges = parse_challenges(headers.get_all("www-authenticate"))
        except ChallengeSyntaxError:
            return
        mine = {self.key.alg, _EQUIVALENT_ALGS.get(self.key.alg, self.key.alg)}
        for challenge in challenges:
            algs = challenge.params.get("algs") if challenge.is_scheme(AUTH_SCHEME) else None
            # RFC 9449 §7.1: algs lists the proof algorithms the RS accepts.
            if algs is not None and algs.split() and mine.isdisjoint(algs.split()):
                raise ChallengeError(
                    Reason.UNSUPPORTED_ALG,
                    "the resource server does not accept this key's algorithm",
                    detail={"alg": self.key.alg, "algs": algs, "origin": self._origin},
                )

    def _learn_skew(self, headers: Headers) -> bool:
        """Learn this origin's clock offset from ``Date``; return whether it changed."""
        if not self.learn_clock_skew:
            return False
        server = _server_time(headers)
        if server is None:
            return False
        # Date has one-second resolution; round our side the same way.
        skew = server - math.floor(self.clock())
        old = self.nonces.clock_offset(self._origin)
        if abs(skew) > self.max_clock_offset:
            return False  # implausible: never trust it
        new = float(skew) if abs(skew) > self.skew_threshold else 0.0
        if abs(new - old) <= self.skew_threshold:
            return False
        self.nonces.set_clock_offset(self._origin, new)
        return True
