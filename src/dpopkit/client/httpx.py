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
it, copying the request's headers (``DPoP`` included) to every hop. The auth
therefore also sets httpx's ``trace`` request extension, which httpcore calls
just before it writes each header block (HTTP/1.1 and HTTP/2): a hop on the
same origin goes out with a fresh proof for its own method and URL (new ``jti``,
``ath``), and a hop to another origin (scheme, host or port) goes out with
neither ``DPoP`` nor ``Authorization``, nor does any later hop. This holds for
httpx's default transports with nothing to wire. A transport that does not use
httpcore (``ASGITransport``, ``WSGITransport``, ``MockTransport``) never calls
the trace: a client that follows redirects through one needs the auth's request
hook (``event_hooks=auth.event_hooks``, or ``auth.async_event_hooks`` for an
``AsyncClient``), and a redirect followed there without it raises
``ClientError`` (``REDIRECT_NOT_SIGNED``). A ``trace`` the caller set is still
called, after the check. When the client does not follow redirects (httpx's
default), ``response.next_request`` already holds the right headers, and
sending it through the client applies the same rule.
"""

from __future__ import annotations

from typing import ClassVar

from dpopkit.errors import requires_extra

with requires_extra("httpx", needed_by=__name__):
    import httpcore
    import httpx

    from dpopkit.client._httpx_flow import (
        DPoPAuthBase,
        HttpModule,
        dpop_error,
        make_async_sender,
        make_sender,
    )

from dpopkit.client.senders import AsyncSender, Sender

__all__ = ["DPoPAuth", "dpop_error", "httpx_async_sender", "httpx_sender"]


class DPoPAuth(DPoPAuthBase, httpx.Auth):
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

    _http: ClassVar[HttpModule] = HttpModule(
        Request=httpx.Request,
        ByteStream=httpx.ByteStream,
        ResponseNotRead=httpx.ResponseNotRead,
        WireRequest=httpcore.Request,
    )


def httpx_sender(client: httpx.Client) -> Sender:
    """Adapt an ``httpx.Client`` to the token client's sender protocol.

    Returns a callable ``(RequestView) -> ResponseView`` for
    :class:`~dpopkit.client.tokens.TokenClient` (``sender=``), so token requests
    share the client's connection pool, proxies and TLS settings.
    """
    return make_sender(client)


def httpx_async_sender(client: httpx.AsyncClient) -> AsyncSender:
    """Adapt an ``httpx.AsyncClient`` to :class:`~dpopkit.client.tokens.AsyncTokenClient`.

    Pass it as ``sender=``: token requests share the client's pool and never block the
    event loop (asyncio or trio).
    """
    return make_async_sender(client)
