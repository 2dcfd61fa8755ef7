"""DOT's ``OAUTH2_BACKEND_CLASS`` with DPoP: proofs at the token endpoint and at resources.

:class:`DPoPOAuthLibCore` checks the ``DPoP`` header of a token request with
:func:`dpopkit.core.verify_proof` (``htm=POST``, ``htu`` from ``PUBLIC_URL``, the
nonce policy) *before* oauthlib sees the request, so a failing proof, the
``use_dpop_nonce`` round trip included, never reaches a code or a refresh token.
The verified proof rides along to :class:`~.validators.DPoPOAuth2Validator`, which
compares it with the code's ``dpop_jkt`` and the refresh token's binding and records
it in the replay cache just before DOT writes anything (RFC 9449 §11.1).

Its :meth:`~DPoPOAuthLibCore.verify_request` authenticates resource requests with a
:class:`~dpopkit.resource.ResourceGuard`: ``Authorization: DPoP`` with a proof for
bound tokens, ``Bearer`` for unbound ones only (RFC 9449 §7).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
import time
import warnings
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

from dpopkit.core.http import DPOP_HEADER, DPOP_NONCE_HEADER, Headers, RequestView
from dpopkit.core.proof import VerifiedProof, extract_proof, verify_proof
from dpopkit.errors import DPoPError, InvalidTokenError, Reason, SecurityWarning, requires_extra
from dpopkit.integrations.django_oauth_toolkit.conf import DPoPSettings, dpop_settings
from dpopkit.resource.guard import DPoPPrincipal, ResourceGuard
from dpopkit.resource.validation import TokenInfo

with requires_extra("django-oauth-toolkit", needed_by=__name__):
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
    from django.http import HttpRequest  # type: ignore[import-untyped]
    from oauth2_provider.exceptions import OAuthToolkitError
    from oauth2_provider.models import get_access_token_model
    from oauth2_provider.oauth2_backends import OAuthLibCore, get_oauthlib_core
    from oauthlib.common import Request as OAuthLibRequest
    from oauthlib.oauth2 import OAuth2Error
    from oauthlib.oauth2.rfc6749 import errors as oauthlib_errors

__all__ = [
    "PROOF_KEY",
    "DOTAccessTokens",
    "DPoPOAuthLibCore",
    "dpop_core",
    "requested_dpop_jkt",
    "resource_guard",
]

#: The key under which the verified proof reaches the validator in oauthlib's headers.
#: A client cannot send it: Django puts request headers under ``HTTP_*`` names.
PROOF_KEY = "dpopkit.proof"


#: RFC 9449 §10: ``dpop_jkt`` is a base64url SHA-256 JWK thumbprint (RFC 7638).
_JKT = re.compile(r"[A-Za-z0-9_-]{43}")


def requested_dpop_jkt(uri: str) -> str | None:
    """The ``dpop_jkt`` of an authorization request URI, or None.

    Raises:
        oauthlib.oauth2.rfc6749.errors.InvalidRequestError: repeated or malformed.
    """
    values = parse_qs(urlsplit(uri).query, keep_blank_values=True).get("dpop_jkt", [])
    if not values:
        return None
    if len(values) > 1 or not _JKT.fullmatch(values[0]):
        raise oauthlib_errors.InvalidRequestError(
            description="dpop_jkt must be one base64url SHA-256 JWK thumbprint"
        )
    return values[0]


def _claimed_client_id(request: HttpRequest) -> str | None:
    """The client id the request names (Basic credentials or the body), unauthenticated.

    Used only to pick the nonce policy before the proof is checked; DOT authenticates
    the client afterwards, and a wrong name only makes the request fail.
    """
    auth = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return unquote_plus(decoded.partition(":")[0]) or None
    client_id = request.POST.get("client_id")
    return client_id or None


def client_settings(client_id: str | None) -> Any:
    """The :class:`~.models.ClientDPoPSettings` of ``client_id``, or None."""
    if client_id is None:
        return None
    from dpopkit.integrations.django_oauth_toolkit.models import ClientDPoPSettings

    return (
        ClientDPoPSettings.objects.filter(application__client_id=client_id)
        .select_related("application")
        .first()
    )


def nonce_required(conf: DPoPSettings, settings: Any) -> bool:
    """Whether proofs from a client with ``settings`` must carry a server nonce (§8)."""
    return conf.nonce_policy == "always" or (
        conf.nonce_policy == "per_client"
        and settings is not None
        and bool(settings.dpop_nonce_required)
    )


def dpop_core() -> DPoPOAuthLibCore:
    """DOT's configured backend, which must be :class:`DPoPOAuthLibCore`.

    Raises:
        ImproperlyConfigured: ``OAUTH2_BACKEND_CLASS`` is another class.
    """
    core = get_oauthlib_core()
    if not isinstance(core, DPoPOAuthLibCore):
        raise ImproperlyConfigured(
            "OAUTH2_PROVIDER['OAUTH2_BACKEND_CLASS'] must be "
            "dpopkit.integrations.django_oauth_toolkit.backends.DPoPOAuthLibCore"
        )
    return core


def _headers(request: HttpRequest) -> Headers:
    return Headers([(name, str(value)) for name, value in request.headers.items()])


def check_token_request_proof(
    request: HttpRequest, conf: DPoPSettings, settings: Any, *, now: float
) -> VerifiedProof | None:
    """RFC 9449 §4.3 on a token request's proof, without recording it.

    Returns None when the request has no ``DPoP`` header (whether the client may do
    without one is decided after client authentication, by the validator).

    Raises:
        InvalidProofError: a failed check.
        UseNonceError: a nonce is required and missing or stale (§8).
    """
    headers = _headers(request)
    if not headers.get_all(DPOP_HEADER):
        return None
    raw = extract_proof(headers)
    required = nonce_required(conf, settings)
    return verify_proof(
        raw,
        htm="POST",
        htu=conf.htu(request.path),
        policy=conf.nonce_policy_proofs if required else conf.policy,
        nonce_check=conf.nonces,
        now=now,
    )


def _error_triple(error: DPoPError) -> tuple[dict[str, str], str, int]:
    response = error.as_response(role="as")
    return dict(response.headers), (response.body or b"").decode(), response.status


class DPoPOAuthLibCore(OAuthLibCore):  # type: ignore[misc]
    """DOT's oauthlib backend with DPoP at the token endpoint and at resources."""

    def extract_headers(self, request: HttpRequest) -> dict[str, Any]:
        """DOT's headers, without anything posing as the verified proof."""
        headers: dict[str, Any] = super().extract_headers(request)
        headers.pop(PROOF_KEY, None)
        return headers

    def create_token_response(
        self, request: HttpRequest
    ) -> tuple[str | None, dict[str, str], str, int]:
        """Check the proof, then let oauthlib run the grant (RFC 9449 §5, §4.3)."""
        conf = dpop_settings()
        now = time.time()
        settings = client_settings(_claimed_client_id(request))
        try:
            proof = check_token_request_proof(request, conf, settings, now=now)
        except DPoPError as error:
            headers, body, status = _error_triple(error)
            return None, headers, body, status
        uri, http_method, body, headers = self._extract_params(request)
        if proof is not None:
            headers[PROOF_KEY] = proof
        try:
            out_headers, out_body, status = self.server.create_token_response(
                uri, http_method, body, headers, self._get_extra_credentials(request)
            )
        except DPoPError as error:
            out_headers, out_body, status = _error_triple(error)
        except OAuth2Error as exc:
            out_headers, out_body, status = exc.headers, exc.json, exc.status_code
        out_headers = dict(out_headers)
        stale = proof is None or proof.nonce_info is None or not proof.nonce_info.current
        names = {name.lower() for name in out_headers}
        if (
            conf.nonces is not None
            and nonce_required(conf, settings)
            and stale
            and DPOP_NONCE_HEADER.lower() not in names
        ):
            # RFC 9449 §8.2: a fresh nonce whenever the client's is not current.
            out_headers[DPOP_NONCE_HEADER] = conf.nonces.issue(now=now)
        return out_headers.get("Location"), out_headers, out_body, status

    def validate_authorization_request(self, request: HttpRequest) -> tuple[Any, Any]:
        """DOT's validation, then a well-formed ``dpop_jkt`` (RFC 9449 §10).

        Checked after the client and its redirect URI are known, so the error goes
        back to the client (RFC 6749 §4.1.2.1) before any consent is asked.
        """
        scopes, credentials = super().validate_authorization_request(request)
        try:
            requested_dpop_jkt(request.get_full_path())
        except OAuth2Error as error:
            error.redirect_uri = credentials.get("redirect_uri")
            error.state = credentials.get("state")
            raise OAuthToolkitError(error=error, redirect_uri=error.redirect_uri) from None
        return scopes, credentials

    def verify_request(self, request: HttpRequest, scopes: list[str]) -> tuple[bool, Any]:
        """Authenticate a resource request with dpopkit's guard (RFC 9449 §7).

        Returns:
            ``(valid, oauthlib_request)`` as DOT's backend does; on success the request
            carries ``user``, ``access_token``, ``client``, ``scopes`` and ``dpop``
            (the :class:`~dpopkit.resource.DPoPPrincipal`); on failure ``oauth2_error``
            and ``dpop_error`` (the :class:`~dpopkit.DPoPError`).
        """
        conf = dpop_settings()
        guard = resource_guard()
        url = conf.public_url + request.get_full_path()
        view = RequestView(method=request.method or "GET", url=url, headers=_headers(request))
        oauthlib_request = OAuthLibRequest(url, http_method=request.method)
        try:
            principal: DPoPPrincipal = guard.authenticate(view, required_scopes=scopes)
        except DPoPError as error:
            oauthlib_request.oauth2_error = {
                "error": error.error,
                "error_description": error.description,
            }
            oauthlib_request.dpop_error = error
            return False, oauthlib_request
        token = principal.claims["_access_token"]
        path_url = url.split("?", 1)[0]
        if token.resource and not token.allows_audience(path_url):
            # RFC 8707 §2: a token for other resources is not accepted here (DOT's check).
            refusal: InvalidTokenError | None = InvalidTokenError(
                Reason.TOKEN_INVALID, "the token is not for this resource"
            )
        elif token.application is not None and not token.application.is_usable(oauthlib_request):
            refusal = InvalidTokenError(Reason.TOKEN_INVALID, "the client is disabled")
        else:
            refusal = None
        if refusal is not None:
            oauthlib_request.oauth2_error = {
                "error": refusal.error,
                "error_description": refusal.description,
            }
            oauthlib_request.dpop_error = refusal
            return False, oauthlib_request
        oauthlib_request.access_token = token
        oauthlib_request.user = token.user
        oauthlib_request.client = token.application
        oauthlib_request.scopes = sorted(principal.scopes)
        oauthlib_request.dpop = principal
        return True, oauthlib_request


