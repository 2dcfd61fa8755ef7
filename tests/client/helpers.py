"""Small helpers for client tests: decode proofs (after verifying them) and format dates."""

from __future__ import annotations

import json
from email.utils import formatdate
from typing import Any

from dpopkit import verify_proof
from dpopkit.core.jws import b64url_decode


def claims_of(proof: str) -> dict[str, Any]:
    """The payload of a proof (decoded only; use :func:`verified` to check it)."""
    payload: dict[str, Any] = json.loads(b64url_decode(proof.split(".")[1]))
    return payload


def header_of(proof: str) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(b64url_decode(proof.split(".")[0]))
    return header


def verified(
    proof: str, *, htm: str, htu: str, now: float, access_token: str | None = None
) -> dict[str, Any]:
    """Verify ``proof`` with the core verifier and return its claims."""
    checked = verify_proof(proof, htm=htm, htu=htu, access_token=access_token, now=now)
    return dict(checked.claims)


def http_date(when: float) -> str:
    return formatdate(when, usegmt=True)
