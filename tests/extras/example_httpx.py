"""README "Call a DPoP API" with httpx, with only ``dpopkit[httpx]`` installed."""

from __future__ import annotations

import httpx

from dpopkit.client.httpx import DPoPAuth
from tests.extras._common import ISSUER, bound_token, check

key, access_token = bound_token()
auth = DPoPAuth(key, token=access_token, allow_insecure_http=True)
response = httpx.get(ISSUER + "/api/whoami", auth=auth)
check(response.status_code, response.json())
