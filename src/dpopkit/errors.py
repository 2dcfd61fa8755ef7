"""One error tree for every role, with wire codes, reason codes and HTTP rendering.

```
DPoPError                           base; error (wire code), reason (Reason), description (client-safe), status_code
├── InvalidProofError               invalid_dpop_proof (AS 400 JSON, RS 401 challenge)
├── UseNonceError                   use_dpop_nonce; .nonce = fresh value for DPoP-Nonce
├── InvalidTokenError               invalid_token (RS 401): expired, unknown, unbound, key binding
├── InsufficientScopeError          insufficient_scope (RS 403)
├── InvalidRequestError             invalid_request (400): e.g. two Authorization fields
├── OAuthError                      token-endpoint errors (RFC 6749 §5.2), AS 400 JSON
│   ├── InvalidGrantError           invalid_grant
│   ├── InvalidClientError          invalid_client (401)
│   ├── UnauthorizedClientError     unauthorized_client
│   ├── UnsupportedGrantTypeError   unsupported_grant_type
│   └── InvalidScopeError           invalid_scope
├── TemporarilyUnavailableError     503: a replay store or key source cannot be reached (fail closed)
│   └── ReplayStoreError            the replay cache failed or is full
├── ClientError                     client side
│   ├── NonceRetryExhaustedError    server asked for nonces beyond the retry budget (loop protection)
│   ├── MissingNonceError           use_dpop_nonce without a DPoP-Nonce header
│   ├── ChallengeError              the server answered with a challenge we cannot satisfy
│   └── TokenResponseError          a token response failed its checks (e.g. Bearer downgrade)
│       └── AuthorizationServerError  the AS answered with an error code we have no class for (kept as sent)
└── ServerConfigurationError        invalid server/RS setup detected at construction (also a ValueError)
SecurityWarning(UserWarning)        risky switches such as trust_host_header=True
MissingExtraError(ImportError)      an optional dependency is missing: names the extra to install
```

Tests, logs and metrics use ``reason`` (a :class:`Reason`), never the message
text. ``description`` is safe to send to the peer: it never echoes an expected
``htu``, ``ath`` or ``jkt``. Details for logs go in ``detail``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from typing import ClassVar, Literal

from dpopkit.core.challenge import build_challenge
from dpopkit.core.http import DPOP_NONCE_HEADER, ResponseView

__all__ = [
    "AuthorizationServerError",
    "ChallengeError",
    "ClientError",
    "DPoPError",
    "InsufficientScopeError",
    "InvalidClientError",
    "InvalidGrantError",
    "InvalidProofError",
    "InvalidRequestError",
    "InvalidScopeError",
    "InvalidTokenError",
    "MissingExtraError",
    "MissingNonceError",
    "NonceRetryExhaustedError",
    "OAuthError",
    "Reason",
    "ReplayStoreError",
    "SecurityWarning",
    "ServerConfigurationError",
    "TemporarilyUnavailableError",
    "TokenResponseError",
    "UnauthorizedClientError",
    "UnsupportedGrantTypeError",
    "UseNonceError",
]


class Reason(StrEnum):
    """Fine-grained reason codes. Stable: tests, logs and metrics rely on them."""

    # proof structure and header (RFC 9449 §4.3 (1)-(7))
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    MULTIPLE_PROOFS = "multiple_proofs"
    MISSING_PROOF = "missing_proof"
    BAD_TYP = "bad_typ"
    UNSUPPORTED_ALG = "unsupported_alg"
    BAD_JWK = "bad_jwk"
    PRIVATE_JWK = "private_jwk"
    BAD_SIGNATURE = "bad_signature"
    UNSUPPORTED_CRIT = "unsupported_crit"
    # claims (RFC 9449 §4.3 (3), (8)-(12))
    MISSING_CLAIM = "missing_claim"
    BAD_CLAIM = "bad_claim"
    HTM_MISMATCH = "htm_mismatch"
    HTU_MISMATCH = "htu_mismatch"
    ATH_MISMATCH = "ath_mismatch"
    IAT_TOO_OLD = "iat_too_old"
    IAT_IN_FUTURE = "iat_in_future"
    EXP_IN_PAST = "exp_in_past"
    NBF_IN_FUTURE = "nbf_in_future"
    REPLAYED_JTI = "replayed_jti"
    NONCE_MISMATCH = "nonce_mismatch"
    NONCE_REQUIRED = "nonce_required"
    JKT_MISMATCH = "jkt_mismatch"
    # access tokens and schemes (RS)
    MISSING_TOKEN = "missing_token"
    MULTIPLE_AUTHORIZATION = "multiple_authorization"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    BOUND_TOKEN_AS_BEARER = "bound_token_as_bearer"
    UNBOUND_TOKEN_AS_DPOP = "unbound_token_as_dpop"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_INACTIVE = "token_inactive"
    SCOPE_MISSING = "scope_missing"
    # authorization server
    INVALID_GRANT = "invalid_grant"
    INVALID_CLIENT = "invalid_client"
    UNAUTHORIZED_CLIENT = "unauthorized_client"
    UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
    INVALID_SCOPE = "invalid_scope"
    INVALID_REQUEST = "invalid_request"
    DPOP_REQUIRED = "dpop_required"
    # infrastructure
    STORE_UNAVAILABLE = "store_unavailable"
    STORE_FULL = "store_full"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    SERVER_BUSY = "server_busy"
    RATE_LIMITED = "rate_limited"
    # client
    NONCE_RETRY_EXHAUSTED = "nonce_retry_exhausted"
    MISSING_NONCE = "missing_nonce"
    CHALLENGE = "challenge"
    TOKEN_RESPONSE = "token_response"
    BODY_NOT_REPLAYABLE = "body_not_replayable"
    REDIRECT_NOT_SIGNED = "redirect_not_signed"  # httpx followed a redirect the auth never saw
    ISS_MISSING = "iss_missing"  # RFC 9207 §2.4: the AS promised iss in callbacks, none came
    ISS_MISMATCH = "iss_mismatch"  # RFC 9207 §2.4: the callback's iss is another issuer
    CONFIGURATION = "configuration"


class SecurityWarning(UserWarning):
    """A risky setting was switched on (for example ``trust_host_header=True``)."""


class MissingExtraError(ImportError):
    """A module of dpopkit needs an optional dependency that is not installed.

    Raised when the module is imported or the object is constructed, never at the
    first request. The message is one line naming the extra to install, for example
    ``dpopkit.resource.fastapi needs fastapi: pip install 'dpopkit[fastapi]'``.

    Attributes:
        extra: the dpopkit extra that installs the missing package.
    """

    def __init__(self, *, extra: str, needed_by: str, missing: str | None) -> None:
        what = missing or extra
        super().__init__(f"{needed_by} needs {what}: pip install 'dpopkit[{extra}]'", name=missing)
        self.extra = extra


@contextmanager
def requires_extra(extra: str, *, needed_by: str) -> Iterator[None]:
    """Turn an ``ImportError`` of the block into a :class:`MissingExtraError` for ``extra``."""
    try:
        yield
    except ImportError as exc:
        if isinstance(exc, MissingExtraError):
            raise
        raise MissingExtraError(extra=extra, needed_by=needed_by, missing=exc.name) from None


Role = Literal["as", "rs"]

# RFC 6750 §3: error_description and scope use only %x20-21 / %x23-5B / %x5D-7E.
_NOT_RFC6750 = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _challenge_safe(text: str) -> str:
    """Replace what RFC 6750 §3 forbids in a challenge (a description may quote input)."""
    return _NOT_RFC6750.sub("?", text)


class DPoPError(Exception):
    """Base of every error dpopkit raises on bad input from a peer.

    Attributes:
        error: the OAuth wire code (RFC 6749 §5.2, RFC 6750 §3.1, RFC 9449 §12.2).
        reason: the fine-grained :class:`Reason`.
        description: a client-safe text (no expected values echoed).
        detail: extra facts for logs only (never sent to the peer).
    """

    error: str = "invalid_request"  # per class; an AuthorizationServerError keeps the AS's own
    rs_status: ClassVar[int] = 401
    as_status: ClassVar[int] = 400
    default_reason: ClassVar[Reason] = Reason.INVALID_REQUEST

    def __init__(
        self,
        reason: Reason | None = None,
        description: str | None = None,
        *,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        self.reason: Reason = reason if reason is not None else self.default_reason
        self.description: str = description or self.reason.value.replace("_", " ")
        self.detail: dict[str, object] = dict(detail or {})
        super().__init__(f"{self.error} ({self.reason.value}): {self.description}")

    @property
    def status_code(self) -> int:
        """The HTTP status at a resource server (``as_status`` at a token endpoint)."""
        return self.rs_status

    def www_authenticate(
        self,
        *,
        algs: Iterable[str] = (),
        realm: str | None = None,
        scheme: str = "DPoP",
        bearer: bool = False,
        bearer_error: bool = False,
    ) -> str:
        """Render the RS challenge(s) for this error (RFC 9449 §7.1, §7.2; RFC 6750 §3).

        Args:
            algs: the proof algorithms the RS accepts (``algs`` parameter, RS-12).
            realm: an optional realm.
            scheme: the scheme carrying the error (``DPoP`` unless the request used Bearer).
            bearer: also add a ``Bearer`` challenge (an RS that accepts both).
            bearer_error: put the error on the Bearer challenge (the request used Bearer).
        """
        dpop_params: list[tuple[str, str]] = []
        if realm is not None:
            dpop_params.append(("realm", realm))
        err_params = [
            ("error", self.error),
            ("error_description", _challenge_safe(self.description)),
        ]
        if isinstance(self, InsufficientScopeError) and self.scope:
            err_params.append(("scope", _challenge_safe(self.scope)))
        alg_list = " ".join(algs)
        challenges: list[str] = []
        if bearer:
            bearer_params = [("realm", realm)] if realm is not None else []
            if bearer_error or self.error == "invalid_request":
                bearer_params += err_params
            challenges.append(build_challenge("Bearer", bearer_params))
        if not bearer_error or self.error == "invalid_request":
            dpop_params += err_params
        if alg_list:
            dpop_params.append(("algs", alg_list))
        challenges.append(
            build_challenge(scheme if scheme.lower() == "dpop" else "DPoP", dpop_params)
        )
        return ", ".join(challenges)

    def extra_headers(self) -> list[tuple[str, str]]:
        """Headers every rendering of this error carries (e.g. ``DPoP-Nonce``)."""
        return []

    def as_response(
        self,
        *,
        role: Role,
        algs: Iterable[str] = (),
        realm: str | None = None,
        bearer: bool = False,
        bearer_error: bool = False,
    ) -> ResponseView:
        """Render this error as an HTTP response.

        At the AS (``role="as"``): RFC 6749 §5.2 JSON with ``Cache-Control: no-store``.
        At the RS (``role="rs"``): the status with a ``WWW-Authenticate`` challenge
        (RFC 9449 §7.1) and a small JSON body.
        """
        body = {"error": self.error, "error_description": self.description}
        headers: list[tuple[str, str]] = [
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
        ]
        if role == "as":
            status = self.as_status
            if isinstance(self, InvalidClientError) and self.challenge_scheme:
                headers.append(("WWW-Authenticate", build_challenge(self.challenge_scheme)))
        else:
            status = self.rs_status
            if status in (400, 401, 403):
                headers.append(
                    (
                        "WWW-Authenticate",
                        self.www_authenticate(
                            algs=algs, realm=realm, bearer=bearer, bearer_error=bearer_error
                        ),
                    )
                )
        headers.extend(self.extra_headers())
        return ResponseView(
            status=status,
            headers=tuple(headers),
            body=json.dumps(body, separators=(",", ":")).encode(),
            reason=self.reason.value,
        )


class InvalidProofError(DPoPError):
    """The DPoP proof is missing, malformed or fails a check of RFC 9449 §4.3."""

    error = "invalid_dpop_proof"
    default_reason = Reason.MALFORMED


class UseNonceError(DPoPError):
    """The server requires a (fresh) nonce in the proof (RFC 9449 §8, §9).

    Attributes:
        nonce: the fresh value to send in ``DPoP-Nonce``.
    """

    error = "use_dpop_nonce"
    default_reason = Reason.NONCE_REQUIRED

    def __init__(
        self,
        reason: Reason | None = None,
        description: str | None = None,
        *,
        nonce: str,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(reason, description or "a fresh server nonce is required", detail=detail)
        self.nonce = nonce

    def extra_headers(self) -> list[tuple[str, str]]:  # noqa: D102
        return [(DPOP_NONCE_HEADER, self.nonce)]


class InvalidTokenError(DPoPError):
    """The access token is invalid, expired, or not bound to the proof key (RS, 401)."""

    error = "invalid_token"
    default_reason = Reason.TOKEN_INVALID


class InsufficientScopeError(DPoPError):
    """The token lacks a required scope (RS, 403, RFC 6750 §3.1)."""

    error = "insufficient_scope"
    rs_status = 403
    default_reason = Reason.SCOPE_MISSING

    def __init__(
        self,
        reason: Reason | None = None,
        description: str | None = None,
        *,
        scope: str = "",
        detail: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(reason, description, detail=detail)
        self.scope = scope


class InvalidRequestError(DPoPError):
    """The request is malformed (400), e.g. two ways of sending the token (RFC 6750 §3.1)."""

    error = "invalid_request"
    rs_status = 400
    default_reason = Reason.INVALID_REQUEST


class OAuthError(DPoPError):
    """An RFC 6749 §5.2 token-endpoint error (AS, 400 JSON)."""

    rs_status = 400


class InvalidGrantError(OAuthError):
    """The grant (code, refresh token) is invalid, or bound to another key (AS-6, AS-21)."""

    error = "invalid_grant"
    default_reason = Reason.INVALID_GRANT


class InvalidClientError(OAuthError):
    """Client authentication failed (401 when the client used an Authorization header)."""

    error = "invalid_client"
    as_status = 401
    rs_status = 401
    default_reason = Reason.INVALID_CLIENT

    def __init__(
        self,
        reason: Reason | None = None,
        description: str | None = None,
        *,
        challenge_scheme: str | None = None,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(reason, description, detail=detail)
        self.challenge_scheme = challenge_scheme


class UnauthorizedClientError(OAuthError):
    """The client may not use this grant type."""

    error = "unauthorized_client"
    default_reason = Reason.UNAUTHORIZED_CLIENT


class UnsupportedGrantTypeError(OAuthError):
    """The grant type is not supported."""

    error = "unsupported_grant_type"
    default_reason = Reason.UNSUPPORTED_GRANT_TYPE


class InvalidScopeError(OAuthError):
    """The requested scope is invalid or exceeds what was granted."""

    error = "invalid_scope"
    default_reason = Reason.INVALID_SCOPE


class TemporarilyUnavailableError(DPoPError):
    """A dependency (replay store, JWKS, introspection) cannot be reached: fail closed (503)."""

    error = "temporarily_unavailable"
    rs_status = 503
    as_status = 503
    default_reason = Reason.UPSTREAM_UNAVAILABLE

    def extra_headers(self) -> list[tuple[str, str]]:  # noqa: D102
        return [("Retry-After", "1")]


class ReplayStoreError(TemporarilyUnavailableError):
    """The replay cache failed or is full; the caller must refuse the request."""

    default_reason = Reason.STORE_UNAVAILABLE


class ClientError(DPoPError):
    """An error on the client side of a DPoP exchange."""

    default_reason = Reason.CHALLENGE


class NonceRetryExhaustedError(ClientError):
    """The server kept asking for new nonces beyond the retry budget."""

    error = "use_dpop_nonce"
    default_reason = Reason.NONCE_RETRY_EXHAUSTED


class MissingNonceError(ClientError):
    """The server answered ``use_dpop_nonce`` without a ``DPoP-Nonce`` header."""

    error = "use_dpop_nonce"
    default_reason = Reason.MISSING_NONCE


class ChallengeError(ClientError):
    """The server refused the request with a challenge the client cannot satisfy."""

    default_reason = Reason.CHALLENGE


class TokenResponseError(ClientError):
    """A token response failed the client's checks (e.g. Bearer when DPoP was required)."""

    default_reason = Reason.TOKEN_RESPONSE


