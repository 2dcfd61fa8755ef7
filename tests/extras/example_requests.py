"""README "Call a DPoP API" with requests, with only ``dpopkit[requests]`` installed."""

from __future__ import annotations

import requests

from dpopkit.client.requests import DPoPAuth
from tests.extras._common import ISSUER, bound_token, check

key, access_token = bound_token()
session = requests.Session()
session.auth = DPoPAuth(key, token=access_token, allow_insecure_http=True)
response = session.get(ISSUER + "/api/whoami", timeout=10)
check(response.status_code, response.json())
