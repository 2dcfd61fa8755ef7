"""DPoP (RFC 9449) for django-oauth-toolkit, with dpopkit's core doing every check.

Add ``"dpopkit.integrations.django_oauth_toolkit"`` to ``INSTALLED_APPS`` (after
``"oauth2_provider"``) and point DOT at the plug-in's classes::

    PLUGIN = "dpopkit.integrations.django_oauth_toolkit"
    OAUTH2_PROVIDER = {
        "OAUTH2_VALIDATOR_CLASS": f"{PLUGIN}.validators.DPoPOAuth2Validator",
        "OAUTH2_BACKEND_CLASS": f"{PLUGIN}.backends.DPoPOAuthLibCore",
    }
    DPOPKIT_DOT = {"PUBLIC_URL": "https://as.example"}

Modules: :mod:`.conf` (the ``DPOPKIT_DOT`` setting), :mod:`.models` (the key
bindings of codes, access and refresh tokens, and per-client DPoP settings),
:mod:`.backends` (the token endpoint's proof check and the resource-side check),
:mod:`.validators`, :mod:`.views` (introspection with ``cnf`` and ``token_type``),
:mod:`.rest_framework` (a DRF authentication class) and :mod:`.decorators`.
This package imports nothing itself, so Django can load it as an app.
"""

from __future__ import annotations

__all__: list[str] = []
