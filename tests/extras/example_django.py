"""README "Protect an API": Django, with only ``dpopkit[django]`` installed."""

from __future__ import annotations

import json
import sys

import django  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]
from django.http import HttpRequest, JsonResponse  # type: ignore[import-untyped]
from django.urls import path  # type: ignore[import-untyped]

from dpopkit.resource import JWTAccessTokens, ResourceGuard
from dpopkit.storage.memory import MemoryReplayCache
from tests.extras._common import API_ORIGIN, ISSUER, bound_token, check, dpop_headers

guard = ResourceGuard(
    tokens=JWTAccessTokens(issuer=ISSUER, audience=ISSUER, allow_insecure_http=True),
    replay=MemoryReplayCache(single_process=True),
)
settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["api.example.com"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="extras-example",
    DPOPKIT={"guard": guard, "public_origin": API_ORIGIN},
    MIDDLEWARE=["dpopkit.resource.django.DPoPMiddleware"],
)
django.setup()

from django.test import Client  # type: ignore[import-untyped]  # noqa: E402

from dpopkit.resource.django import dpop_required  # noqa: E402


@dpop_required()
def orders(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"sub": request.dpop.sub})


urlpatterns = [path("orders", orders)]
sys.modules[__name__].urlpatterns = urlpatterns  # type: ignore[attr-defined]

key, token = bound_token()
url = API_ORIGIN + "/orders"
headers = dpop_headers(key, token, method="GET", url=url)
response = Client().get(
    "/orders",
    HTTP_HOST="api.example.com",
    secure=True,
    HTTP_AUTHORIZATION=headers["Authorization"],
    HTTP_DPOP=headers["DPoP"],
)
check(response.status_code, json.loads(response.content))
