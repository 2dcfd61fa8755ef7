"""Authorization-server metadata and dynamic client registration.

* Discovery: RFC 8414 ``/.well-known/oauth-authorization-server`` (inserted
  before the issuer's path), then OpenID Connect Discovery; the metadata's
  ``issuer`` must equal the one asked for (RFC 8414 §3.3).
* Registration: RFC 7591 §3, as a DPoP client (``dpop_bound_access_tokens``,
  RFC 9449 §5.2).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dpopkit.client._as_errors import error_from
from dpopkit.client.flow import parse_json_body
from dpopkit.client.senders import (
    AsyncSender,
    Sender,
    Steps,
    arun_steps,
    run_steps,
    threaded_urllib_sender,
    urllib_sender,
)
from dpopkit.core.http import Headers, RequestView
from dpopkit.errors import ClientError, Reason, TokenResponseError

__all__ = ["ServerMetadata", "adiscover", "aregister_client", "discover", "register_client"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerMetadata:
    """Authorization-server metadata (RFC 8414 §2; RFC 9449 §5.1; RFC 9126 §5)."""

    issuer: str
    token_endpoint: str
    authorization_endpoint: str | None = None
    pushed_authorization_request_endpoint: str | None = None
    require_pushed_authorization_requests: bool = False
    revocation_endpoint: str | None = None
    registration_endpoint: str | None = None
    dpop_signing_alg_values_supported: tuple[str, ...] | None = None
    authorization_response_iss_parameter_supported: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerMetadata:
        """Build from a metadata document.

        Raises:
            ClientError: (CONFIGURATION) a required member is missing or mistyped.
        """

        def text(name: str, required: bool = False) -> str | None:
            value = data.get(name)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not value:
                raise ClientError(Reason.CONFIGURATION, f"metadata {name} missing or invalid")
            return value

        algs = data.get("dpop_signing_alg_values_supported")
        if algs is not None and (
            not isinstance(algs, list) or not all(isinstance(a, str) for a in algs)
        ):
            raise ClientError(Reason.CONFIGURATION, "bad dpop_signing_alg_values_supported")
        issuer = text("issuer", True)
        token_endpoint = text("token_endpoint", True)
        assert issuer is not None
        assert token_endpoint is not None
        return cls(
            issuer=issuer,
            token_endpoint=token_endpoint,
            authorization_endpoint=text("authorization_endpoint"),
            pushed_authorization_request_endpoint=text("pushed_authorization_request_endpoint"),
            require_pushed_authorization_requests=data.get("require_pushed_authorization_requests")
            is True,
            revocation_endpoint=text("revocation_endpoint"),
            registration_endpoint=text("registration_endpoint"),
            dpop_signing_alg_values_supported=None if algs is None else tuple(algs),
            # RFC 9207 §3: only the JSON value true counts as advertised.
            authorization_response_iss_parameter_supported=data.get(
                "authorization_response_iss_parameter_supported"
            )
            is True,
            raw=dict(data),
        )


def _well_known_urls(issuer: str) -> list[str]:
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    # RFC 8414 §3.1: the well-known suffix goes between the host and the issuer's path.
    rfc8414 = urlunsplit(
        (parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", "")
    )
    # OpenID Connect Discovery 1.0 §4: appended to the issuer.
    oidc = urlunsplit(
        (parts.scheme, parts.netloc, path + "/.well-known/openid-configuration", "", "")
    )
    return [rfc8414, oidc]


def _discover_steps(issuer: str) -> Steps[ServerMetadata]:
    for url in _well_known_urls(issuer):
        response = yield RequestView(method="GET", url=url, headers=_accept_json())
        if response.status != 200:
            continue
        data = parse_json_body(response.body)
        if data is None:
            continue
        metadata = ServerMetadata.from_dict(data)
        # RFC 8414 §3.3: the issuer must be identical to the one used to build the URL.
        if not hmac.compare_digest(metadata.issuer.encode(), issuer.encode()):
            raise ClientError(
                Reason.CONFIGURATION, "the metadata issuer does not match", detail={"url": url}
            )
        return metadata
    raise ClientError(Reason.CONFIGURATION, "no authorization server metadata found")


def discover(issuer: str, *, sender: Sender | None = None) -> ServerMetadata:
    """Fetch and check an authorization server's metadata (RFC 8414 §3, then OIDC).

    Raises:
        ClientError: (CONFIGURATION) no metadata document, or its ``issuer`` is not
            exactly ``issuer`` (RFC 8414 §3.3, X-16).
    """
    return run_steps(_discover_steps(issuer), sender or urllib_sender())


async def adiscover(issuer: str, *, sender: AsyncSender | None = None) -> ServerMetadata:
    """:func:`discover` for async code: the same checks, sent with an async sender.

    Raises:
        ClientError: as :func:`discover`.
    """
    return await arun_steps(_discover_steps(issuer), sender or threaded_urllib_sender())


def _accept_json() -> Headers:
    return Headers([("Accept", "application/json")])


def _register_steps(
    metadata: ServerMetadata,
    client_metadata: Mapping[str, Any],
    initial_access_token: str | None,
) -> Steps[dict[str, Any]]:
    endpoint = metadata.registration_endpoint
    if endpoint is None:
        raise ClientError(Reason.CONFIGURATION, "the AS has no registration endpoint")
    body = {**client_metadata, "dpop_bound_access_tokens": True}
    headers = [("Content-Type", "application/json"), ("Accept", "application/json")]
    if initial_access_token is not None:
        headers.append(("Authorization", f"Bearer {initial_access_token}"))
    response = yield (
        RequestView(
            method="POST",
            url=endpoint,
            headers=Headers(headers),
            body=json.dumps(body).encode("utf-8"),
        )
    )
    data = parse_json_body(response.body)
    if response.status not in (200, 201) or data is None:
        raise error_from(response, data)
    client_id = data.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        raise TokenResponseError(Reason.TOKEN_RESPONSE, "no client_id in the registration")
    return dict(data)


def register_client(
    metadata: ServerMetadata,
    client_metadata: Mapping[str, Any],
    *,
    initial_access_token: str | None = None,
    sender: Sender | None = None,
) -> dict[str, Any]:
    """Register a client dynamically (RFC 7591 §3) as a DPoP client (RFC 9449 §5.2).

    ``dpop_bound_access_tokens`` is set to ``true`` (checklist C-22): the AS then
    refuses token requests from this client without a proof, and
    :class:`TokenClient` always sends one.

    Args:
        metadata: the AS metadata (its ``registration_endpoint`` is used).
        client_metadata: RFC 7591 §2 client metadata (``redirect_uris``,
            ``token_endpoint_auth_method``, ``grant_types``, ...).
        initial_access_token: a bearer token for protected registration endpoints.
        sender: the HTTP sender (``urllib`` by default).

    Returns:
        The registration response (``client_id``, ``client_secret`` when issued, ...).

    Raises:
        ClientError: (CONFIGURATION) the AS has no registration endpoint.
        TokenResponseError / OAuthError subclasses: the AS refused.
    """
    steps = _register_steps(metadata, client_metadata, initial_access_token)
    return run_steps(steps, sender or urllib_sender())


async def aregister_client(
    metadata: ServerMetadata,
    client_metadata: Mapping[str, Any],
    *,
    initial_access_token: str | None = None,
    sender: AsyncSender | None = None,
) -> dict[str, Any]:
    """:func:`register_client` for async code (the same request and checks).

    Raises:
        ClientError / TokenResponseError: as :func:`register_client`.
    """
    steps = _register_steps(metadata, client_metadata, initial_access_token)
    return await arun_steps(steps, sender or threaded_urllib_sender())
