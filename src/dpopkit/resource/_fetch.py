"""The one capped fetch behind discovery, JWKS and introspection (sync and async).

Every document the resource server fetches is streamed and abandoned past
:data:`MAX_DOCUMENT` bytes or its total deadline, uncompressed, and must be a JSON
object; anything else is :class:`~dpopkit.errors.TemporarilyUnavailableError`
(503, fail closed). ``httpx`` is imported when a fetch runs; validators that fetch
call :func:`require_httpx` at construction so a missing extra shows at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from dpopkit.core.jws import JWSError, json_loads_object
from dpopkit.errors import requires_extra
from dpopkit.resource._shared import upstream_unavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import httpx

#: Largest JWKS, metadata or introspection answer (bytes) the RS reads.
MAX_DOCUMENT = 512 * 1024


def require_httpx(needed_by: str) -> None:
    """Fail at construction, not at the first request, when httpx is not installed."""
    with requires_extra("httpx", needed_by=needed_by):
        import httpx  # noqa: F401


#: What the RS asks for when it fetches a document: JSON, uncompressed (the cap counts the
#: bytes on the wire; a compressed answer could expand a thousandfold in one chunk).
FETCH_HEADERS: Final = {"Accept": "application/json", "Accept-Encoding": "identity"}


class CappedBody:
    """One fetched document, read chunk by chunk and abandoned past the cap or the deadline.

    Shared by the synchronous and asynchronous fetch helpers: the status, a declared
    ``Content-Length``, the content coding, and then every chunk are checked before
    the next is read, so a huge or endless answer costs at most the cap plus one chunk.
    """

    def __init__(self, response: httpx.Response, what: str, timeout: float) -> None:
        self.what = what
        if response.status_code != 200:
            raise upstream_unavailable(what)
        coding = response.headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raise upstream_unavailable(what)  # we asked for identity; no decompression bombs
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_DOCUMENT:
            raise upstream_unavailable(what)
        self.body = bytearray()
        # A total deadline: the client's timeout bounds each read, not a slow drip.
        self.deadline = time.monotonic() + timeout

    def add(self, chunk: bytes) -> None:
        self.body += chunk
        if len(self.body) > MAX_DOCUMENT or time.monotonic() > self.deadline:
            raise upstream_unavailable(self.what)

    def document(self) -> dict[str, Any]:
        try:
            return json_loads_object(bytes(self.body))
        except JWSError:
            raise upstream_unavailable(self.what) from None


def fetch_document(
    client: httpx.Client | None,
    method: str,
    url: str,
    *,
    what: str,
    seconds: float,
    data: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Fetch a JSON document (JWKS, discovery, introspection), streamed and capped.

    Raises:
        TemporarilyUnavailableError: unreachable, not 200, compressed, larger than the
            cap, slower than ``seconds`` in total, or not a JSON object.
    """
    import httpx

    all_headers = {**FETCH_HEADERS, **(headers or {})}
    try:
        with (
            client_for(client, seconds) as http,
            http.stream(method, url, data=data, headers=all_headers, timeout=seconds) as response,
        ):
            body = CappedBody(response, what, seconds)
            for chunk in response.iter_raw():
                body.add(chunk)
    except httpx.HTTPError as exc:
        raise upstream_unavailable(what, exc) from None
    return body.document()


async def afetch_document(
    client: httpx.AsyncClient | None,
    method: str,
    url: str,
    *,
    what: str,
    seconds: float,
    data: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The asynchronous :func:`fetch_document` (same checks, same cap)."""
    import httpx

    all_headers = {**FETCH_HEADERS, **(headers or {})}
    try:
        async with (
            async_client_for(client, seconds) as http,
            http.stream(method, url, data=data, headers=all_headers, timeout=seconds) as response,
        ):
            body = CappedBody(response, what, seconds)
            async for chunk in response.aiter_raw():
                body.add(chunk)
    except httpx.HTTPError as exc:
        raise upstream_unavailable(what, exc) from None
    return body.document()


@contextlib.contextmanager
def client_for(client: httpx.Client | None, seconds: float) -> Iterator[httpx.Client]:
    """The caller's client, or a fresh one that follows no redirects (closed afterwards)."""
    if client is not None:
        yield client
        return
    import httpx

    with httpx.Client(timeout=seconds, follow_redirects=False) as own:
        yield own


@contextlib.asynccontextmanager
async def async_client_for(
    client: httpx.AsyncClient | None, seconds: float
) -> AsyncIterator[httpx.AsyncClient]:
    """The caller's async client, or a fresh one that follows no redirects."""
    if client is not None:
        yield client
        return
    import httpx

    async with httpx.AsyncClient(timeout=seconds, follow_redirects=False) as own:
        yield own
