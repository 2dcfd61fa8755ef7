"""README "Protect an API": Flask, with only ``dpopkit[flask]`` installed."""

from __future__ import annotations

from flask import Flask

from dpopkit.resource import JWTAccessTokens, ResourceGuard
from dpopkit.resource.flask import DPoP, current_principal
from dpopkit.storage.memory import MemoryReplayCache
from tests.extras._common import API_ORIGIN, ISSUER, bound_token, check, dpop_headers

guard = ResourceGuard(
    tokens=JWTAccessTokens(issuer=ISSUER, audience=ISSUER, allow_insecure_http=True),
    replay=MemoryReplayCache(single_process=True),
)
app = Flask(__name__)
dpop = DPoP(app, guard=guard, public_origin=API_ORIGIN)


@app.get("/orders")
@dpop.required()
def orders() -> dict[str, str | None]:
    return {"sub": current_principal().sub}


key, token = bound_token()
url = API_ORIGIN + "/orders"
response = app.test_client().get("/orders", headers=dpop_headers(key, token, method="GET", url=url))
check(response.status_code, response.get_json())
