"""Framework-free HTTP views: what adapters translate to and from.

A :class:`RequestView` is what the guard (RS) and the token service (AS) read;
a :class:`ResponseView` is what they answer. Header names compare
case-insensitively (RFC 9110 §5.1); values are kept exactly as received, and a
field that arrived several times keeps every occurrence (RFC 9449 §4.3 (1)
needs to see duplicates).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

__all__ = [
    "AUTH_SCHEME",
    "DPOP_HEADER",
    "DPOP_NONCE_HEADER",
    "Headers",
    "RequestView",
    "ResponseView",
]

DPOP_HEADER = "DPoP"
DPOP_NONCE_HEADER = "DPoP-Nonce"
AUTH_SCHEME = "DPoP"


class Headers(Mapping[str, str]):
    """A read-only, case-insensitive, multi-valued header mapping.

    ``headers["dpop"]`` returns the first value; :meth:`get_all` returns every
    occurrence in order, which is what duplicate checks must use.
    """

    __slots__ = ("_index", "_items")

    _items: tuple[tuple[str, str], ...]
    _index: dict[str, list[str]]

    def __init__(self, items: Iterable[tuple[str, str]] | Mapping[str, str] | None = None) -> None:
        if items is None:
            pairs: tuple[tuple[str, str], ...] = ()
        elif isinstance(items, Mapping):
            if isinstance(items, Headers):
                pairs = items._items
            else:
                pairs = tuple((str(k), str(v)) for k, v in items.items())
        else:
            pairs = tuple((str(k), str(v)) for k, v in items)
        index: dict[str, list[str]] = {}
        for name, value in pairs:
            index.setdefault(name.lower(), []).append(value)
        self._items = pairs
        self._index = index

    def __getitem__(self, name: str) -> str:
        return self._index[name.lower()][0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def get_all(self, name: str) -> list[str]:
        """Return every value of the field ``name``, in the order received."""
        return list(self._index.get(name.lower(), ()))

    def items_all(self) -> tuple[tuple[str, str], ...]:
        """Return every (name, value) pair, in the order received."""
        return self._items

    def with_items(self, *extra: tuple[str, str]) -> Headers:
        """Return a copy with ``extra`` pairs appended."""
        return Headers(self._items + tuple(extra))

    def __repr__(self) -> str:
        names = ", ".join(sorted(self._index))
        return f"Headers([{names}])"  # values may be secrets: never shown


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestView:
    """An HTTP request as the core sees it.

    Attributes:
        method: the request method, exactly as sent (case-sensitive, RFC 9110 §9.1).
        url: the absolute target URI the *client* used (adapters reconstruct it
            from configuration, never from ``Host`` alone).
        headers: the request header fields.
        body: the request body when the handler needs it (token endpoint), else None.
        client_address: the peer's IP address as the server saw it (for per-address
            limits such as login throttling), or None when unknown.
    """

    method: str
    url: str
    headers: Headers = field(default_factory=Headers)
    body: bytes | None = None
    client_address: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseView:
    """An HTTP response as the core produces it."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    #: why the request was refused (a reason code), for logs and metrics; never sent
    reason: str | None = None

    def header(self, name: str) -> str | None:
        """Return the first value of the header ``name`` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None