class AuthorizationServerError(TokenResponseError):
    """An authorization server's error answer (RFC 6749 §5.2), with its code kept as sent.

    Raised by the client for every AS error code that has no class of its own
    (``temporarily_unavailable``, ``server_error``, ``invalid_target``, ...) and
    for an error answer that is not an RFC 6749 error object (a proxy's HTML
    502). The known codes raise their own classes (``InvalidGrantError``, ...)
    with the same ``detail`` (``status``, ``error``, ``error_description``).

    Attributes:
        error: the server's ``error`` code; ``server_error`` when it sent none.
        description: the server's ``error_description`` (printable ASCII only, cut
            to 300 characters), else a short text of ours.
        status: the HTTP status of the answer (None when not built from one).
        server_error_code: the ``error`` member as the server sent it, or None.
        server_description: the server's ``error_description`` (cleaned), or None.
    """

    error = "server_error"

    def __init__(
        self,
        reason: Reason | None = None,
        description: str | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
        server_description: str | None = None,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        if code is not None:
            self.error = code
        self.status = status
        self.server_error_code = code
        self.server_description = server_description
        super().__init__(reason, description, detail=detail)


class ServerConfigurationError(DPoPError, ValueError):
    """A server or resource-server configuration is invalid (raised at construction)."""

    error = "server_error"
    rs_status = 500
    as_status = 500
    default_reason = Reason.CONFIGURATION
