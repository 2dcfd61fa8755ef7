"""The key bindings of codes, access and refresh tokens, and per-client DPoP settings."""

from __future__ import annotations

from typing import ClassVar

from dpopkit.errors import requires_extra

with requires_extra("django-oauth-toolkit", needed_by=__name__):
    from django.db import migrations, models  # type: ignore[import-untyped]
    from oauth2_provider.settings import oauth2_settings


def _binding(name: str, field: str, target: str) -> migrations.CreateModel:
    return migrations.CreateModel(
        name=name,
        fields=[
            (
                "id",
                models.BigAutoField(
                    auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                ),
            ),
            ("jkt", models.CharField(max_length=43)),
            (
                field,
                models.OneToOneField(
                    on_delete=models.CASCADE,
                    related_name="dpop_binding",
                    to=target,
                ),
            ),
        ],
    )


class Migration(migrations.Migration):  # type: ignore[misc]
    """Create the four tables."""

    initial = True

    dependencies: ClassVar[list[tuple[str, str]]] = [
        migrations.swappable_dependency(oauth2_settings.APPLICATION_MODEL),
        migrations.swappable_dependency(oauth2_settings.GRANT_MODEL),
        migrations.swappable_dependency(oauth2_settings.ACCESS_TOKEN_MODEL),
        migrations.swappable_dependency(oauth2_settings.REFRESH_TOKEN_MODEL),
    ]

    operations: ClassVar[list[migrations.operations.base.Operation]] = [
        _binding("GrantBinding", "grant", oauth2_settings.GRANT_MODEL),
        _binding("AccessTokenBinding", "access_token", oauth2_settings.ACCESS_TOKEN_MODEL),
        _binding("RefreshTokenBinding", "refresh_token", oauth2_settings.REFRESH_TOKEN_MODEL),
        migrations.CreateModel(
            name="ClientDPoPSettings",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("dpop_bound_access_tokens", models.BooleanField(default=False)),
                ("dpop_nonce_required", models.BooleanField(default=False)),
                (
                    "application",
                    models.OneToOneField(
                        on_delete=models.CASCADE,
                        related_name="dpop_settings",
                        to=oauth2_settings.APPLICATION_MODEL,
                    ),
                ),
            ],
        ),
    ]
