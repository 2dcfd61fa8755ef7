"""The Django app configuration of the django-oauth-toolkit plug-in."""

from __future__ import annotations

from dpopkit.errors import requires_extra

with requires_extra("django-oauth-toolkit", needed_by=__name__):
    from django.apps import AppConfig  # type: ignore[import-untyped]

__all__ = ["DPoPToolkitConfig"]


class DPoPToolkitConfig(AppConfig):  # type: ignore[misc]
    """Holds the key bindings of DOT's codes and tokens (one migration, shipped here)."""

    name = "dpopkit.integrations.django_oauth_toolkit"
    label = "dpopkit_dot"
    verbose_name = "DPoP for django-oauth-toolkit"
    default_auto_field = "django.db.models.BigAutoField"
