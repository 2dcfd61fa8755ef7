"""URLconf for the Django adapter tests."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponse  # type: ignore[import-untyped]
from django.urls import path  # type: ignore[import-untyped]

from dpopkit.resource.django import dpop_exempt, dpop_required


def _who(request: Any) -> HttpResponse:
    principal = request.dpop
    body = {"sub": principal.sub, "scopes": sorted(principal.scopes), "jkt": principal.jkt}
    return HttpResponse(json.dumps(body), content_type="application/json")


@dpop_required("read")
def hello(request: Any) -> HttpResponse:
    return _who(request)


@dpop_required("admin")
def admin(request: Any) -> HttpResponse:
    return _who(request)


def plain(request: Any) -> HttpResponse:
    return HttpResponse(b'{"public":true}', content_type="application/json")


@dpop_exempt
def health(request: Any) -> HttpResponse:
    return HttpResponse(b"ok")


urlpatterns = [
    path("hello", hello),
    path("admin", admin),
    path("plain", plain),
    path("health", health),
]
