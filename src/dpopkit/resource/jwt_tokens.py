"""RFC 9068 JWT access tokens, verified with dpopkit's strict JWS layer.

:class:`JWTAccessTokens` / :class:`AsyncJWTAccessTokens` take keys from a static
JWKS or from the ``jwks_uri`` found by RFC 8414 / OpenID Connect discovery,
cache them, and refresh on an unknown ``kid`` at most once per
``min_refresh_interval``. An ``audience`` is required
(``insecure_skip_audience_check=True`` is the loud opt-out).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NamedTuple, cast

from dpopkit.core.algorithms import ALGORITHMS, AlgSpec, PublicKey
from dpopkit.core.jws import (
    CompactJWS,
    JWSError,
    algorithm_spec,
    b64url_decode,
    check_crit,
    json_loads_object,
    numeric_date,
    public_key_from_jwk,
    split_compact,
)
from dpopkit.errors import (
    Reason,
    TemporarilyUnavailableError,
)
from dpopkit.resource._fetch import afetch_document, fetch_document, require_httpx
from dpopkit.resource._shared import (
    bound_jkt,
    check_https,
    discovery_urls,
    granted_scopes,
    has_audience,
    invalid_token,
    required_audiences,
    str_or_none,
    upstream_unavailable,
)
from dpopkit.resource.validation import TokenInfo

if TYPE_CHECKING:
    import httpx

__all__ = ["RFC9068_REQUIRED_CLAIMS", "AsyncJWTAccessTokens", "JWTAccessTokens"]

#: RFC 9068 §2.2: claims every JWT access token carries (checklist X-7).
RFC9068_REQUIRED_CLAIMS: Final = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")


class _Validated(NamedTuple):
    """A token that passed every check of RFC 9068 §4, and when it would pass them again."""

    info: TokenInfo
    not_before: float  # nbf / iat minus the leeway (the token is refused before)
    not_after: float  # exp plus the leeway (refused from this instant on)


@dataclass(slots=True)
class _KeySet:
    """Parsed JWKS: the raw public JWKs, with imported keys cached per (index, alg)."""

    jwks: tuple[Mapping[str, Any], ...] = ()
    fetched_at: float = -math.inf
    imported: dict[tuple[int, str], PublicKey] = field(default_factory=dict)

    @classmethod
    def parse(cls, document: Mapping[str, Any], *, fetched_at: float) -> _KeySet:
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise ValueError("a JWKS has a keys array")
        return cls(tuple(k for k in keys if isinstance(k, dict)), fetched_at)

    def has_kid(self, kid: str) -> bool:
        return any(jwk.get("kid") == kid for jwk in self.jwks)

    def candidates(self, kid: str | None, spec: AlgSpec) -> list[PublicKey]:
        found: list[PublicKey] = []
        for index, jwk in enumerate(self.jwks):
            if kid is not None and jwk.get("kid") != kid:
                continue
            if jwk.get("kty") != spec.kty:
                continue
            cache_key = (index, spec.name)
            key = self.imported.get(cache_key)
            if key is None:
                try:
                    key = public_key_from_jwk(dict(jwk), spec)
                except JWSError:
                    continue  # private, malformed or unfit keys are never used
                self.imported[cache_key] = key
            found.append(key)
        return found


class _JWTRules:
    """The pure part of RFC 9068 §4 validation (no I/O)."""

    def __init__(
        self,
        *,
        issuer: str,
        audiences: tuple[str, ...] | None,
        algorithms: Collection[str],
        leeway: float,
        required_claims: Collection[str],
        accept_typ: Collection[str | None],
        max_token_length: int,
    ) -> None:
        if not isinstance(cast(object, issuer), str) or not issuer:
            raise ValueError("issuer is required")
        algs = frozenset(algorithms)
        if not algs or not algs <= set(ALGORITHMS):
            raise ValueError("algorithms must be asymmetric JWS algorithms dpopkit supports")
        if not math.isfinite(leeway) or leeway < 0:
            raise ValueError("leeway must be a finite number >= 0")
        self.issuer = issuer
        self.audiences = audiences
        self.algorithms = algs
        self.leeway = float(leeway)
        self.required_claims = tuple(required_claims)
        self.accept_typ = frozenset(
            None if t is None else t.lower().removeprefix("application/") for t in accept_typ
        )
        self.max_token_length = max_token_length

    def parse_header(self, token: str) -> tuple[dict[str, Any], AlgSpec, CompactJWS]:
        try:
            parts = split_compact(token, max_length=self.max_token_length)
            header = json_loads_object(b64url_decode(parts.header_b64))
            # RFC 9068 §4: typ is at+jwt or application/at+jwt.
            typ = header.get("typ")
            norm = typ.lower().removeprefix("application/") if isinstance(typ, str) else None
            if (typ is not None and not isinstance(typ, str)) or norm not in self.accept_typ:
                raise JWSError(Reason.BAD_TYP, "typ")
            # RFC 9068 §4, RFC 8725 §3.1: an allow-listed asymmetric alg; never none or HS*.
            spec = algorithm_spec(header.get("alg"), self.algorithms)
            check_crit(header)
        except JWSError as exc:
            raise invalid_token(jws=exc.reason.value) from None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise invalid_token(claim="kid")
        return header, spec, parts

    def verify(self, parts: CompactJWS, spec: AlgSpec, keys: list[PublicKey]) -> dict[str, Any]:
        try:
            signature = b64url_decode(parts.signature_b64)
        except JWSError:
            raise invalid_token(jws="malformed") from None
        # RFC 9068 §4: the signature with one of the issuer's keys.
        if not any(spec.verify(key, signature, parts.signing_input) for key in keys):
            raise invalid_token(jws="bad_signature")
        try:
            return json_loads_object(b64url_decode(parts.payload_b64))
        except JWSError:
            raise invalid_token(jws="malformed") from None

    def not_before(self, claims: Mapping[str, Any]) -> float:
        """The first instant :meth:`claims` accepts these (already accepted) claims."""
        start = -math.inf
        for name in ("nbf", "iat"):
            value = numeric_date(claims.get(name))
            if value is not None:
                start = max(start, value - self.leeway)
        return start

    def claims(self, claims: dict[str, Any], *, now: float) -> TokenInfo:
        # RFC 9068 §2.2: required claims.
        for name in self.required_claims:
            if name not in claims:
                raise invalid_token(claim=name, missing=True)
        # RFC 9068 §4: iss exactly matches.
        if claims.get("iss") != self.issuer:
            raise invalid_token(claim="iss")
        # RFC 9068 §4: aud contains this resource (unless the check was turned off).
        if self.audiences is not None and not has_audience(claims, self.audiences):
            raise invalid_token(claim="aud")
        # RFC 9068 §4, RFC 7519 §4.1.4: now < exp (with leeway).
        exp = numeric_date(claims.get("exp"))
        if "exp" in claims and exp is None:
            raise invalid_token(claim="exp")
        if exp is not None and now >= exp + self.leeway:
            raise invalid_token(Reason.TOKEN_EXPIRED, claim="exp")
        # RFC 7519 §4.1.5: nbf.
        if "nbf" in claims:
            nbf = numeric_date(claims["nbf"])
            if nbf is None or now < nbf - self.leeway:
                raise invalid_token(claim="nbf")
        # RFC 7519 §4.1.6: iat is a number and not in the future.
        if "iat" in claims:
            iat = numeric_date(claims["iat"])
            if iat is None or iat > now + self.leeway:
                raise invalid_token(claim="iat")
        for name in ("sub", "client_id", "jti", "scope"):
            if name in claims and not isinstance(claims[name], str):
                raise invalid_token(claim=name)
        return TokenInfo(
            claims=MappingProxyType(claims),
            jkt=bound_jkt(claims),
            scopes=granted_scopes(claims),
            sub=str_or_none(claims.get("sub")),
            client_id=str_or_none(claims.get("client_id")),
            exp=exp,
        )


class _JWTBase:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str | Sequence[str] | None,
        insecure_skip_audience_check: bool,
        jwks: Mapping[str, Any] | None,
        jwks_uri: str | None,
        algorithms: Collection[str],
        leeway: float,
        required_claims: Collection[str],
        accept_typ: Collection[str | None],
        max_token_length: int,
        cache_ttl: float,
        min_refresh_interval: float,
        timeout: float,
        cache_size: int,
        allow_insecure_http: bool,
    ) -> None:
        self._rules = _JWTRules(
            issuer=issuer,
            audiences=required_audiences(audience, insecure_skip_audience_check),
            algorithms=algorithms,
            leeway=leeway,
            required_claims=required_claims,
            accept_typ=accept_typ,
            max_token_length=max_token_length,
        )
        if jwks is not None and jwks_uri is not None:
            raise ValueError("give jwks or jwks_uri, not both")
        if timeout <= 0 or min_refresh_interval < 0 or cache_ttl <= 0:
            raise ValueError("timeout and cache_ttl must be > 0, min_refresh_interval >= 0")
        self._static = jwks is not None
        if not self._static:
            require_httpx(type(self).__name__)
        self._keys = _KeySet.parse(jwks, fetched_at=math.inf) if jwks is not None else _KeySet()
        self._allow_http = allow_insecure_http
        if jwks_uri is not None:
            check_https(jwks_uri, allow_insecure_http, "jwks_uri")
        elif jwks is None:
            check_https(issuer, allow_insecure_http, "issuer")
        self._jwks_uri = jwks_uri
        self._cache_ttl = cache_ttl
        self._min_refresh = min_refresh_interval
        self._last_attempt = -math.inf
        self._timeout = timeout
        #: how many times keys were fetched (for operators and tests)
        self.fetch_count = 0
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._cache_size = cache_size
        self._validated: OrderedDict[str, _Validated] = OrderedDict()
        self._cache_lock = threading.Lock()
        #: bumped whenever keys are stored: a validation that began under other keys
        #: is not remembered
        self._generation = 0

    @property
    def issuer(self) -> str:
        """The expected ``iss``."""
        return self._rules.issuer

    @property
    def cached_tokens(self) -> int:
        """How many validated tokens are remembered now (at most ``cache_size``)."""
        return len(self._validated)

    def _needs_fetch(self, kid: str | None, now: float) -> bool:
        """Decide whether to fetch keys now (rate-limited; a flood of unknown kids fetches once)."""
        if self._static:
            return False
        if not self._keys.jwks:
            # Nothing cached yet: try, but still not more often than the interval after a failure.
            return now - self._last_attempt >= min(self._min_refresh, 1.0)
        stale = now - self._keys.fetched_at >= self._cache_ttl
        unknown = kid is not None and not self._keys.has_kid(kid)
        return (stale or unknown) and now - self._last_attempt >= self._min_refresh

    def _metadata_jwks_uri(self, metadata: Mapping[str, Any]) -> str:
        # RFC 8414 §3.3: the metadata must name the configured issuer.
        if metadata.get("issuer") != self._rules.issuer:
            raise upstream_unavailable("discovery")
        uri = metadata.get("jwks_uri")
        if not isinstance(uri, str):
            raise upstream_unavailable("discovery")
        try:
            return check_https(uri, self._allow_http, "jwks_uri")
        except ValueError:
            raise upstream_unavailable("discovery") from None

    def _store(self, document: Mapping[str, Any], now: float) -> None:
        try:
            keys = _KeySet.parse(document, fetched_at=now)
        except ValueError:
            raise upstream_unavailable("jwks") from None
        self._keys = keys
        self.fetch_count += 1
        with self._cache_lock:
            # A key may have been withdrawn: every token is verified again (RFC 9068 §4).
            self._generation += 1
            self._validated.clear()

    def _cached(self, token: str, now: float) -> TokenInfo | None:
        """The validation of this exact token, when a full one now would give the same.

        Keyed by the exact token string: a token that differs in any character (another
        signature over the same claims, say) is a different key and is verified in full.
        A hit needs ``now`` inside the window a full validation accepts (``nbf``/``iat``
        to ``exp``, with the leeway) and keys that are not due for a refresh.
        """
        entry = self._validated.get(token)
        if entry is None:
            return None
        if entry.not_before <= now < entry.not_after and not (
            not self._static and self._needs_fetch(None, now)
        ):
            return entry.info
        if now >= entry.not_after:
            with self._cache_lock:
                if self._validated.get(token) is entry:
                    del self._validated[token]
        return None

    def _remember(self, token: str, info: TokenInfo, not_before: float, generation: int) -> None:
        if not self._cache_size or info.exp is None:
            return
        entry = _Validated(info, not_before, info.exp + self._rules.leeway)
        with self._cache_lock:
            if generation != self._generation:
                return  # the keys changed while this token was being verified
            validated = self._validated
            if token not in validated:
                while len(validated) >= self._cache_size:
                    validated.popitem(last=False)
            validated[token] = entry

    def _check(
        self, token: str, parts: CompactJWS, spec: AlgSpec, kid: str | None, now: float
    ) -> TokenInfo:
        generation = self._generation  # read before the keys (see _store)
        key_set = self._keys
        if not key_set.jwks:
            raise upstream_unavailable("jwks")
        keys = key_set.candidates(kid, spec)
        if not keys:
            raise invalid_token(kid_unknown=True)
        claims = self._rules.verify(parts, spec, keys)
        info = self._rules.claims(claims, now=now)
        self._remember(token, info, self._rules.not_before(claims), generation)
        return info


class JWTAccessTokens(_JWTBase):
    """Validate RFC 9068 JWT access tokens (synchronous; keys fetched with httpx).

    RFC 9068 §4 (checklist X-6..X-8): ``typ`` ``at+jwt`` (or ``application/at+jwt``),
    an allow-listed asymmetric ``alg`` (RS256 included), the signature by one of
    the issuer's keys, ``iss`` exact, ``aud`` containing ``audience``, ``exp``/``nbf``
    with ``leeway``, the required claims, and ``cnf`` with one key (RFC 7800 §3.1).

    Args:
        issuer: the exact ``iss`` value; also where discovery starts.
        audience: this resource's identifier(s); one must be in ``aud``. Required.
        insecure_skip_audience_check: accept any ``aud`` instead (warns; not with
            ``audience``). Only for an issuer that mints tokens for this resource alone.
        jwks: a static JWK Set (no fetching).
        jwks_uri: where the JWK Set lives (skips discovery).
        algorithms: accepted token algorithms.
        leeway: seconds of clock tolerance for ``exp``, ``nbf``, ``iat``.
        required_claims: claims that must be present (RFC 9068 §2.2 by default).
        accept_typ: accepted ``typ`` values (``application/`` prefix optional); add
            ``"jwt"`` or None for issuers that do not follow RFC 9068 §2.1.
        cache_ttl: seconds before fetched keys are refreshed.
        cache_size: validated tokens remembered, by their exact text, until their ``exp``
            (plus ``leeway``), oldest dropped first (0 turns it off); the cache is emptied
            whenever keys are fetched, and not used while keys are due for a refresh.
            Holds at most ``cache_size`` tokens (of up to ``max_token_length`` each).
        min_refresh_interval: at most one fetch per this many seconds, however many
            unknown ``kid`` values arrive.
        timeout: seconds for each HTTP exchange (a total deadline, not per read).
        allow_insecure_http: permit ``http://`` issuer and JWKS URLs (tests on loopback).
        http_client: an ``httpx.Client`` to fetch with (default: a fresh one per fetch
            that follows no redirects). Documents are streamed and abandoned past 512 KiB.

    Raises:
        ServerConfigurationError: at construction, no ``audience`` (and no opt-out),
            or another unusable setting (it is a ``ValueError``).

    Raises (from :meth:`validate`):
        InvalidTokenError: TOKEN_INVALID or TOKEN_EXPIRED (``detail`` names the claim).
        TemporarilyUnavailableError: no keys and the key source cannot be reached.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | Sequence[str] | None = None,
        insecure_skip_audience_check: bool = False,
        jwks: Mapping[str, Any] | None = None,
        jwks_uri: str | None = None,
        algorithms: Collection[str] = ALGORITHMS,
        leeway: float = 30.0,
        required_claims: Collection[str] = RFC9068_REQUIRED_CLAIMS,
        accept_typ: Collection[str | None] = ("at+jwt",),
        max_token_length: int = 16384,
        cache_ttl: float = 3600.0,
        min_refresh_interval: float = 30.0,
        timeout: float = 5.0,
        cache_size: int = 4096,
        allow_insecure_http: bool = False,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            issuer=issuer,
            audience=audience,
            insecure_skip_audience_check=insecure_skip_audience_check,
            jwks=jwks,
            jwks_uri=jwks_uri,
            algorithms=algorithms,
            leeway=leeway,
            required_claims=required_claims,
            accept_typ=accept_typ,
            max_token_length=max_token_length,
            cache_ttl=cache_ttl,
            min_refresh_interval=min_refresh_interval,
            timeout=timeout,
            cache_size=cache_size,
            allow_insecure_http=allow_insecure_http,
        )
        self._client = http_client
        self._lock = threading.Lock()

    def _get(self, url: str, what: str) -> dict[str, Any]:
        return fetch_document(self._client, "GET", url, what=what, seconds=self._timeout)

    def _fetch(self, now: float) -> None:
        self._last_attempt = now
        uri = self._jwks_uri
        if uri is None:
            last: Exception | None = None
            for url in discovery_urls(self._rules.issuer):
                try:
                    uri = self._metadata_jwks_uri(self._get(url, "discovery"))
                    break
                except TemporarilyUnavailableError as exc:
                    last = exc
            if uri is None:
                raise last or upstream_unavailable("discovery")
            self._jwks_uri = uri
        self._store(self._get(uri, "jwks"), now)

    def refresh(self, *, now: float) -> None:
        """Fetch the keys now (e.g. at start-up), ignoring the rate limit.

        Raises:
            TemporarilyUnavailableError: discovery or the JWKS cannot be fetched.
        """
        with self._lock:
            self._fetch(now)

    def validate(self, token: str, *, now: float) -> TokenInfo:
        """Validate ``token`` (RFC 9068 §4) and return its :class:`TokenInfo`."""
        hit = self._cached(token, now)
        if hit is not None:
            return hit
        header, spec, parts = self._rules.parse_header(token)
        kid = str_or_none(header.get("kid"))
        if self._needs_fetch(kid, now):
            with self._lock:
                if self._needs_fetch(kid, now):
                    try:
                        self._fetch(now)
                    except TemporarilyUnavailableError:
                        if not self._keys.jwks:
                            raise
                        # Keep serving the keys we have; the outage shows in fetch metrics.
        return self._check(token, parts, spec, kid, now)


