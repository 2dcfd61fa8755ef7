"""Access-token validation for the resource server, behind one small protocol.

A validator turns the presented access token into a :class:`TokenInfo` (claims,
the ``cnf.jkt`` the token is bound to or None, scopes, ``sub``, ``client_id``,
``exp``) or raises :class:`~dpopkit.errors.InvalidTokenError`. When the key
source or the introspection endpoint cannot be reached it raises
:class:`~dpopkit.errors.TemporarilyUnavailableError` (503, fail closed).

* :class:`JWTAccessTokens` / :class:`AsyncJWTAccessTokens`: RFC 9068 JWT access
  tokens verified with our strict JWS layer; keys from a static JWKS or from the
  ``jwks_uri`` found by RFC 8414 / OpenID Connect discovery, cached, refreshed on
  an unknown ``kid`` at most once per ``min_refresh_interval``.
* :class:`IntrospectionTokens` / :class:`AsyncIntrospectionTokens`: RFC 7662 with
  ``client_secret_basic``, results cached until ``min(exp, now + cache_ttl)``.
* Any callable ``(token) -> TokenInfo`` through :class:`CallableTokens`.

Both families require an ``audience`` (``insecure_skip_audience_check=True`` is the
loud opt-out), and every document they fetch (discovery, JWKS, introspection) is
streamed and abandoned past 512 KiB, by one helper for all three.

The guard decides what the binding means (RFC 9449 §7.1, §7.2); validators only
report it (checklist RS-1).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import re
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol, cast, runtime_checkable
from urllib.parse import quote, urlsplit

from dpopkit.core.algorithms import ALGORITHMS, AlgSpec, PublicKey
from dpopkit.core.jws import (
    CompactJWS,
    JWSError,
    algorithm_spec,
    b64url_decode,
    check_crit,
    json_loads_object,
    public_key_from_jwk,
    split_compact,
)
from dpopkit.errors import (
    InvalidTokenError,
    Reason,
    SecurityWarning,
    ServerConfigurationError,
    TemporarilyUnavailableError,
    requires_extra,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import httpx

__all__ = [
    "RFC9068_REQUIRED_CLAIMS",
    "AsyncIntrospectionTokens",
    "AsyncJWTAccessTokens",
    "AsyncTokenValidator",
    "CallableTokens",
    "IntrospectionTokens",
    "JWTAccessTokens",
    "TokenInfo",
    "TokenValidator",
]

#: RFC 9068 §2.2: claims every JWT access token carries (checklist X-7).
RFC9068_REQUIRED_CLAIMS: Final = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")
_JKT_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url SHA-256, RFC 9449 §6.1
#: Confirmation members naming a proof-of-possession key (RFC 7800 §3, RFC 8705 §3.1, RFC 9449).
_CNF_KEY_MEMBERS = frozenset({"jwk", "jwe", "jku", "kid", "jkt", "x5t#S256"})
_MAX_DOCUMENT = 512 * 1024  # bytes of a JWKS, metadata or introspection answer


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenInfo:
    """What a validated access token says.

    Attributes:
        claims: the token's claims (JWT payload or introspection response).
        jkt: the RFC 7638 thumbprint the token is bound to (``cnf.jkt``), or None
            for an unbound (Bearer) token (RFC 9449 §6).
        scopes: the granted scopes (``scope`` string, or ``scp`` list).
        sub: the subject, if any.
        client_id: the client the token was issued to, if known.
        exp: the expiry time, if known.
    """

    claims: Mapping[str, Any] = field(default_factory=dict)
    jkt: str | None = None
    scopes: frozenset[str] = frozenset()
    sub: str | None = None
    client_id: str | None = None
    exp: float | None = None


@runtime_checkable
class TokenValidator(Protocol):
    """Validates an access token synchronously."""

    def validate(self, token: str, *, now: float) -> TokenInfo:
        """Return the token's :class:`TokenInfo` or raise a :class:`~dpopkit.DPoPError`."""
        ...


