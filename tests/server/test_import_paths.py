"""The authorization server's earlier import paths keep working, naming the same objects.

The endpoints and grants have modules of their own (``dpopkit.server.endpoints``,
``dpopkit.server.grants``); ``dpopkit.server.service``, ``dpopkit.server.authorize`` and
``dpopkit.server.registration`` re-export what applications imported from them.
"""

from __future__ import annotations

import importlib

import pytest

import dpopkit.server

MOVED = [
    ("dpopkit.server.service", "ServerSettings", "dpopkit.server.settings"),
    ("dpopkit.server.service", "JWT_BEARER_ASSERTION", "dpopkit.server.settings"),
    ("dpopkit.server.service", "Form", "dpopkit.server.form"),
    ("dpopkit.server.service", "GrantContext", "dpopkit.server.core"),
    ("dpopkit.server.service", "InvalidTargetError", "dpopkit.server.targets"),
    ("dpopkit.server.service", "auth_method_accepted", "dpopkit.server.clientauth"),
    ("dpopkit.server.authorize", "ConfigUsers", "dpopkit.server.users"),
    ("dpopkit.server.authorize", "AuthorizationEndpoint", "dpopkit.server.endpoints.authorize"),
    (
        "dpopkit.server.authorize",
        "validate_authorization_request",
        "dpopkit.server.authorization_request",
    ),
    ("dpopkit.server.registration", "handle_register", "dpopkit.server.endpoints.register"),
    ("dpopkit.server.registration", "client_from_metadata", "dpopkit.server.client_metadata"),
    ("dpopkit.server.grants", "refresh_token", "dpopkit.server.grants.refresh_token_grant"),
    (
        "dpopkit.server.grants",
        "authorization_code",
        "dpopkit.server.grants.authorization_code_grant",
    ),
    (
        "dpopkit.server.grants",
        "client_credentials",
        "dpopkit.server.grants.client_credentials_grant",
    ),
]


@pytest.mark.parametrize(("old", "name", "home"), MOVED)
def test_earlier_path_names_the_same_object(old: str, name: str, home: str) -> None:
    """A name imported from its earlier module is the object defined in its new one."""
    assert getattr(importlib.import_module(old), name) is getattr(
        importlib.import_module(home), name
    )


@pytest.mark.parametrize(
    "module", ["dpopkit.server.service", "dpopkit.server.authorize", "dpopkit.server.registration"]
)
def test_every_reexported_name_resolves(module: str) -> None:
    """Every name a compatibility module lists in ``__all__`` is there."""
    loaded = importlib.import_module(module)
    assert all(hasattr(loaded, name) for name in loaded.__all__)


def test_grant_functions_keep_their_grant_type_names() -> None:
    """``dpopkit.server`` exports the grant functions, not modules, under the grant_type names."""
    for name in ("authorization_code", "client_credentials", "refresh_token"):
        grant = getattr(dpopkit.server, name)
        assert callable(grant)
        assert dpopkit.server.DEFAULT_GRANTS[name] is grant
