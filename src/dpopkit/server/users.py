"""Who signs in at ``/authorize``: the :class:`Authenticator` protocol and config users.

The login page asks an :class:`Authenticator` for the subject of a username and
password; :class:`ConfigUsers` is the built-in one (scrypt hashes from
configuration). Plug a real user store in by implementing the protocol.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Protocol

from dpopkit.server.throttle import SCRYPT_LIMITER, WorkLimiter
from dpopkit.storage.sql import hash_secret

__all__ = ["Authenticator", "ConfigUsers"]

_DUMMY_HASH = hash_secret(secrets.token_urlsafe(16))


class Authenticator(Protocol):
    """Checks a user's credentials; the extension point for real user stores."""

    def authenticate(self, username: str, password: str) -> str | None:
        """Return the subject identifier of the user, or None when the login fails."""
        ...


class ConfigUsers:
    """The built-in authenticator: users from configuration with scrypt password hashes.

    Args:
        users: username → :func:`~dpopkit.storage.sql.hash_secret` value.
        limiter: bounds concurrent scrypt computations (the process-wide
            :data:`~dpopkit.server.throttle.SCRYPT_LIMITER` by default).
    """

    def __init__(self, users: Mapping[str, str], *, limiter: WorkLimiter | None = None) -> None:
        self._users = dict(users)
        self._limiter = limiter if limiter is not None else SCRYPT_LIMITER

    def authenticate(self, username: str, password: str) -> str | None:
        """Return ``username`` when the password matches (constant work for unknown users).

        Raises:
            ServerBusyError: every scrypt slot is taken (503, never a silent failure).
        """
        stored = self._users.get(username)
        ok = self._limiter.verify(password, stored if stored is not None else _DUMMY_HASH)
        return username if ok and stored is not None else None
