"""DPoP for MCP clients on the official SDK: swap one auth object (RFC 9449, SEP-1932).

The SDK's Streamable HTTP client authenticates through an ``httpx2.Auth``, the
:class:`mcp.client.auth.OAuthClientProvider`, which runs the MCP authorization
flow: RFC 9728 discovery from the 401, RFC 8414 metadata, pre-registration, a
client ID metadata document or dynamic registration, PKCE S256 and ``resource``.
:class:`DPoPOAuthClientProvider` is that provider with DPoP:

* every token request (authorization code, refresh, and client credentials with
  :class:`DPoPClientCredentialsProvider`) carries a proof for the token endpoint
  (RFC 9449 §5), and the answer must say ``token_type=DPoP`` (§5, RFC 6749 §5.1);
* the authorization request carries ``dpop_jkt`` (§10), binding the code to the key;
* every MCP request carries ``Authorization: DPoP`` and a fresh proof with ``ath``
  (§7.1, §4.2), through :class:`dpopkit.client.httpx2.DPoPAuth`;
* an AS ``use_dpop_nonce`` (400) and an RS ``use_dpop_nonce`` (401) are retried once
  per fresh nonce (§8, §9); a request whose body was streamed and cannot be
  replayed is never resent: the challenge comes back to the caller as it is, and
  :func:`dpopkit.client.httpx2.dpop_error` says why (``BODY_NOT_REPLAYABLE``).

The key must outlive the process as long as the tokens do, or a refresh token
bound to it is useless (§5, a refresh is bound to the same key):
:class:`FileTokenStorage` keeps the key (a ``0600`` dpopkit key file) beside the
tokens and the client registration.

```python
from mcp.client.streamable_http import streamable_http_client
from dpopkit.integrations.mcp.client import DPoPOAuthClientProvider, FileTokenStorage

storage = FileTokenStorage("~/.config/my-agent/mcp")
auth = DPoPOAuthClientProvider(
    server_url="https://mcp.example/mcp",
    client_metadata=metadata,
    storage=storage,
    key=storage.key,
    redirect_handler=open_browser,
    callback_handler=wait_for_callback,
)
```
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit

from dpopkit._private import write_private_file
from dpopkit.client.flow import NonceCache
from dpopkit.client.tokens import _add_query, checked_key_alg, checked_token_type
from dpopkit.core.keys import DPoPKey
from dpopkit.errors import requires_extra
from dpopkit.keyfile import load_key, save_key
from dpopkit.signers import load_key_reference

with requires_extra("mcp", needed_by=__name__):
    import httpx2
    from mcp.client.auth import OAuthClientProvider, TokenStorage
    from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
    from mcp.shared.auth import (
        AuthorizationCodeResult,
        OAuthClientInformationFull,
        OAuthClientMetadata,
        OAuthToken,
    )
    from pydantic import field_validator

    from dpopkit.client.httpx2 import DPoPAuth, dpop_error

__all__ = [
    "DPoPClientCredentialsProvider",
    "DPoPOAuthClientProvider",
    "DPoPOAuthToken",
    "FileTokenStorage",
]


class DPoPOAuthToken(OAuthToken):
    """An SDK token record whose ``token_type`` is ``DPoP`` (the SDK's model only knows Bearer)."""

    token_type: Literal["DPoP"] = "DPoP"  # type: ignore[assignment]  # noqa: S105

    @field_validator("token_type", mode="before")
    @classmethod
    def normalize_token_type(cls, v: str | None) -> str | None:
        """RFC 6749 §5.1: the type is case-insensitive; store it as RFC 9449 spells it."""
        if isinstance(v, str) and v.lower() == "dpop":
            return "DPoP"
        return v


def _same_endpoint(a: str, b: str) -> bool:
    """Whether two URLs name the same endpoint (scheme and host case, no query or fragment)."""

    def norm(url: str) -> tuple[str, str, str]:
        parts = urlsplit(url)
        return parts.scheme.lower(), parts.netloc.lower(), parts.path or "/"

    return norm(a) == norm(b)


class _DPoPFlowMixin:
    """What both DPoP providers add to the SDK's flow (see the module docstring)."""

    context: Any
    _dpop_key: DPoPKey
    _dpop_nonces: NonceCache
    _dpop_insecure: bool
    _dpop_bearer_fallback: bool
    _dpop_as_offers: bool

    def _dpop_setup(
        self,
        key: DPoPKey,
        nonces: NonceCache | None,
        allow_insecure_http: bool,
        bearer_fallback: bool,
    ) -> None:
        self._dpop_key = key
        self._dpop_nonces = nonces if nonces is not None else NonceCache()
        self._dpop_insecure = allow_insecure_http
        self._dpop_bearer_fallback = bearer_fallback
        self._dpop_as_offers = False  # the AS metadata lists dpop_signing_alg_values_supported

    def _dpop_expected(self) -> bool:
        """Whether a Bearer answer is a downgrade: the AS offers DPoP or the resource demands it."""
        prm = self.context.protected_resource_metadata
        required = prm is not None and bool(prm.dpop_bound_access_tokens_required)
        return self._dpop_as_offers or required

    async def _dpop_observe(self, request: httpx2.Request, response: httpx2.Response) -> None:
        """Note from AS metadata whether the AS offers DPoP (RFC 9449 §5.1).

        The SDK's metadata model drops ``dpop_signing_alg_values_supported``; the
        document is read here as it passes by.
        """
        path = request.url.path
        if request.method != "GET" or response.status_code != 200 or "/.well-known/" not in path:
            return
        if "oauth-authorization-server" not in path and "openid-configuration" not in path:
            return
        try:
            data = json.loads(await response.aread())
        except ValueError:
            return
        if isinstance(data, dict):
            algs = data.get("dpop_signing_alg_values_supported")
            self._dpop_as_offers = isinstance(algs, list) and bool(algs)
            if isinstance(algs, list) and algs:
                # RFC 9449 §5.1 (C-16): the key must use an algorithm the AS accepts.
                supported = [alg for alg in algs if isinstance(alg, str)]
                self._dpop_key = checked_key_alg(self._dpop_key, supported)

    @property
    def key(self) -> DPoPKey:
        """The DPoP key every proof is signed with (its thumbprint is the tokens' ``cnf.jkt``)."""
        return self._dpop_key

    if TYPE_CHECKING:

        def _get_token_endpoint(self) -> str: ...  # OAuthClientProvider's

    def _dpop_auth_for(self, outgoing: httpx2.Request, original: httpx2.Request) -> DPoPAuth | None:
        """The DPoP auth for one request of the flow, or None when it carries no proof."""
        if outgoing is original:
            value = outgoing.headers.get("Authorization", "")
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "dpop" or not token:
                return None  # no token yet: the unauthenticated probe that earns the 401
            return DPoPAuth(
                self._dpop_key,
                token=token.strip(),
                nonces=self._dpop_nonces,
                allow_insecure_http=self._dpop_insecure,
            )
        if outgoing.method == "POST" and _same_endpoint(
            str(outgoing.url), self._get_token_endpoint()
        ):
            # RFC 9449 §5: code, refresh and client-credentials requests alike.
            return DPoPAuth(
                self._dpop_key, nonces=self._dpop_nonces, allow_insecure_http=self._dpop_insecure
            )
        return None  # discovery, registration: no proof

    def _add_auth_header(self, request: httpx2.Request) -> None:
        tokens = self.context.current_tokens
        if tokens is not None and tokens.access_token:
            # RFC 9449 §7.1; the proof (with ath) is added by _dpop_auth_for's DPoPAuth.
            # A Bearer token (bearer_fallback, an AS without DPoP) goes as Bearer, no proof.
            scheme = "DPoP" if _is_dpop(tokens) else "Bearer"
            request.headers["Authorization"] = f"{scheme} {tokens.access_token}"

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        """The SDK's flow, with each token and MCP request sent through DPoPAuth."""
        inner = super().async_auth_flow(request)  # type: ignore[misc]
        try:
            outgoing = await inner.__anext__()
            while True:
                auth = self._dpop_auth_for(outgoing, request)
                if auth is None:
                    response = yield outgoing
                    await self._dpop_observe(outgoing, response)
                else:
                    signed = cast(
                        "AsyncGenerator[httpx2.Request, httpx2.Response]",
                        auth.async_auth_flow(outgoing),
                    )
                    sent = await signed.__anext__()
                    while True:
                        response = yield sent
                        try:
                            sent = await signed.asend(response)
                        except StopAsyncIteration:
                            break
                    if dpop_error(response) is not None:
                        # A use_dpop_nonce answer the request's streamed body cannot be resent
                        # for: it goes back to the caller as it is (dpop_error tells why). It is
                        # no reason to authorize afresh, nor to resend the consumed body then.
                        return
                outgoing = await inner.asend(response)
        except StopAsyncIteration:
            return
        finally:
            await inner.aclose()

    async def _dpop_token(self, response: httpx2.Response) -> OAuthToken:
        """Parse a 200 token response, requiring ``token_type=DPoP`` (RFC 9449 §5).

        With ``bearer_fallback`` a Bearer answer is kept (and sent as Bearer) only
        when neither the AS metadata offers DPoP nor the resource metadata demands
        bound tokens; otherwise it is a downgrade and refused.
        """
        body = await response.aread()
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        token_type = data.get("token_type")
        if (
            self._dpop_bearer_fallback
            and isinstance(token_type, str)
            and token_type.lower() == "bearer"
            and not self._dpop_expected()
        ):
            return OAuthToken.model_validate(data)
        checked_token_type(token_type, proof_sent=True)
        return DPoPOAuthToken.model_validate({**data, "token_type": "DPoP"})

    async def _handle_token_response(self, response: httpx2.Response) -> None:
        if response.status_code not in {200, 201}:
            await super()._handle_token_response(response)  # type: ignore[misc]
            return
        token = await self._dpop_token(response)
        if token.scope is None:
            token.scope = self.context.client_metadata.scope
        self.context.current_tokens = token
        self.context.update_token_expiry(token)
        await self.context.storage.set_tokens(token)

    async def _handle_refresh_response(self, response: httpx2.Response) -> bool:
        if response.status_code != 200:
            result: bool = await super()._handle_refresh_response(response)  # type: ignore[misc]
            return result
        token = await self._dpop_token(response)
        prior = self.context.current_tokens
        if token.scope is None and prior is not None:
            token.scope = prior.scope
        if token.refresh_token is None and prior is not None:
            token.refresh_token = prior.refresh_token
        self.context.current_tokens = token
        self.context.update_token_expiry(token)
        await self.context.storage.set_tokens(token)
        return True

    async def _initialize(self) -> None:
        await super()._initialize()  # type: ignore[misc]
        tokens = self.context.current_tokens
        if tokens is not None and not _is_dpop(tokens) and not self._dpop_bearer_fallback:
            # A stored Bearer token is not ours to present as DPoP: authorize afresh.
            self.context.clear_tokens()


def _is_dpop(tokens: OAuthToken) -> bool:
    return str(tokens.token_type).lower() == "dpop"


def _with_dpop_jkt(
    handler: Callable[[str], Awaitable[None]] | None, jkt: str
) -> Callable[[str], Awaitable[None]] | None:
    """Wrap the redirect handler so the authorization URL carries ``dpop_jkt`` (RFC 9449 §10)."""
    if handler is None:
        return None

    async def redirect(url: str) -> None:
        await handler(_add_query(url, {"dpop_jkt": jkt}))

    return redirect


class DPoPOAuthClientProvider(_DPoPFlowMixin, OAuthClientProvider):
    """The SDK's ``OAuthClientProvider`` with DPoP-bound tokens (RFC 9449; SEP-1932).

    Takes the SDK provider's arguments (keyword-only after ``server_url``) plus the
    DPoP ones; pass it as ``auth=`` wherever the SDK takes the plain provider.

    Args:
        server_url: the MCP server's URL.
        client_metadata: the client's RFC 7591 metadata (for registration).
        storage: where tokens and the registration are kept (``TokenStorage``).
        redirect_handler: sends the user's browser to the authorization URL.
        callback_handler: waits for the authorization response.
        client_metadata_url: a client ID metadata document URL, when the client has one.
        validate_resource_url: checks the protected resource's URL (the SDK's hook).
        key: the DPoP key (keep it with the tokens: :class:`FileTokenStorage`).
        nonces: a per-origin nonce cache to share (one is made otherwise).
        allow_insecure_http: allow ``http://`` endpoints (loopback tests only).
        bearer_fallback: keep a ``token_type=Bearer`` answer, sent as Bearer, from an AS
            whose metadata does not offer DPoP for a resource that does not demand it
            (off by default: every non-DPoP answer is refused).

    Raises (from the request that runs the flow):
        TokenResponseError: ``TOKEN_RESPONSE`` when the token is not DPoP-bound.
        ClientError: ``CONFIGURATION`` when the AS metadata lists DPoP algorithms
            without the key's (RFC 9449 §5.1).
    """

    def __init__(
        self,
        server_url: str,
        *,
        client_metadata: OAuthClientMetadata,
        storage: TokenStorage,
        redirect_handler: Callable[[str], Awaitable[None]] | None = None,
        callback_handler: Callable[[], Awaitable[AuthorizationCodeResult]] | None = None,
        client_metadata_url: str | None = None,
        validate_resource_url: Callable[[str, str | None], Awaitable[None]] | None = None,
        key: DPoPKey,
        nonces: NonceCache | None = None,
        allow_insecure_http: bool = False,
        bearer_fallback: bool = False,
    ) -> None:
        super().__init__(
            server_url,
            client_metadata,
            storage,
            redirect_handler=redirect_handler,
            callback_handler=callback_handler,
            client_metadata_url=client_metadata_url,
            validate_resource_url=validate_resource_url,
        )
        self._dpop_setup(key, nonces, allow_insecure_http, bearer_fallback)
        self.context.redirect_handler = _with_dpop_jkt(self.context.redirect_handler, key.jkt)


class DPoPClientCredentialsProvider(_DPoPFlowMixin, ClientCredentialsOAuthProvider):
    """The SDK's client-credentials provider with DPoP-bound tokens (RFC 9449 §5).

    Args:
        server_url: the MCP server's URL.
        storage: where tokens are kept (``TokenStorage``).
        client_id: the client's identifier at the authorization server.
        client_secret: its secret.
        token_endpoint_auth_method: ``client_secret_basic`` or ``client_secret_post``.
        scope: the scope to ask for.
        issuer: the authorization server's issuer, when the resource does not name it.
        key: the DPoP key.
        nonces: a per-origin nonce cache to share.
        allow_insecure_http: allow ``http://`` endpoints (loopback tests only).
        bearer_fallback: keep a ``token_type=Bearer`` answer, sent as Bearer, from an AS
            whose metadata does not offer DPoP for a resource that does not demand it
            (off by default: every non-DPoP answer is refused).
    """

    def __init__(
        self,
        server_url: str,
        *,
        storage: TokenStorage,
        client_id: str,
        client_secret: str,
        token_endpoint_auth_method: Literal[
            "client_secret_basic", "client_secret_post"
        ] = "client_secret_basic",  # noqa: S107 - a method name, not a secret
        scope: str | None = None,
        issuer: str | None = None,
        key: DPoPKey,
        nonces: NonceCache | None = None,
        allow_insecure_http: bool = False,
        bearer_fallback: bool = False,
    ) -> None:
        super().__init__(
            server_url,
            storage,
            client_id,
            client_secret,
            token_endpoint_auth_method=token_endpoint_auth_method,
            scope=scope,
            issuer=issuer,
        )
        self._dpop_setup(key, nonces, allow_insecure_http, bearer_fallback)


class FileTokenStorage:
    """The SDK's ``TokenStorage`` in a directory, with the DPoP key beside the tokens.

    ``key.jwk`` (the private key, a dpopkit key file), ``tokens.json`` and
    ``client.json``, each written atomically with ``0600`` permissions. The key is
    made on first use and reused after, so a refresh token stays usable across
    restarts (RFC 9449 §5: the refresh must be proven with the same key). A key that
    lives elsewhere (a ``pkcs11:`` or ``tpm:`` reference, a key file, or a
    :class:`~dpopkit.DPoPKey` from a ``Signer``) is used instead and never written here.

    Args:
        directory: where the files live (created ``0700`` if missing).
        key: the key to use instead of ``key.jwk``: a key, or a reference
            (:func:`dpopkit.signers.load_key_reference`).
        alg: the algorithm of a new key (``ES256``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        key: DPoPKey | str | None = None,
        alg: str = "ES256",
    ) -> None:
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path = self.directory / "key.jwk"
        if key is not None:
            self.key = key if isinstance(key, DPoPKey) else load_key_reference(key)
        elif key_path.exists():
            self.key = load_key(key_path)
        else:
            self.key = DPoPKey.generate(alg)
            save_key(self.key, key_path)

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.directory / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def _write(self, name: str, data: dict[str, Any]) -> None:
        write_private_file(self.directory / name, json.dumps(data).encode("utf-8"), overwrite=True)

    async def get_tokens(self) -> OAuthToken | None:
        """The stored tokens (a :class:`DPoPOAuthToken` when they are DPoP-bound)."""
        data = self._read("tokens.json")
        if data is None:
            return None
        if str(data.get("token_type", "")).lower() == "dpop":
            return DPoPOAuthToken.model_validate(data)
        return OAuthToken.model_validate(data)

    async def set_tokens(self, tokens: OAuthToken) -> None:
        """Store the tokens."""
        self._write("tokens.json", tokens.model_dump(mode="json", exclude_none=True))

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        """The stored client registration."""
        data = self._read("client.json")
        return None if data is None else OAuthClientInformationFull.model_validate(data)

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        """Store the client registration."""
        self._write("client.json", client_info.model_dump(mode="json", exclude_none=True))
