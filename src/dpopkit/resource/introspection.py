"""RFC 7662 token introspection as a token validator.

:class:`IntrospectionTokens` / :class:`AsyncIntrospectionTokens` authenticate
with ``client_secret_basic`` and cache results until ``min(exp, now + cache_ttl)``.
An ``audience`` is required (``insecure_skip_audience_check=True`` is the loud
opt-out).
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from dpopkit.core.jws import numeric_date
from dpopkit.errors import (
    Reason,
)
from dpopkit.resource._fetch import afetch_document, fetch_document, require_httpx
from dpopkit.resource._shared import (
    bound_jkt,
    check_https,
    granted_scopes,
    has_audience,
    invalid_token,
    required_audiences,
    str_or_none,
)
from dpopkit.resource.validation import TokenInfo

if TYPE_CHECKING:
    import httpx

__all__ = ["AsyncIntrospectionTokens", "IntrospectionTokens"]


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
        require_httpx(type(self).__name__)
        self._endpoint = check_https(endpoint, allow_insecure_http, "endpoint")
        if not client_id:
            raise ValueError("client_id is required")
        # RFC 6749 §2.3.1: form-urlencode id and secret before Basic encoding.
        raw = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
        self._auth = "Basic " + base64.b64encode(raw.encode()).decode("ascii")
        self._issuer = issuer
        self._audiences = required_audiences(audience, insecure_skip_audience_check)
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
            raise invalid_token(Reason.TOKEN_INACTIVE)
        exp = numeric_date(body.get("exp"))
        if "exp" in body and exp is None:
            raise invalid_token(claim="exp")
        if exp is not None and now >= exp:
            raise invalid_token(Reason.TOKEN_EXPIRED, claim="exp")
        if self._issuer is not None and body.get("iss") != self._issuer:
            raise invalid_token(claim="iss")
        # RFC 7662 §2.2, RFC 9068 §4: aud names this resource (unless turned off).
        if self._audiences is not None and not has_audience(body, self._audiences):
            raise invalid_token(claim="aud")
        jkt = bound_jkt(body)
        # RFC 9449 §6.2 (RS-24): token_type, when present, agrees with the binding.
        token_type = body.get("token_type")
        if token_type is not None:
            is_dpop = isinstance(token_type, str) and token_type.lower() == "dpop"
            if is_dpop != (jkt is not None):
                raise invalid_token(claim="token_type")
        info = TokenInfo(
            claims=MappingProxyType(body),
            jkt=jkt,
            scopes=granted_scopes(body),
            sub=str_or_none(body.get("sub")),
            client_id=str_or_none(body.get("client_id")),
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
        body = fetch_document(
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
        body = await afetch_document(
            self._client,
            "POST",
            self._endpoint,
            what="introspection",
            seconds=self._timeout,
            data=self._form(token),
            headers={"Authorization": self._auth},
        )
        return self._interpret(body, key, now)
