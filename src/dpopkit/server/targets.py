"""What a token may be for: the granted scope and the RFC 8707 resources (audiences).

Shared by the grants, ``/par`` and ``/authorize``: one rule for scope (RFC 6749
§3.3) and one for ``resource`` (RFC 8707 §2) wherever a request names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from dpopkit.errors import InvalidScopeError, OAuthError, Reason
from dpopkit.server.settings import ServerSettings
from dpopkit.storage.sql import ClientRecord

__all__ = ["InvalidTargetError", "resolve_resource", "resolve_scope"]


class InvalidTargetError(OAuthError):
    """The ``resource`` parameter is not acceptable (RFC 8707 §2)."""

    error = "invalid_target"
    default_reason = Reason.INVALID_REQUEST


def resolve_scope(requested: str | None, *, allowed: str) -> str:
    """The granted scope: ``requested`` (must be within ``allowed``) or all of ``allowed``.

    Raises:
        InvalidScopeError: a requested scope is not allowed (RFC 6749 §5.2).
    """
    allowed_set = allowed.split()
    if requested is None:
        return " ".join(allowed_set)
    wanted = requested.split()
    if not set(wanted) <= set(allowed_set):
        raise InvalidScopeError(Reason.INVALID_SCOPE, "scope not allowed")
    return " ".join(dict.fromkeys(wanted))


def resolve_resource(
    settings: ServerSettings, values: Sequence[str], *, client: ClientRecord | None = None
) -> tuple[str, ...]:
    """Check RFC 8707 ``resource`` values: absolute URIs, no fragment, allowed.

    A dynamically registered ``client`` may only name the server-side
    :attr:`ServerSettings.registered_client_audiences`.

    Raises:
        InvalidTargetError: a value is not acceptable.
    """
    for value in values:
        parts = urlsplit(value)
        if not parts.scheme or not parts.netloc or parts.fragment or "#" in value:
            raise InvalidTargetError(Reason.INVALID_REQUEST, "resource must be absolute")
        if settings.allowed_resources and value not in settings.allowed_resources:
            raise InvalidTargetError(Reason.INVALID_REQUEST, "unknown resource")
        if (
            client is not None
            and client.registered
            and value not in settings.registered_client_audiences
        ):
            raise InvalidTargetError(Reason.INVALID_REQUEST, "resource not allowed for this client")
    return tuple(dict.fromkeys(values))
