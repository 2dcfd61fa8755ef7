"""URLconf for the Django adapter tests."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpResponse  # type: ignore[import-untyped]
from django.urls import path  # type: ignore[import-untyped]
from django.utils.decorators import method_decorator  # type: ignore[import-untyped]
from django.views import View  # type: ignore[import-untyped]

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


#: how often each of the views below ran (a refused request must not run one)
SERVED: list[str] = []


def _served(request: Any, name: str) -> HttpResponse:
    SERVED.append(name)
    principal = getattr(request, "dpop", None)
    body = {"view": name, "sub": None if principal is None else principal.sub}
    return HttpResponse(json.dumps(body), content_type="application/json")


class ClassBased(View):  # type: ignore[misc]
    """The mark sits on ``dispatch``: the middleware only sees the ``as_view()`` function."""

    @method_decorator(dpop_required("read"))  # type: ignore[untyped-decorator]
    def get(self, request: Any) -> HttpResponse:
        return _served(request, "class")


def _plain_wrapper(view: Any) -> Any:
    """A decorator that does not copy attributes (no functools.wraps): it hides the mark."""

    def wrapped(request: Any, *args: Any, **kwargs: Any) -> Any:
        return view(request, *args, **kwargs)

    return wrapped


@_plain_wrapper
@dpop_required("read")
def hidden(request: Any) -> HttpResponse:
    return _served(request, "hidden")


@dpop_required("read")
def marked(request: Any) -> HttpResponse:
    return _served(request, "marked")


@dpop_required("read")
async def marked_async(request: Any) -> HttpResponse:
    return _served(request, "async")


urlpatterns = [
    path("class", ClassBased.as_view()),
    path("hidden", hidden),
    path("marked", marked),
    path("marked-async", marked_async),
    path("hello", hello),
    path("admin", admin),
    path("plain", plain),
    path("health", health),
]