class DOTAccessTokens:
    """A :class:`~dpopkit.resource.TokenValidator` over DOT's access-token table.

    The binding comes from :class:`~.models.AccessTokenBinding`. The token's model
    instance is in ``claims["_access_token"]``; :meth:`DPoPOAuthLibCore.verify_request`
    then applies DOT's RFC 8707 audience and ``is_usable`` checks.
    """

    def validate(self, token: str, *, now: float) -> TokenInfo:
        """Look the token up by its checksum, as DOT does.

        Raises:
            InvalidTokenError: unknown, expired, or not for this resource.
        """
        checksum = hashlib.sha256(token.encode("utf-8")).hexdigest()
        model = get_access_token_model()
        found = (
            model.objects.select_related("application", "user", "dpop_binding")
            .filter(token_checksum=checksum)
            .first()
        )
        if found is None or found.is_expired():
            raise InvalidTokenError(Reason.TOKEN_INACTIVE, "the access token is not active")
        binding = getattr(found, "dpop_binding", None)
        expires = found.expires
        return TokenInfo(
            claims={"_access_token": found, "scope": found.scope},
            jkt=None if binding is None else binding.jkt,
            scopes=frozenset(found.scope.split()),
            sub=None if found.user is None else str(found.user.pk),
            client_id=None if found.application is None else found.application.client_id,
            exp=None if expires is None else expires.timestamp(),
        )


_guard_lock = threading.Lock()
_guard: ResourceGuard | None = None


def resource_guard() -> ResourceGuard:
    """The process's :class:`~dpopkit.resource.ResourceGuard` over DOT's tokens.

    Unbound tokens are accepted with ``Bearer`` so that clients without DPoP keep
    working; a bound token never is (RFC 9449 §7.2).
    """
    global _guard
    with _guard_lock:
        if _guard is None:
            conf = dpop_settings()
            with warnings.catch_warnings():
                # Accepting unbound Bearer tokens is this plug-in's documented migration path.
                warnings.simplefilter("ignore", SecurityWarning)
                _guard = ResourceGuard(
                    tokens=DOTAccessTokens(),
                    replay=conf.replay,
                    policy=conf.policy,
                    accept_bearer=True,
                )
        return _guard
