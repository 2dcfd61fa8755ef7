"""``htu`` normalisation and comparison (RFC 9449 §4.3 (9), RFC 3986 §6.2.2-§6.2.3).

Both the claim and the URI the server was reached at are normalised, then
compared as strings:

1. scheme and host lower-case (§6.2.2.1); only ``http`` and ``https``;
2. hex digits of percent-encodings upper-case (§6.2.2.1);
3. percent-encoded unreserved characters decoded, reserved ones kept (§6.2.2.2);
4. dot segments removed (§6.2.2.3, §5.2.4);
5. an empty or default port dropped, an empty path made ``/`` (§6.2.3);
6. query and fragment dropped (RFC 9449 §4.2).

Trailing slashes and path case are significant. A userinfo part, a
non-ASCII host, control characters or broken percent-encodings are refused
(``ValueError``): such a value is never a valid ``htu``.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["htu_matches", "normalize_htu", "remove_dot_segments"]

_DEFAULT_PORTS = {"http": "80", "https": "443"}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT_RE = re.compile(r"%([0-9A-Fa-f]{2})")
# RFC 3986 pchar plus '/', and '%' for encodings checked separately.
_PATH_OK = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_HOST_RE = re.compile(r"[a-z0-9\-._~!$&'()*+,;=%]*")
_IPV6_RE = re.compile(r"\[[0-9a-f:.]+\]")
_PORT_RE = re.compile(r"[0-9]*")
MAX_HTU_LENGTH = 4096


def remove_dot_segments(path: str) -> str:
    """Remove ``.`` and ``..`` segments (RFC 3986 §5.2.4)."""
    if "." not in path:
        return path
    output: list[str] = []
    inp = path
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = "/" + inp[4:]
            if output:
                output.pop()
        elif inp == "/..":
            inp = "/"
            if output:
                output.pop()
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            cut = inp.find("/", start)
            if cut == -1:
                cut = len(inp)
            output.append(inp[:cut])
            inp = inp[cut:]
    return "".join(output)


def _normalize_pct(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _normalize_path(path: str) -> str:
    if not path.isascii():
        # IRIs: encode non-ASCII characters as UTF-8 octets (RFC 3987 §3.1).
        path = "".join(
            c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in path
        )
    if not _PATH_OK.fullmatch(path):
        raise ValueError("htu path has characters a URI cannot hold")
    if "%" in path:
        if path.count("%") != len(_PCT_RE.findall(path)):
            raise ValueError("broken percent-encoding in htu")
        path = _PCT_RE.sub(_normalize_pct, path)
    path = remove_dot_segments(path)
    return path or "/"


@lru_cache(maxsize=4096)
def normalize_htu(uri: str) -> str:
    """Normalise an HTTP(S) URI for ``htu`` comparison (RFC 9449 §4.3; RFC 3986 §6.2.2-6.2.3).

    Args:
        uri: an absolute ``http`` or ``https`` URI (query and fragment allowed, then dropped).

    Returns:
        ``scheme://host[:port]/path`` in normal form.

    Raises:
        ValueError: not an absolute http(s) URI, a userinfo part, a bad host or
            port, characters a URI cannot hold, or longer than 4096 characters.
    """
    if not isinstance(uri, str):
        raise ValueError("htu must be a string")
    if len(uri) > MAX_HTU_LENGTH:
        raise ValueError("htu too long")
    if any(ord(c) < 0x21 or c == "\x7f" for c in uri):
        raise ValueError("htu contains spaces or control characters")
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        raise ValueError("htu must be an absolute http or https URI")
    # Cut the fragment, then the query (RFC 3986 §3.4, §3.5).
    rest = rest.partition("#")[0].partition("?")[0]
    slash = rest.find("/")
    authority, path = (rest, "") if slash == -1 else (rest[:slash], rest[slash:])
    if "@" in authority:
        raise ValueError("htu must not contain userinfo")
    authority = authority.lower()
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            raise ValueError("bad IPv6 literal in htu")
        host, port_part = authority[: end + 1], authority[end + 1 :]
        if not _IPV6_RE.fullmatch(host):
            raise ValueError("bad IPv6 literal in htu")
        if port_part and not port_part.startswith(":"):
            raise ValueError("junk after IPv6 literal in htu")
        port = port_part[1:]
    else:
        host, _, port = authority.partition(":")
        if not host.isascii() or not _HOST_RE.fullmatch(host):
            raise ValueError("bad host in htu")
        if "%" in host:
            if host.count("%") != len(_PCT_RE.findall(host)):
                raise ValueError("broken percent-encoding in htu host")
            host = _PCT_RE.sub(_normalize_pct, host).lower()
    if not host:
        raise ValueError("htu has no host")
    if not _PORT_RE.fullmatch(port) or len(port) > 5:
        raise ValueError("bad port in htu")
    port = port.lstrip("0") if port.strip("0") else ("0" if port else "")
    if port == "0" or (port and int(port) > 65535):
        raise ValueError("bad port in htu")
    if port == _DEFAULT_PORTS[scheme]:
        port = ""
    netloc = f"{host}:{port}" if port else host
    return f"{scheme}://{netloc}{_normalize_path(path)}"


def htu_matches(claim: str, uri: str) -> bool:
    """Return whether an ``htu`` claim names the same resource as ``uri`` (RFC 9449 §4.3 (9)).

    Both sides are normalised with :func:`normalize_htu`; a value that cannot be
    normalised never matches.
    """
    try:
        return normalize_htu(claim) == normalize_htu(uri)
    except ValueError:
        return False
