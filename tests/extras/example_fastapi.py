"""README "Protect an API": FastAPI, with only ``dpopkit[fastapi]`` installed."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI, Security

from dpopkit.resource import AsyncJWTAccessTokens, AsyncResourceGuard, DPoPPrincipal
from dpopkit.resource.fastapi import DPoPSecurity
from dpopkit.storage.memory import AsyncMemoryReplayCache
from tests.extras._common import API_ORIGIN, ISSUER, bound_token, check, dpop_headers

async_guard = AsyncResourceGuard(
    tokens=AsyncJWTAccessTokens(issuer=ISSUER, audience=ISSUER, allow_insecure_http=True),
    replay=AsyncMemoryReplayCache(single_process=True),
)
dpop = DPoPSecurity(async_guard, public_origin=API_ORIGIN)
app = FastAPI()


@app.get("/orders")
async def orders(principal: DPoPPrincipal = Security(dpop)) -> dict[str, str | None]:  # noqa: B008
    return {"sub": principal.sub}


async def main() -> None:
    key, token = bound_token()
    url = API_ORIGIN + "/orders"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(url, headers=dpop_headers(key, token, method="GET", url=url))
    check(response.status_code, response.json())


asyncio.run(main())
