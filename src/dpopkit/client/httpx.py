"""DPoP for httpx: an ``httpx.Auth`` for ``Client`` and ``AsyncClient`` (RFC 9449 §4, §7, §8, §9).

```python
import httpx
from dpopkit import DPoPKey
from dpopkit.client.httpx import DPoPAuth

auth = DPoPAuth(DPoPKey.generate(), token=access_token)
httpx.get("https://api.example/items", auth=auth)
```

The auth object holds no per-request state: one instance can be shared by many
concurrent requests, threads and tasks. It sets ``requires_response_body =
False`` and reads a response body only when it must (a 400 that may be an AS
``use_dpop_nonce`` error, see :func:`~dpopkit.client.flow.wants_body`), so
streamed downloads stay streamed. A request whose body cannot be replayed (a
generator or file stream) is never resent: the ``use_dpop_nonce`` answer comes
back as it is and :func:`dpop_error` tells why; ``buffer_request_body=True``
reads such bodies into memory first so that the retry can happen.

Redirects: httpx runs an auth flow once per request and follows redirects inside
it, copying the request's headers to every hop, so a client that follows
redirects needs the auth's request hook (``event_hooks=auth.event_hooks``, or
``auth.async_event_hooks`` for an ``AsyncClient``). With it a hop on the same
origin carries a fresh proof for its own method and URL, and a hop to another
origin (scheme, host or port) carries neither ``DPoP`` nor ``Authorization``,
nor does any later hop. Without it, a followed redirect raises ``ClientError``
(``REDIRECT_NOT_SIGNED``). When the client does not follow redirects (httpx's
default), ``response.next_request`` already holds the right headers, and sending
it through the client applies the same rule.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping
from typing import Any, Final

from dpopkit.client._auth import _AuthSettings
from dpopkit.client.flow import (
    INVALID_TOKEN,
    Clock,
    NonceCache,
    Retry,
    origin_of,
    parse_json_body,
    wants_body,
)
from dpopkit.client.tokens import Sender, TokenSource
from dpopkit.core.http import DPOP_HEADER, DPOP_NONCE_HEADER, Headers, RequestView, ResponseView
from dpopkit.core.keys import DPoPKey
from dpopkit.errors import ChallengeError, ClientError, Reason, requires_extra

with requires_extra("httpx", needed_by=__name__):
    import anyio.to_thread
    import httpx

__all__ = ["DPoPAuth", "dpop_error", "httpx_sender"]

_ERROR_KEY: Final = "dpopkit.error"
_EXCHANGE_KEY: Final = "dpopkit.exchange"
_NO_FIELDS: Final = Headers()


def dpop_error(response: httpx.Response) -> ClientError | None:
    """Return why :class:`DPoPAuth` handed back ``response`` without retrying, or None.

    Set when a ``use_dpop_nonce`` answer could not be retried because the request
    body cannot be replayed (``reason`` is ``BODY_NOT_REPLAYABLE``).
    """
    value = response.extensions.get(_ERROR_KEY)
    return value if isinstance(value, ClientError) else None


def _replayable(request: httpx.Request) -> bool:
    return isinstance(request.stream, httpx.ByteStream)


def _set_headers(request: httpx.Request, headers: Mapping[str, str]) -> None:
    # Set field by field: Headers.update would build and normalise a second Headers object.
    fields = request.headers
    for name, value in headers.items():
        fields[name] = value


def _flow_headers(response: httpx.Response) -> Headers:
    """The response fields :meth:`DPoPFlow.on_response` reads, as a :class:`Headers`."""
    fields = response.headers
    if response.status_code in (400, 401):
        return Headers(fields.multi_items())  # challenges, Date, DPoP-Nonce: keep them all
    # Any other status only has its DPoP-Nonce read: skip decoding every field.
    nonces = fields.get_list(DPOP_NONCE_HEADER)
    return Headers([(DPOP_NONCE_HEADER, value) for value in nonces]) if nonces else _NO_FIELDS


def _request_of(response: httpx.Response) -> httpx.Request | None:
    """The request ``response`` answers (None for a response built by hand, as in tests)."""
    try:
        return response.request
    except RuntimeError:
        return None


def _strip_credentials(request: httpx.Request) -> None:
    request.headers.pop(DPOP_HEADER, None)
    request.headers.pop("Authorization", None)


class _Exchange:
    """The per-request state of one auth flow (shared by the sync and async paths).

    It rides along in ``request.extensions`` (httpx hands the same mapping to every
    request it builds from a redirect), so the client's request hook and a later
    auth flow can tell a redirect hop of this request from a request of its own.
    """

    __slots__ = (
        "auth",
        "flow",
        "left",
        "origin",
        "original",
        "refreshed",
        "request",
        "sent",
        "token",
    )

    def __init__(self, auth: DPoPAuth, request: httpx.Request, token: str | None) -> None:
        self.auth = auth
        self.original = request  # the request the caller made
        self.request = request  # the request being answered now (a same-origin hop later)
        self.token = token
        self.refreshed = False
        self.flow = auth.new_flow()
        self.origin = ""
        # A hop went to another origin: the chain carries no credentials from then on and
        # its answers are not acted on (no retry, no nonce learned, no token refresh).
        self.left = False
        self.sent: list[httpx.Request] = [request]  # requests whose credentials we set

    def start(self) -> httpx.Request:
        request = self.request
        prior = request.extensions.get(_EXCHANGE_KEY)
        # A fresh mapping: the caller's extensions may be shared by other requests.
        request.extensions = {**request.extensions, _EXCHANGE_KEY: self}
        # A request httpx built from a redirect answered to one of ours (the caller
        # follows ``response.next_request``): the redirect rule applies.
        if (
            isinstance(prior, _Exchange)
            and request is not prior.original
            and not prior.may_follow(request)
        ):
            self.left = True
            _strip_credentials(request)
            return request
        headers = self.flow.prepare(request.method, str(request.url), self.token)
        self.origin = self.flow.origin
        _set_headers(request, headers)
        return request

    def may_follow(self, request: httpx.Request) -> bool:
        """Whether credentials may go with ``request``, a redirect hop of this exchange.

        Only on the request's own origin (RFC 6454: scheme, host and port), and only
        while the chain has not been elsewhere.
        """
        if self.left or not self.origin:
            return False
        try:
            return origin_of(str(request.url)) == self.origin
        except ValueError:
            return False

    def redirected(self, request: httpx.Request) -> None:
        """Set the credentials of a redirect hop httpx is about to send (request hook).

        RFC 9449 §4.2: a proof is bound to one method and URL and its ``jti`` is used
        once, so the hop gets a proof of its own; to another origin nothing goes.
        """
        if any(request is mine for mine in self.sent):
            return  # the first send, or a retry we made
        self.sent.append(request)
        if not self.may_follow(request):
            self.left = True
            _strip_credentials(request)
            return
        flow = self.auth.new_flow()
        _set_headers(request, flow.prepare(request.method, str(request.url), self.token))
        self.flow = flow  # answers now concern this hop: retries resend it, not the first
        self.request = request

    def step(self, response: httpx.Response) -> httpx.Request | bool | None:
        """The next request, None when done, or True when a token refresh should be tried."""
        answered = _request_of(response)
        if answered is not None and not any(answered is mine for mine in self.sent):
            # httpx followed a redirect without our request hook: the hop went out with
            # the first request's proof (and, to a same-host https URL, its token).
            raise ClientError(
                Reason.REDIRECT_NOT_SIGNED,
                "httpx followed a redirect that DPoPAuth did not see; pass "
                "event_hooks=auth.event_hooks (or async_event_hooks) to the client",
                detail={"url": str(answered.url)},
            )
        if self.left:
            return None
        if response.next_request is not None:  # a redirect the client does not follow
            self._sanitise(response.next_request)
        body: Mapping[str, Any] | None = None
        if wants_body(response.status_code, response.headers):
            try:
                body = parse_json_body(response.content)
            except httpx.ResponseNotRead:
                body = None
        action = self.flow.on_response(response.status_code, _flow_headers(response), body)
        if not isinstance(action, Retry):
            if (
                self.flow.last_error == INVALID_TOKEN
                and self.auth.source is not None
                and self.token is not None
                and not self.refreshed
                and _replayable(self.request)
            ):
                return True
            return None
        return self.retry(response, action)

    def _sanitise(self, hop: httpx.Request) -> None:
        """``response.next_request`` carries a copy of our headers: fix them for the hop."""
        if not self.may_follow(hop):
            _strip_credentials(hop)
            return
        headers = self.auth.new_flow().prepare(hop.method, str(hop.url), self.token)
        _set_headers(hop, headers)

    def retry(self, response: httpx.Response, action: Retry) -> httpx.Request | None:
        if not _replayable(self.request):
            # STYLE B.5: a streaming body is never resent; the answer comes back as it is.
            response.extensions[_ERROR_KEY] = ChallengeError(
                Reason.BODY_NOT_REPLAYABLE,
                "the server asked for a retry but the request body cannot be replayed",
                detail={"status": response.status_code},
            )
            return None
        _set_headers(self.request, action.headers)
        return self.request

    def refreshed_token(self, response: httpx.Response, token: str | None) -> httpx.Request | None:
        self.refreshed = True
        if token is None or token == self.token:
            return None
        self.token = token
        return self.retry(response, self.flow.with_token(token))


def _on_request(request: httpx.Request) -> None:
    exchange = request.extensions.get(_EXCHANGE_KEY)
    if isinstance(exchange, _Exchange):
        exchange.redirected(request)


async def _aon_request(request: httpx.Request) -> None:
    _on_request(request)


class DPoPAuth(_AuthSettings, httpx.Auth):
    """Sign every httpx request with a DPoP proof and handle server nonces.

    RFC 9449 §4.2 (a new proof and ``jti`` per send), §7.1 (``Authorization: DPoP``),
    §8/§9 (``DPoP-Nonce``: cached per origin, one retry on ``use_dpop_nonce``).

    Args:
        key: the client's :class:`~dpopkit.DPoPKey`.
        token: an access token (str), a :class:`~dpopkit.client.tokens.TokenSource`
            (refreshed before expiry and once after a 401 ``invalid_token``), or None
            (token requests: only the proof is added).
        nonces: a shared per-origin :class:`~dpopkit.client.flow.NonceCache`.
        clock: the time source for ``iat`` (``time.time``).
        max_nonce_retries: ``use_dpop_nonce`` retries per request (default 1).
        buffer_request_body: read streaming request bodies into memory so that a
            nonce retry can resend them.
        learn_clock_skew: learn a per-origin clock offset from ``Date`` headers.
        allow_insecure_http: allow ``http://`` (loopback tests only).

    Raises (from ``client.send``):
        MissingNonceError: ``use_dpop_nonce`` without a usable ``DPoP-Nonce``.
        NonceRetryExhaustedError: the server keeps asking (loop protection).
    """

    requires_request_body = False
    requires_response_body = False

    def __init__(
        self,
        key: DPoPKey,
        *,
        token: str | TokenSource | None = None,
        nonces: NonceCache | None = None,
        clock: Clock = time.time,
        max_nonce_retries: int = 1,
        buffer_request_body: bool = False,
        learn_clock_skew: bool = True,
        allow_insecure_http: bool = False,
    ) -> None:
        if buffer_request_body:
            self.requires_request_body = True
        self._configure(
            key,
            token=token,
            nonces=nonces,
            clock=clock,
            max_nonce_retries=max_nonce_retries,
            learn_clock_skew=learn_clock_skew,
            allow_insecure_http=allow_insecure_http,
        )

    @property
    def event_hooks(self) -> dict[str, list[Callable[[httpx.Request], None]]]:
        """The request hook an ``httpx.Client`` that follows redirects needs.

        httpx runs an auth flow once per request and follows redirects inside it,
        copying the headers to each hop; only the client's request hook sees the
        hops. With it, a hop on the same origin gets a fresh proof (new ``jti``, its
        own ``htm``/``htu``, ``ath``) and a hop to another origin gets neither
        ``DPoP`` nor ``Authorization`` (nor does any hop after it)::

            httpx.Client(auth=auth, follow_redirects=True, event_hooks=auth.event_hooks)

        Without it, a followed redirect raises ``ClientError``
        (``REDIRECT_NOT_SIGNED``) once the answer arrives.
        """
        return {"request": [_on_request]}

    @property
    def async_event_hooks(self) -> dict[str, list[Callable[[httpx.Request], Awaitable[None]]]]:
        """:attr:`event_hooks` for an ``httpx.AsyncClient``."""
        return {"request": [_aon_request]}

    def _exchange(self, request: httpx.Request, token: str | None) -> _Exchange:
        return _Exchange(self, request, token)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """The I/O-free flow: uses a response body only if the caller already read it."""
        exchange = self._exchange(request, None if self.source is None else self.source.get())
        next_request: httpx.Request | bool | None = exchange.start()
        while isinstance(next_request, httpx.Request):
            response = yield next_request
            next_request = exchange.step(response)

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """The ``httpx.Client`` flow (reads a 400 body only when it may be a nonce error)."""
        if self.requires_request_body:
            request.read()
        source = self.source
        exchange = self._exchange(request, None if source is None else source.get())
        next_request: httpx.Request | bool | None = exchange.start()
        while isinstance(next_request, httpx.Request):
            response = yield next_request
            if wants_body(response.status_code, response.headers):
                response.read()
            next_request = exchange.step(response)
            if next_request is True:
                assert source is not None
                assert exchange.token is not None
                new = source.invalidate(exchange.token)
                next_request = exchange.refreshed_token(response, new)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The ``httpx.AsyncClient`` flow; a blocking token refresh runs in a worker thread."""
        if self.requires_request_body:
            await request.aread()
        source = self.source
        token: str | None = None
        if source is not None:
            token = source.current()
            if token is None:
                # Refreshes are serialised inside the source: many waiting tasks, one refresh.
                token = await anyio.to_thread.run_sync(source.get)
        exchange = self._exchange(request, token)
        next_request: httpx.Request | bool | None = exchange.start()
        while isinstance(next_request, httpx.Request):
            response = yield next_request
            if wants_body(response.status_code, response.headers):
                await response.aread()
            next_request = exchange.step(response)
            if next_request is True:
                assert source is not None
                assert exchange.token is not None
                new = await anyio.to_thread.run_sync(source.invalidate, exchange.token)
                next_request = exchange.refreshed_token(response, new)


def httpx_sender(client: httpx.Client) -> Sender:
    """Adapt an ``httpx.Client`` to the token client's sender protocol.

    Returns a callable ``(RequestView) -> ResponseView`` for
    :class:`~dpopkit.client.tokens.TokenClient` (``sender=``), so token requests
    share the client's connection pool, proxies and TLS settings.
    """

    def send(request: RequestView) -> ResponseView:
        response = client.request(
            request.method,
            request.url,
            headers=list(request.headers.items_all()),
            content=request.body,
            follow_redirects=False,
        )
        return ResponseView(
            status=response.status_code,
            headers=tuple(response.headers.multi_items()),
            body=response.content,
        )

    return send
