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
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Generator, Mapping
from typing import Any, Final

from dpopkit.client._auth import _AuthSettings
from dpopkit.client.flow import (
    INVALID_TOKEN,
    Clock,
    NonceCache,
    Retry,
    parse_json_body,
    wants_body,
)
from dpopkit.client.tokens import Sender, TokenSource
from dpopkit.core.http import DPOP_NONCE_HEADER, Headers, RequestView, ResponseView
from dpopkit.core.keys import DPoPKey
from dpopkit.errors import ChallengeError, ClientError, Reason, requires_extra

with requires_extra("httpx", needed_by=__name__):
    import anyio.to_thread
    import httpx

__all__ = ["DPoPAuth", "dpop_error", "httpx_sender"]

_ERROR_KEY: Final = "dpopkit.error"
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


class _Exchange:
    """The per-request state of one auth flow (shared by the sync and async paths)."""

    __slots__ = ("auth", "flow", "refreshed", "request", "token")

    def __init__(self, auth: DPoPAuth, request: httpx.Request, token: str | None) -> None:
        self.auth = auth
        self.request = request
        self.token = token
        self.refreshed = False
        self.flow = auth.new_flow()

    def start(self) -> httpx.Request:
        headers = self.flow.prepare(self.request.method, str(self.request.url), self.token)
        _set_headers(self.request, headers)
        return self.request

    def step(self, response: httpx.Response) -> httpx.Request | bool | None:
        """The next request, None when done, or True when a token refresh should be tried."""
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
