"""Redirect URIs: one validation for registration, the configuration file and ``/authorize``.

:func:`validate_redirect_uri` accepts a redirect URI only when the exact string
is a plain absolute URI that every parser reads the same way (RFC 3986 §2
characters only: printable ASCII without space, backslash, quotes, angle
brackets, braces, ``|``, ``^`` or backtick; no user information, no fragment, a
port in range, and :func:`urllib.parse.urlsplit` reproducing the string exactly).
What is stored is that very string, so a value that passed cannot later drop a
connection or break a ``Location`` header at ``/authorize``.

:func:`redirect_uri_allowed` compares a presented URI with the registered ones
(RFC 6749 §3.1.2.3: simple string comparison) and, for public (native) clients
only, ignores the port of an ``http`` loopback IP literal (RFC 8252 §7.3), as
node-oidc-provider does only for native clients and Duende only through its
opt-in native-app redirect URI validator.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from ipaddress import ip_address
from urllib.parse import urlsplit

from dpopkit.errors import OAuthError, Reason

__all__ = [
    "MAX_REDIRECT_URI_LENGTH",
    "InvalidRedirectURIError",
    "redirect_uri_allowed",
    "validate_redirect_uri",
]

#: Longest accepted redirect URI.
MAX_REDIRECT_URI_LENGTH = 2048
# RFC 3986 §2.2, §2.3 characters and "%" (percent-encodings are checked separately).
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# RFC 8252 §7.3: the loopback IP literals (never the name "localhost", §8.3).
_LOOPBACK_NETLOC = re.compile(r"(127\.0\.0\.1|\[::1\])(?::([0-9]{1,5}))?")


class InvalidRedirectURIError(OAuthError):
    """A redirect URI is invalid (RFC 7591 §3.2.2)."""

    error = "invalid_redirect_uri"
    default_reason = Reason.INVALID_REQUEST


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def validate_redirect_uri(uri: object) -> str:
    """Return ``uri`` unchanged when it is an acceptable redirect URI, else raise.

    RFC 6749 §3.1.2 (absolute, no fragment), RFC 3986 §2 (characters), RFC 9700
    §4.1.3 / RFC 8252 §8.4 (``https``, or ``http`` on a loopback host only), no user
    information (RFC 3986 §3.2.1, the backslash-at tricks), and
    :func:`~urllib.parse.urlsplit` must give back the very same string.

    Raises:
        InvalidRedirectURIError: any other value.
    """

    def bad(what: str) -> InvalidRedirectURIError:
        return InvalidRedirectURIError(Reason.INVALID_REQUEST, what)

    if not isinstance(uri, str) or not uri or len(uri) > MAX_REDIRECT_URI_LENGTH:
        raise bad("redirect_uri must be a string of at most 2048 characters")
    if not _URI_CHARS.fullmatch(uri) or _BAD_PERCENT.search(uri):
        raise bad("redirect_uri has characters outside RFC 3986")
    if "#" in uri:
        raise bad("redirect_uri must not have a fragment")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        raise bad("redirect_uri is malformed") from None
    if not parts.netloc or not parts.hostname or "@" in parts.netloc:
        raise bad("redirect_uri must be absolute, without user information")
    if "[" in parts.path + parts.query or "]" in parts.path + parts.query:
        raise bad("redirect_uri has characters outside RFC 3986")
    if port == 0 or parts.netloc.endswith(":"):
        raise bad("redirect_uri has an invalid port")
    if parts.geturl() != uri:
        raise bad("redirect_uri is not in a canonical form")
    if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
        raise bad("redirect_uri must use https (http on loopback only)")
    return uri


def _loopback_without_port(uri: str) -> tuple[str, str, str] | None:
    """``(host, path, query)`` of an ``http`` loopback IP-literal URI, else None.

    The URI must be exactly ``http://`` + host + optional port + path + optional
    query: nothing that :func:`urllib.parse.urlsplit` would drop or normalise
    (control characters, an empty ``?``, a fragment, user information).
    """
    if not uri.startswith("http://"):
        return None
    parts = urlsplit(uri)
    match = _LOOPBACK_NETLOC.fullmatch(parts.netloc)
    if match is None or parts.fragment:
        return None
    port = match.group(2)
    if port is not None and not 1 <= int(port) <= 65535:
        return None
    if uri != f"http://{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else ""):
        return None
    return match.group(1), parts.path, parts.query


def redirect_uri_allowed(
    registered: Collection[str], redirect_uri: str, *, loopback_any_port: bool = False
) -> bool:
    """Whether ``redirect_uri`` may be used by a client that registered ``registered``.

    RFC 6749 §3.1.2.3: a simple string comparison with a registered URI. With
    ``loopback_any_port`` (public, native clients only: RFC 8252 §7.3), for an
    ``http`` URI on the loopback IP literals ``127.0.0.1`` or ``[::1]`` the port is
    left out of the comparison (a native app listens on a port the operating system
    picks); everything else (host literal, path, query) still matches exactly. Never
    for ``localhost`` (RFC 8252 §8.3), other hosts or https. A presented URI that
    :func:`validate_redirect_uri` refuses is never allowed.
    """
    try:
        validate_redirect_uri(redirect_uri)
    except InvalidRedirectURIError:
        return False
    if redirect_uri in registered:
        return True
    if not loopback_any_port:
        return False
    key = _loopback_without_port(redirect_uri)
    return key is not None and any(_loopback_without_port(r) == key for r in registered)
