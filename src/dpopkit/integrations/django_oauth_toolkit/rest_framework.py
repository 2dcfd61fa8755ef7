"""A Django REST framework authentication class that speaks DPoP (RFC 9449 §7)."""

from __future__ import annotations

from typing import Any

from dpopkit.errors import DPoPError, requires_extra

with requires_extra("django-oauth-toolkit", needed_by=__name__):
    from oauth2_provider.contrib.rest_framework.authentication import OAuth2Authentication
    from rest_framework import exceptions  # first: it needs no Django settings

from dpopkit.integrations.django_oauth_toolkit.backends import dpop_core, resource_guard

__all__ = ["DPoPAuthentication"]


class DPoPAuthenticationFailed(exceptions.AuthenticationFailed):  # type: ignore[misc]
    """A rejected request; DRF answers with the status and challenge of ``error``."""

    def __init__(self, error: DPoPError) -> None:
        super().__init__(detail={"error": error.error, "error_description": error.description})
        self.status_code = error.rs_status
        self.error = error


class DPoPAuthentication(OAuth2Authentication):  # type: ignore[misc]
    """DOT's ``OAuth2Authentication`` with ``Authorization: DPoP`` and a proof.

    Needs :class:`~.backends.DPoPOAuthLibCore` as ``OAUTH2_BACKEND_CLASS``. A bound
    token is accepted only with the DPoP scheme and a proof by its key; an unbound
    one only as Bearer (RFC 9449 §7.1, §7.2). ``request.auth`` is DOT's access token
    and ``request.dpop`` the :class:`~dpopkit.resource.DPoPPrincipal`.
    """

    def authenticate(self, request: Any) -> tuple[Any, Any] | None:
        """Return ``(user, access_token)``, None without credentials, or raise.

        Raises:
            DPoPAuthenticationFailed: bad credentials (401, or 400/403 as RFC 6750 §3.1).
        """
        valid, result = dpop_core().verify_request(request._request, scopes=[])
        if valid:
            request.dpop = result.dpop
            return result.user, result.access_token
        error: DPoPError = result.dpop_error
        request.dpop_error = error
        if error.reason.value in ("missing_token", "unsupported_scheme"):
            return None
        raise DPoPAuthenticationFailed(error)

    def authenticate_header(self, request: Any) -> str:
        """The ``WWW-Authenticate`` challenge(s), with the error when there was one."""
        guard = resource_guard()
        error: DPoPError | None = getattr(request, "dpop_error", None)
        response = guard.challenge_response() if error is None else guard.error_response(error)
        return ", ".join(value for name, value in response.headers if name == "WWW-Authenticate")
