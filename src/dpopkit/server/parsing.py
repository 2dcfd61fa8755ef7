"""Untrusted request input, parsed once, bounded and typed before anything else reads it.

Every authorization-server endpoint reads its parameters through this module:
form bodies (RFC 6749 Appendix B), query strings (``/authorize``, RFC 6749
§4.1.1), JSON bodies (``/register``, RFC 7591 §3.1) and HTTP Basic client
credentials (RFC 6749 §2.3.1). What it returns is safe to compare, hash, render
and store on SQLite and PostgreSQL alike; whatever it refuses raises
:class:`~dpopkit.errors.InvalidRequestError` (the endpoint's OAuth error, never
a 500):

- size: a body of at most :data:`MAX_BODY_BYTES`, a query of at most
  :data:`MAX_QUERY_BYTES`, at most :data:`MAX_PARAMS` parameters;
- encoding: strict UTF-8 (also inside percent-escapes), no lone surrogates;
- characters: every name and value within RFC 6749 Appendix A
  ``UNICODECHARNOCRLF`` (no NUL, no other control character but TAB, no DEL,
  no surrogate, no U+FFFE/U+FFFF), the widest class any OAuth parameter allows;
  PostgreSQL cannot store NUL in text at all;
- JSON: dpopkit's strict parser (:func:`~dpopkit.core.jws.json_loads_object`:
  one object, no duplicate member, no ``NaN``/``Infinity``, nesting at most 32
  deep), then the same character rule for every member name and string.

Which parameters are required, repeated or well-formed stays with the endpoints.
"""

from __future__ import annotations

import binascii
import hmac
import re
from typing import Any
from urllib.parse import unquote_plus

from dpopkit.core.http import RequestView
from dpopkit.core.jws import JWSError, json_loads_object
from dpopkit.errors import InvalidRequestError, Reason

__all__ = [
    "FORM_MEDIA_TYPE",
    "JSON_MEDIA_TYPE",
    "MAX_BODY_BYTES",
    "MAX_PARAMS",
    "MAX_QUERY_BYTES",
    "check_text",
    "equal_text",
    "is_text",
    "media_type",
    "parse_basic_credentials",
    "parse_form",
    "parse_json_object",
    "parse_query",
    "parse_urlencoded",
]

#: Largest request body read (form or JSON).
MAX_BODY_BYTES = 65536
#: Largest query string (``/authorize``): common server and proxy limits are 8-16 KB.
MAX_QUERY_BYTES = 16384
#: Most parameters in one form or query (no OAuth request needs nearly as many).
MAX_PARAMS = 64
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
JSON_MEDIA_TYPE = "application/json"

