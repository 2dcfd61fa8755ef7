"""The DPoP auth flow shared by the ``httpx`` and ``httpx2`` adapters (RFC 9449 §4, §7, §8, §9).

``httpx2`` (the HTTP client of the ``mcp`` 2.x SDK) is a fork of ``httpx`` with the
same ``Auth`` protocol, request and response types, and ``httpcore2`` beside it
with the same ``trace`` events. One implementation serves both: the classes here
name no HTTP package at run time and read the few types they test against from
:class:`HttpModule`, which :mod:`dpopkit.client.httpx` and
:mod:`dpopkit.client.httpx2` fill in with their own package. See
:mod:`dpopkit.client.httpx` for the behaviour (redirects, replayable bodies, nonces).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple, TypeVar

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
from dpopkit.client.senders import AsyncSender, Sender
from dpopkit.client.sources import TokenSource
from dpopkit.core.http import DPOP_HEADER, DPOP_NONCE_HEADER, Headers, RequestView, ResponseView
from dpopkit.core.htu import normalize_htu
from dpopkit.core.keys import DPoPKey
from dpopkit.errors import ChallengeError, ClientError, Reason, requires_extra

with requires_extra("httpx", needed_by=__name__):  # anyio comes with httpx and with httpx2
    import anyio.to_thread

if TYPE_CHECKING:  # the types of the httpx flavour; httpx2's are the same shapes
    import httpcore
    import httpx


class HttpModule(NamedTuple):
    """The run-time names of one HTTP package (``httpx`` or ``httpx2``) the flow tests against."""

    Request: type[Any]
    ByteStream: type[Any]
    ResponseNotRead: type[BaseException]
    WireRequest: type[Any]  # httpcore's (httpcore2's) request, seen by the trace


_T = TypeVar("_T")
_ERROR_KEY: Final = "dpopkit.error"
_EXCHANGE_KEY: Final = "dpopkit.exchange"
_NO_FIELDS: Final = Headers()
_DPOP_NONCE_LOWER: Final = DPOP_NONCE_HEADER.lower()
#: httpcore's trace events fired just before a request's header block is written.
_HEADER_EVENTS: Final = frozenset(
    {"http11.send_request_headers.started", "http2.send_request_headers.started"}
)
_CREDENTIALS: Final = [b"dpop", b"authorization"]  # the fields another origin never gets


def dpop_error(response: httpx.Response) -> ClientError | None:
    """Return why :class:`DPoPAuth` handed back ``response`` without retrying, or None.

    Set when a ``use_dpop_nonce`` answer could not be retried because the request
    body cannot be replayed (``reason`` is ``BODY_NOT_REPLAYABLE``).
    """
    value = response.extensions.get(_ERROR_KEY)
    return value if isinstance(value, ClientError) else None


def _replayable(request: httpx.Request, http: HttpModule) -> bool:
    return isinstance(request.stream, http.ByteStream)


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


def _take(minted: list[tuple[str, _T]], proof: str) -> _T | None:
    """Remove and return what ``proof`` was set for, or None when it is not in ``minted``."""
    for index, (value, made_for) in enumerate(minted):
        if value == proof:
            del minted[index]
            return made_for
    return None


def _strip_credentials(request: httpx.Request) -> None:
    request.headers.pop(DPOP_HEADER, None)
    request.headers.pop("Authorization", None)


def _send_key(method: str, host: str, url: str) -> tuple[str, str, str]:
    """What names one send: its method, ``Host`` and ``htu`` path (RFC 9449 §4.3).

    Not the connection's URL: a transport may route a request elsewhere (a load
    balancer keeps the ``Host`` and path it was given), and it is still the request
    the proof was made for.
    """
    try:
        path = "/" + normalize_htu(url).split("/", 3)[3]
    except ValueError:
        path = ""
    return method, host.lower(), path


def _field(fields: list[tuple[bytes, bytes]], name: bytes) -> str:
    return next((value.decode("latin-1") for key, value in fields if key.lower() == name), "")


def _wire_url(wire: httpcore.Request) -> str:
    """The absolute URL httpcore is about to send ``wire`` to."""
    url = wire.url
    target = url.target.decode("latin-1")
    if not target.startswith("/"):
        return target  # absolute-form, through a forwarding proxy (RFC 9112 §3.2.2)
    host = url.host.decode("latin-1")
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal (RFC 3986 §3.2.2)
    port = "" if url.port is None else f":{url.port}"
    return f"{url.scheme.decode('latin-1')}://{host}{port}{target}"


class _WireFix(NamedTuple):
    """What the trace changed on the wire for one send: ``flow`` None means stripped."""

    send: tuple[str, str, str]  # see _send_key
    flow: DPoPFlow | None
    headers: dict[str, str]


class _Exchange:
    """The per-request state of one auth flow (shared by the sync and async paths).

    It rides along in ``request.extensions`` (httpx hands the same mapping to every
    request it builds from a redirect), together with the ``trace`` callable that
    checks each header block on the wire, so the client's request hook, the trace
    and a later auth flow can tell a redirect hop of this request from a request of
    its own.
    """

    __slots__ = (
        "asynchronous",
        "auth",
        "caller",
        "flow",
        "left",
        "minted",
        "origin",
        "original",
        "refreshed",
        "request",
        "sent",
        "sent_nonce",
        "token",
        "url",
        "wire",
    )

    def __init__(
        self, auth: DPoPAuthBase, request: httpx.Request, token: str | None, asynchronous: bool
    ) -> None:
        self.auth = auth
        self.asynchronous = asynchronous
        self.original = request  # the request the caller made
        self.request = request  # the request being answered now (a same-origin hop later)
        self.token = token
        self.refreshed = False
        # The request's own DPoPFlow, made by _state() when an answer needs it (most do
        # not); the first send is made by the auth's shared flow, which keeps no state.
        self.flow: DPoPFlow | None = None
        self.origin = ""
        # A hop went to another origin: the chain carries no credentials from then on and
        # its answers are not acted on (no retry, no nonce learned, no token refresh).
        self.left = False
        self.sent: list[httpx.Request] = [request]  # requests whose credentials we set
        # Proofs set on a request and not yet on the wire → the request each was set on
        # and its method and URL then (a send key, by _send_key, only when the trace asks).
        # A short list, searched by equality: no hash of a ~700-character proof per send.
        self.minted: list[tuple[str, tuple[str, httpx.Request, str]]] = []
        self.wire: _WireFix | None = None  # what the trace changed on the last send

    # Set by start(): a trace the caller had set (called after ours), the URL the first
    # send was signed for, and the nonce its proof carries.
    caller: Any
    url: str
    sent_nonce: str | None

    def start(self) -> httpx.Request:
        request = self.request
        extensions = request.extensions
        prior = extensions.get(_EXCHANGE_KEY)
        caller = extensions.get("trace")
        if caller is not None:
            owner = getattr(caller, "__self__", None)
            if isinstance(owner, _Exchange):
                caller = owner.caller  # a hop of an earlier exchange: keep the caller's trace
        self.caller = caller
        # httpx's trace extension: this exchange's (bound) check, then the caller's.
        tracer = self.async_trace if self.asynchronous else self.sync_trace
        # A fresh mapping: the caller's extensions may be shared by other requests.
        request.extensions = {**extensions, _EXCHANGE_KEY: self, "trace": tracer}
        # A request httpx built from a redirect answered to one of ours (the caller
        # follows ``response.next_request``): the redirect rule applies.
        if (
            isinstance(prior, _Exchange)
            and request is not prior.original
            and not prior.may_follow(str(request.url))
        ):
            self.left = True
            _strip_credentials(request)
            return request
        url = str(request.url)  # (httpx builds the string anew at every str())
        method = request.method
        origin = origin_of(url)
        # Signed by the auth's shared flow, which keeps no state (see DPoPFlow._signed).
        headers, nonce = self.auth._flow_template._signed(method, url, self.token, origin)
        self.origin = origin
        self.url = url  # as signed: a transport may rewrite request.url in place later
        self.sent_nonce = nonce
        self._apply(request, headers, url)
        return request

    def _state(self) -> DPoPFlow:
        """The request's own flow, in the state ``prepare`` would have left it.

        Without a flow yet, the request is still the first one (a hop gets its flow when
        it is signed), as start() signed it.
        """
        flow = self.flow
        if flow is None:
            request = self.original
            flow = self.flow = self.auth.new_flow()
            flow._resume(request.method, self.url, self.origin, self.token, self.sent_nonce)
        return flow

    def _apply(self, request: httpx.Request, headers: Mapping[str, str], url: str = "") -> None:
        """Set ``headers`` on ``request`` and remember whom their proof was made for."""
        fields = request.headers
        for name, value in headers.items():
            fields[name] = value  # one by one: update() would build a second Headers
        self.minted.append(
            (headers[DPOP_HEADER], (request.method, request, url or str(request.url)))
        )

    def may_follow(self, url: str) -> bool:
        """Whether credentials may go to ``url``, a redirect hop of this exchange.

        Only on the request's own origin (RFC 6454: scheme, host and port), and only
        while the chain has not been elsewhere.
        """
        if self.left or not self.origin:
            return False
        try:
            return origin_of(url) == self.origin
        except ValueError:
            return False

    def _credentials(self, method: str, url: str) -> tuple[DPoPFlow | None, dict[str, str]]:
        """The flow and headers of a redirect hop, or ``(None, {})``: it gets none.

        RFC 9449 §4.2: a proof is bound to one method and URL and its ``jti`` is used
        once, so the hop gets a proof of its own; to another origin nothing goes.
        """
        if not self.may_follow(url):
            self.left = True
            return None, {}
        flow = self.auth.new_flow()
        return flow, flow.prepare(method, url, self.token)

    def redirected(self, request: httpx.Request) -> None:
        """Set the credentials of a redirect hop httpx is about to send (request hook)."""
        if any(request is mine for mine in self.sent):
            return  # the first send, or a retry we made
        self.sent.append(request)
        flow, headers = self._credentials(request.method, str(request.url))
        if flow is None:
            _strip_credentials(request)
            return
        self._apply(request, headers)
        self.flow = flow  # answers now concern this hop: retries resend it, not the first
        self.request = request

    def sync_trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's ``trace`` extension for ``Client``: :meth:`on_trace`, then the caller's.

        httpcore calls it with ``"http11.send_request_headers.started"`` or
        ``"http2.send_request_headers.started"`` and the request about to be written,
        whose header list it reads only afterwards; the caller's trace is called after
        the check, so it sees what goes out.
        """
        self.on_trace(event, info)
        if self.caller is not None:
            self.caller(event, info)

    async def async_trace(self, event: str, info: dict[str, Any]) -> None:
        """:meth:`sync_trace` for ``AsyncClient`` (httpcore's async paths await the trace)."""
        self.on_trace(event, info)
        if self.caller is not None:
            await self.caller(event, info)

    def on_trace(self, event: str, info: Mapping[str, Any]) -> None:
        """Fix a header block before httpcore writes it (httpx's ``trace`` extension).

        A block whose proof was made for this very send (method, ``Host`` and path)
        and has not been on the wire goes as it is: the first send, a retry, a hop
        the request hook signed. Anything else is a redirect httpx followed with
        copied headers: it gets its own credentials for the URL it goes to, or
        none (:meth:`_credentials`).
        """
        wire = info.get("request")
        if event not in _HEADER_EVENTS or not isinstance(wire, self.auth._http.WireRequest):
            return
        if wire.method == b"CONNECT":
            return  # a proxy tunnel being opened, not one of our requests
        method = wire.method.decode("latin-1")
        url = _wire_url(wire)
        send = _send_key(method, _field(wire.headers, b"host"), url)
        made_for = _take(self.minted, _field(wire.headers, b"dpop"))  # a proof goes once
        if (
            made_for is not None
            and send[2]
            and not self.left
            and _send_key(made_for[0], made_for[1].headers.get("host", ""), made_for[2]) == send
        ):
            self.wire = None
            return
        flow, headers = self._credentials(method, url)
        # Another origin loses both fields; on this one only ours are replaced (a caller's
        # own Authorization, sent with a proof but no token, stays as httpx would keep it).
        names = (
            [name.lower().encode("ascii") for name in headers] if flow is not None else _CREDENTIALS
        )
        fields = [(k, v) for k, v in wire.headers if k.lower() not in names]
        fields += [(k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()]
        wire.headers = fields  # httpcore reads the list after this call
        self.wire = _WireFix(send, flow, headers)

    def _adopt(self, answered: httpx.Request) -> None:
        """Make the flow speak for ``answered``, the request a response answers.

        A hop the trace fixed on the wire becomes the request (its copy of the headers
        is corrected too): a ``use_dpop_nonce`` retry resends the hop, not the first
        request. A hop neither the trace nor the request hook saw went out with the
        first request's proof (and maybe its token): that is refused.
        """
        fixed, self.wire = self.wire, None
        mine = answered is self.request or any(answered is request for request in self.sent)
        if fixed is not None and fixed.send == _send_key(
            answered.method, answered.headers.get("host", ""), str(answered.url)
        ):
            if not mine:
                self.sent.append(answered)
            if fixed.flow is None:
                _strip_credentials(answered)
            else:
                _set_headers(answered, fixed.headers)
                self.flow = fixed.flow
                self.request = answered
        elif not mine:
            raise ClientError(
                Reason.REDIRECT_NOT_SIGNED,
                "httpx followed a redirect through a transport DPoPAuth cannot see; pass "
                "event_hooks=auth.event_hooks (or async_event_hooks) to the client",
                detail={"url": str(answered.url)},
            )

    def step(self, response: httpx.Response) -> httpx.Request | bool | None:
        """The next request, None when done, or True when a token refresh should be tried."""
        try:
            answered: httpx.Request | None = response.request
        except RuntimeError:  # a response built by hand (as in tests) answers no request
            answered = None
        # (_adopt has nothing to do for the request being answered when the trace fixed
        # no send: the usual case, decided here without the call)
        if answered is not None and (self.wire is not None or answered is not self.request):
            self._adopt(answered)
        if self.left:
            return None
        if response.next_request is not None:  # a redirect the client does not follow
            self._sanitise(response.next_request)
        status = response.status_code
        # A status other than 400 and 401 carries no error code and asks for no retry:
        # only a DPoP-Nonce is taken from it (RFC 9449 §8.2, §9; C-11), by on_response
        # below when there is one.
        # ("in" scans the lower-cased names httpx keeps; get_list lower-cases each again)
        if status != 400 and status != 401 and _DPOP_NONCE_LOWER not in response.headers:
            if self.flow is not None:
                self.flow.answered_without_error()
            return None
        body: Mapping[str, Any] | None = None
        if wants_body(response.status_code, response.headers):
            try:
                body = parse_json_body(response.content)
            except self.auth._http.ResponseNotRead:
                body = None
        flow = self._state()
        action = flow.on_response(response.status_code, _flow_headers(response), body)
        if not isinstance(action, Retry):
            if (
                flow.last_error == INVALID_TOKEN
                and self.auth.source is not None
                and self.token is not None
                and not self.refreshed
                and _replayable(self.request, self.auth._http)
            ):
                return True
            return None
        return self.retry(response, action)

    def _sanitise(self, hop: httpx.Request) -> None:
        """``response.next_request`` carries a copy of our headers: fix them for the hop."""
        flow, headers = self._credentials(hop.method, str(hop.url))
        if flow is None:
            _strip_credentials(hop)
        else:
            self._apply(hop, headers)

    def retry(self, response: httpx.Response, action: Retry) -> httpx.Request | None:
        if not _replayable(self.request, self.auth._http):
            # A streaming body is never resent; the answer comes back as it is.
            response.extensions[_ERROR_KEY] = ChallengeError(
                Reason.BODY_NOT_REPLAYABLE,
                "the server asked for a retry but the request body cannot be replayed",
                detail={"status": response.status_code},
            )
            return None
        self._apply(self.request, action.headers)
        return self.request

    def refreshed_token(self, response: httpx.Response, token: str | None) -> httpx.Request | None:
        self.refreshed = True
        if token is None or token == self.token:
            return None
        self.token = token
        return self.retry(response, self._state().with_token(token))


def _on_request(request: httpx.Request) -> None:
    exchange = request.extensions.get(_EXCHANGE_KEY)
    if isinstance(exchange, _Exchange):
        exchange.redirected(request)


async def _aon_request(request: httpx.Request) -> None:
    _on_request(request)


class DPoPAuthBase(_AuthSettings):
    """The flow of ``DPoPAuth``; a subclass adds its package's ``Auth`` and :class:`HttpModule`.

    Args: see :class:`dpopkit.client.httpx.DPoPAuth`.
    """

    _http: ClassVar[HttpModule]

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
        """The request hook for a following ``httpx.Client`` on an in-process transport.

        httpx follows redirects inside one auth flow, copying the headers to each
        hop. On httpx's default (httpcore) transports the auth's ``trace``
        extension fixes every hop on the wire, so this hook is optional there. A
        transport that does not use httpcore (``ASGITransport``, ``WSGITransport``,
        ``MockTransport``) never calls the trace: there only this hook sees the
        hops. Either way a hop on the same origin gets a fresh proof (new ``jti``,
        its own ``htm``/``htu``, ``ath``) and a hop to another origin gets neither
        ``DPoP`` nor ``Authorization`` (nor does any hop after it); a hop signed by
        the hook is not signed again by the trace::

            httpx.Client(auth=auth, follow_redirects=True, event_hooks=auth.event_hooks)

        A redirect followed through such a transport without it raises
        ``ClientError`` (``REDIRECT_NOT_SIGNED``) once the answer arrives.
        """
        return {"request": [_on_request]}

    @property
    def async_event_hooks(self) -> dict[str, list[Callable[[httpx.Request], Awaitable[None]]]]:
        """:attr:`event_hooks` for an ``httpx.AsyncClient``."""
        return {"request": [_aon_request]}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """The I/O-free flow: uses a response body only if the caller already read it."""
        token = None if self.source is None else self.source.get()
        exchange = _Exchange(self, request, token, False)
        next_request: httpx.Request | bool | None = exchange.start()
        while isinstance(next_request, self._http.Request):
            response = yield next_request
            next_request = exchange.step(response)

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """The ``httpx.Client`` flow (reads a 400 body only when it may be a nonce error)."""
        if self.requires_request_body:
            request.read()
        source = self.source
        token = None if source is None else source.get()
        exchange = _Exchange(self, request, token, False)
        next_request: httpx.Request | bool | None = exchange.start()
        request_type = self._http.Request
        while isinstance(next_request, request_type):
            response = yield next_request
            if response.status_code == 400 and wants_body(400, response.headers):
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
        aget = getattr(source, "aget", None)  # an AsyncRefreshingToken renews on the loop
        if source is not None:
            token = source.current()
            if token is None:
                # Refreshes are serialised inside the source: many waiting tasks, one refresh.
                if aget is not None:
                    token = await aget()
                else:
                    token = await anyio.to_thread.run_sync(source.get)
        exchange = _Exchange(self, request, token, True)
        next_request: httpx.Request | bool | None = exchange.start()
        while isinstance(next_request, self._http.Request):
            response = yield next_request
            if response.status_code == 400 and wants_body(400, response.headers):
                await response.aread()
            next_request = exchange.step(response)
            if next_request is True:
                assert source is not None
                assert exchange.token is not None
                ainvalidate = getattr(source, "ainvalidate", None)
                if ainvalidate is not None:
                    new = await ainvalidate(exchange.token)
                else:
                    new = await anyio.to_thread.run_sync(source.invalidate, exchange.token)
                next_request = exchange.refreshed_token(response, new)


def make_sender(client: httpx.Client) -> Sender:
    """Adapt an ``httpx.Client`` to the token client's sender protocol.

    Returns a callable ``(RequestView) -> ResponseView`` for
    :class:`~dpopkit.client.tokens.TokenClient` (``sender=``), so token requests
    share the client's connection pool, proxies and TLS settings.
    """

    def send(request: RequestView) -> ResponseView:
        return _view(client.request(request.method, request.url, **_request_options(request)))

    return send


def make_async_sender(client: httpx.AsyncClient) -> AsyncSender:
    """Adapt an ``httpx.AsyncClient`` (or ``httpx2``'s) to the async sender protocol."""

    async def send(request: RequestView) -> ResponseView:
        response = await client.request(request.method, request.url, **_request_options(request))
        return _view(response)

    return send


def _request_options(request: RequestView) -> dict[str, Any]:
    """What a token request sends besides its method and URL (redirects never followed)."""
    return {
        "headers": list(request.headers.items_all()),
        "content": request.body,
        "follow_redirects": False,
    }


def _view(response: httpx.Response) -> ResponseView:
    return ResponseView(
        status=response.status_code,
        headers=tuple(response.headers.multi_items()),
        body=response.content,
    )
