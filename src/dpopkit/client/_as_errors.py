"""Authorization-server error responses (RFC 6749 §5.2) turned into typed errors.

The server's ``error`` and ``error_description`` are cleaned before they are
kept: they end up in logs and terminals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dpopkit.core.http import ResponseView
from dpopkit.errors import (
    AuthorizationServerError,
    DPoPError,
    InvalidClientError,
    InvalidGrantError,
    InvalidProofError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)

#: The error class of each OAuth error code the client knows.
OAUTH_ERRORS: dict[str, type[DPoPError]] = {
    "invalid_grant": InvalidGrantError,
    "invalid_client": InvalidClientError,
    "unauthorized_client": UnauthorizedClientError,
    "unsupported_grant_type": UnsupportedGrantTypeError,
    "invalid_scope": InvalidScopeError,
    "invalid_request": InvalidRequestError,
    "invalid_dpop_proof": InvalidProofError,
}

#: Longest server ``error_description`` kept (RFC 6749 §5.2 sets no limit; a log line does).
MAX_ERROR_DESCRIPTION = 300
# RFC 6749 §5.2: error and error_description use only %x20-21 / %x23-5B / %x5D-7E.
NOT_ERROR_CHAR = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")


def server_text(value: object, limit: int) -> str | None:
    """A server-supplied ``error``/``error_description`` made safe to print, or None.

    Characters RFC 6749 §5.2 does not allow (control characters, terminal escape
    sequences, quotes, non-ASCII) become ``?``; the text is cut to ``limit``.
    """
    if not isinstance(value, str) or not value:
        return None
    text = NOT_ERROR_CHAR.sub("?", value[:limit])
    return text + "..." if len(value) > limit else text


def error_from(response: ResponseView, data: Mapping[str, Any] | None) -> DPoPError:
    """The typed error for an RFC 6749 §5.2 error response (or a non-JSON failure).

    The server's ``error`` code and ``error_description`` are kept: a known code
    raises its own class (``InvalidGrantError``, ...), any other code, and an
    answer that is no error object at all, raise :class:`AuthorizationServerError`
    whose ``error`` is the server's code. ``detail`` holds the HTTP status, the
    code, the description and ``error_uri`` as the server sent them (cleaned).
    """
    code = None if data is None else server_text(data.get("error"), 100)
    description = (
        None if data is None else server_text(data.get("error_description"), MAX_ERROR_DESCRIPTION)
    )
    error_uri = None if data is None else server_text(data.get("error_uri"), 300)
    detail: dict[str, object] = {
        "status": response.status,
        "error": code,
        "error_description": description,
    }
    if error_uri is not None:
        detail["error_uri"] = error_uri
    if code is not None and code in OAUTH_ERRORS:
        return OAUTH_ERRORS[code](
            None, description or "the authorization server refused the request", detail=detail
        )
    text = description
    if text is None:
        text = f"the authorization server answered {response.status}"
        if code is None:
            text += " without an OAuth error object"
    return AuthorizationServerError(
        None,
        text,
        status=response.status,
        code=code,
        server_description=description,
        detail=detail,
    )
