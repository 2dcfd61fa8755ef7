"""DOT's ``OAUTH2_VALIDATOR_CLASS`` with DPoP bindings (RFC 9449 §5, §6, §10).

:class:`DPoPOAuth2Validator` receives the proof :class:`~.backends.DPoPOAuthLibCore`
verified and

* refuses a client that must use DPoP (``dpop_bound_access_tokens``, §5.2, or
  ``REQUIRE_DPOP``) without a proof, right after client authentication;
* compares the proof key with the code's ``dpop_jkt`` (§10) and with the key a
  refresh token is bound to (§5), before DOT looks at either;
* records the proof in the replay cache (§11.1) as the first step of saving the
  tokens, inside DOT's transaction, so a replayed proof writes nothing;
* binds the access token (``token_type: DPoP``, §5) and a public client's refresh
  token to the proof key.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from dpopkit.core.proof import VerifiedProof
from dpopkit.core.replay import record_proof
from dpopkit.errors import InvalidGrantError, InvalidProofError, Reason, requires_extra
from dpopkit.integrations.django_oauth_toolkit.backends import (
    PROOF_KEY,
    client_settings,
    requested_dpop_jkt,
)
from dpopkit.integrations.django_oauth_toolkit.conf import dpop_settings

with requires_extra("django-oauth-toolkit", needed_by=__name__):
    from oauth2_provider.models import (
        get_access_token_model,
        get_grant_model,
        get_refresh_token_model,
    )
    from oauth2_provider.oauth2_validators import OAuth2Validator

__all__ = ["DPoPOAuth2Validator"]


def _proof(request: Any) -> VerifiedProof | None:
    proof = request.headers.get(PROOF_KEY) if request.headers else None
    return proof if isinstance(proof, VerifiedProof) else None


def _checksum(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _check_bound(proof: VerifiedProof | None, jkt: str) -> None:
    """The proof must be by the key a code or refresh token is bound to (§10, §5)."""
    if proof is None:
        raise InvalidProofError(Reason.MISSING_PROOF, "a DPoP proof is required for this grant")
    if not hmac.compare_digest(proof.jkt.encode(), jkt.encode()):
        raise InvalidGrantError(Reason.JKT_MISMATCH, "the grant is bound to another key")


class DPoPOAuth2Validator(OAuth2Validator):  # type: ignore[misc]
    """DOT's validator, binding codes and tokens to the DPoP key of the request."""

    def validate_grant_type(
        self, client_id: str, grant_type: str, client: Any, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        """DOT's check, then: a client that must use DPoP sent a proof (RFC 9449 §5.2).

        Runs for every grant right after client authentication, before any code or
        refresh token is looked at.

        Raises:
            InvalidProofError: (MISSING_PROOF) no proof from such a client.
        """
        if not super().validate_grant_type(client_id, grant_type, client, request, *args, **kwargs):
            return False
        if _proof(request) is None:
            settings = client_settings(getattr(client, "client_id", None))
            bound = settings is not None and settings.dpop_bound_access_tokens
            if bound or dpop_settings().require_dpop:
                raise InvalidProofError(Reason.MISSING_PROOF, "this client must use DPoP")
        return True

    def validate_code(
        self, client_id: str, code: str, client: Any, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        """RFC 9449 §10: a code issued for ``dpop_jkt`` needs a proof by that key.

        Raises:
            InvalidProofError: (MISSING_PROOF) no proof for a bound code.
            InvalidGrantError: (JKT_MISMATCH) a proof by another key.
        """
        grant = (
            get_grant_model()
            .objects.select_related("dpop_binding")
            .filter(code=code, application=client)
            .first()
        )
        binding = None if grant is None else getattr(grant, "dpop_binding", None)
        if binding is not None:
            _check_bound(_proof(request), binding.jkt)
        return bool(super().validate_code(client_id, code, client, request, *args, **kwargs))

    def validate_refresh_token(
        self, refresh_token: str, client: Any, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        """RFC 9449 §5: a bound refresh token needs a proof by its key.

        Checked before DOT's own validation, which may revoke a token family.

        Raises:
            InvalidProofError: (MISSING_PROOF) no proof for a bound refresh token.
            InvalidGrantError: (JKT_MISMATCH) a proof by another key.
        """
        from dpopkit.integrations.django_oauth_toolkit.models import RefreshTokenBinding

        # Revoked rows too: DOT may honour a rotated-out token within its grace period.
        binding = (
            RefreshTokenBinding.objects.filter(
                refresh_token__token_checksum=_checksum(refresh_token)
            )
            .order_by("-refresh_token__pk")
            .first()
        )
        if binding is not None:
            _check_bound(_proof(request), binding.jkt)
        return bool(super().validate_refresh_token(refresh_token, client, request, *args, **kwargs))

    def save_authorization_code(
        self, client_id: str, code: dict[str, Any], request: Any, *args: Any, **kwargs: Any
    ) -> None:
        """Save the code and bind its ``dpop_jkt`` (RFC 9449 §10)."""
        from dpopkit.integrations.django_oauth_toolkit.models import GrantBinding

        jkt = requested_dpop_jkt(request.uri or "")
        super().save_authorization_code(client_id, code, request, *args, **kwargs)
        if jkt is not None:
            grant = get_grant_model().objects.get(code=code["code"], application=request.client)
            GrantBinding.objects.create(grant=grant, jkt=jkt)

    def _save_bearer_token(
        self, token: dict[str, Any], request: Any, *args: Any, **kwargs: Any
    ) -> None:
        """Record the proof, save DOT's tokens, bind them (RFC 9449 §11.1, §5, §6.1).

        Raises:
            InvalidProofError: (REPLAYED_JTI) the proof was used before; nothing is saved.
            ReplayStoreError: the replay cache failed; nothing is saved.
        """
        from dpopkit.integrations.django_oauth_toolkit.models import (
            AccessTokenBinding,
            RefreshTokenBinding,
        )

        proof = _proof(request)
        if proof is not None:
            record_proof(dpop_settings().replay, proof, now=time.time())
        super()._save_bearer_token(token, request, *args, **kwargs)
        if proof is None:
            return
        token["token_type"] = "DPoP"  # noqa: S105 - a scheme name
        access = get_access_token_model().objects.get(
            token_checksum=_checksum(token["access_token"])
        )
        AccessTokenBinding.objects.update_or_create(
            access_token=access, defaults={"jkt": proof.jkt}
        )
        refresh_value = token.get("refresh_token")
        client = request.client
        if refresh_value and getattr(client, "client_type", None) == "public":
            refresh = (
                get_refresh_token_model()
                .objects.filter(token_checksum=_checksum(refresh_value), revoked__isnull=True)
                .first()
            )
            if refresh is not None:
                RefreshTokenBinding.objects.update_or_create(
                    refresh_token=refresh, defaults={"jkt": proof.jkt}
                )
