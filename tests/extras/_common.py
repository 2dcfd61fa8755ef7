"""What every extras example shares: a key and a DPoP-bound token from the test's AS.

Runs in a fresh virtualenv that has only dpopkit and one extra: it uses nothing but the
core and the standard library (the token client's default sender is ``urllib``).
"""

from __future__ import annotations

import os

from dpopkit import DPoPKey, create_proof
from dpopkit.client.tokens import TokenClient

ISSUER = os.environ["DPOPKIT_EXAMPLE_ISSUER"]
API_ORIGIN = "https://api.example.com"


def bound_token() -> tuple[DPoPKey, str]:
    """A fresh key and an access token bound to it (client credentials, demo client)."""
    key = DPoPKey.generate()
    client = TokenClient.from_issuer(
        ISSUER,
        key=key,
        client_id="demo-client",
        client_secret=os.environ["DPOPKIT_EXAMPLE_SECRET"],
        allow_insecure_http=True,
    )
    return key, client.client_credentials().access_token


def dpop_headers(key: DPoPKey, token: str, *, method: str, url: str) -> dict[str, str]:
    """``Authorization`` and ``DPoP`` for one request."""
    proof = create_proof(key, htm=method, htu=url, access_token=token)
    return {"Authorization": f"DPoP {token}", "DPoP": proof}


def check(status: int, body: object, expected_sub: str = "demo-client") -> None:
    """Fail loudly unless the protected route answered 200 with the token's subject."""
    if status != 200 or not isinstance(body, dict) or body.get("sub") != expected_sub:
        raise SystemExit(f"unexpected answer: {status} {body!r}")
    print("ok")
