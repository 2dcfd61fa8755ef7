"""DPoP at the authorization server: the nonce policy, proof checks and replay records.

:class:`ProofChecker` runs every RFC 9449 §4.3 check on a request's proof with
``htm=POST`` and ``htu`` the endpoint's public URL, under the server's nonce
policy (RFC 9449 §8), and says when a response needs a fresh ``DPoP-Nonce``.
:class:`ReplayLog` writes the one-time records (a proof's ``jti``, RFC 9449
§11.1; a client assertion's ``jti``, RFC 7523 §3) and reports outages of the
replay cache once each. Checking and recording are separate steps so that the
token endpoint records only after every check passed.
"""

from __future__ import annotations

from dpopkit.core.http import DPOP_HEADER, DPOP_NONCE_HEADER, RequestView
from dpopkit.core.nonce import NonceIssuer
from dpopkit.core.proof import ProofPolicy, VerifiedProof, extract_proof, verify_proof
from dpopkit.core.replay import ReplayCache, record_proof
from dpopkit.errors import InvalidProofError, Reason, ReplayStoreError
from dpopkit.server.settings import ServerSettings
from dpopkit.storage._health import StoreHealth
from dpopkit.storage.sql import ClientRecord

__all__ = ["ProofChecker", "ReplayLog"]


class ReplayLog:
    """One-time records in the replay cache, with its outages and recoveries logged.

    Args:
        replay: the replay cache shared by proofs and client assertions.
    """

    __slots__ = ("health", "replay")

    def __init__(self, replay: ReplayCache) -> None:
        self.replay = replay
        #: outages and recoveries of the replay cache, logged on ``dpopkit.storage``
        self.health = StoreHealth("replay")

    def record(self, key: str, expires_at: float, *, now: float) -> bool:
        """Record ``key`` until ``expires_at``; False if it was already recorded.

        Raises:
            ReplayStoreError: the cache failed (503), whatever it raised.
        """
        try:
            seen = self.replay.check_and_store(key, expires_at, now=now)
        except ReplayStoreError as exc:
            self.health.failed(str(exc.detail.get("error", exc.reason.value)))
            raise
        except Exception as exc:
            self.health.failed(type(exc).__name__)
            raise ReplayStoreError(detail={"error": type(exc).__name__}) from exc
        self.health.ok()
        return seen

    def record_proof(self, proof: VerifiedProof, *, now: float) -> None:
        """RFC 9449 §11.1: the atomic replay record of a proof that passed every check.

        Raises:
            InvalidProofError: the proof was already used.
            ReplayStoreError: the cache failed (503).
        """
        try:
            record_proof(self.replay, proof, now=now)
        except ReplayStoreError as exc:
            self.health.failed(str(exc.detail.get("error", exc.reason.value)))
            raise
        self.health.ok()


class ProofChecker:
    """The proof checks of every endpoint that issues or binds, under one nonce policy.

    Args:
        settings: the proof algorithms, maximum age and nonce policy.
        nonces: the AS nonce issuer; None when the policy is ``off``.
    """

    __slots__ = ("_plain", "_with_nonce", "nonces", "settings")

    def __init__(self, settings: ServerSettings, nonces: NonceIssuer | None) -> None:
        self.settings = settings
        self.nonces = nonces
        self._plain = ProofPolicy(
            algorithms=settings.proof_algorithms, max_age=settings.proof_max_age
        )
        self._with_nonce = ProofPolicy(
            algorithms=settings.proof_algorithms,
            max_age=settings.proof_max_age,
            require_nonce=True,
        )

    def nonce_required(self, client: ClientRecord | None) -> bool:
        """Whether proofs from ``client`` must carry a server nonce (RFC 9449 §8)."""
        policy = self.settings.nonce_policy
        return policy == "always" or (
            policy == "per_client" and client is not None and client.dpop_nonce_required
        )

    def check(
        self, request: RequestView, client: ClientRecord | None, *, htu: str, now: float
    ) -> VerifiedProof | None:
        """Run every RFC 9449 §4.3 check on the request's proof, without recording it.

        Returns None when there is no ``DPoP`` header and the client does not require one.

        Raises:
            InvalidProofError: a failed check, or MISSING_PROOF for a client with
                ``dpop_bound_access_tokens`` (RFC 9449 §5.2, AS-9).
            UseNonceError: a nonce is required and missing or stale (AS-12, AS-14).
        """
        if not request.headers.get_all(DPOP_HEADER):
            if client is not None and client.dpop_bound_access_tokens:
                # RFC 9449 §5.2: a dpop_bound_access_tokens client must send a proof.
                raise InvalidProofError(Reason.MISSING_PROOF, "this client must use DPoP")
            return None
        # RFC 9449 §4.3 (1): exactly one DPoP header, a token68.
        proof = extract_proof(request.headers)
        required = self.nonce_required(client)
        # RFC 9449 §4.3 (2)-(12) with htm=POST and htu = the endpoint's public URL (AS-1).
        return verify_proof(
            proof,
            htm="POST",
            htu=htu,
            policy=self._with_nonce if required else self._plain,
            nonce_check=self.nonces,
            now=now,
        )

    def nonce_header(
        self,
        headers: list[tuple[str, str]],
        client: ClientRecord | None,
        proof: VerifiedProof | None,
        *,
        now: float,
    ) -> tuple[str, str] | None:
        """The ``DPoP-Nonce`` header a response needs, or None.

        RFC 9449 §8.2 (AS-18): a fresh nonce whenever the client's is not current, on
        success too; never a second ``DPoP-Nonce`` (AS-15).
        """
        names = {name.lower() for name, _ in headers}
        if (
            self.nonces is not None
            and self.nonce_required(client)
            and DPOP_NONCE_HEADER.lower() not in names
            and (proof is None or proof.nonce_info is None or not proof.nonce_info.current)
        ):
            return (DPOP_NONCE_HEADER, self.nonces.issue(now=now))
        return None
