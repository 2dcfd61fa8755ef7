"""Routes of the example DOT server: DOT's endpoints with the DPoP plug-in, two APIs."""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar

from django.conf import settings  # type: ignore[import-untyped]
from django.contrib.auth import get_user_model  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse, JsonResponse  # type: ignore[import-untyped]
from django.urls import include, path  # type: ignore[import-untyped]
from oauth2_provider import views as dot_views
from oauth2_provider.contrib.rest_framework import TokenHasScope
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from dpopkit.integrations.django_oauth_toolkit.decorators import protected_resource
from dpopkit.integrations.django_oauth_toolkit.rest_framework import DPoPAuthentication
from dpopkit.integrations.django_oauth_toolkit.views import (
    DPoPIntrospectTokenView,
    DPoPServerMetadataView,
)


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class AuthorizationView(dot_views.AuthorizationView):  # type: ignore[misc]
    """DOT's authorization view; ``test_mode_user`` signs in without a person (loopback)."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """Sign ``test_mode_user`` in for a loopback peer, then run DOT's view."""
        user = settings.TEST_MODE_USER
        if user is not None and _loopback(request.META.get("REMOTE_ADDR")):
            request.user = get_user_model().objects.get(username=user)
        return super().dispatch(request, *args, **kwargs)


class WhoAmI(APIView):  # type: ignore[misc]
    """A DRF API behind :class:`DPoPAuthentication`."""

    authentication_classes: ClassVar[list[type]] = [DPoPAuthentication]
    permission_classes: ClassVar[list[type]] = [TokenHasScope]
    required_scopes: ClassVar[list[str]] = ["read"]

    def get(self, request: Request) -> Response:
        """Who called, with which scheme and key."""
        token = request.auth
        return Response(
            {
                "client_id": token.application.client_id,
                "scope": token.scope,
                "scheme": request.dpop.scheme,
                "jkt": request.dpop.jkt,
            }
        )


@protected_resource()
def hello(request: HttpRequest) -> JsonResponse:
    """A plain Django view behind the plug-in's ``protected_resource``."""
    return JsonResponse({"hello": request.access_token.application.client_id})


oauth_patterns = [
    path("authorize/", AuthorizationView.as_view(), name="authorize"),
    path("token/", dot_views.TokenView.as_view(), name="token"),
    path("revoke_token/", dot_views.RevokeTokenView.as_view(), name="revoke-token"),
    path("introspect/", DPoPIntrospectTokenView.as_view(), name="introspect"),
]

urlpatterns = [
    path("", include((oauth_patterns, "oauth2_provider"))),
    path(".well-known/oauth-authorization-server", DPoPServerMetadataView.as_view()),
    path("api/whoami", WhoAmI.as_view()),
    path("api/hello", hello),
    path("accounts/", include("django.contrib.auth.urls")),
]
