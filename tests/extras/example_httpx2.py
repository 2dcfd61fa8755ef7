"""README "Call a DPoP API" with httpx2, with only ``dpopkit[httpx2]`` installed."""

from __future__ import annotations

import httpx2

from dpopkit.client.httpx2 import DPoPAuth
from tests.extras._common import ISSUER, bound_token, check

key, access_token = bound_token()
auth = DPoPAuth(key, token=access_token, allow_insecure_http=True)
response = httpx2.get(ISSUER + "/api/whoami", auth=auth)
check(response.status_code, response.json())
