"""Token sources: where auth objects get the access token to send, and how it is renewed.

:class:`TokenSet` is a checked token response; :class:`TokenSource` is what
:class:`~dpopkit.client.httpx.DPoPAuth` and the requests adapter ask for a token;
:class:`StaticToken` never changes and :class:`RefreshingToken` renews through a
:class:`TokenRenewer` (a :class:`~dpopkit.client.tokens.TokenClient`) before
``exp`` and after a 401.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from dpopkit.client.flow import Clock
from dpopkit.core.keys import DPoPKey
from dpopkit.errors import ClientError, Reason, requires_extra

__all__ = [
    "AsyncRefreshingToken",
    "AsyncTokenRenewer",
    "RefreshingToken",
    "StaticToken",
    "TokenRenewer",
    "TokenSet",
    "TokenSource",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSet:
    """A checked token response (RFC 6749 §5.1) and the key it is bound to.

    Attributes:
        key: the DPoP key whose proof obtained the tokens; refreshes must use it (C-8).
        expires_at: absolute expiry of the access token by the client's clock, if known.
        issued_at: when the client received the tokens, by its clock (with ``expires_at``
            it gives the token's lifetime, which bounds a refresh margin).
        grant: the grant that produced it (``client_credentials``, ``authorization_code``,
            ``refresh_token``), so a token source can renew it.
        params: the grant's scope/resource parameters, reused for a renewal.
    """

    access_token: str = field(repr=False)
    token_type: str
    key: DPoPKey
    expires_at: float | None = None
    issued_at: float | None = None
    refresh_token: str | None = field(default=None, repr=False)
    scope: str | None = None
    grant: str = ""
    params: tuple[tuple[str, str], ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_dpop(self) -> bool:
        """Whether the AS bound the token to the key (``token_type`` ``DPoP``, C-7)."""
        return self.token_type.lower() == "dpop"

    def expired(self, *, now: float, margin: float = 0.0) -> bool:
        """Whether the access token is (or within ``margin`` seconds will be) expired."""
        return self.expires_at is not None and now + margin >= self.expires_at


class TokenRenewer(Protocol):
    """What :class:`RefreshingToken` renews with (a ``TokenClient``)."""

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """Refresh grant with the key that got ``tokens`` (RFC 6749 §6, RFC 9449 §5)."""
        ...

    def client_credentials(
        self, *, scope: str | None, resource: str | None, key: DPoPKey | None
    ) -> TokenSet:
        """Client credentials grant (RFC 6749 §4.4) with a proof from ``key``."""
        ...


class TokenSource(Protocol):
    """Where auth objects get the access token to send (and how to renew it).

    ``current`` never blocks (None means "call ``get``"); ``get`` may refresh;
    ``invalidate`` is called once after a 401 ``invalid_token`` with the token that
    was rejected and returns a different token, or None when there is none.
    Implementations serialise refreshes: many waiting requests cause one refresh.
    """

    def current(self) -> str | None:
        """The token to send now, or None when a (blocking) refresh is due."""
        ...

    def get(self) -> str:
        """The token to send, refreshing it first when it is (about to be) expired."""
        ...

    def invalidate(self, rejected: str) -> str | None:
        """Renew after the server rejected ``rejected``; None when no renewal is possible."""
        ...


class StaticToken:
    """A fixed access token (no refresh)."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        if not isinstance(cast(object, token), str) or not token:
            raise ValueError("the access token must be a non-empty string")
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(...)"

    def current(self) -> str:  # noqa: D102
        return self._token

    def get(self) -> str:  # noqa: D102
        return self._token

    def invalidate(self, rejected: str) -> None:  # noqa: D102
        return None


class _RefreshPolicy:
    """When a :class:`TokenSet` is due and how it is renewed: shared by both sources."""

    _tokens: TokenSet
    margin: float
    clock: Clock
    refresh_count: int

    @property
    def tokens(self) -> TokenSet:
        """The current :class:`TokenSet`."""
        return self._tokens

    def current(self) -> str | None:
        tokens = self._tokens
        if self._due(tokens) and self._renewable(tokens):
            return None
        return tokens.access_token

    def _due(self, tokens: TokenSet) -> bool:
        margin = self.margin
        if tokens.issued_at is not None and tokens.expires_at is not None:
            margin = max(0.0, min(margin, (tokens.expires_at - tokens.issued_at) / 2))
        return tokens.expired(now=self.clock(), margin=margin)

    @staticmethod
    def _renewable(tokens: TokenSet) -> bool:
        return tokens.refresh_token is not None or tokens.grant == "client_credentials"

    @staticmethod
    def _same(tokens: TokenSet, rejected: str) -> bool:
        return hmac.compare_digest(tokens.access_token.encode(), rejected.encode())

    @staticmethod
    def _renewal(tokens: TokenSet) -> tuple[str, dict[str, Any]]:
        """The grant that renews ``tokens``: refresh (same key, C-8) or client credentials."""
        if tokens.refresh_token is not None:
            return "refresh", {"tokens": tokens}
        params = dict(tokens.params)
        return "client_credentials", {
            "scope": params.get("scope"),
            "resource": params.get("resource"),
            "key": tokens.key,
        }

    def _adopt(self, new: TokenSet) -> TokenSet:
        self.refresh_count += 1
        self._tokens = new
        return new


class RefreshingToken(_RefreshPolicy):
    """A :class:`TokenSource` that renews a :class:`TokenSet` before ``exp`` and after a 401.

    Renewal uses the refresh token (always with a proof from the token's own key,
    C-8) or, for a client-credentials token without one, asks for a new token.
    Refreshes are serialised with a lock: when many threads (or asyncio tasks,
    through worker threads) find the token expired, one refresh happens and the
    others get its result.

    Args:
        client: what renews: a :class:`~dpopkit.client.tokens.TokenClient`.
        tokens: the current tokens.
        margin: seconds before ``expires_at`` at which the token counts as expired; at most
            half the token's lifetime, so that a token shorter-lived than the margin is
            not renewed on every request.
        clock: the time source (``time.time``).
    """

    def __init__(
        self,
        client: TokenRenewer,
        tokens: TokenSet,
        *,
        margin: float = 30.0,
        clock: Clock = time.time,
    ) -> None:
        self.client = client
        self._tokens = tokens
        self.margin = margin
        self.clock = clock
        self.refresh_count = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RefreshingToken(refreshes={self.refresh_count})"

    def get(self) -> str:  # noqa: D102
        with self._lock:
            tokens = self._tokens
            if self._due(tokens) and self._renewable(tokens):
                tokens = self._renew(tokens)
            return tokens.access_token

    def invalidate(self, rejected: str) -> str | None:  # noqa: D102
        with self._lock:
            tokens = self._tokens
            if not self._same(tokens, rejected):
                return tokens.access_token  # someone else already renewed it
            if not self._renewable(tokens):
                return None
            return self._renew(tokens).access_token

    def _renew(self, tokens: TokenSet) -> TokenSet:
        grant, kwargs = self._renewal(tokens)
        new: TokenSet = getattr(self.client, grant)(**kwargs)
        return self._adopt(new)


class AsyncTokenRenewer(Protocol):
    """What :class:`AsyncRefreshingToken` renews with (an ``AsyncTokenClient``)."""

    async def refresh(self, tokens: TokenSet) -> TokenSet:
        """Refresh grant with the key that got ``tokens`` (RFC 6749 §6, RFC 9449 §5)."""
        ...

    async def client_credentials(
        self, *, scope: str | None, resource: str | None, key: DPoPKey | None
    ) -> TokenSet:
        """Client credentials grant (RFC 6749 §4.4) with a proof from ``key``."""
        ...


_ASYNC_ONLY = "AsyncRefreshingToken renews asynchronously: use an async client"


class AsyncRefreshingToken(_RefreshPolicy):
    """:class:`RefreshingToken` for async clients: renewals are awaited, never block the loop.

    The same policy (due ``margin`` before ``exp``, refresh with the token's own key,
    C-8, or a new client-credentials token); renews through an
    :class:`~dpopkit.client.tokens.AsyncTokenClient`. Concurrent tasks that find the
    token due share one renewal (an ``anyio`` lock: asyncio and trio alike). The
    async ``DPoPAuth`` of :mod:`dpopkit.client.httpx` and :mod:`dpopkit.client.httpx2` await
    :meth:`aget` and :meth:`ainvalidate`; a synchronous client cannot use it
    (:meth:`get` raises).

    Args:
        client: what renews: an :class:`~dpopkit.client.tokens.AsyncTokenClient`.
        tokens: the current tokens.
        margin: as :class:`RefreshingToken`.
        clock: the time source (``time.time``).
    """

    def __init__(
        self,
        client: AsyncTokenRenewer,
        tokens: TokenSet,
        *,
        margin: float = 30.0,
        clock: Clock = time.time,
    ) -> None:
        self.client = client
        self._tokens = tokens
        self.margin = margin
        self.clock = clock
        self.refresh_count = 0
        self._lock: Any = None  # made on first use, inside the running event loop

    def __repr__(self) -> str:
        return f"AsyncRefreshingToken(refreshes={self.refresh_count})"

    def _the_lock(self) -> Any:
        if self._lock is None:
            with requires_extra("httpx", needed_by=__name__):  # anyio: with httpx and httpx2
                import anyio
            self._lock = anyio.Lock()
        return self._lock

    def get(self) -> str:
        """Not for synchronous clients: use :meth:`aget`.

        Raises:
            ClientError: (CONFIGURATION) always.
        """
        raise ClientError(Reason.CONFIGURATION, _ASYNC_ONLY)

    def invalidate(self, rejected: str) -> str | None:
        """Not for synchronous clients: use :meth:`ainvalidate`.

        Raises:
            ClientError: (CONFIGURATION) always.
        """
        raise ClientError(Reason.CONFIGURATION, _ASYNC_ONLY)

    async def aget(self) -> str:
        """The token to send, renewing it first when it is (about to be) expired."""
        async with self._the_lock():
            tokens = self._tokens
            if self._due(tokens) and self._renewable(tokens):
                tokens = await self._arenew(tokens)
            return tokens.access_token

    async def ainvalidate(self, rejected: str) -> str | None:
        """Renew after the server rejected ``rejected``; None when no renewal is possible."""
        async with self._the_lock():
            tokens = self._tokens
            if not self._same(tokens, rejected):
                return tokens.access_token
            if not self._renewable(tokens):
                return None
            return (await self._arenew(tokens)).access_token

    async def _arenew(self, tokens: TokenSet) -> TokenSet:
        grant, kwargs = self._renewal(tokens)
        new: TokenSet = await getattr(self.client, grant)(**kwargs)
        return self._adopt(new)
