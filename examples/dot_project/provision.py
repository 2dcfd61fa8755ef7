"""Write the TOML's clients and users into DOT's and Django's tables (idempotent)."""

from __future__ import annotations

from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.contrib.auth import get_user_model  # type: ignore[import-untyped]
from django.db import transaction  # type: ignore[import-untyped]
from oauth2_provider.models import get_application_model

from dpopkit.integrations.django_oauth_toolkit.models import ClientDPoPSettings


class ProvisionError(Exception):
    """The TOML asks for something DOT cannot do."""


def _grant_type(application: Any, grant_types: tuple[str, ...], client_id: str) -> str:
    # A DOT application has one grant type; refresh_token comes with authorization_code.
    if "authorization_code" in grant_types:
        return str(application.GRANT_AUTHORIZATION_CODE)
    if "client_credentials" in grant_types:
        return str(application.GRANT_CLIENT_CREDENTIALS)
    raise ProvisionError(f"{client_id}: DOT needs authorization_code or client_credentials")


def sync() -> list[str]:
    """Create or update every client and user; returns notes for the operator."""
    config = settings.CONFIG
    raw_clients = {c["client_id"]: c for c in settings.RAW.get("clients", [])}
    raw_users = {u["username"]: u for u in settings.RAW.get("users", [])}
    application_model = get_application_model()
    user_model = get_user_model()
    notes: list[str] = []
    with transaction.atomic():
        for name, raw in raw_users.items():
            user, _ = user_model.objects.get_or_create(username=name)
            if isinstance(raw.get("password"), str):
                user.set_password(raw["password"])
            else:
                user.set_unusable_password()
                notes.append(f"user {name}: password_hash is dpopkit's format; set a password")
            user.save()
        test_user = settings.TEST_MODE_USER
        if test_user is not None and test_user not in raw_users:
            user, created = user_model.objects.get_or_create(username=test_user)
            if created:
                user.set_unusable_password()
                user.save()
        for record in config.clients:
            raw = raw_clients[record.client_id]
            method = record.token_endpoint_auth_method
            if method not in ("none", "client_secret_basic", "client_secret_post"):
                raise ProvisionError(f"{record.client_id}: DOT does not support {method}")
            public = method == "none"
            secret = raw.get("client_secret")
            if not public and not isinstance(secret, str):
                raise ProvisionError(f"{record.client_id}: DOT needs client_secret in clear")
            app = application_model.objects.filter(client_id=record.client_id).first()
            if app is None:
                app = application_model(client_id=record.client_id)
            app.name = record.client_name or record.client_id
            app.client_type = (
                application_model.CLIENT_PUBLIC if public else application_model.CLIENT_CONFIDENTIAL
            )
            app.authorization_grant_type = _grant_type(
                application_model, record.grant_types, record.client_id
            )
            app.redirect_uris = " ".join(record.redirect_uris)
            app.client_secret = "" if public else secret
            app.skip_authorization = test_user is not None
            app.algorithm = ""
            app.save()
            ClientDPoPSettings.objects.update_or_create(
                application=app,
                defaults={
                    "dpop_bound_access_tokens": record.dpop_bound_access_tokens,
                    "dpop_nonce_required": record.dpop_nonce_required,
                },
            )
    return notes
