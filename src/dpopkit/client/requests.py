"""DPoP for requests: a ``requests.auth.AuthBase`` (RFC 9449 §4, §7, §8, §9).

```python
import requests
from dpopkit import DPoPKey
from dpopkit.client.requests import DPoPAuth

requests.get("https://api.example/items", auth=DPoPAuth(DPoPKey.generate(), token=at))
```

Modelled on ``requests.auth.HTTPDigestAuth.handle_401``: the response hook
drains and closes the first response before a retry, rewinds a seekable body,
resends through the same connection adapter, and appends the first response to
``history``. All per-request state lives in a closure made for that request, so
one instance is safe to share across threads. A body that cannot be rewound (a
generator) is never resent; :func:`dpop_error` then says why. When requests follows
a redirect on the same origin the redirected request gets a proof of its own; to
another origin neither the proof nor the token follows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urljoin

from dpopkit.client._auth import _AuthSettings
from dpopkit.client.flow import (
    INVALID_TOKEN,
    Clock,
    DPoPFlow,
    NonceCache,
    Retry,
    origin_of,
    parse_json_body,
    wants_body,
)
from dpopkit.client.senders import Sender
from dpopkit.client.sources import TokenSource
from dpopkit.core.http import Headers, RequestView, ResponseView
from dpopkit.core.keys import DPoPKey
from dpopkit.errors import ChallengeError, ClientError, Reason, requires_extra

with requires_extra("requests", needed_by=__name__):
    import requests
    from requests.cookies import extract_cookies_to_jar

__all__ = ["DPoPAuth", "dpop_error", "requests_sender"]

_ERROR_ATTR: Final = "dpopkit_error"


def dpop_error(response: requests.Response) -> ClientError | None:
    """Return why :class:`DPoPAuth` handed back ``response`` without retrying, or None."""
    value = getattr(response, _ERROR_ATTR, None)
    return value if isinstance(value, ClientError) else None


class DPoPAuth(_AuthSettings, requests.auth.AuthBase):
    """Sign every requests call with a DPoP proof and handle server nonces.

    Args:
        key: the client's :class:`~dpopkit.DPoPKey`.
        token: an access token, a :class:`~dpopkit.client.tokens.TokenSource`, or None.
        nonces: a shared per-origin :class:`~dpopkit.client.flow.NonceCache`.
        clock: the time source for ``iat``.
        max_nonce_retries: ``use_dpop_nonce`` retries per request (default 1).
        learn_clock_skew: learn a per-origin clock offset from ``Date`` headers.
        allow_insecure_http: allow ``http://`` (loopback tests only).

    Raises (from the call):
        MissingNonceError: ``use_dpop_nonce`` without a usable ``DPoP-Nonce``.
        NonceRetryExhaustedError: the server keeps asking (loop protection).
    """

    def __init__(
        self,
        key: DPoPKey,
        *,
        token: str | TokenSource | None = None,
        nonces: NonceCache | None = None,
        clock: Clock = time.time,
        max_nonce_retries: int = 1,
        learn_clock_skew: bool = True,
        allow_insecure_http: bool = False,
    ) -> None:
        self._configure(
            key,
            token=token,
            nonces=nonces,
            clock=clock,
            max_nonce_retries=max_nonce_retries,
            learn_clock_skew=learn_clock_skew,
            allow_insecure_http=allow_insecure_http,
        )

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        """Add the proof (and token) and register the nonce-retry response hook."""
        token = None if self.source is None else self.source.get()
        flow = self.new_flow()
        assert r.method is not None
        assert r.url is not None
        r.headers.update(flow.prepare(r.method, r.url, token))
        body_pos: int | None = None
        tell = getattr(r.body, "tell", None)
        if tell is not None:
            try:
                body_pos = tell()
            except OSError:
                body_pos = None
        state = _RequestState(self, flow, token, body_pos)
        r.register_hook("response", state.handle)  # type: ignore[no-untyped-call]
        return r


class _RequestState:
    """Per-request state; its bound ``handle`` is the response hook of one request."""

    __slots__ = ("auth", "body_pos", "flow", "left", "refreshed", "token")

    def __init__(
        self, auth: DPoPAuth, flow: DPoPFlow, token: str | None, body_pos: int | None
    ) -> None:
        self.auth = auth
        self.flow = flow
        self.token = token
        self.body_pos = body_pos
        self.refreshed = False
        # A redirect of this request went to another origin: from then on the chain
        # carries no credentials and its answers are not acted on (no retry, no nonce).
        self.left = False

    def _replayable(self, body: object) -> bool:
        if body is None or isinstance(body, bytes | str):
            return True
        return self.body_pos is not None and hasattr(body, "seek")

    def handle(self, r: requests.Response, **kwargs: Any) -> requests.Response:
        # The hook is copied onto the retried request; requests does not dispatch it for
        # the response we get from connection.send, so each response passes here once.
        while True:
            action = None if self.left else self._decide(r)
            if action is None:
                if r.is_redirect:
                    self._prepare_redirect(r)
                return r
            prep = r.request.copy()
            if not self._replayable(prep.body):
                setattr(
                    r,
                    _ERROR_ATTR,
                    ChallengeError(
                        Reason.BODY_NOT_REPLAYABLE,
                        "the server asked for a retry but the request body cannot be replayed",
                        detail={"status": r.status_code},
                    ),
                )
                return r
            if self.body_pos is not None:
                prep.body.seek(self.body_pos)  # type: ignore[union-attr]
            # HTTPDigestAuth.handle_401: consume and release the first response.
            r.content  # noqa: B018
            r.close()
            jar = prep._cookies  # type: ignore[attr-defined]
            extract_cookies_to_jar(jar, r.request, r.raw)  # type: ignore[no-untyped-call]
            prep.prepare_cookies(jar)
            prep.headers.update(action.headers)
            adapter: Any = r.connection  # set by HTTPAdapter.build_response
            new = adapter.send(prep, **kwargs)
            new.history.append(r)
            new.request = prep
            r = new

    def _prepare_redirect(self, r: requests.Response) -> None:
        """Give the request that requests will copy for a redirect a proof of its own.

        A proof is bound to one method and URL (RFC 9449 §4.2), and requests copies
        the headers when it follows a redirect: on the same origin the copy gets a
        fresh proof (new ``jti``, the redirect's ``htm``/``htu``); to another origin
        neither the proof nor the token follows, and once the chain has left the
        origin no later hop gets them back (the other origin chose where it goes).
        """
        request = r.request
        location = r.headers["location"].encode("latin-1").decode("utf-8", "replace")
        target = urljoin(r.url, location)
        method = request.method or "GET"
        if (r.status_code in (302, 303) and method != "HEAD") or (
            r.status_code == 301 and method == "POST"
        ):
            method = "GET"  # as Session.rebuild_method does
        try:
            same_origin = not self.left and origin_of(target) == self.flow.origin
        except ValueError:
            same_origin = False
        if not same_origin:
            self.left = True
            request.headers.pop("DPoP", None)
            request.headers.pop("Authorization", None)
            return
        self.flow = self.auth.new_flow()
        request.headers.update(self.flow.prepare(method, target, self.token))

    def _decide(self, r: requests.Response) -> Retry | None:
        body: Mapping[str, Any] | None = None
        if wants_body(r.status_code, r.headers):
            body = parse_json_body(r.content)
        headers = Headers(_multi_items(r))
        action = self.flow.on_response(r.status_code, headers, body)
        if isinstance(action, Retry):
            return action
        source = self.auth.source
        if (
            self.flow.last_error == INVALID_TOKEN
            and source is not None
            and self.token is not None
            and not self.refreshed
        ):
            self.refreshed = True
            new = source.invalidate(self.token)
            if new is not None and new != self.token:
                self.token = new
                return self.flow.with_token(new)
        return None


def _multi_items(r: requests.Response) -> list[tuple[str, str]]:
    """Every header field, repeated ones kept apart when urllib3 still has them."""
    raw = getattr(r, "raw", None)
    raw_headers = getattr(raw, "headers", None)
    getlist = getattr(raw_headers, "getlist", None)
    if getlist is None:
        return list(r.headers.items())
    items: list[tuple[str, str]] = []
    for name in r.headers:
        items.extend((name, value) for value in getlist(name))
    return items


def requests_sender(session: requests.Session, *, timeout: float = 10.0) -> Sender:
    """Adapt a ``requests.Session`` to the token client's sender protocol.

    Returns a callable ``(RequestView) -> ResponseView`` for
    :class:`~dpopkit.client.tokens.TokenClient` (``sender=``).
    """

    def send(request: RequestView) -> ResponseView:
        response = session.request(
            request.method,
            request.url,
            headers=dict(request.headers.items_all()),
            data=request.body,
            allow_redirects=False,
            timeout=timeout,
        )
        return ResponseView(
            status=response.status_code,
            headers=tuple(_multi_items(response)),
            body=response.content,
        )

    return send