@runtime_checkable
class AsyncTokenValidator(Protocol):
    """Validates an access token asynchronously."""

    async def validate(self, token: str, *, now: float) -> TokenInfo:
        """Return the token's :class:`TokenInfo` or raise a :class:`~dpopkit.DPoPError`."""
        ...


def _require_httpx(needed_by: str) -> None:
    """Fail at construction, not at the first request, when httpx is not installed."""
    with requires_extra("httpx", needed_by=needed_by):
        import httpx  # noqa: F401


class CallableTokens:
    """Wrap a user function ``(token) -> TokenInfo`` as a :class:`TokenValidator`.

    The function raises :class:`~dpopkit.errors.InvalidTokenError` for a bad token.
    """

    def __init__(self, func: Callable[[str], TokenInfo]) -> None:
        self._func = func

    def validate(self, token: str, *, now: float) -> TokenInfo:
        """Call the wrapped function."""
        del now
        info = self._func(token)
        if not isinstance(info, TokenInfo):
            raise TypeError("a token validator must return a TokenInfo")
        return info


# --- shared helpers -----------------------------------------------------------------------


def _invalid(reason: Reason = Reason.TOKEN_INVALID, **detail: object) -> InvalidTokenError:
    return InvalidTokenError(reason, "the access token is not valid", detail=detail)


def _unavailable(what: str, exc: BaseException | None = None) -> TemporarilyUnavailableError:
    detail: dict[str, object] = {"source": what}
    if exc is not None:
        detail["error"] = type(exc).__name__
    return TemporarilyUnavailableError(
        Reason.UPSTREAM_UNAVAILABLE, "the token issuer cannot be reached", detail=detail
    )


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    scp = claims.get("scp")  # Okta / Azure AD spelling: a list or a string
    if isinstance(scp, str):
        return frozenset(scp.split())
    if isinstance(scp, list) and all(isinstance(item, str) for item in scp):
        return frozenset(cast(list[str], scp))
    return frozenset()


def _bound_jkt(claims: Mapping[str, Any]) -> str | None:
    """Read ``cnf.jkt`` (RFC 9449 §6.1, RFC 7800 §3.1: one confirmation key).

    A ``cnf`` naming a key we cannot check (``x5t#S256``, ``jwk``, ...) is refused:
    treating such a token as unbound would be a downgrade.
    """
    if "cnf" not in claims:
        return None
    cnf = claims["cnf"]
    if not isinstance(cnf, dict):
        raise _invalid(claim="cnf")
    # RFC 7800 §3.1: a single proof-of-possession key; unknown members are ignored.
    methods = _CNF_KEY_MEMBERS.intersection(cnf)
    if methods != {"jkt"}:
        raise _invalid(claim="cnf", methods=sorted(methods))
    jkt = cnf["jkt"]
    # RFC 9449 §6.1: base64url SHA-256 thumbprint; other hashes are refused (SEC-17).
    if not isinstance(jkt, str) or not _JKT_RE.fullmatch(jkt):
        raise _invalid(claim="cnf.jkt")
    return jkt


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _check_https(url: str, allow_insecure_http: bool, what: str) -> str:
    parts = urlsplit(url)
    secure = parts.scheme == "https" or (parts.scheme == "http" and allow_insecure_http)
    if secure and parts.hostname:
        return url
    raise ValueError(f"{what} must be an https URL (allow_insecure_http=True for loopback tests)")


#: What the RS asks for when it fetches a document: JSON, uncompressed (the cap counts the
#: bytes on the wire; a compressed answer could expand a thousandfold in one chunk).
_FETCH_HEADERS: Final = {"Accept": "application/json", "Accept-Encoding": "identity"}