# RFC 6749 Appendix A: UNICODECHARNOCRLF = %x09 / %x20-7E / %x80-D7FF / %xE000-FFFD
# / %x10000-10FFFF. A match of the complement is a character no parameter may hold.
_NOT_UNICODECHARNOCRLF = re.compile("[^\t\x20-\x7e\x80-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# RFC 3986 §2, RFC 9112 §3.2: a raw query holds visible ASCII only (spaces are escaped).
_RAW_QUERY = re.compile("[\x21-\x7e]*")


def is_text(value: str) -> bool:
    """Whether ``value`` holds only RFC 6749 Appendix A ``UNICODECHARNOCRLF`` characters."""
    return _NOT_UNICODECHARNOCRLF.search(value) is None


def check_text(value: str, *, what: str) -> str:
    """Return ``value`` if it holds only ``UNICODECHARNOCRLF`` characters.

    Raises:
        InvalidRequestError: a control character, NUL, DEL or a surrogate.
    """
    if not is_text(value):
        raise InvalidRequestError(Reason.INVALID_REQUEST, f"{what} holds a forbidden character")
    return value


def equal_text(received: str, expected: str) -> bool:
    """Compare a received value with a secret or stored one in constant time.

    :func:`hmac.compare_digest` refuses ``str`` arguments with non-ASCII characters
    (``TypeError``), which any request can send; the UTF-8 bytes compare instead.
    """
    return hmac.compare_digest(
        received.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def media_type(request: RequestView) -> str:
    """The request's media type, lower-case, without parameters ("" when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _decode(text: str) -> str:
    # Strict UTF-8 inside percent-escapes: unquote_plus would put U+FFFD in its place.
    return unquote_plus(text, encoding="utf-8", errors="strict")


def parse_urlencoded(text: str, *, what: str = "request") -> list[tuple[str, str]]:
    """Split ``application/x-www-form-urlencoded`` text into checked (name, value) pairs.

    Empty fields (``a=1&&b=2``) are skipped; a field without ``=`` is a name with an
    empty value; blank values are kept (endpoints read them as absent, RFC 6749 §3.1).

    Raises:
        InvalidRequestError: more than :data:`MAX_PARAMS` fields, invalid UTF-8 in an
            escape, or a character outside ``UNICODECHARNOCRLF``.
    """
    fields = [f for f in text.split("&") if f] if text else []
    if len(fields) > MAX_PARAMS:
        raise InvalidRequestError(Reason.INVALID_REQUEST, f"{what} has too many parameters")
    pairs: list[tuple[str, str]] = []
    try:
        for field in fields:
            name, _, value = field.partition("=")
            pairs.append((_decode(name), _decode(value)))
    except UnicodeDecodeError:
        raise InvalidRequestError(Reason.INVALID_REQUEST, f"{what} is not UTF-8") from None
    for name, value in pairs:
        check_text(name, what="a parameter name")
        check_text(value, what="a parameter value")
    return pairs


def parse_query(request: RequestView) -> list[tuple[str, str]]:
    """The checked parameters of the request URL's query (``/authorize``, RFC 6749 §4.1.1).

    Raises:
        InvalidRequestError: a query longer than :data:`MAX_QUERY_BYTES`, raw
            characters outside visible ASCII, or any :func:`parse_urlencoded` refusal.
    """
    query = request.url.partition("?")[2]
    if len(query) > MAX_QUERY_BYTES:
        raise InvalidRequestError(Reason.INVALID_REQUEST, "query too long")
    if not _RAW_QUERY.fullmatch(query):
        raise InvalidRequestError(Reason.INVALID_REQUEST, "malformed query")
    return parse_urlencoded(query, what="query")


def _body(request: RequestView, expected: str) -> bytes:
    if media_type(request) != expected:
        raise InvalidRequestError(Reason.INVALID_REQUEST, f"expected {expected}")
    body = request.body or b""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequestError(Reason.INVALID_REQUEST, "request body too large")
    return body


def parse_form(request: RequestView) -> list[tuple[str, str]]:
    """The checked parameters of an ``application/x-www-form-urlencoded`` body.

    Raises:
        InvalidRequestError: another media type, a body over :data:`MAX_BODY_BYTES`,
            not UTF-8, or any :func:`parse_urlencoded` refusal.
    """
    body = _body(request, FORM_MEDIA_TYPE)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError(Reason.INVALID_REQUEST, "form body is not UTF-8") from None
    return parse_urlencoded(text, what="form body")


def _check_json(value: object) -> None:
    # json_loads_object bounded the depth (32), so this recursion is bounded too.
    if isinstance(value, str):
        check_text(value, what="a JSON string")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, what="a JSON member name")
            _check_json(item)
    elif isinstance(value, list):
        for item in value:
            _check_json(item)


def parse_json_object(request: RequestView) -> dict[str, Any]:
    """The checked JSON object of an ``application/json`` body (RFC 8259).

    Raises:
        InvalidRequestError: another media type, a body over :data:`MAX_BODY_BYTES`,
            anything :func:`~dpopkit.core.jws.json_loads_object` refuses (not an
            object, duplicate members, non-finite numbers, invalid UTF-8, lone
            surrogates, nesting deeper than 32), or a string with a character
            outside ``UNICODECHARNOCRLF``.
    """
    body = _body(request, JSON_MEDIA_TYPE)
    try:
        data = json_loads_object(body)
    except JWSError:
        raise InvalidRequestError(Reason.INVALID_REQUEST, "malformed JSON") from None
    _check_json(data)
    return data


def parse_basic_credentials(credentials: str) -> tuple[str, str]:
    """Decode HTTP Basic client credentials (RFC 7617 §2, RFC 6749 §2.3.1).

    The base64 text decodes to UTF-8 ``id:secret``, each part form-urlencoded.

    Returns:
        ``(client_id, client_secret)``, both checked like any parameter.

    Raises:
        ValueError: malformed credentials (not base64, not UTF-8, no colon, a
            forbidden character); the caller answers ``invalid_client``.
    """
    # Non-ASCII text, bad base64 (binascii.Error) and bad UTF-8 are all ValueErrors.
    decoded = binascii.a2b_base64(credentials.strip(), strict_mode=True).decode("utf-8")
    raw_id, sep, raw_secret = decoded.partition(":")
    if not sep:
        raise ValueError("malformed Basic credentials")
    client_id, secret = _decode(raw_id), _decode(raw_secret)  # UnicodeDecodeError: ValueError
    if not (is_text(client_id) and is_text(secret)):
        raise ValueError("malformed Basic credentials")
    return client_id, secret
