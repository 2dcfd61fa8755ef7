"""Authlib's Django integration with dpopkit's DPoP layer (run in its own process).

Django settings are process-wide, so this module configures its own and is run with
``python -m``; it prints one JSON line ``{case: [status, error]}`` for the test to check.
Requests go through Django's full request handling (its test client: URLconf, views,
Authlib's Django request wrappers).
"""

from __future__ import annotations

import json
import secrets
from typing import Any, ClassVar

import django  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]

settings.configure(
    DEBUG=False,
    SECRET_KEY="dpopkit-tests-only",
    ALLOWED_HOSTS=["as.example"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    USE_TZ=True,
)
django.setup()

from authlib.integrations.django_oauth2 import (  # noqa: E402
    AuthorizationServer,
    ResourceProtector,
)
from authlib.oauth2.rfc6749 import ClientMixin, grants  # noqa: E402
from authlib.oauth2.rfc6750 import BearerTokenValidator  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # type: ignore[import-untyped]  # noqa: E402
from django.test import Client as DjangoClient  # type: ignore[import-untyped]  # noqa: E402
from django.urls import path  # type: ignore[import-untyped]  # noqa: E402

from dpopkit import DPoPKey, create_proof  # noqa: E402
from dpopkit.core.nonce import NonceIssuer  # noqa: E402
from dpopkit.integrations.authlib import protect, register_dpop  # noqa: E402
from dpopkit.storage.memory import MemoryReplayCache  # noqa: E402

TOKEN_URL = "https://as.example/token"
API_URL = "https://as.example/orders"


class Client(ClientMixin):  # type: ignore[misc]
    client_id = "service"
    client_metadata: ClassVar[dict[str, bool]] = {"dpop_bound_access_tokens": True}

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, "service-secret")

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "client_secret_basic"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def get_allowed_scope(self, scope: str) -> str:
        return "read"


class Token:
    """An opaque token row: the thumbprint is stored beside it (``dpop_jkt``)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.dpop_jkt = data.get("dpop_jkt")

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return False

    def get_scope(self) -> str:
        return "read"


TOKENS: dict[str, Token] = {}


class Server(AuthorizationServer):  # type: ignore[misc]
    def query_client(self, client_id: str) -> Client | None:
        return Client() if client_id == Client.client_id else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        TOKENS[token["access_token"]] = Token(dict(token))


class Validator(BearerTokenValidator):  # type: ignore[misc]
    def authenticate_token(self, token_string: str) -> Token | None:
        return TOKENS.get(token_string)


replay = MemoryReplayCache(single_process=True)
nonces = NonceIssuer([secrets.token_bytes(32)], context="as")
server = Server(None, None)
server.register_grant(grants.ClientCredentialsGrant)
register_dpop(server, token_endpoint=TOKEN_URL, replay=replay, nonces=nonces)
require_oauth = ResourceProtector()
protect(require_oauth, Validator(), replay=replay)


def token_view(request: HttpRequest) -> HttpResponse:
    return server.create_token_response(request)


@require_oauth("read")  # type: ignore[untyped-decorator]
def orders_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"jkt": request.oauth_token.dpop_jkt})


urlpatterns = [path("token", token_view), path("orders", orders_view)]


def main() -> None:
    http = DjangoClient(HTTP_HOST="as.example")
    basic = {"HTTP_AUTHORIZATION": "Basic c2VydmljZTpzZXJ2aWNlLXNlY3JldA=="}
    form = {"grant_type": "client_credentials"}
    key = DPoPKey.generate()
    out: dict[str, Any] = {}

    def record(name: str, response: HttpResponse) -> dict[str, Any]:
        body = json.loads(response.content or b"{}")
        out[name] = [response.status_code, body.get("error"), body.get("token_type")]
        return dict(body)

    def token(**headers: str) -> HttpResponse:
        return http.post("/token", form, secure=True, **basic, **headers)

    record("no proof", token())
    first = token(HTTP_DPOP=create_proof(key, htm="POST", htu=TOKEN_URL))
    record("no nonce", first)
    nonce = first["DPoP-Nonce"]
    bound = record(
        "with nonce", token(HTTP_DPOP=create_proof(key, htm="POST", htu=TOKEN_URL, nonce=nonce))
    )
    access = bound["access_token"]
    out["stored jkt"] = TOKENS[access].dpop_jkt == key.jkt
    api_proof = create_proof(key, htm="GET", htu=API_URL, access_token=access)
    auth = {"HTTP_AUTHORIZATION": f"DPoP {access}", "HTTP_DPOP": api_proof}
    record("api", http.get("/orders", secure=True, **auth))
    record("api replayed", http.get("/orders", secure=True, **auth))
    record("api bearer", http.get("/orders", secure=True, HTTP_AUTHORIZATION=f"Bearer {access}"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
