"""docs/django-oauth-toolkit.md: DOT with the DPoP plug-in, only its extra installed."""

from __future__ import annotations

import base64
import json
from typing import ClassVar

import django  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]
from django.urls import path  # type: ignore[import-untyped]

from dpopkit import DPoPKey
from dpopkit.core.proof import create_proof

PLUGIN = "dpopkit.integrations.django_oauth_toolkit"
settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["testserver"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="extras-example",
    USE_TZ=True,
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    INSTALLED_APPS=[
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "rest_framework",
        "oauth2_provider",
        PLUGIN,
    ],
    REST_FRAMEWORK={"UNAUTHENTICATED_USER": None},
    PASSWORD_HASHERS=["django.contrib.auth.hashers.PBKDF2PasswordHasher"],
    OAUTH2_PROVIDER={
        "OAUTH2_VALIDATOR_CLASS": f"{PLUGIN}.validators.DPoPOAuth2Validator",
        "OAUTH2_BACKEND_CLASS": f"{PLUGIN}.backends.DPoPOAuthLibCore",
        "SCOPES": {"read": "read"},
    },
    DPOPKIT_DOT={"PUBLIC_URL": "http://testserver"},
)
django.setup()

from django.core.management import call_command  # type: ignore[import-untyped]  # noqa: E402
from django.test import Client  # type: ignore[import-untyped]  # noqa: E402
from oauth2_provider.contrib.rest_framework import TokenHasScope  # noqa: E402
from oauth2_provider.models import get_application_model  # noqa: E402
from oauth2_provider.views import TokenView  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

from dpopkit.integrations.django_oauth_toolkit.models import ClientDPoPSettings  # noqa: E402
from dpopkit.integrations.django_oauth_toolkit.rest_framework import (  # noqa: E402
    DPoPAuthentication,
)


class Orders(APIView):  # type: ignore[misc]
    authentication_classes: ClassVar[list[type]] = [DPoPAuthentication]
    permission_classes: ClassVar[list[type]] = [TokenHasScope]
    required_scopes: ClassVar[list[str]] = ["read"]

    def get(self, request: object) -> Response:
        return Response({"jkt": request.dpop.jkt})  # type: ignore[attr-defined]


urlpatterns = [path("token/", TokenView.as_view()), path("orders", Orders.as_view())]


def main() -> None:
    call_command("migrate", verbosity=0)
    application = get_application_model()
    app = application.objects.create(
        client_id="svc",
        client_secret="svc-secret-value",
        client_type=application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=application.GRANT_CLIENT_CREDENTIALS,
        name="svc",
    )
    ClientDPoPSettings.objects.create(application=app, dpop_bound_access_tokens=True)
    key = DPoPKey.generate()
    client = Client()
    basic = "Basic " + base64.b64encode(b"svc:svc-secret-value").decode()
    refused = client.post("/token/", {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=basic)
    assert refused.status_code == 400, refused.content
    assert json.loads(refused.content)["error"] == "invalid_dpop_proof"
    proof = create_proof(key, htm="POST", htu="http://testserver/token/", allow_insecure_http=True)
    issued = client.post(
        "/token/", {"grant_type": "client_credentials"}, HTTP_AUTHORIZATION=basic, HTTP_DPOP=proof
    )
    body = json.loads(issued.content)
    assert issued.status_code == 200, body
    assert body["token_type"] == "DPoP"
    token = body["access_token"]
    call = create_proof(
        key,
        htm="GET",
        htu="http://testserver/orders",
        access_token=token,
        allow_insecure_http=True,
    )
    ok = client.get("/orders", HTTP_AUTHORIZATION=f"DPoP {token}", HTTP_DPOP=call)
    assert ok.status_code == 200, ok.content
    assert json.loads(ok.content) == {"jkt": key.jkt}
    bearer = client.get("/orders", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert bearer.status_code == 401
    print("django-oauth-toolkit: DPoP-bound token issued and accepted; Bearer refused")


if __name__ == "__main__":
    main()
