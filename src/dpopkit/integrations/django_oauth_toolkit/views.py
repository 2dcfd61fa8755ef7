"""Introspection that answers ``cnf`` and ``token_type`` (RFC 7662 §2.2, RFC 9449 §6.2)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from dpopkit.errors import requires_extra

with requires_extra("django-oauth-toolkit", needed_by=__name__):
    from django.http import HttpRequest, HttpResponse, JsonResponse  # type: ignore[import-untyped]
    from oauth2_provider.models import get_access_token_model
    from oauth2_provider.views.introspect import IntrospectTokenView
    from oauth2_provider.views.metadata import OAuthServerMetadataView

from dpopkit.integrations.django_oauth_toolkit.conf import dpop_settings

__all__ = ["DPoPIntrospectTokenView", "DPoPServerMetadataView"]


class DPoPServerMetadataView(OAuthServerMetadataView):  # type: ignore[misc]
    """DOT's RFC 8414 metadata plus ``dpop_signing_alg_values_supported`` (RFC 9449 §5.1)."""

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """DOT's document with the proof algorithms this server accepts."""
        response: JsonResponse = super().get(request, *args, **kwargs)
        data = json.loads(response.content)
        data["dpop_signing_alg_values_supported"] = sorted(dpop_settings().policy.algorithms)
        response.content = json.dumps(data).encode()
        return response


class DPoPIntrospectTokenView(IntrospectTokenView):  # type: ignore[misc]
    """DOT's introspection endpoint; active bound tokens add ``cnf.jkt`` and ``token_type``.

    Mount it instead of DOT's ``introspect/`` route. An unbound token answers
    ``token_type: Bearer``, so a resource server can refuse a bound token sent as
    Bearer (RFC 9449 §7.2) and an unbound one sent as DPoP.
    """

    @staticmethod
    def get_token_response(token_value: str | None = None) -> HttpResponse:
        """DOT's answer, with ``cnf`` and ``token_type`` for an active token."""
        response: HttpResponse = IntrospectTokenView.get_token_response(token_value)
        if response.status_code != 200 or token_value is None:
            return response
        data: dict[str, Any] = json.loads(response.content)
        if not data.get("active"):
            return response
        checksum = hashlib.sha256(token_value.encode("utf-8")).hexdigest()
        token = (
            get_access_token_model()
            .objects.select_related("dpop_binding")
            .filter(token_checksum=checksum)
            .first()
        )
        binding = None if token is None else getattr(token, "dpop_binding", None)
        if binding is not None:
            data["cnf"] = {"jkt": binding.jkt}
            data["token_type"] = "DPoP"  # noqa: S105 - a scheme name
        else:
            data["token_type"] = "Bearer"  # noqa: S105 - a scheme name
        response.content = json.dumps(data).encode()
        return response
