"""What the ASGI and WSGI adapters share: the public URL, routes, and RFC 9728 metadata.

The URL a client addressed (the ``htu`` we compare with) comes from
configuration: a public origin, and/or an explicit count of trusted proxies
for ``Forwarded`` / ``X-Forwarded-*`` (like werkzeug's ProxyFix). ``Host`` is
used only with ``trust_host_header=True``, which warns (SEC-69).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

from dpopkit.core.http import Headers, RequestView, ResponseView
from dpopkit.errors import InvalidRequestError, Reason, SecurityWarning, ServerConfigurationError

__all__ = ["ProtectedResourceMetadata", "ProxyTrust", "Site", "check_guard", "reason_phrase"]

_HOST_RE = re.compile(r"(?:[A-Za-z0-9\-._~]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_PREFIX_RE = re.compile(r"(?:/[A-Za-z0-9\-._~!$&'()*+,;=:@%]*)*")
_PATH_SAFE = "/:@!$&'()*+,;=~-._"
WELL_KNOWN = "/.well-known/oauth-protected-resource"
#: The request fields the guard (RFC 9449 §4.3 (1), §7.1) and the URL reconstruction read.
_VIEW_FIELDS = frozenset(
    name.encode()
    for name in (
        "authorization",
        "dpop",
        "host",
        "forwarded",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
    )
)


def check_guard(guard: object, expected: type, adapter: str) -> None:
    """Refuse, at construction, a guard of the wrong kind for ``adapter``.

    A synchronous adapter handed the async guard would get a coroutine back instead
    of a principal (truthy, never awaited: the view would run unauthenticated); an
    async adapter handed the sync guard would fail on every request. Either is a
    wiring mistake, reported where it is made.

    Raises:
        TypeError: ``guard`` is not an instance of ``expected``.
    """
    if not isinstance(guard, expected):
        raise TypeError(f"{adapter} needs a dpopkit {expected.__name__}")


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyTrust:
    """How many proxies in front of the app set each forwarding header (ProxyFix-style).

    With ``n`` for a header, the ``n``-th value from the right is used (the one
    the outermost trusted proxy wrote); values further left are client-controlled.
    A request with fewer values than configured is refused (400).

    Attributes:
        forwarded: trusted entries of RFC 7239 ``Forwarded`` (``proto``, ``host``).
        proto: trusted ``X-Forwarded-Proto`` values.
        host: trusted ``X-Forwarded-Host`` values.
        port: trusted ``X-Forwarded-Port`` values.
        prefix: trusted ``X-Forwarded-Prefix`` values (a mount path).
    """

    forwarded: int = 0
    proto: int = 0
    host: int = 0
    port: int = 0
    prefix: int = 0

    def __post_init__(self) -> None:
        for name in ("forwarded", "proto", "host", "port", "prefix"):
            if getattr(self, name) < 0:
                raise ValueError("proxy counts must be >= 0")


def _nth_from_right(headers: Headers, name: str, count: int) -> str:
    values = [v.strip() for raw in headers.get_all(name) for v in raw.split(",")]
    if len(values) < count:
        raise InvalidRequestError(Reason.INVALID_REQUEST, "missing forwarding header")
    return values[-count]


def _forwarded_entry(headers: Headers, count: int) -> dict[str, str]:
    entry = _nth_from_right(headers, "Forwarded", count)
    out: dict[str, str] = {}
    for pair in entry.split(";"):
        name, sep, value = pair.strip().partition("=")
        if sep:
            out[name.strip().lower()] = value.strip().strip('"')
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtectedResourceMetadata:
    """RFC 9728 protected-resource metadata served at ``/.well-known/oauth-protected-resource``.

    ``dpop_signing_alg_values_supported`` comes from the guard's policy and
    ``dpop_bound_access_tokens_required`` is true unless Bearer is accepted.

    Attributes:
        resource: this resource's identifier (an https URL).
        authorization_servers: issuer identifiers of the ASes it trusts.
        scopes_supported: scopes it understands.
        resource_name: a human-readable name.
        extra: further members to publish.
    """

    resource: str
    authorization_servers: Sequence[str] = ()
    scopes_supported: Sequence[str] = ()
    resource_name: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """RFC 9728 §3.1: the well-known suffix goes between the host and the resource path."""
        path = urlsplit(self.resource).path.rstrip("/")
        return WELL_KNOWN + path

    def render(self, *, algs: Sequence[str], bound_required: bool) -> ResponseView:
        doc: dict[str, object] = {"resource": self.resource}
        if self.authorization_servers:
            doc["authorization_servers"] = list(self.authorization_servers)
        if self.scopes_supported:
            doc["scopes_supported"] = list(self.scopes_supported)
        if self.resource_name:
            doc["resource_name"] = self.resource_name
        doc["bearer_methods_supported"] = ["header"]
        doc["dpop_signing_alg_values_supported"] = list(algs)
        doc["dpop_bound_access_tokens_required"] = bound_required
        doc.update(self.extra)
        return ResponseView(
            status=200,
            headers=(("Content-Type", "application/json"), ("Cache-Control", "max-age=300")),
            body=json.dumps(doc, separators=(",", ":")).encode(),
        )


def _match(patterns: Collection[str], path: str) -> bool:
    return any(path.startswith(p[:-1]) if p.endswith("*") else path == p for p in patterns)


class Site:
    """An adapter's configuration: public URL, route exclusions and scopes, metadata."""

    def __init__(
        self,
        *,
        public_origin: str | None,
        trusted_proxies: ProxyTrust | None,
        trust_host_header: bool,
        exclude_paths: Collection[str] = (),
        route_scopes: Mapping[str, Collection[str]] | None = None,
        metadata: ProtectedResourceMetadata | None = None,
    ) -> None:
        self.scheme = self.host = None
        self.prefix = ""
        if public_origin is not None:
            parts = urlsplit(public_origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
                raise ServerConfigurationError(
                    description="public_origin is scheme://host[:port][/prefix]"
                )
            self.scheme, self.host = parts.scheme, parts.netloc
            self.prefix = parts.path.rstrip("/")
        proxies = trusted_proxies or ProxyTrust()
        covers_origin = bool(proxies.forwarded or (proxies.proto and proxies.host))
        if public_origin is None and not covers_origin and not trust_host_header:
            raise ServerConfigurationError(
                description=(
                    "the RS must know its public URL: pass public_origin=, or trusted_proxies="
                    " that set proto and host (or trust_host_header=True, not recommended)"
                )
            )
        if trust_host_header:
            warnings.warn(
                "trust_host_header=True: the Host header decides the htu a proof must match;"
                " a counterfeit RS can then replay proofs made for it here (SEC-69)",
                SecurityWarning,
                stacklevel=3,
            )
        self.proxies = proxies
        self.trust_host_header = trust_host_header
        # With a public origin and no proxy headers to read, every URL starts the same:
        # checked once here instead of on every request.
        self._static_base: str | None = None
        if (
            public_origin is not None
            and proxies == ProxyTrust()
            and _HOST_RE.fullmatch(self.host or "")
            and _PREFIX_RE.fullmatch(self.prefix)
        ):
            self._static_base = f"{self.scheme}://{self.host}{self.prefix}"
        self.exclude_paths = tuple(exclude_paths)
        self.route_scopes = {k: frozenset(v) for k, v in (route_scopes or {}).items()}
        self.metadata = metadata
        #: whether the path decides anything (metadata, exclusions, route scopes)
        self.routes_matter = bool(metadata is not None or self.exclude_paths or self.route_scopes)

    def url(
        self, *, scheme: str, headers: Headers, root_path: str, path: str, query: str = ""
    ) -> str:
        """The absolute URL the client addressed (RFC 9449 §4.3 (9), V-13).

        Args:
            scheme: the scheme the server saw (used only with ``trust_host_header``).
            headers: the request headers.
            root_path: ASGI ``root_path`` / WSGI ``SCRIPT_NAME`` (percent-encoded).
            path: the request path (percent-encoded; may already include ``root_path``).
            query: the raw query string (kept in the URL; ``htu`` comparison drops it).

        Raises:
            InvalidRequestError: a trusted proxy header is missing or unusable.
        """
        if root_path and not path.startswith(root_path):
            path = root_path + path
        if self._static_base is not None:
            return self._static_base + path + (f"?{query}" if query else "")
        url_scheme, host, prefix = self.scheme, self.host, self.prefix
        if url_scheme is None and self.trust_host_header:
            hosts = headers.get_all("Host")
            url_scheme, host = scheme, hosts[0] if len(hosts) == 1 else None
        proxies = self.proxies
        if proxies.forwarded:
            entry = _forwarded_entry(headers, proxies.forwarded)
            url_scheme = entry.get("proto", url_scheme)
            host = entry.get("host", host)
        if proxies.proto:
            url_scheme = _nth_from_right(headers, "X-Forwarded-Proto", proxies.proto).lower()
        if proxies.host:
            host = _nth_from_right(headers, "X-Forwarded-Host", proxies.host)
        if proxies.port and host is not None:
            port = _nth_from_right(headers, "X-Forwarded-Port", proxies.port)
            if not port.isdigit():
                raise InvalidRequestError(Reason.INVALID_REQUEST, "bad forwarded port")
            host = f"{host.rsplit(':', 1)[0] if not host.endswith(']') else host}:{port}"
        if proxies.prefix:
            prefix = _nth_from_right(headers, "X-Forwarded-Prefix", proxies.prefix).rstrip("/")
        if (
            url_scheme not in ("http", "https")
            or host is None
            or not _HOST_RE.fullmatch(host)
            or not _PREFIX_RE.fullmatch(prefix)
        ):
            raise InvalidRequestError(Reason.INVALID_REQUEST, "cannot determine the request URL")
        return f"{url_scheme}://{host}{prefix}{path}" + (f"?{query}" if query else "")

    @staticmethod
    def quote_path(path: str, encoding: str) -> str:
        """Percent-encode a decoded path (ASGI: UTF-8, WSGI: latin-1 "bytes as str")."""
        return quote(path.encode(encoding, "replace"), safe=_PATH_SAFE)

    def excluded(self, route: str) -> bool:
        """Whether ``route`` (the app-relative path) skips authentication."""
        return _match(self.exclude_paths, route)

    def scopes_for(self, route: str) -> frozenset[str]:
        """Scopes a route needs (every matching pattern counts)."""
        needed: frozenset[str] = frozenset()
        for pattern, scopes in self.route_scopes.items():
            if _match((pattern,), route):
                needed |= scopes
        return needed

    def is_metadata(self, method: str, route: str) -> bool:
        """Whether this is a GET of the RFC 9728 metadata document."""
        return (
            self.metadata is not None
            and method in ("GET", "HEAD")
            and route == (self.metadata.path)
        )

    # -- ASGI and WSGI request views (shared by the middleware and framework adapters) ----

    @staticmethod
    def asgi_route(scope: Mapping[str, Any]) -> str:
        """The app-relative path of an ASGI scope (``path`` without ``root_path``)."""
        root: str = scope.get("root_path", "")
        path: str = scope["path"]
        return path[len(root) :] if root and path.startswith(root) else path

    def asgi_view(self, scope: Mapping[str, Any]) -> RequestView:
        """Build the request view of an ASGI HTTP scope (headers read once).

        The view carries the fields the guard and :meth:`url` read (``Authorization``,
        ``DPoP``, ``Host`` and the forwarding headers), every occurrence of each, in
        order; the others are not decoded.

        Raises:
            InvalidRequestError: the URL cannot be determined (missing proxy headers).
        """
        wanted = _VIEW_FIELDS
        headers = Headers(
            [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in scope["headers"]
                if k in wanted or k.lower() in wanted
            ]
        )
        raw = scope.get("raw_path")
        raw_path = raw.decode("latin-1").partition("?")[0] if raw else ""
        if not raw_path.startswith("/"):
            raw_path = self.quote_path(scope["path"], "utf-8")
        root_path = scope.get("root_path", "")
        url = self.url(
            scheme=scope.get("scheme", "http"),
            headers=headers,
            root_path=self.quote_path(root_path, "utf-8") if root_path else "",
            path=raw_path,
            query=scope.get("query_string", b"").decode("latin-1"),
        )
        return RequestView(method=scope["method"], url=url, headers=headers)

    @staticmethod
    def wsgi_route(environ: Mapping[str, Any]) -> str:
        """The app-relative path of a WSGI request (``PATH_INFO``)."""
        return str(environ.get("PATH_INFO", "")) or "/"

    def wsgi_view(self, environ: MutableMapping[str, Any]) -> RequestView:
        """Build the request view of a WSGI environ (``SCRIPT_NAME`` + ``PATH_INFO``).

        Repeated fields arrive comma-folded; the guard counts a comma in ``DPoP`` or
        ``Authorization`` as two fields.

        Raises:
            InvalidRequestError: the URL cannot be determined (missing proxy headers).
        """
        pairs = [
            (key[5:].replace("_", "-"), str(value))
            for key, value in environ.items()
            if key.startswith("HTTP_")
        ]
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                pairs.append((key.replace("_", "-"), str(environ[key])))
        headers = Headers(pairs)
        url = self.url(
            scheme=str(environ.get("wsgi.url_scheme", "http")),
            headers=headers,
            root_path=self.quote_path(str(environ.get("SCRIPT_NAME", "")), "latin-1"),
            path=self.quote_path(self.wsgi_route(environ), "latin-1"),
            query=str(environ.get("QUERY_STRING", "")),
        )
        return RequestView(
            method=str(environ.get("REQUEST_METHOD", "GET")), url=url, headers=headers
        )
