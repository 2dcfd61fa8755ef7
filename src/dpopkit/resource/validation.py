"""What a token validator is and what it returns (the resource server's token interface).

A validator turns the presented access token into a :class:`TokenInfo` or raises
:class:`~dpopkit.errors.InvalidTokenError`; :class:`TokenValidator` and
:class:`AsyncTokenValidator` are the two protocols the guard accepts, and
:class:`CallableTokens` wraps a plain function. The validators dpopkit ships are in
:mod:`dpopkit.resource.jwt_tokens` and :mod:`dpopkit.resource.introspection`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["AsyncTokenValidator", "CallableTokens", "TokenInfo", "TokenValidator"]


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
