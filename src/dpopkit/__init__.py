"""dpopkit: the complete DPoP (RFC 9449) toolkit for Python.

The public API of the core is re-exported here; roles live in
:mod:`dpopkit.client`, :mod:`dpopkit.resource` and :mod:`dpopkit.server`.
"""

from __future__ import annotations

from dpopkit.core.algorithms import ALGORITHMS, Algorithm
from dpopkit.core.challenge import Challenge, build_challenge, parse_challenges
from dpopkit.core.http import Headers, RequestView, ResponseView
from dpopkit.core.htu import htu_matches, normalize_htu
from dpopkit.core.keys import DPoPKey, Signer
from dpopkit.core.nonce import NonceInfo, NonceIssuer
from dpopkit.core.proof import (
    ProofPolicy,
    VerifiedProof,
    create_proof,
    extract_proof,
    verify_proof,
)
from dpopkit.core.replay import AsyncReplayCache, ReplayCache, arecord_proof, record_proof
from dpopkit.core.thumbprint import access_token_hash, jwk_thumbprint
from dpopkit.errors import (
    AuthorizationServerError,
    ChallengeError,
    ClientError,
    DPoPError,
    InsufficientScopeError,
    InvalidClientError,
    InvalidGrantError,
    InvalidProofError,
    InvalidRequestError,
    InvalidScopeError,
    InvalidTokenError,
    MissingExtraError,
    MissingNonceError,
    NonceRetryExhaustedError,
    OAuthError,
    Reason,
    ReplayStoreError,
    SecurityWarning,
    ServerConfigurationError,
    TemporarilyUnavailableError,
    TokenResponseError,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
    UseNonceError,
)

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "AsyncReplayCache",
    "AuthorizationServerError",
    "Challenge",
    "ChallengeError",
    "ClientError",
    "DPoPError",
    "DPoPKey",
    "Headers",
    "InsufficientScopeError",
    "InvalidClientError",
    "InvalidGrantError",
    "InvalidProofError",
    "InvalidRequestError",
    "InvalidScopeError",
    "InvalidTokenError",
    "MissingExtraError",
    "MissingNonceError",
    "NonceInfo",
    "NonceIssuer",
    "NonceRetryExhaustedError",
    "OAuthError",
    "ProofPolicy",
    "Reason",
    "ReplayCache",
    "ReplayStoreError",
    "RequestView",
    "ResponseView",
    "SecurityWarning",
    "ServerConfigurationError",
    "Signer",
    "TemporarilyUnavailableError",
    "TokenResponseError",
    "UnauthorizedClientError",
    "UnsupportedGrantTypeError",
    "UseNonceError",
    "VerifiedProof",
    "access_token_hash",
    "arecord_proof",
    "build_challenge",
    "create_proof",
    "extract_proof",
    "htu_matches",
    "jwk_thumbprint",
    "normalize_htu",
    "parse_challenges",
    "record_proof",
    "verify_proof",
]
