"""DPoP for httpx2: an ``httpx2.Auth`` for ``Client`` and ``AsyncClient`` (RFC 9449 §4, §7, §8, §9).

``httpx2`` is the fork of ``httpx`` that the ``mcp`` 2.x SDK sends its HTTP through.
This :class:`DPoPAuth` is the same flow as :class:`dpopkit.client.httpx.DPoPAuth`
(one implementation, :mod:`dpopkit.client._httpx_flow`, parametrised by the
package): a fresh proof per send, ``Authorization: DPoP``, ``DPoP-Nonce`` cached per
origin with one retry on ``use_dpop_nonce``, a streamed body never resent, and
redirect hops re-signed or stripped through ``httpcore2``'s ``trace`` extension.

```python
import httpx2
from dpopkit import DPoPKey
from dpopkit.client.httpx2 import DPoPAuth

auth = DPoPAuth(DPoPKey.generate(), token=access_token)
httpx2.get("https://api.example/items", auth=auth)
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from dpopkit.errors import ClientError, requires_extra

with requires_extra("httpx2", needed_by=__name__):
    import httpcore2
    import httpx2

    from dpopkit.client._httpx_flow import (
        DPoPAuthBase,
        HttpModule,
        make_async_sender,
        make_sender,
    )
    from dpopkit.client._httpx_flow import dpop_error as _dpop_error

if TYPE_CHECKING:
    from dpopkit.client.senders import AsyncSender, Sender

__all__ = ["DPoPAuth", "dpop_error", "httpx2_async_sender", "httpx2_sender"]


class DPoPAuth(DPoPAuthBase, httpx2.Auth):  # type: ignore[misc]
    """Sign every httpx2 request with a DPoP proof and handle server nonces.

    The arguments and behaviour are those of :class:`dpopkit.client.httpx.DPoPAuth`;
    use ``event_hooks=auth.event_hooks`` (``async_event_hooks``) on an
    ``httpx2`` client that follows redirects through an in-process transport.

    Args:
        key: the client's :class:`~dpopkit.DPoPKey`.
        token: an access token (str), a :class:`~dpopkit.client.tokens.TokenSource`,
            or None (token requests: only the proof is added).
        nonces: a shared per-origin :class:`~dpopkit.client.flow.NonceCache`.
        clock: the time source for ``iat`` (``time.time``).
        max_nonce_retries: ``use_dpop_nonce`` retries per request (default 1).
        buffer_request_body: read streaming request bodies into memory so that a
            nonce retry can resend them.
        learn_clock_skew: learn a per-origin clock offset from ``Date`` headers.
        allow_insecure_http: allow ``http://`` (loopback tests only).
    """

    _http: ClassVar[HttpModule] = HttpModule(
        Request=httpx2.Request,
        ByteStream=httpx2.ByteStream,
        ResponseNotRead=httpx2.ResponseNotRead,
        WireRequest=httpcore2.Request,
    )


def dpop_error(response: httpx2.Response) -> ClientError | None:
    """Return why :class:`DPoPAuth` handed back ``response`` without retrying, or None.

    Set when a ``use_dpop_nonce`` answer could not be retried because the request
    body cannot be replayed (``reason`` is ``BODY_NOT_REPLAYABLE``).
    """
    return _dpop_error(response)  # type: ignore[arg-type]


def httpx2_sender(client: httpx2.Client) -> Sender:
    """Adapt an ``httpx2.Client`` to the token client's sender protocol (see ``httpx_sender``)."""
    return make_sender(client)  # type: ignore[arg-type]


def httpx2_async_sender(client: httpx2.AsyncClient) -> AsyncSender:
    """Adapt an ``httpx2.AsyncClient`` to :class:`~dpopkit.client.tokens.AsyncTokenClient`.

    Pass it as ``sender=``: token requests share the client's pool and never block the
    event loop (asyncio or trio).
    """
    return make_async_sender(client)  # type: ignore[arg-type]
