"""What the device examples share: a token bound to a device key, then one API call.

Runs in a fresh virtualenv with only dpopkit and one device extra: the token client's
default sender (``urllib``) and the standard library do the HTTP.
"""

from __future__ import annotations

import json
import os
import urllib.request

from dpopkit import DPoPKey, create_proof
from dpopkit.client.tokens import TokenClient
from tests.extras._common import ISSUER, check


def token_and_call(key: DPoPKey) -> None:
    """Get a token bound to ``key`` from the test's AS and call its /api/whoami with it."""
    client = TokenClient.from_issuer(
        ISSUER,
        key=key,
        client_id="demo-client",
        client_secret=os.environ["DPOPKIT_EXAMPLE_SECRET"],
        allow_insecure_http=True,
    )
    token = client.client_credentials().access_token
    url = ISSUER + "/api/whoami"
    proof = create_proof(key, htm="GET", htu=url, access_token=token, allow_insecure_http=True)
    headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http://127.0.0.1 only
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        body = json.loads(answer.read())
        if body.get("jkt") != key.jkt:
            raise SystemExit(f"the API saw another key: {body!r}")
        check(answer.status, body)
