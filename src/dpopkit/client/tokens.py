"""Getting DPoP-bound tokens: discovery, grants, PAR, refresh, revocation, token sources.

Every token request carries a DPoP proof for the token endpoint (RFC 9449 §5,
checklist C-1) and goes through the same sans-I/O :class:`~dpopkit.client.flow.DPoPFlow`
as resource requests, so AS nonces (§8) are handled alike. The HTTP exchange
itself is a *sender*, ``(RequestView) -> ResponseView``: by default the
standard library's ``urllib`` (no extra dependency, redirects not followed);
:func:`dpopkit.client.httpx.httpx_sender` plugs in an ``httpx.Client``.

* Discovery: RFC 8414 ``/.well-known/oauth-authorization-server`` (inserted
  before the issuer's path), then OpenID Connect Discovery; the metadata's
  ``issuer`` must equal the one asked for (X-16) and the key's ``alg`` must be
  in ``dpop_signing_alg_values_supported`` when present (C-16).
* Grants: client credentials; authorization code with PKCE S256 and
  ``dpop_jkt`` (RFC 9449 §10, C-18), via PAR when the AS offers or requires it
  (``dpop_jkt`` in the PAR body, C-20, and a proof on the PAR request, C-21);
  a one-shot loopback redirect listener for native apps (RFC 8252 §7.3);
  refresh with the key that obtained the token (C-8); revocation (RFC 7009).
* Client authentication: ``client_secret_basic``, ``client_secret_post``,
  ``private_key_jwt`` (RFC 7523 §2.2, signed by our JWS layer) and ``none``.
* Token responses are checked: ``token_type`` compared case-insensitively
  (RFC 6749 §5.1, C-7) and ``DPoP`` required when a proof was sent, unless
  ``allow_bearer_downgrade=True`` (SEC-115).

This module holds :class:`TokenClient` and the authorization-code request; the
pieces it builds on have modules of their own and are importable from here too:
:mod:`~dpopkit.client.metadata` (discovery, registration),
:mod:`~dpopkit.client.senders` (the HTTP exchange) and
:mod:`~dpopkit.client.sources` (token sets and token sources).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
import webbrowser
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

from dpopkit.client._as_errors import MAX_ERROR_DESCRIPTION as MAX_ERROR_DESCRIPTION
from dpopkit.client._as_errors import error_from
from dpopkit.client._loopback import LoopbackListener
from dpopkit.client.flow import Clock, DPoPFlow, NonceCache, Retry, parse_json_body
from dpopkit.client.metadata import (
    ServerMetadata,
    adiscover,
    aregister_client,
    discover,
    register_client,
)
from dpopkit.client.senders import MAX_RESPONSE_BODY as MAX_RESPONSE_BODY
from dpopkit.client.senders import (
    AsyncSender,
    Sender,
    Steps,
    arun_steps,
    run_steps,
    threaded_urllib_sender,
    urllib_sender,
)
from dpopkit.client.sources import (
    AsyncRefreshingToken,
    RefreshingToken,
    StaticToken,
    TokenSet,
    TokenSource,
)
from dpopkit.core.http import Headers, RequestView, ResponseView
from dpopkit.core.jws import b64url_encode, json_dumps
from dpopkit.core.keys import DPoPKey
from dpopkit.errors import ClientError, Reason, TokenResponseError

__all__ = [
    "AsyncRefreshingToken",
    "AsyncSender",
    "AsyncTokenClient",
    "AuthMethod",
    "AuthorizationRequest",
    "RefreshingToken",
    "Sender",
    "ServerMetadata",
    "StaticToken",
    "TokenClient",
    "TokenSet",
    "TokenSource",
    "adiscover",
    "aregister_client",
    "discover",
    "pkce_pair",
    "register_client",
    "urllib_sender",
]

AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]

_FORM = "application/x-www-form-urlencoded"
_EQUIVALENT_ALGS = {"EdDSA": "Ed25519", "Ed25519": "EdDSA"}


def pkce_pair() -> tuple[str, str]:
    """Return a new ``(code_verifier, code_challenge)`` for PKCE S256 (RFC 7636 §4.1, §4.2)."""
    verifier = secrets.token_urlsafe(48)  # 64 unreserved characters
    challenge = b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())
    return verifier, challenge


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationRequest:
    """An authorization request in progress (RFC 6749 §4.1, RFC 7636, RFC 9449 §10).

    Attributes:
        url: where to send the user's browser.
        state: the CSRF value to compare with the callback (compared in constant time).
        code_verifier: the PKCE secret for the code exchange.
        redirect_uri: the redirect URI sent with the request.
        key: the DPoP key whose thumbprint went into ``dpop_jkt``; the code exchange
            uses it (C-18).
    """

    url: str
    state: str = field(repr=False)
    code_verifier: str = field(repr=False)
    redirect_uri: str
    key: DPoPKey
    scope: str | None = None


# -- the client ------------------------------------------------------------------------------------


class _TokenFlows:
    """What :class:`TokenClient` and :class:`AsyncTokenClient` share, sans I/O.

    The settings, client authentication, every request they build and every check of
    an answer live here once, as :data:`~dpopkit.client.senders.Steps` generators;
    the two clients only drive them (:func:`~dpopkit.client.senders.run_steps`,
    :func:`~dpopkit.client.senders.arun_steps`).
    """

    def __init__(
        self,
        *,
        key: DPoPKey,
        client_id: str,
        metadata: ServerMetadata,
        client_secret: str | None = None,
        auth_method: AuthMethod | None = None,
        assertion_key: DPoPKey | None = None,
        assertion_kid: str | None = None,
        nonces: NonceCache | None = None,
        clock: Clock = time.time,
        allow_bearer_downgrade: bool = False,
        allow_insecure_http: bool = False,
    ) -> None:
        if auth_method is None:
            if client_secret is not None:
                auth_method = "client_secret_basic"
            elif assertion_key is not None:
                auth_method = "private_key_jwt"
            else:
                auth_method = "none"
        if auth_method.startswith("client_secret") and not client_secret:
            raise ValueError(f"{auth_method} needs client_secret")
        if auth_method == "private_key_jwt" and assertion_key is None:
            raise ValueError("private_key_jwt needs assertion_key")
        self.client_id = client_id
        self.metadata = metadata
        self.client_secret = client_secret
        self.auth_method: AuthMethod = auth_method
        self.assertion_key = assertion_key
        self.assertion_kid = assertion_kid
        self.nonces = nonces if nonces is not None else NonceCache()
        self.clock = clock
        self.allow_bearer_downgrade = allow_bearer_downgrade
        self.allow_insecure_http = allow_insecure_http
        self.key = self.check_key(key)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(issuer={self.metadata.issuer!r}, client_id={self.client_id!r})"

    def check_key(self, key: DPoPKey) -> DPoPKey:
        """Return ``key`` (or its RFC 9864 twin) if the AS accepts its alg (C-16).

        Raises:
            ClientError: (CONFIGURATION) the AS lists DPoP algorithms without this one.
        """
        return checked_key_alg(key, self.metadata.dpop_signing_alg_values_supported)

    # -- sending ---------------------------------------------------------------------------------

    def _client_auth(self, form: dict[str, str], headers: list[tuple[str, str]]) -> None:
        method = self.auth_method
        if method == "client_secret_basic":
            assert self.client_secret is not None
            # RFC 6749 §2.3.1: form-urlencode id and secret, then Basic.
            user = quote(self.client_id, safe="")
            pwd = quote(self.client_secret, safe="")
            cred = base64.b64encode(f"{user}:{pwd}".encode()).decode("ascii")
            headers.append(("Authorization", f"Basic {cred}"))
        elif method == "client_secret_post":
            assert self.client_secret is not None
            form["client_id"] = self.client_id
            form["client_secret"] = self.client_secret
        elif method == "private_key_jwt":
            form["client_id"] = self.client_id
            form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            form["client_assertion"] = self.client_assertion()
        else:
            form["client_id"] = self.client_id

    def client_assertion(self) -> str:
        """A ``private_key_jwt`` assertion (RFC 7523 §2.2, §3; OIDC Core §9).

        ``iss`` = ``sub`` = client id, ``aud`` = the issuer, a fresh ``jti``, and a
        60-second lifetime; signed with ``assertion_key`` by our JWS layer.
        """
        key = self.assertion_key
        if key is None:
            raise ValueError("no assertion_key")
        header: dict[str, Any] = {"alg": key.alg, "typ": "JWT"}
        if self.assertion_kid is not None:
            header["kid"] = self.assertion_kid
        now = int(self.clock())
        payload = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.metadata.issuer,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + 60,
        }
        signing_input = f"{b64url_encode(json_dumps(header))}.{b64url_encode(json_dumps(payload))}"
        signature = key.sign(signing_input.encode("ascii"))
        return f"{signing_input}.{b64url_encode(signature)}"

    def _post_steps(
        self, url: str, form: dict[str, str], *, key: DPoPKey | None, authenticate: bool = True
    ) -> Steps[tuple[ResponseView, bool]]:
        """POST a form with client auth and (when ``key``) a DPoP proof; nonce retry included."""
        headers: list[tuple[str, str]] = [("Content-Type", _FORM), ("Accept", "application/json")]
        if authenticate:
            self._client_auth(form, headers)
        body = urlencode(form).encode("ascii")
        if key is None:
            answer = yield RequestView(method="POST", url=url, headers=Headers(headers), body=body)
            return answer, False
        flow = DPoPFlow(
            key=key,
            nonces=self.nonces,
            clock=self.clock,
            allow_insecure_http=self.allow_insecure_http,
        )
        dpop = flow.prepare("POST", url)
        while True:
            request = RequestView(
                method="POST", url=url, headers=Headers([*headers, *dpop.items()]), body=body
            )
            response = yield request
            rheaders = Headers(response.headers)
            action = flow.on_response(
                response.status,
                rheaders,
                parse_json_body(response.body) if response.status == 400 else None,
            )
            if not isinstance(action, Retry):
                return response, True
            dpop = action.headers
            if self.auth_method == "private_key_jwt":
                self._client_auth(form, [])  # a fresh assertion (new jti) for the resend
                body = urlencode(form).encode("ascii")

    def _token_steps(self, form: dict[str, str], key: DPoPKey, grant: str) -> Steps[TokenSet]:
        # RFC 9449 §5 (C-1): a proof for the token endpoint on every grant.
        response, proof_sent = yield from self._post_steps(
            self.metadata.token_endpoint, form, key=key
        )
        params = tuple((k, form[k]) for k in ("scope", "resource") if k in form)
        return self._check_token_response(response, key, grant, params, proof_sent)

    def _check_token_response(
        self,
        response: ResponseView,
        key: DPoPKey,
        grant: str,
        params: tuple[tuple[str, str], ...],
        proof_sent: bool,
    ) -> TokenSet:
        data = parse_json_body(response.body)
        if response.status != 200:
            raise error_from(response, data)
        if data is None:
            raise TokenResponseError(Reason.TOKEN_RESPONSE, "the token response is not JSON")
        access_token = data.get("access_token")
        token_type = data.get("token_type")
        if not isinstance(access_token, str) or not access_token:
            raise TokenResponseError(Reason.TOKEN_RESPONSE, "no access_token in the response")
        token_type = checked_token_type(
            token_type, proof_sent=proof_sent, allow_bearer_downgrade=self.allow_bearer_downgrade
        )
        expires_in = data.get("expires_in")
        expires_at: float | None = None
        received = self.clock()
        if expires_in is not None:
            if (
                isinstance(expires_in, bool)
                or not isinstance(expires_in, int | float)
                or not math.isfinite(expires_in)
                or expires_in < 0
            ):
                raise TokenResponseError(Reason.TOKEN_RESPONSE, "expires_in is not a number")
            expires_at = received + float(expires_in)
        refresh = data.get("refresh_token")
        if refresh is not None and (not isinstance(refresh, str) or not refresh):
            raise TokenResponseError(Reason.TOKEN_RESPONSE, "refresh_token is not a string")
        scope = data.get("scope")
        return TokenSet(
            access_token=access_token,
            token_type=token_type,
            key=key,
            expires_at=expires_at,
            issued_at=received,
            refresh_token=refresh,
            scope=scope if isinstance(scope, str) else dict(params).get("scope"),
            grant=grant,
            params=params,
            raw=data,
        )

    # -- grants ----------------------------------------------------------------------------------

    def _client_credentials_steps(
        self,
        *,
        scope: str | None = None,
        resource: str | None = None,
        key: DPoPKey | None = None,
    ) -> Steps[TokenSet]:
        """Client credentials grant (RFC 6749 §4.4) with a DPoP proof (RFC 9449 §5)."""
        form = {"grant_type": "client_credentials"}
        if scope is not None:
            form["scope"] = scope
        if resource is not None:
            form["resource"] = resource
        use = self.check_key(key) if key is not None else self.key
        return (yield from self._token_steps(form, use, "client_credentials"))

    def _refresh_steps(self, tokens: TokenSet, *, scope: str | None = None) -> Steps[TokenSet]:
        """Refresh grant (RFC 6749 §6) with a proof from the key that got the tokens (C-8).

        The refresh token is never sent without a proof. When the AS does not send
        a new refresh token the old one is kept (RFC 6749 §6).

        Raises:
            ValueError: ``tokens`` has no refresh token.
        """
        if tokens.refresh_token is None:
            raise ValueError("these tokens have no refresh token")
        form = {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
        if scope is not None:
            form["scope"] = scope
        # RFC 9449 §5: the same key that obtained the refresh token (C-8).
        new = yield from self._token_steps(form, tokens.key, "refresh_token")
        if new.refresh_token is None:
            new = _replace(new, refresh_token=tokens.refresh_token)
        if tokens.grant and new.params == ():
            new = _replace(new, grant=tokens.grant, params=tokens.params)
        return new

    def _revoke_steps(
        self, token: str, *, hint: Literal["access_token", "refresh_token"] | None = None
    ) -> Steps[None]:
        """Revoke a token (RFC 7009 §2.1) at the AS's ``revocation_endpoint``.

        Raises:
            ClientError: (CONFIGURATION) the AS has no revocation endpoint.
            TokenResponseError / OAuthError subclasses: the AS refused.
        """
        endpoint = self.metadata.revocation_endpoint
        if endpoint is None:
            raise ClientError(Reason.CONFIGURATION, "the AS has no revocation endpoint")
        form = {"token": token}
        if hint is not None:
            form["token_type_hint"] = hint
        response, _ = yield from self._post_steps(endpoint, form, key=None)
        if response.status != 200:
            raise error_from(response, parse_json_body(response.body))

    def _authorization_request_steps(
        self,
        *,
        redirect_uri: str,
        scope: str | None = None,
        resource: str | None = None,
        fresh_key: bool = False,
        use_par: bool | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Steps[AuthorizationRequest]:
        """Start an authorization-code flow with PKCE S256 and ``dpop_jkt`` (RFC 9449 §10).

        Args:
            redirect_uri: the registered redirect URI.
            scope: the requested scope.
            resource: an RFC 8707 resource indicator.
            fresh_key: generate a new DPoP key for this authorization (C-19); the
                returned request (and the tokens) carry it.
            use_par: push the request first (RFC 9126); None = when the AS offers it.
            extra: more authorization parameters.

        Raises:
            ClientError: (CONFIGURATION) no authorization endpoint, or PAR required
                but not offered.
        """
        meta = self.metadata
        if meta.authorization_endpoint is None:
            raise ClientError(Reason.CONFIGURATION, "the AS has no authorization endpoint")
        key = self.check_key(DPoPKey.generate(self.key.alg)) if fresh_key else self.key
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(24)
        params: dict[str, str] = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "dpop_jkt": key.jkt,  # RFC 9449 §10 (C-18)
        }
        if scope is not None:
            params["scope"] = scope
        if resource is not None:
            params["resource"] = resource
        params.update(extra or {})
        par_endpoint = meta.pushed_authorization_request_endpoint
        if use_par is None:
            use_par = par_endpoint is not None
        if meta.require_pushed_authorization_requests and not use_par:
            raise ClientError(Reason.CONFIGURATION, "the AS requires PAR")
        if use_par:
            if par_endpoint is None:
                raise ClientError(Reason.CONFIGURATION, "the AS offers no PAR endpoint")
            # RFC 9449 §10.1: dpop_jkt in the PAR body (C-20) and a proof on the request (C-21).
            response, _ = yield from self._post_steps(par_endpoint, dict(params), key=key)
            data = parse_json_body(response.body)
            if response.status not in (200, 201):
                raise error_from(response, data)
            request_uri = None if data is None else data.get("request_uri")
            if not isinstance(request_uri, str) or not request_uri:
                raise TokenResponseError(Reason.TOKEN_RESPONSE, "no request_uri in PAR response")
            query = {"client_id": self.client_id, "request_uri": request_uri}
        else:
            query = params
        url = _add_query(meta.authorization_endpoint, query)
        return AuthorizationRequest(
            url=url,
            state=state,
            code_verifier=verifier,
            redirect_uri=redirect_uri,
            key=key,
            scope=scope,
        )

    def _exchange_code_steps(
        self, request: AuthorizationRequest, callback_url: str
    ) -> Steps[TokenSet]:
        """Finish the flow: check the callback and redeem the code (RFC 6749 §4.1.2, §4.1.3).

        The callback's ``state`` is compared in constant time; its ``iss``
        parameter (RFC 9207 §2.4) must equal the issuer, and must be present when
        the AS advertises ``authorization_response_iss_parameter_supported`` (error
        callbacks included); the code is redeemed with the PKCE verifier and a
        proof from the request's key (C-18).

        Raises:
            TokenResponseError: wrong ``state``, no ``code``, or an error callback;
                ``reason`` ``ISS_MISSING`` / ``ISS_MISMATCH`` for the RFC 9207 checks,
                checked right after ``state``, before the callback's ``error`` or ``code``.
        """
        query = parse_qs(urlsplit(callback_url).query, keep_blank_values=True)

        def one(name: str) -> str | None:
            values = query.get(name)
            if values is None:
                return None
            if len(values) != 1:
                raise TokenResponseError(Reason.TOKEN_RESPONSE, f"{name} given twice")
            return values[0]

        state = one("state") or ""
        if not hmac.compare_digest(state.encode(), request.state.encode()):
            raise TokenResponseError(Reason.TOKEN_RESPONSE, "state does not match")
        _check_callback_iss(one("iss"), self.metadata)
        error = one("error")
        if error is not None:
            raise TokenResponseError(
                Reason.TOKEN_RESPONSE, "the authorization was refused", detail={"error": error}
            )
        code = one("code")
        if not code:
            raise TokenResponseError(Reason.TOKEN_RESPONSE, "no code in the callback")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": request.redirect_uri,
            "code_verifier": request.code_verifier,
        }
        tokens = yield from self._token_steps(form, request.key, "authorization_code")
        if request.scope is not None and tokens.scope is None:
            tokens = _replace(tokens, scope=request.scope)
        return tokens


class TokenClient(_TokenFlows):
    """An OAuth client that gets DPoP-bound tokens (RFC 9449 §5, §10).

    Build it with :meth:`from_issuer` (discovery) or with explicit ``metadata``.

    Args:
        key: the default DPoP key (per-authorization keys: ``fresh_key=True``, C-19).
        client_id: the registered client identifier.
        metadata: the AS metadata (endpoints, supported DPoP algorithms).
        client_secret: for ``client_secret_basic`` / ``client_secret_post``.
        auth_method: the client authentication method (default: ``client_secret_basic``
            with a secret, ``private_key_jwt`` with an assertion key, else ``none``).
        assertion_key: the key that signs ``private_key_jwt`` assertions (RFC 7523).
        assertion_kid: the ``kid`` put into assertions, if the AS needs one.
        sender: the HTTP sender (``urllib`` by default).
        nonces: the per-origin nonce cache (share it with the resource auth object).
        clock: the time source.
        allow_bearer_downgrade: accept ``token_type: Bearer`` although a proof was
            sent (the token is then not DPoP-bound; off by default, C-7).
        allow_insecure_http: allow ``http://`` endpoints (loopback tests only).

    Raises:
        ClientError: (CONFIGURATION) the key's ``alg`` is not in the AS's
            ``dpop_signing_alg_values_supported`` (C-16).
    """

    def __init__(
        self,
        *,
        key: DPoPKey,
        client_id: str,
        metadata: ServerMetadata,
        client_secret: str | None = None,
        auth_method: AuthMethod | None = None,
        assertion_key: DPoPKey | None = None,
        assertion_kid: str | None = None,
        sender: Sender | None = None,
        nonces: NonceCache | None = None,
        clock: Clock = time.time,
        allow_bearer_downgrade: bool = False,
        allow_insecure_http: bool = False,
    ) -> None:
        self.sender = sender if sender is not None else urllib_sender()
        super().__init__(
            key=key,
            client_id=client_id,
            metadata=metadata,
            client_secret=client_secret,
            auth_method=auth_method,
            assertion_key=assertion_key,
            assertion_kid=assertion_kid,
            nonces=nonces,
            clock=clock,
            allow_bearer_downgrade=allow_bearer_downgrade,
            allow_insecure_http=allow_insecure_http,
        )

    @classmethod
    def from_issuer(
        cls, issuer: str, *, key: DPoPKey, client_id: str, sender: Sender | None = None, **kw: Any
    ) -> TokenClient:
        """Discover ``issuer``'s metadata (:func:`discover`) and build a client."""
        send = sender if sender is not None else urllib_sender()
        return cls(
            key=key, client_id=client_id, metadata=discover(issuer, sender=send), sender=send, **kw
        )

    def client_credentials(
        self,
        *,
        scope: str | None = None,
        resource: str | None = None,
        key: DPoPKey | None = None,
    ) -> TokenSet:
        """Client credentials grant (RFC 6749 §4.4) with a DPoP proof (RFC 9449 §5)."""
        return run_steps(
            self._client_credentials_steps(scope=scope, resource=resource, key=key), self.sender
        )

    def refresh(self, tokens: TokenSet, *, scope: str | None = None) -> TokenSet:
        """Refresh grant (RFC 6749 §6) with a proof from the key that got the tokens (C-8).

        The refresh token is never sent without a proof. When the AS does not send
        a new refresh token the old one is kept (RFC 6749 §6).

        Raises:
            ValueError: ``tokens`` has no refresh token.
        """
        return run_steps(self._refresh_steps(tokens, scope=scope), self.sender)

    def revoke(
        self, token: str, *, hint: Literal["access_token", "refresh_token"] | None = None
    ) -> None:
        """Revoke a token (RFC 7009 §2.1) at the AS's ``revocation_endpoint``.

        Raises:
            ClientError: (CONFIGURATION) the AS has no revocation endpoint.
            TokenResponseError / OAuthError subclasses: the AS refused.
        """
        return run_steps(self._revoke_steps(token, hint=hint), self.sender)

    def authorization_request(
        self,
        *,
        redirect_uri: str,
        scope: str | None = None,
        resource: str | None = None,
        fresh_key: bool = False,
        use_par: bool | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> AuthorizationRequest:
        """Start an authorization-code flow with PKCE S256 and ``dpop_jkt`` (RFC 9449 §10).

        Args:
            redirect_uri: the registered redirect URI.
            scope: the requested scope.
            resource: an RFC 8707 resource indicator.
            fresh_key: generate a new DPoP key for this authorization (C-19); the
                returned request (and the tokens) carry it.
            use_par: push the request first (RFC 9126); None = when the AS offers it.
            extra: more authorization parameters.

        Raises:
            ClientError: (CONFIGURATION) no authorization endpoint, or PAR required
                but not offered.
        """
        return run_steps(
            self._authorization_request_steps(
                redirect_uri=redirect_uri,
                scope=scope,
                resource=resource,
                fresh_key=fresh_key,
                use_par=use_par,
                extra=extra,
            ),
            self.sender,
        )

    def exchange_code(self, request: AuthorizationRequest, callback_url: str) -> TokenSet:
        """Finish the flow: check the callback and redeem the code (RFC 6749 §4.1.2, §4.1.3).

        The callback's ``state`` is compared in constant time; its ``iss``
        parameter (RFC 9207 §2.4) must equal the issuer, and must be present when
        the AS advertises ``authorization_response_iss_parameter_supported`` (error
        callbacks included); the code is redeemed with the PKCE verifier and a
        proof from the request's key (C-18).

        Raises:
            TokenResponseError: wrong ``state``, no ``code``, or an error callback;
                ``reason`` ``ISS_MISSING`` / ``ISS_MISMATCH`` for the RFC 9207 checks,
                checked right after ``state``, before the callback's ``error`` or ``code``.
        """
        return run_steps(self._exchange_code_steps(request, callback_url), self.sender)

    def login_native(
        self,
        *,
        scope: str | None = None,
        resource: str | None = None,
        fresh_key: bool = True,
        open_browser: Callable[[str], object] = webbrowser.open,
        timeout: float = 300.0,
        path: str = "/callback",
    ) -> TokenSet:
        """Authorization code flow for native apps via a loopback redirect (RFC 8252 §7.3).

        Starts a one-shot HTTP listener on ``127.0.0.1`` (a free port), opens the
        browser on the authorization URL, waits for one callback on ``path``, then
        redeems the code. A fresh DPoP key per authorization by default (C-19).

        Raises:
            TimeoutError: no callback within ``timeout`` seconds.
            TokenResponseError: see :meth:`exchange_code`.
        """
        with LoopbackListener(path) as listener:
            request = self.authorization_request(
                redirect_uri=listener.redirect_uri,
                scope=scope,
                resource=resource,
                fresh_key=fresh_key,
            )
            open_browser(request.url)
            callback = listener.wait(timeout)
        return self.exchange_code(request, callback)


class AsyncTokenClient(_TokenFlows):
    """The asynchronous twin of :class:`TokenClient`: token requests never block the loop.

    The same arguments, requests and checks as :class:`TokenClient` (one sans-I/O
    implementation, :class:`_TokenFlows`); only the sender differs: an
    :data:`~dpopkit.client.senders.AsyncSender`, by default
    :func:`~dpopkit.client.senders.threaded_urllib_sender` (the standard library in a
    worker thread, asyncio); under trio, or to share a pool, pass
    :func:`dpopkit.client.httpx.httpx_async_sender`. Build it with :meth:`from_issuer`
    (``await``) or with explicit ``metadata``.

    Raises:
        ClientError: (CONFIGURATION) the key's ``alg`` is not in the AS's
            ``dpop_signing_alg_values_supported`` (C-16).
    """

    def __init__(
        self,
        *,
        key: DPoPKey,
        client_id: str,
        metadata: ServerMetadata,
        client_secret: str | None = None,
        auth_method: AuthMethod | None = None,
        assertion_key: DPoPKey | None = None,
        assertion_kid: str | None = None,
        sender: AsyncSender | None = None,
        nonces: NonceCache | None = None,
        clock: Clock = time.time,
        allow_bearer_downgrade: bool = False,
        allow_insecure_http: bool = False,
    ) -> None:
        self.sender = sender if sender is not None else threaded_urllib_sender()
        super().__init__(
            key=key,
            client_id=client_id,
            metadata=metadata,
            client_secret=client_secret,
            auth_method=auth_method,
            assertion_key=assertion_key,
            assertion_kid=assertion_kid,
            nonces=nonces,
            clock=clock,
            allow_bearer_downgrade=allow_bearer_downgrade,
            allow_insecure_http=allow_insecure_http,
        )

    @classmethod
    async def from_issuer(
        cls,
        issuer: str,
        *,
        key: DPoPKey,
        client_id: str,
        sender: AsyncSender | None = None,
        **kw: Any,
    ) -> AsyncTokenClient:
        """Discover ``issuer``'s metadata (:func:`adiscover`) and build a client."""
        send = sender if sender is not None else threaded_urllib_sender()
        metadata = await adiscover(issuer, sender=send)
        return cls(key=key, client_id=client_id, metadata=metadata, sender=send, **kw)

    async def client_credentials(
        self,
        *,
        scope: str | None = None,
        resource: str | None = None,
        key: DPoPKey | None = None,
    ) -> TokenSet:
        """Client credentials grant (RFC 6749 §4.4) with a DPoP proof (RFC 9449 §5)."""
        return await arun_steps(
            self._client_credentials_steps(scope=scope, resource=resource, key=key), self.sender
        )

    async def refresh(self, tokens: TokenSet, *, scope: str | None = None) -> TokenSet:
        """Refresh grant (RFC 6749 §6) with a proof from the key that got the tokens (C-8).

        The refresh token is never sent without a proof. When the AS does not send
        a new refresh token the old one is kept (RFC 6749 §6).

        Raises:
            ValueError: ``tokens`` has no refresh token.
        """
        return await arun_steps(self._refresh_steps(tokens, scope=scope), self.sender)

    async def revoke(
        self, token: str, *, hint: Literal["access_token", "refresh_token"] | None = None
    ) -> None:
        """Revoke a token (RFC 7009 §2.1) at the AS's ``revocation_endpoint``.

        Raises:
            ClientError: (CONFIGURATION) the AS has no revocation endpoint.
            TokenResponseError / OAuthError subclasses: the AS refused.
        """
        return await arun_steps(self._revoke_steps(token, hint=hint), self.sender)

    async def authorization_request(
        self,
        *,
        redirect_uri: str,
        scope: str | None = None,
        resource: str | None = None,
        fresh_key: bool = False,
        use_par: bool | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> AuthorizationRequest:
        """Start an authorization-code flow with PKCE S256 and ``dpop_jkt`` (RFC 9449 §10).

        Args:
            redirect_uri: the registered redirect URI.
            scope: the requested scope.
            resource: an RFC 8707 resource indicator.
            fresh_key: generate a new DPoP key for this authorization (C-19); the
                returned request (and the tokens) carry it.
            use_par: push the request first (RFC 9126); None = when the AS offers it.
            extra: more authorization parameters.

        Raises:
            ClientError: (CONFIGURATION) no authorization endpoint, or PAR required
                but not offered.
        """
        return await arun_steps(
            self._authorization_request_steps(
                redirect_uri=redirect_uri,
                scope=scope,
                resource=resource,
                fresh_key=fresh_key,
                use_par=use_par,
                extra=extra,
            ),
            self.sender,
        )

    async def exchange_code(self, request: AuthorizationRequest, callback_url: str) -> TokenSet:
        """Finish the flow: check the callback and redeem the code (RFC 6749 §4.1.2, §4.1.3).

        The callback's ``state`` is compared in constant time; its ``iss``
        parameter (RFC 9207 §2.4) must equal the issuer, and must be present when
        the AS advertises ``authorization_response_iss_parameter_supported`` (error
        callbacks included); the code is redeemed with the PKCE verifier and a
        proof from the request's key (C-18).

        Raises:
            TokenResponseError: wrong ``state``, no ``code``, or an error callback;
                ``reason`` ``ISS_MISSING`` / ``ISS_MISMATCH`` for the RFC 9207 checks,
                checked right after ``state``, before the callback's ``error`` or ``code``.
        """
        return await arun_steps(self._exchange_code_steps(request, callback_url), self.sender)

    async def login_native(
        self,
        *,
        scope: str | None = None,
        resource: str | None = None,
        fresh_key: bool = True,
        open_browser: Callable[[str], object] = webbrowser.open,
        timeout: float = 300.0,  # noqa: ASYNC109 - the same signature as TokenClient's
        path: str = "/callback",
    ) -> TokenSet:
        """:meth:`TokenClient.login_native` for asyncio: the wait runs in a worker thread.

        Raises:
            TimeoutError: no callback within ``timeout`` seconds.
            TokenResponseError: see :meth:`exchange_code`.
        """
        import asyncio

        with LoopbackListener(path) as listener:
            request = await self.authorization_request(
                redirect_uri=listener.redirect_uri,
                scope=scope,
                resource=resource,
                fresh_key=fresh_key,
            )
            open_browser(request.url)
            callback = await asyncio.to_thread(listener.wait, timeout)
        return await self.exchange_code(request, callback)


# -- helpers ---------------------------------------------------------------------------------------


def checked_key_alg(key: DPoPKey, supported: Sequence[str] | None) -> DPoPKey:
    """Return ``key`` (or its RFC 9864 twin) if ``supported`` allows its alg (C-16).

    ``supported`` is an AS's ``dpop_signing_alg_values_supported`` (RFC 9449 §5.1);
    None means the AS does not say. Shared by :class:`TokenClient` and the MCP client auth.

    Raises:
        ClientError: (CONFIGURATION) the AS lists DPoP algorithms without this one.
    """
    if supported is None or key.alg in supported:
        return key
    twin = _EQUIVALENT_ALGS.get(key.alg)
    if twin is not None and twin in supported and key.is_exportable:
        return key.with_alg(twin)
    raise ClientError(
        Reason.CONFIGURATION,
        "the authorization server does not accept this key's algorithm",
        detail={"alg": key.alg, "supported": list(supported)},
    )


def checked_token_type(
    token_type: object, *, proof_sent: bool, allow_bearer_downgrade: bool = False
) -> str:
    """Return a token response's ``token_type``, refusing an unbound answer to a DPoP request.

    RFC 6749 §5.1: ``token_type`` is required and compared case-insensitively; RFC 9449 §5:
    a ``Bearer`` answer to a request that carried a proof means the token is not bound
    (C-7, SEC-115), refused unless ``allow_bearer_downgrade``. Shared by every client
    that reads token responses (:class:`TokenClient` and the MCP client auth).

    Raises:
        TokenResponseError: ``TOKEN_RESPONSE`` (missing, or not ``DPoP`` after a proof).
    """
    if not isinstance(token_type, str):
        raise TokenResponseError(Reason.TOKEN_RESPONSE, "no token_type in the response")
    if proof_sent and token_type.lower() != "dpop" and not allow_bearer_downgrade:
        raise TokenResponseError(
            Reason.TOKEN_RESPONSE,
            "the authorization server did not bind the token (token_type is not DPoP)",
            detail={"token_type": token_type},
        )
    return token_type


def _check_callback_iss(iss: str | None, metadata: ServerMetadata) -> None:
    """RFC 9207 §2.4: the authorization response's ``iss`` against the AS metadata.

    Raises:
        TokenResponseError: (ISS_MISSING) no ``iss`` although the AS advertises
            ``authorization_response_iss_parameter_supported``; (ISS_MISMATCH) an
            ``iss`` that is not exactly the metadata's ``issuer`` (simple string
            comparison, RFC 9207 §2.4), whether or not the AS advertises it.
    """
    if iss is None:
        if metadata.authorization_response_iss_parameter_supported:
            raise TokenResponseError(
                Reason.ISS_MISSING,
                "the authorization response has no iss although the AS promises one",
            )
        return
    if not hmac.compare_digest(iss.encode(), metadata.issuer.encode()):
        raise TokenResponseError(Reason.ISS_MISMATCH, "the authorization response iss is wrong")


def _replace(tokens: TokenSet, **changes: Any) -> TokenSet:
    values = {name: getattr(tokens, name) for name in TokenSet.__dataclass_fields__}
    values.update(changes)
    return TokenSet(**values)


def _add_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = urlencode(list(params.items()))
    joined = f"{parts.query}&{query}" if parts.query else query
    return urlunsplit((parts.scheme, parts.netloc, parts.path, joined, ""))
