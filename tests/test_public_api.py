"""The public API: ``dpopkit.__all__`` sorted and complete (as httpx does)."""

from __future__ import annotations

import inspect

import dpopkit
import dpopkit.errors


def test_all_is_sorted_and_unique() -> None:
    names = list(dpopkit.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_every_exported_name_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from dpopkit import *", namespace)  # noqa: S102 - the star import is what is tested
    for name in dpopkit.__all__:
        assert getattr(dpopkit, name) is namespace[name]


def test_every_public_error_class_is_exported() -> None:
    error_classes = {
        name
        for name, value in vars(dpopkit.errors).items()
        if inspect.isclass(value)
        and issubclass(value, dpopkit.DPoPError)
        and not name.startswith("_")
    }
    assert error_classes <= set(dpopkit.__all__)
    assert set(dpopkit.errors.__all__) <= set(dpopkit.__all__)
    assert "SecurityWarning" in dpopkit.__all__
    assert issubclass(dpopkit.SecurityWarning, UserWarning)


def test_every_dpoperror_subclass_is_importable_from_the_top() -> None:
    pending = [dpopkit.DPoPError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__ == "dpopkit.errors":
            assert getattr(dpopkit, cls.__name__) is cls


def test_public_callables_are_keyword_only_after_the_first_argument() -> None:
    # No positional arguments after the first one on public functions.
    for name in ("create_proof", "verify_proof", "normalize_htu", "jwk_thumbprint"):
        params = list(inspect.signature(getattr(dpopkit, name)).parameters.values())
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), name


def test_version_is_a_string() -> None:
    assert isinstance(dpopkit.__version__, str)
    assert dpopkit.__version__.count(".") >= 2