class AsyncJWTAccessTokens(_JWTBase):
    """:class:`JWTAccessTokens` for asyncio and trio (keys fetched with ``httpx.AsyncClient``).

    Concurrent requests that need a refresh wait for one fetch instead of each
    starting their own.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | Sequence[str] | None = None,
        insecure_skip_audience_check: bool = False,
        jwks: Mapping[str, Any] | None = None,
        jwks_uri: str | None = None,
        algorithms: Collection[str] = ALGORITHMS,
        leeway: float = 30.0,
        required_claims: Collection[str] = RFC9068_REQUIRED_CLAIMS,
        accept_typ: Collection[str | None] = ("at+jwt",),
        max_token_length: int = 16384,
        cache_ttl: float = 3600.0,
        min_refresh_interval: float = 30.0,
        timeout: float = 5.0,
        cache_size: int = 4096,
        allow_insecure_http: bool = False,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            issuer=issuer,
            audience=audience,
            insecure_skip_audience_check=insecure_skip_audience_check,
            jwks=jwks,
            jwks_uri=jwks_uri,
            algorithms=algorithms,
            leeway=leeway,
            required_claims=required_claims,
            accept_typ=accept_typ,
            max_token_length=max_token_length,
            cache_ttl=cache_ttl,
            min_refresh_interval=min_refresh_interval,
            timeout=timeout,
            cache_size=cache_size,
            allow_insecure_http=allow_insecure_http,
        )
        self._client = http_client
        self._inflight: Any = None  # an anyio.Event while a fetch runs

    async def _get(self, url: str, what: str) -> dict[str, Any]:
        return await afetch_document(self._client, "GET", url, what=what, seconds=self._timeout)

    async def _fetch(self, now: float) -> None:
        self._last_attempt = now
        uri = self._jwks_uri
        if uri is None:
            last: Exception | None = None
            for url in discovery_urls(self._rules.issuer):
                try:
                    uri = self._metadata_jwks_uri(await self._get(url, "discovery"))
                    break
                except TemporarilyUnavailableError as exc:
                    last = exc
            if uri is None:
                raise last or upstream_unavailable("discovery")
            self._jwks_uri = uri
        self._store(await self._get(uri, "jwks"), now)

    async def _fetch_once(self, now: float) -> None:
        import anyio

        if self._inflight is not None:
            await self._inflight.wait()
            return
        event = anyio.Event()
        self._inflight = event
        try:
            await self._fetch(now)
        finally:
            self._inflight = None
            event.set()

    async def refresh(self, *, now: float) -> None:
        """Fetch the keys now, ignoring the rate limit.

        Raises:
            TemporarilyUnavailableError: discovery or the JWKS cannot be fetched.
        """
        await self._fetch_once(now)

    async def validate(self, token: str, *, now: float) -> TokenInfo:
        """Validate ``token`` (RFC 9068 §4) and return its :class:`TokenInfo`."""
        hit = self._cached(token, now)
        if hit is not None:
            return hit
        header, spec, parts = self._rules.parse_header(token)
        kid = str_or_none(header.get("kid"))
        if self._inflight is not None or self._needs_fetch(kid, now):
            try:
                await self._fetch_once(now)
            except TemporarilyUnavailableError:
                if not self._keys.jwks:
                    raise
        return self._check(token, parts, spec, kid, now)
