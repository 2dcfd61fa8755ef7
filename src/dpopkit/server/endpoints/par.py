"""``/par``: pushed authorization requests (RFC 9126 §2, RFC 9449 §10.1).

The client authenticates as at the token endpoint; the request is checked by the
same rules as at ``/authorize`` and stored under a one-time ``request_uri``. A
``DPoP`` header is checked with ``htu`` = the PAR endpoint and sets ``dpop_jkt``
(AS-23, AS-24); a ``dpop_jkt`` naming another key is refused (AS-25).
"""

from __future__ import annotations

import secrets

from dpopkit.core.http import RequestView, ResponseView
from dpopkit.core.proof import VerifiedProof
from dpopkit.errors import DPoPError, InvalidRequestError, Reason
from dpopkit.server.authorization_request import validate_authorization_request
from dpopkit.server.core import ServiceCore, json_response
from dpopkit.server.form import Form
from dpopkit.server.parsing import equal_text
from dpopkit.server.settings import PAR_URN_PREFIX
from dpopkit.storage.sql import ClientRecord, InteractionRecord, StoreError, sha256_hex

__all__ = ["handle"]

#: Client credentials never stored with a pushed request.
_CREDENTIAL_PARAMETERS = ("client_secret", "client_assertion", "client_assertion_type")


def handle(service: ServiceCore, request: RequestView) -> ResponseView:
    """Answer a pushed authorization request: 201 with ``request_uri`` and ``expires_in``."""
    now = service.clock()
    settings = service.settings
    client: ClientRecord | None = None
    proof: VerifiedProof | None = None
    try:
        if request.method != "POST":
            raise InvalidRequestError(Reason.INVALID_REQUEST, "use POST")
        form = Form.parse(request)
        auth = service.authenticate_client(request, form, endpoint=settings.par_endpoint, now=now)
        client = auth.client
        # RFC 9126 §2.1: request_uri is not allowed in a pushed request.
        if "request_uri" in form:
            raise InvalidRequestError(Reason.INVALID_REQUEST, "request_uri not allowed")
        params = form.as_dict()
        for secret_param in _CREDENTIAL_PARAMETERS:
            params.pop(secret_param, None)
        params["client_id"] = client.client_id
        proof = service.check_proof(request, client, htu=settings.par_endpoint, now=now)
        if proof is not None:
            jkt = params.get("dpop_jkt")
            # RFC 9449 §10.1: dpop_jkt and the PAR proof must name the same key (AS-25).
            if jkt is not None and not equal_text(str(jkt), proof.jkt):
                raise InvalidRequestError(Reason.JKT_MISMATCH, "dpop_jkt does not match")
            params["dpop_jkt"] = proof.jkt
        validate_authorization_request(service, client, params)
        if proof is not None:
            service.record_proof(proof, now=now)
        service.record_assertion(auth, now=now)
        request_uri = PAR_URN_PREFIX + secrets.token_urlsafe(32)
        service.store.put_request(
            InteractionRecord(
                id_hash=sha256_hex(request_uri),
                kind="par",
                client_id=client.client_id,
                params=params,
                expires_at=now + settings.par_lifetime,
            )
        )
        response = json_response(
            201, {"request_uri": request_uri, "expires_in": settings.par_lifetime}
        )
    except (DPoPError, StoreError) as exc:
        response = service.error_response(exc)
    return service.finish(response, client, proof, now=now)
