"""docs/authlib.md: DPoP added to an Authlib server, with only ``dpopkit[authlib]`` installed.

Framework-free: a minimal ``AuthorizationServer`` subclass (what Authlib's Flask and
Django integrations provide), the client credentials grant, one proof-bearing token
request, and the bound token checked by a ``ResourceProtector``.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any, ClassVar

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    OAuth2Request,
    ResourceProtector,
    grants,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator, BearerTokenValidator

from dpopkit import DPoPKey, create_proof
from dpopkit.integrations.authlib import protect, register_dpop
from dpopkit.storage.memory import MemoryReplayCache

TOKEN_URL = "https://as.example/token"
API_URL = "https://api.example/orders"


class Request(OAuth2Request):  # type: ignore[misc]  # what a framework integration builds from its request
    def __init__(self, method: str, uri: str, form: dict[str, str], headers: dict[str, str]):
        super().__init__(method, uri, headers=headers)
        self._form = form
        self.payload = BasicOAuth2Payload(form)

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


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
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.dpop_jkt = data.get("dpop_jkt")  # the column dpopkit fills through save_token

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return False

    def get_scope(self) -> str:
        return str(self.data.get("scope", ""))


TOKENS: dict[str, Token] = {}


class Server(AuthorizationServer):  # type: ignore[misc]
    def query_client(self, client_id: str) -> Client | None:
        return Client() if client_id == Client.client_id else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        TOKENS[token["access_token"]] = Token(dict(token))

    def create_oauth2_request(self, request: Any) -> Any:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> Any:
        return status, body, dict(headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


server = Server()
server.register_token_generator(
    "default", BearerTokenGenerator(lambda **_: secrets.token_urlsafe(32))
)
server.register_grant(grants.ClientCredentialsGrant)
replay = MemoryReplayCache(single_process=True)
register_dpop(server, token_endpoint=TOKEN_URL, replay=replay)  # the one call

key = DPoPKey.generate()
basic = "Basic " + base64.b64encode(b"service:service-secret").decode()
token_request = Request(
    "POST",
    TOKEN_URL,
    {"grant_type": "client_credentials"},
    {"Authorization": basic, "DPoP": create_proof(key, htm="POST", htu=TOKEN_URL)},
)
status, body, _ = server.create_token_response(token_request)
assert status == 200, body
assert body["token_type"] == "DPoP", body
assert "dpop_jkt" not in body  # stored with the token, never sent to the client
assert TOKENS[body["access_token"]].dpop_jkt == key.jkt

no_proof = Request(
    "POST", TOKEN_URL, {"grant_type": "client_credentials"}, {"Authorization": basic}
)
status, refused, _ = server.create_token_response(no_proof)
assert (status, refused["error"]) == (400, "invalid_dpop_proof"), refused


class Validator(BearerTokenValidator):  # type: ignore[misc]
    def authenticate_token(self, token_string: str) -> Token | None:
        return TOKENS.get(token_string)


protector = ResourceProtector()
protect(protector, Validator(), replay=replay)
access = body["access_token"]
api_request = Request(
    "GET",
    API_URL,
    {},
    {
        "Authorization": f"DPoP {access}",
        "DPoP": create_proof(key, htm="GET", htu=API_URL, access_token=access),
    },
)
assert protector.validate_request(["read"], api_request).dpop_jkt == key.jkt
print("ok")