class _CappedBody:
    """One fetched document, read chunk by chunk and abandoned past the cap or the deadline.

    Shared by the synchronous and asynchronous fetch helpers: the status, a declared
    ``Content-Length``, the content coding, and then every chunk are checked before
    the next is read, so a huge or endless answer costs at most the cap plus one chunk.
    """

    def __init__(self, response: httpx.Response, what: str, timeout: float) -> None:
        self.what = what
        if response.status_code != 200:
            raise _unavailable(what)
        coding = response.headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raise _unavailable(what)  # we asked for identity; no decompression bombs
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > _MAX_DOCUMENT:
            raise _unavailable(what)
        self.body = bytearray()
        # A total deadline: the client's timeout bounds each read, not a slow drip.
        self.deadline = time.monotonic() + timeout

    def add(self, chunk: bytes) -> None:
        self.body += chunk
        if len(self.body) > _MAX_DOCUMENT or time.monotonic() > self.deadline:
            raise _unavailable(self.what)

    def document(self) -> dict[str, Any]:
        try:
            return json_loads_object(bytes(self.body))
        except JWSError:
            raise _unavailable(self.what) from None


def _fetch_document(
    client: httpx.Client | None,
    method: str,
    url: str,
    *,
    what: str,
    seconds: float,
    data: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Fetch a JSON document (JWKS, discovery, introspection), streamed and capped.

    Raises:
        TemporarilyUnavailableError: unreachable, not 200, compressed, larger than the
            cap, slower than ``seconds`` in total, or not a JSON object.
    """
    import httpx

    all_headers = {**_FETCH_HEADERS, **(headers or {})}
    try:
        with (
            _client_for(client, seconds) as http,
            http.stream(method, url, data=data, headers=all_headers, timeout=seconds) as response,
        ):
            body = _CappedBody(response, what, seconds)
            for chunk in response.iter_raw():
                body.add(chunk)
    except httpx.HTTPError as exc:
        raise _unavailable(what, exc) from None
    return body.document()


async def _afetch_document(
    client: httpx.AsyncClient | None,
    method: str,
    url: str,
    *,
    what: str,
    seconds: float,
    data: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The asynchronous :func:`_fetch_document` (same checks, same cap)."""
    import httpx

    all_headers = {**_FETCH_HEADERS, **(headers or {})}
    try:
        async with (
            _async_client_for(client, seconds) as http,
            http.stream(method, url, data=data, headers=all_headers, timeout=seconds) as response,
        ):
            body = _CappedBody(response, what, seconds)
            async for chunk in response.aiter_raw():
                body.add(chunk)
    except httpx.HTTPError as exc:
        raise _unavailable(what, exc) from None
    return body.document()


@contextlib.contextmanager
def _client_for(client: httpx.Client | None, seconds: float) -> Iterator[httpx.Client]:
    """The caller's client, or a fresh one that follows no redirects (closed afterwards)."""
    if client is not None:
        yield client
        return
    import httpx

    with httpx.Client(timeout=seconds, follow_redirects=False) as own:
        yield own


@contextlib.asynccontextmanager
async def _async_client_for(
    client: httpx.AsyncClient | None, seconds: float
) -> AsyncIterator[httpx.AsyncClient]:
    """The caller's async client, or a fresh one that follows no redirects."""
    if client is not None:
        yield client
        return
    import httpx

    async with httpx.AsyncClient(timeout=seconds, follow_redirects=False) as own:
        yield own


def _audiences(audience: str | Sequence[str] | None, skip: bool) -> tuple[str, ...] | None:
    """The audiences a validator requires (RFC 9068 §4, RFC 7662 §2.2, RFC 8707 §2).

    Both validator families require one: a token minted for another resource of the
    same AS must not work here. ``insecure_skip_audience_check=True`` is the loud
    opt-out (a ``SecurityWarning``); it cannot be combined with an audience.

    Raises:
        ServerConfigurationError: no audience and no opt-out, both, or an empty value.
    """
    if skip:
        if audience is not None:
            raise ServerConfigurationError(
                description="give audience= or insecure_skip_audience_check=True, not both"
            )
        warnings.warn(
            "insecure_skip_audience_check=True: tokens issued for any resource of this"
            " issuer are accepted here (RFC 9068 §4, RFC 8707)",
            SecurityWarning,
            stacklevel=4,
        )
        return None
    if audience is None:
        raise ServerConfigurationError(
            description=(
                "audience= is required: this resource's identifier as the AS writes it in aud"
                " (or insecure_skip_audience_check=True, not recommended)"
            )
        )
    audiences = (audience,) if isinstance(audience, str) else tuple(audience)
    if not audiences or not all(isinstance(cast(object, a), str) and a for a in audiences):
        raise ServerConfigurationError(
            description="audience must be a non-empty string or list of strings"
        )
    return audiences


def _has_audience(claims: Mapping[str, Any], audiences: tuple[str, ...]) -> bool:
    """Whether ``aud`` (a string or a list of strings) names one of ``audiences``."""
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    return any(a in auds for a in audiences)


def _discovery_urls(issuer: str) -> list[str]:
    """RFC 8414 §3.1 (well-known inserted before the path), then OIDC Discovery §4."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return [
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}{path}/.well-known/openid-configuration",
    ]


# --- JWT access tokens (RFC 9068) ---------------------------------------------------------


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
            raise _invalid(jws=exc.reason.value) from None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid(claim="kid")
        return header, spec, parts

    def verify(self, parts: CompactJWS, spec: AlgSpec, keys: list[PublicKey]) -> dict[str, Any]:
        try:
            signature = b64url_decode(parts.signature_b64)
        except JWSError:
            raise _invalid(jws="malformed") from None
        # RFC 9068 §4: the signature with one of the issuer's keys.
        if not any(spec.verify(key, signature, parts.signing_input) for key in keys):
            raise _invalid(jws="bad_signature")
        try:
            return json_loads_object(b64url_decode(parts.payload_b64))
        except JWSError:
            raise _invalid(jws="malformed") from None

    def claims(self, claims: dict[str, Any], *, now: float) -> TokenInfo:
        # RFC 9068 §2.2: required claims.
        for name in self.required_claims:
            if name not in claims:
                raise _invalid(claim=name, missing=True)
        # RFC 9068 §4: iss exactly matches.
        if claims.get("iss") != self.issuer:
            raise _invalid(claim="iss")
        # RFC 9068 §4: aud contains this resource (unless the check was turned off).
        if self.audiences is not None and not _has_audience(claims, self.audiences):
            raise _invalid(claim="aud")
        # RFC 9068 §4, RFC 7519 §4.1.4: now < exp (with leeway).
        exp = _number(claims.get("exp"))
        if "exp" in claims and exp is None:
            raise _invalid(claim="exp")
        if exp is not None and now >= exp + self.leeway:
            raise _invalid(Reason.TOKEN_EXPIRED, claim="exp")
        # RFC 7519 §4.1.5: nbf.
        if "nbf" in claims:
            nbf = _number(claims["nbf"])
            if nbf is None or now < nbf - self.leeway:
                raise _invalid(claim="nbf")
        # RFC 7519 §4.1.6: iat is a number and not in the future.
        if "iat" in claims:
            iat = _number(claims["iat"])
            if iat is None or iat > now + self.leeway:
                raise _invalid(claim="iat")
        for name in ("sub", "client_id", "jti", "scope"):
            if name in claims and not isinstance(claims[name], str):
                raise _invalid(claim=name)
        return TokenInfo(
            claims=MappingProxyType(claims),
            jkt=_bound_jkt(claims),
            scopes=_scopes(claims),
            sub=_str_or_none(claims.get("sub")),
            client_id=_str_or_none(claims.get("client_id")),
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
            audiences=_audiences(audience, insecure_skip_audience_check),
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
            _require_httpx(type(self).__name__)
        self._keys = _KeySet.parse(jwks, fetched_at=math.inf) if jwks is not None else _KeySet()
        self._allow_http = allow_insecure_http
        if jwks_uri is not None:
            _check_https(jwks_uri, allow_insecure_http, "jwks_uri")
        elif jwks is None:
            _check_https(issuer, allow_insecure_http, "issuer")
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
        self._validated: dict[bytes, TokenInfo] = {}
        self._cache_lock = threading.Lock()

    @property
    def issuer(self) -> str:
        """The expected ``iss``."""
        return self._rules.issuer

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
            raise _unavailable("discovery")
        uri = metadata.get("jwks_uri")
        if not isinstance(uri, str):
            raise _unavailable("discovery")
        try:
            return _check_https(uri, self._allow_http, "jwks_uri")
        except ValueError:
            raise _unavailable("discovery") from None

    def _store(self, document: Mapping[str, Any], now: float) -> None:
        try:
            self._keys = _KeySet.parse(document, fetched_at=now)
        except ValueError:
            raise _unavailable("jwks") from None
        self.fetch_count += 1
        with self._cache_lock:
            self._validated.clear()  # a key may have been withdrawn: verify again

    def _cached(self, token: str, now: float) -> tuple[bytes, TokenInfo | None]:
        """A token whose signature and claims were already verified, while unexpired."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        info = self._validated.get(digest)
        if info is None:
            return digest, None
        if info.exp is None or now >= info.exp + self._rules.leeway:
            with self._cache_lock:
                self._validated.pop(digest, None)
            return digest, None
        return digest, info

    def _remember(self, digest: bytes, info: TokenInfo) -> None:
        if not self._cache_size or info.exp is None:
            return
        with self._cache_lock:
            while len(self._validated) >= self._cache_size:
                del self._validated[next(iter(self._validated))]
            self._validated[digest] = info

    def _check(
        self, parts: CompactJWS, spec: AlgSpec, kid: str | None, now: float, digest: bytes
    ) -> TokenInfo:
        if not self._keys.jwks:
            raise _unavailable("jwks")
        keys = self._keys.candidates(kid, spec)
        if not keys:
            raise _invalid(kid_unknown=True)
        info = self._rules.claims(self._rules.verify(parts, spec, keys), now=now)
        self._remember(digest, info)
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
        cache_size: validated tokens remembered until their ``exp`` (0 turns it off);
            the cache is emptied whenever keys are fetched.
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
        return _fetch_document(self._client, "GET", url, what=what, seconds=self._timeout)

    def _fetch(self, now: float) -> None:
        self._last_attempt = now
        uri = self._jwks_uri
        if uri is None:
            last: Exception | None = None
            for url in _discovery_urls(self._rules.issuer):
                try:
                    uri = self._metadata_jwks_uri(self._get(url, "discovery"))
                    break
                except TemporarilyUnavailableError as exc:
                    last = exc
            if uri is None:
                raise last or _unavailable("discovery")
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
        digest, hit = self._cached(token, now)
        if hit is not None:
            return hit
        header, spec, parts = self._rules.parse_header(token)
        kid = _str_or_none(header.get("kid"))
        if self._needs_fetch(kid, now):
            with self._lock:
                if self._needs_fetch(kid, now):
                    try:
                        self._fetch(now)
                    except TemporarilyUnavailableError:
                        if not self._keys.jwks:
                            raise
                        # Keep serving the keys we have; the outage shows in fetch metrics.
        return self._check(parts, spec, kid, now, digest)


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
        return await _afetch_document(self._client, "GET", url, what=what, seconds=self._timeout)

    async def _fetch(self, now: float) -> None:
        self._last_attempt = now
        uri = self._jwks_uri
        if uri is None:
            last: Exception | None = None
            for url in _discovery_urls(self._rules.issuer):
                try:
                    uri = self._metadata_jwks_uri(await self._get(url, "discovery"))
                    break
                except TemporarilyUnavailableError as exc:
                    last = exc
            if uri is None:
                raise last or _unavailable("discovery")
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
        digest, hit = self._cached(token, now)
        if hit is not None:
            return hit
        digest, hit = self._cached(token, now)
        if hit is not None:
            return hit
        header, spec, parts = self._rules.parse_header(token)
        kid = _str_or_none(header.get("kid"))
        if self._inflight is not None or self._needs_fetch(kid, now):
            try:
                await self._fetch_once(now)
            except TemporarilyUnavailableError:
                if not self._keys.jwks:
                    raise
        return self._check(parts, spec, kid, now, digest)


# --- introspection (RFC 7662) -------------------------------------------------------------


class _IntrospectionBase:
    def __init__(
        self,
        *,
        endpoint: str,
        client_id: str,
        client_secret: str,
        issuer: str | None,
        audience: str | Sequence[str] | None,
        insecure_skip_audience_check: bool,
        cache_ttl: float,
        max_cache_entries: int,
        timeout: float,
        allow_insecure_http: bool,
    ) -> None:
        _require_httpx(type(self).__name__)
        self._endpoint = _check_https(endpoint, allow_insecure_http, "endpoint")
        if not client_id:
            raise ValueError("client_id is required")
        # RFC 6749 §2.3.1: form-urlencode id and secret before Basic encoding.
        raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
        self._auth = "Basic " + base64.b64encode(raw.encode()).decode("ascii")
        self._issuer = issuer
        self._audiences = _audiences(audience, insecure_skip_audience_check)
        if cache_ttl < 0 or timeout <= 0 or max_cache_entries < 0:
            raise ValueError("cache_ttl >= 0, timeout > 0 and max_cache_entries >= 0")
        self._ttl = cache_ttl
        self._timeout = timeout
        self._max = max_cache_entries
        self._cache: OrderedDict[bytes, tuple[float, TokenInfo]] = OrderedDict()
        self._lock = threading.Lock()
        #: how many introspection calls were made (for operators and tests)
        self.call_count = 0

    def _form(self, token: str) -> dict[str, str]:
        return {"token": token, "token_type_hint": "access_token"}

    @staticmethod
    def _cache_key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8")).digest()

    def _cached(self, key: bytes, now: float) -> TokenInfo | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            if hit[0] <= now:
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return hit[1]

    def _interpret(self, body: Mapping[str, Any], key: bytes, now: float) -> TokenInfo:
        self.call_count += 1
        # RFC 7662 §2.2: active is required; anything but true is inactive.
        if body.get("active") is not True:
            raise _invalid(Reason.TOKEN_INACTIVE)
        exp = _number(body.get("exp"))
        if "exp" in body and exp is None:
            raise _invalid(claim="exp")
        if exp is not None and now >= exp:
            raise _invalid(Reason.TOKEN_EXPIRED, claim="exp")
        if self._issuer is not None and body.get("iss") != self._issuer:
            raise _invalid(claim="iss")
        # RFC 7662 §2.2, RFC 9068 §4: aud names this resource (unless turned off).
        if self._audiences is not None and not _has_audience(body, self._audiences):
            raise _invalid(claim="aud")
        jkt = _bound_jkt(body)
        # RFC 9449 §6.2 (RS-24): token_type, when present, agrees with the binding.
        token_type = body.get("token_type")
        if token_type is not None:
            is_dpop = isinstance(token_type, str) and token_type.lower() == "dpop"
            if is_dpop != (jkt is not None):
                raise _invalid(claim="token_type")
        info = TokenInfo(
            claims=MappingProxyType(body),
            jkt=jkt,
            scopes=_scopes(body),
            sub=_str_or_none(body.get("sub")),
            client_id=_str_or_none(body.get("client_id")),
            exp=exp,
        )
        # a cached answer never outlives exp.
        until = now + self._ttl if exp is None else min(exp, now + self._ttl)
        if self._max and until > now:
            with self._lock:
                self._cache[key] = (until, info)
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
        return info


class IntrospectionTokens(_IntrospectionBase):
    """Validate tokens by RFC 7662 introspection with ``client_secret_basic``.

    The RS sends no proof to the AS and checks the binding itself (RFC 9449 §6.2,
    RS-24): ``cnf.jkt`` is reported, and a ``token_type`` other than ``DPoP`` on a
    bound token (or ``DPoP`` on an unbound one) is refused. Answers are cached
    until ``min(exp, now + cache_ttl)``; inactive answers are not cached.

    Args:
        endpoint: the introspection endpoint URL.
        client_id: this RS's client id at the AS.
        client_secret: its secret.
        issuer: when given, ``iss`` must equal it.
        audience: this resource's identifier(s); ``aud`` must contain one. Required,
            as for :class:`JWTAccessTokens` (RFC 7662 §2.2, RFC 9068 §4).
        insecure_skip_audience_check: accept any ``aud`` instead (warns; not with
            ``audience``).
        cache_ttl: seconds an active answer may be reused.
        max_cache_entries: bound of the cache (oldest dropped first).
        timeout: seconds for the HTTP exchange (a total deadline, not per read).
        allow_insecure_http: permit an ``http://`` endpoint (tests on loopback).
        http_client: an ``httpx.Client`` to post with (default: a fresh one per call
            that follows no redirects). Answers are streamed and abandoned past 512 KiB.

    Raises:
        ServerConfigurationError: at construction, no ``audience`` (and no opt-out),
            or another unusable setting (it is a ``ValueError``).
    """

    def __init__(
        self,
        *,
        endpoint: str,
        client_id: str,
        client_secret: str,
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        insecure_skip_audience_check: bool = False,
        cache_ttl: float = 60.0,
        max_cache_entries: int = 10_000,
        timeout: float = 5.0,
        allow_insecure_http: bool = False,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            endpoint=endpoint,
            client_id=client_id,
            client_secret=client_secret,
            issuer=issuer,
            audience=audience,
            insecure_skip_audience_check=insecure_skip_audience_check,
            cache_ttl=cache_ttl,
            max_cache_entries=max_cache_entries,
            timeout=timeout,
            allow_insecure_http=allow_insecure_http,
        )
        self._client = http_client

    def validate(self, token: str, *, now: float) -> TokenInfo:
        """Introspect ``token`` (cached) and return its :class:`TokenInfo`."""
        key = self._cache_key(token)
        hit = self._cached(key, now)
        if hit is not None:
            return hit
        body = _fetch_document(
            self._client,
            "POST",
            self._endpoint,
            what="introspection",
            seconds=self._timeout,
            data=self._form(token),
            headers={"Authorization": self._auth},
        )
        return self._interpret(body, key, now)


class AsyncIntrospectionTokens(_IntrospectionBase):
    """:class:`IntrospectionTokens` for asyncio and trio."""

    def __init__(
        self,
        *,
        endpoint: str,
        client_id: str,
        client_secret: str,
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        insecure_skip_audience_check: bool = False,
        cache_ttl: float = 60.0,
        max_cache_entries: int = 10_000,
        timeout: float = 5.0,
        allow_insecure_http: bool = False,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            endpoint=endpoint,
            client_id=client_id,
            client_secret=client_secret,
            issuer=issuer,
            audience=audience,
            insecure_skip_audience_check=insecure_skip_audience_check,
            cache_ttl=cache_ttl,
            max_cache_entries=max_cache_entries,
            timeout=timeout,
            allow_insecure_http=allow_insecure_http,
        )
        self._client = http_client

    async def validate(self, token: str, *, now: float) -> TokenInfo:
        """Introspect ``token`` (cached) and return its :class:`TokenInfo`."""
        key = self._cache_key(token)
        hit = self._cached(key, now)
        if hit is not None:
            return hit
        body = await _afetch_document(
            self._client,
            "POST",
            self._endpoint,
            what="introspection",
            seconds=self._timeout,
            data=self._form(token),
            headers={"Authorization": self._auth},
        )
        return self._interpret(body, key, now)
