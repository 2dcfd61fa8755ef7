"""The browser DPoP client: a single-page app that ``dpopkit serve`` serves at ``/app/``.

Plain HTML, CSS and JavaScript shipped in this package (no build step, nothing
from a CDN). In the browser it generates a **non-extractable** ECDSA P-256 key
with WebCrypto, keeps the ``CryptoKeyPair`` in IndexedDB, runs the authorization
code flow with PKCE (RFC 7636, S256) and ``dpop_jkt`` (RFC 9449 §10) through the
AS's login page, redeems the code with a DPoP proof (RFC 9449 §4, §5), retries
once on ``use_dpop_nonce`` (§8, §9) and calls the protected API with
``Authorization: DPoP`` and a proof carrying ``ath`` (§7).

:class:`SPAApp` (:func:`create_spa_app`) is a tiny pure ASGI app serving exactly those
files and the page's icon (no directory walking, so no path traversal) with a strict
``Content-Security-Policy``: scripts and styles from the same origin only, and
``fetch`` to the same origin only (the AS and the API it calls). Mount it with
:func:`spa_mounts`, e.g. ``create_app(..., mounts=spa_mounts())``.

The page signs in as the public client ``demo-public`` (``<meta
name="dpopkit-client-id">`` in ``index.html``) with scope ``read``: demo mode
registers it with the redirect URI ``<issuer>/app/``; with ``--config``, register
a client of that id (``token_endpoint_auth_method = "none"``, grant types
``authorization_code`` and ``refresh_token``, that redirect URI) to use the page.
It derives the issuer from its own URL, so it must be opened at the issuer's
origin (``http://127.0.0.1`` or ``localhost`` count as secure for WebCrypto).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from importlib.resources import files
from typing import Any

__all__ = ["SPA_PATH", "SPAApp", "create_spa_app", "spa_mounts"]

#: Where ``dpopkit serve`` serves the app; the demo public client registers
#: ``<issuer>/app/`` as its redirect URI.
SPA_PATH = "/app"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

#: Same-origin scripts, styles and fetches only; no inline code, no frames, no forms.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _headers(content_type: str, length: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type.encode()),
        (b"content-length", str(length).encode()),
        (b"cache-control", b"no-cache"),
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        # The authorization code arrives in the page URL: never leak it in a Referer.
        (b"referrer-policy", b"no-referrer"),
    ]


class SPAApp:
    """The ASGI app serving the single-page client under ``prefix``.

    ``GET``/``HEAD`` of ``<prefix>/`` (or ``<prefix>/index.html``), ``<prefix>/app.js``,
    ``<prefix>/style.css`` and ``<prefix>/favicon.svg`` answer the packaged files; any
    other path under the prefix is 404 and any other method 405. The scope is read as a plain route
    mount delivers it (the full ``path``). A class, not a function, so that
    Starlette's ``Route`` treats it as an ASGI app rather than an endpoint.

    Args:
        prefix: the path the app is mounted at, without the trailing slash.
    """

    def __init__(self, prefix: str = SPA_PATH) -> None:
        base = files(__package__)
        self.assets = {name: base.joinpath(name).read_bytes() for name in _TYPES}
        self.prefix = prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request (other scope types are ignored)."""
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        head, _, name = path.rpartition("/")
        name = name or "index.html"
        root: str = scope.get("root_path", "")
        found = head in (self.prefix, root + self.prefix) and name in _TYPES
        if not found:
            status, body, ctype = 404, b"not found", "text/plain; charset=utf-8"
        elif scope["method"] not in ("GET", "HEAD"):
            status, body, ctype = 405, b"method not allowed", "text/plain; charset=utf-8"
        else:
            status, body, ctype = 200, self.assets[name], _TYPES[name]
        headers = _headers(ctype, len(body))
        if status == 405:
            headers.append((b"allow", b"GET, HEAD"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


def create_spa_app(prefix: str = SPA_PATH) -> ASGIApp:
    """Build the ASGI app serving the single-page client under ``prefix`` (see :class:`SPAApp`).

    Args:
        prefix: the path the app is mounted at, without the trailing slash.

    Returns:
        The ASGI application.
    """
    return SPAApp(prefix)


def spa_mounts(prefix: str = SPA_PATH) -> list[tuple[str, ASGIApp]]:
    """The ``(path, app)`` route for :func:`~dpopkit.server.app.create_app`'s ``mounts``.

    ``<prefix>`` without the slash is redirected to ``<prefix>/`` by Starlette's router.
    """
    prefix = prefix.rstrip("/")
    return [(prefix + "/{name:path}", create_spa_app(prefix))]
