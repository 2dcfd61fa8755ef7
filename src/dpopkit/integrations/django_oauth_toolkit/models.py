"""Key bindings stored beside DOT's own rows (RFC 9449 §6.1, §10, §5).

Each binding is a one-to-one row on DOT's (possibly swapped) model and goes away
with it (``on_delete=CASCADE``): a code's ``dpop_jkt``, an access token's
``cnf.jkt``, a public client's refresh-token binding, and a client's DPoP settings.
"""

from __future__ import annotations

from dpopkit.errors import requires_extra

with requires_extra("django-oauth-toolkit", needed_by=__name__):
    from django.db import models  # type: ignore[import-untyped]
    from oauth2_provider.settings import oauth2_settings

__all__ = ["AccessTokenBinding", "ClientDPoPSettings", "GrantBinding", "RefreshTokenBinding"]

#: A JWK SHA-256 thumbprint in base64url is 43 characters (RFC 7638, RFC 9449 §6.1).
_JKT_LENGTH = 43


class GrantBinding(models.Model):  # type: ignore[misc]
    """The ``dpop_jkt`` sent to the authorization endpoint, bound to the code (§10)."""

    grant = models.OneToOneField(
        oauth2_settings.GRANT_MODEL, on_delete=models.CASCADE, related_name="dpop_binding"
    )
    jkt = models.CharField(max_length=_JKT_LENGTH)

    class Meta:  # noqa: D106
        app_label = "dpopkit_dot"


class AccessTokenBinding(models.Model):  # type: ignore[misc]
    """The ``cnf.jkt`` of a DPoP-bound access token (§6.1)."""

    access_token = models.OneToOneField(
        oauth2_settings.ACCESS_TOKEN_MODEL, on_delete=models.CASCADE, related_name="dpop_binding"
    )
    jkt = models.CharField(max_length=_JKT_LENGTH)

    class Meta:  # noqa: D106
        app_label = "dpopkit_dot"


class RefreshTokenBinding(models.Model):  # type: ignore[misc]
    """The key a public client's refresh token is bound to (§5)."""

    refresh_token = models.OneToOneField(
        oauth2_settings.REFRESH_TOKEN_MODEL, on_delete=models.CASCADE, related_name="dpop_binding"
    )
    jkt = models.CharField(max_length=_JKT_LENGTH)

    class Meta:  # noqa: D106
        app_label = "dpopkit_dot"


class ClientDPoPSettings(models.Model):  # type: ignore[misc]
    """Per-client DPoP settings (RFC 9449 §5.2 ``dpop_bound_access_tokens``; nonces)."""

    application = models.OneToOneField(
        oauth2_settings.APPLICATION_MODEL, on_delete=models.CASCADE, related_name="dpop_settings"
    )
    dpop_bound_access_tokens = models.BooleanField(default=False)
    dpop_nonce_required = models.BooleanField(default=False)

    class Meta:  # noqa: D106
        app_label = "dpopkit_dot"
