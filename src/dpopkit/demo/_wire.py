"""Observing the wire for the demo story: answers reduced to what it checks.

A response becomes an :class:`Answer` (status, OAuth ``error`` code, challenge
schemes, whether a ``DPoP-Nonce`` came back); :class:`Recorder` wraps a token-client
sender to narrate the AS nonce round trip (RFC 9449 §8). Tokens and proofs are
decoded only for display; the servers verify them.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

from dpopkit.client.flow import parse_json_body
from dpopkit.client.senders import Sender
from dpopkit.client.sources import TokenSet
from dpopkit.core.challenge import ChallengeSyntaxError, parse_challenges
from dpopkit.core.http import DPOP_HEADER, DPOP_NONCE_HEADER, Headers, RequestView, ResponseView
from dpopkit.core.jws import JWSError, b64url_decode, json_loads_object


@dataclass(frozen=True, slots=True)
class Answer:
    """A response reduced to what the story checks: status, error code, challenges, nonce."""

    status: int
    error: str | None
    schemes: tuple[str, ...]
    nonce: bool

    def __str__(self) -> str:
        text = str(self.status) if self.error is None else f"{self.status} {self.error}"
        if self.schemes:
            text += f" [challenge: {', '.join(self.schemes)}]"
        return text + (" (+ DPoP-Nonce)" if self.nonce else "")

    def challenged(self, scheme: str) -> bool:
        return any(s.lower() == scheme.lower() for s in self.schemes)


def read_answer(status: int, headers: Headers, body: bytes) -> Answer:
    """The OAuth error: the JSON ``error`` (AS, RFC 6749 §5.2) or the challenge's (RS)."""
    error: str | None = None
    data = parse_json_body(body)
    if data is not None and isinstance(data.get("error"), str):
        error = str(data["error"])
    schemes: list[str] = []
    values = headers.get_all("WWW-Authenticate")
    try:
        challenges = parse_challenges(values) if values else []
    except ChallengeSyntaxError:
        challenges = []
    for challenge in challenges:
        schemes.append(challenge.scheme)
        if error is None and "error" in challenge.params:
            error = challenge.params["error"]
    return Answer(
        status=status,
        error=error,
        schemes=tuple(schemes),
        nonce=headers.get(DPOP_NONCE_HEADER) is not None,
    )


def view_answer(response: ResponseView) -> Answer:
    return read_answer(response.status, Headers(response.headers), response.body)


def unverified_claims(jwt: str) -> dict[str, Any]:
    """The payload of a compact JWS, unverified (for display: the servers verify)."""
    parts = jwt.split(".")
    if len(parts) != 3:
        return {}
    try:
        return json_loads_object(b64url_decode(parts[1]))
    except JWSError:
        return {}


def same_text(value: object, expected: str) -> bool:
    """Constant-time equality of a received value with an expected string."""
    return isinstance(value, str) and hmac.compare_digest(value.encode(), expected.encode())


def token_jkt(tokens: TokenSet) -> str | None:
    cnf = unverified_claims(tokens.access_token).get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return jkt if isinstance(jkt, str) else None


class Recorder:
    """A token-client sender that remembers every exchange (to narrate the nonce dance)."""

    def __init__(self, send: Sender) -> None:
        self._send = send
        self.exchanges: list[tuple[RequestView, ResponseView]] = []

    def __call__(self, request: RequestView) -> ResponseView:
        response = self._send(request)
        self.exchanges.append((request, response))
        return response

    def since(self, mark: int, url: str) -> list[tuple[RequestView, ResponseView]]:
        return [(q, r) for q, r in self.exchanges[mark:] if q.url == url]


def describe_exchange(request: RequestView, response: ResponseView) -> str:
    proof = request.headers.get(DPOP_HEADER)
    if proof is None:
        sent = "no proof"
    elif "nonce" in unverified_claims(proof):
        sent = "proof with the server's nonce"
    else:
        sent = "proof without a nonce"
    return f"POST {urlsplit(request.url).path} ({sent}) -> {view_answer(response)}"


def nonce_round_trip(exchanges: list[tuple[RequestView, ResponseView]]) -> bool:
    """A 400 ``use_dpop_nonce`` with a ``DPoP-Nonce``, then a proof carrying that nonce."""
    for (_, first), (second, _) in pairwise(exchanges):
        answer = view_answer(first)
        given = Headers(first.headers).get(DPOP_NONCE_HEADER)
        proof = second.headers.get(DPOP_HEADER)
        if (
            answer.status == 400
            and answer.error == "use_dpop_nonce"
            and given is not None
            and proof is not None
            and same_text(unverified_claims(proof).get("nonce"), given)
        ):
            return True
    return False
