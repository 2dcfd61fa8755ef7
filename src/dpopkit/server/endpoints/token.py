"""``/token``: the token endpoint (RFC 6749 §3.2, RFC 9449 §5), dispatching to the grants.

The order keeps one-time artifacts safe under retries (RFC 9449 §8, attacks
SEC-99): client authentication (signature only) → every DPoP check including the
nonce → replay record of the proof → replay record of the client assertion
``jti`` → the grant, which alone spends a code or rotates a refresh token. A
``use_dpop_nonce`` answer therefore never burns a code.

Errors are RFC 6749 §5.2 JSON (400; 401 for ``invalid_client``; 503
``temporarily_unavailable`` when a store fails), always ``Cache-Control: no-store``.
"""

from __future__ import annotations

from dpopkit.core.http import RequestView, ResponseView
from dpopkit.core.proof import VerifiedProof
from dpopkit.errors import (
    DPoPError,
    InvalidRequestError,
    Reason,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)
from dpopkit.server.core import GrantContext, ServiceCore, json_response
from dpopkit.server.form import Form
from dpopkit.storage.sql import ClientRecord, StoreError

__all__ = ["handle"]


def handle(service: ServiceCore, request: RequestView) -> ResponseView:
    """Answer a token request with the grant registered for its ``grant_type``."""
    now = service.clock()
    endpoint = service.settings.token_endpoint
    client: ClientRecord | None = None
    proof: VerifiedProof | None = None
    try:
        if request.method != "POST":
            raise InvalidRequestError(Reason.INVALID_REQUEST, "use POST")
        form = Form.parse(request)
        grant_type = form.need("grant_type")
        grant = service.grants.get(grant_type)
        if grant is None:
            raise UnsupportedGrantTypeError(Reason.UNSUPPORTED_GRANT_TYPE)
        auth = service.authenticate_client(request, form, endpoint=endpoint, now=now)
        client = auth.client
        if grant_type not in client.grant_types:
            raise UnauthorizedClientError(Reason.UNAUTHORIZED_CLIENT)
        proof = service.check_proof(request, client, htu=endpoint, now=now)
        # RFC 9449 §11.1: record the proof only after every check passed; then the
        # assertion jti; only then may the grant spend a code or rotate a token (SEC-99).
        if proof is not None:
            service.record_proof(proof, now=now)
        service.record_assertion(auth, now=now)
        body = grant(GrantContext(service=service, client=client, form=form, proof=proof, now=now))
        response = json_response(200, body)
        service.housekeeping(now)
    except (DPoPError, StoreError) as exc:
        response = service.error_response(exc)
    return service.finish(response, client, proof, now=now)
