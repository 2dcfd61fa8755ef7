"""``dpopkit.resource`` exports: sorted, importable, keyword-only after the first argument."""

from __future__ import annotations

import inspect

import dpopkit.resource
from dpopkit.resource.asgi import DPoPMiddleware
from dpopkit.resource.wsgi import DPoPWSGIMiddleware


def test_resource_all_sorted_and_importable() -> None:
    names = list(dpopkit.resource.__all__)
    assert names == sorted(names)
    namespace: dict[str, object] = {}
    exec("from dpopkit.resource import *", namespace)  # noqa: S102 - the star import is tested
    for name in names:
        assert getattr(dpopkit.resource, name) is namespace[name]


def test_constructors_keyword_only_after_first_argument() -> None:
    """No positional arguments after the first one."""
    classes = [
        getattr(dpopkit.resource, name)
        for name in dpopkit.resource.__all__
        if inspect.isclass(getattr(dpopkit.resource, name))
        and not getattr(getattr(dpopkit.resource, name), "_is_protocol", False)
    ]
    for cls in [*classes, DPoPMiddleware, DPoPWSGIMiddleware]:
        params = [
            p
            for p in inspect.signature(cls).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), cls
