"""The DPoP story told end to end against a real authorization server and API (``dpopkit demo``).

:func:`~dpopkit.demo.servers.demo_servers` starts dpopkit's authorization server (SQLite in a
directory, server nonces required, test-mode login) and the demo protected API
(:func:`~dpopkit.demo.api.create_whoami_app`, validating the AS's JWT
access tokens through discovery and JWKS) on two free loopback ports.
:func:`run_story` then plays the client and an attacker against any AS and API
given by URL, and checks each answer:

1. the client generates a key (RFC 9449 §2);
2. it gets a DPoP-bound token by authorization code + PKCE + ``dpop_jkt``
   (§10), going through the AS's ``use_dpop_nonce`` round trip (§8);
3. it calls the API with a proof (§7) → 200;
4. an attacker with the stolen access token but no proof → 401 ``invalid_dpop_proof``;
5. with a proof signed by the attacker's own key → 401 ``invalid_token`` (§7.1, ``cnf.jkt``);
6. replaying the client's captured proof → 401 ``invalid_dpop_proof`` (§11.1, ``jti``);
7. presenting the token as a Bearer token → 401 with a ``DPoP`` challenge (§7.2);
8. the client refreshes with its key (§5) and the new token works → 200;
9. the attacker refreshes with the stolen refresh token and its own key → 400 ``invalid_grant``;
10. or without any proof → 400 ``invalid_dpop_proof`` (§5, the client must use DPoP).

The client uses dpopkit's client library (:class:`~dpopkit.client.tokens.TokenClient`,
:class:`~dpopkit.client.httpx.DPoPAuth`); the attacker uses plain ``httpx`` and
:func:`~dpopkit.create_proof`. Tokens, refresh tokens and proofs are never printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO, TypeVar
from urllib.parse import urlsplit

from dpopkit.client.flow import parse_json_body
from dpopkit.client.httpx import DPoPAuth, httpx_sender
from dpopkit.client.sources import TokenSet
from dpopkit.client.tokens import TokenClient
from dpopkit.core.http import DPOP_HEADER, DPOP_NONCE_HEADER, Headers
from dpopkit.core.keys import DPoPKey
from dpopkit.core.proof import create_proof
from dpopkit.core.thumbprint import jwk_thumbprint
from dpopkit.demo._wire import (
    Answer,
    Recorder,
    describe_exchange,
    nonce_round_trip,
    read_answer,
    same_text,
    token_jkt,
)
from dpopkit.demo.report import DemoReport, DemoTarget, StepResult, format_step, format_summary
from dpopkit.errors import DPoPError, requires_extra

with requires_extra("server", needed_by=__name__):
    import httpx

__all__ = ["play", "run_story"]


def _answer(response: httpx.Response) -> Answer:
    headers = Headers(response.headers.multi_items())
    return read_answer(response.status_code, headers, response.content)


_T = TypeVar("_T")


class _NotRunError(Exception):
    """A step cannot run because an earlier one failed."""


@dataclass
class _State:
    """What the story carries from one step to the next."""

    target: DemoTarget
    http: httpx.Client
    attacker: httpx.Client
    recorder: Recorder
    key: DPoPKey | None = None
    client: TokenClient | None = None
    tokens: TokenSet | None = None
    captured: tuple[str, str] | None = None  # (Authorization, DPoP) of the client's call
    refreshed: TokenSet | None = None
    notes: list[str] = field(default_factory=list)

    def need(self, value: _T | None, what: str) -> _T:
        if value is None:
            raise _NotRunError(f"{what} (an earlier step failed)")
        return value


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    title: str
    expected: str
    run: Callable[[_State], tuple[str, bool]]


def _expect(answer: Answer, status: int, error: str) -> bool:
    return answer.status == status and answer.error == error


def _step_key(state: _State) -> tuple[str, bool]:
    key = DPoPKey.generate()
    state.key = key
    public = key.public_jwk
    state.notes.append(f"public key thumbprint (RFC 7638): jkt = {key.jkt}")
    state.notes.append("the private key never leaves the client; proofs carry the public JWK")
    # RFC 9449 §4.2: the proof's jwk is public; §6.1: cnf.jkt is its RFC 7638 thumbprint.
    private = sorted(set(public) & {"d", "p", "q", "dp", "dq", "qi", "k"})
    ok = not private and same_text(jwk_thumbprint(public), key.jkt)
    members = f"private members {private}" if private else "no private members"
    return f"{key.alg} key, public JWK with {members}, jkt {key.jkt}", ok


def _step_token(state: _State) -> tuple[str, bool]:
    key = state.need(state.key, "no client key")
    target = state.target
    client = TokenClient.from_issuer(
        target.issuer,
        key=key,
        client_id=target.client_id,
        sender=state.recorder,
        allow_insecure_http=True,  # loopback demo
    )
    state.client = client
    request = client.authorization_request(
        redirect_uri=target.redirect_uri,
        scope="read",
        resource=target.api_origin,
        use_par=False,
    )
    state.notes.append(f"authorization request with PKCE and dpop_jkt = {key.jkt}")
    # The AS runs in test mode: it logs the demo user in and consents at once.
    answer = state.http.get(request.url)
    location = answer.headers.get("location", "")
    if answer.status_code not in (302, 303) or not location.startswith(target.redirect_uri):
        return f"authorization endpoint answered {answer.status_code}, no redirect", False
    state.notes.append(
        f"GET /authorize -> {answer.status_code} redirect with a code "
        "(test mode: the demo user is signed in and consents at once)"
    )
    mark = len(state.recorder.exchanges)
    tokens = client.exchange_code(request, location)
    exchanges = state.recorder.since(mark, client.metadata.token_endpoint)
    state.notes.extend(describe_exchange(q, r) for q, r in exchanges)
    state.tokens = tokens
    jkt = token_jkt(tokens)
    bound = same_text(jkt, key.jkt)
    round_trip = nonce_round_trip(exchanges)
    state.notes.append(
        f"token_type {tokens.token_type}, cnf.jkt {jkt}, "
        f"refresh token {'issued' if tokens.refresh_token else 'missing'}"
    )
    observed = (
        f"{'nonce round trip, ' if round_trip else 'no nonce round trip, '}"
        f"token_type {tokens.token_type}, cnf.jkt {'= client jkt' if bound else jkt}, "
        f"refresh token {'issued' if tokens.refresh_token else 'missing'}"
    )
    ok = round_trip and tokens.is_dpop and bound and tokens.refresh_token is not None
    return observed, ok


def _client_call(state: _State, token: str) -> tuple[httpx.Response, bool, str]:
    """The client calls the API through :class:`DPoPAuth`: 200 naming the client's key?"""
    key = state.need(state.key, "no client key")
    auth = DPoPAuth(key, token=token, allow_insecure_http=True)  # loopback demo
    response = state.http.get(state.target.api_url, auth=auth)
    answer = _answer(response)
    body = parse_json_body(response.content) or {}
    jkt = body.get("jkt")
    state.notes.append(f"GET {urlsplit(state.target.api_url).path} with a proof -> {answer}")
    if body:
        state.notes.append(f"the API answers: sub={body.get('sub')!r}, jkt={jkt!r}")
    # RFC 9449 §7.1: the API resolved the principal bound to the client's key.
    ok = response.status_code == 200 and same_text(jkt, key.jkt)
    bound = "= client jkt" if same_text(jkt, key.jkt) else repr(jkt)
    return response, ok, f"{answer}, principal jkt {bound}"


def _step_call(state: _State) -> tuple[str, bool]:
    tokens = state.need(state.tokens, "no access token")
    response, ok, observed = _client_call(state, tokens.access_token)
    request = response.request
    proof = request.headers.get(DPOP_HEADER)
    if proof is not None:
        state.captured = (request.headers.get("Authorization", ""), proof)
        state.notes.append("the attacker captures this request's DPoP header and the token")
    return observed, ok


def _attack(state: _State, headers: dict[str, str]) -> Answer:
    response = state.attacker.get(state.target.api_url, headers=headers)
    answer = _answer(response)
    state.notes.append(f"GET {urlsplit(state.target.api_url).path} -> {answer}")
    return answer


def _stolen(state: _State) -> str:
    tokens = state.need(state.tokens, "no access token")
    return tokens.access_token


def _step_no_proof(state: _State) -> tuple[str, bool]:
    answer = _attack(state, {"Authorization": f"DPoP {_stolen(state)}"})
    # RFC 9449 §7.1: a DPoP token needs a proof; a missing proof is invalid_dpop_proof.
    return str(answer), _expect(answer, 401, "invalid_dpop_proof")


def _step_own_proof(state: _State) -> tuple[str, bool]:
    token = _stolen(state)
    attacker_key = DPoPKey.generate()
    state.notes.append(f"attacker's key: jkt = {attacker_key.jkt}")
    proof = create_proof(
        attacker_key,
        htm="GET",
        htu=state.target.api_url,
        access_token=token,
        allow_insecure_http=True,  # loopback demo
    )
    answer = _attack(state, {"Authorization": f"DPoP {token}", DPOP_HEADER: proof})
    return str(answer), _expect(answer, 401, "invalid_token")


def _step_replay(state: _State) -> tuple[str, bool]:
    authorization, proof = state.need(state.captured, "no captured proof")
    answer = _attack(state, {"Authorization": authorization, DPOP_HEADER: proof})
    return str(answer), _expect(answer, 401, "invalid_dpop_proof")


def _step_bearer(state: _State) -> tuple[str, bool]:
    answer = _attack(state, {"Authorization": f"Bearer {_stolen(state)}"})
    # RFC 9449 §7.2: a bound token is never accepted as Bearer; an API that takes no
    # Bearer tokens answers with its DPoP challenge (RFC 6750 §3.1: no error code).
    return str(answer), answer.status == 401 and answer.challenged("DPoP")


def _step_refresh(state: _State) -> tuple[str, bool]:
    client = state.need(state.client, "no token client")
    tokens = state.need(state.tokens, "no tokens")
    key = state.need(state.key, "no client key")
    state.need(tokens.refresh_token, "no refresh token")
    mark = len(state.recorder.exchanges)
    # RFC 9449 §5: the refresh request carries a proof from the key that got the token.
    new = client.refresh(tokens)
    exchanges = state.recorder.since(mark, client.metadata.token_endpoint)
    state.notes.extend(describe_exchange(q, r) for q, r in exchanges)
    state.refreshed = new
    jkt = token_jkt(new)
    fresh = new.access_token != tokens.access_token
    rotated = new.refresh_token != tokens.refresh_token
    state.notes.append(
        f"{'a new' if fresh else 'the SAME'} access token, token_type {new.token_type}, "
        f"cnf.jkt {jkt}; refresh token {'rotated' if rotated else 'not rotated'}"
    )
    _, api_ok, api_observed = _client_call(state, new.access_token)
    ok = fresh and new.is_dpop and same_text(jkt, key.jkt) and api_ok
    bound = "client jkt" if same_text(jkt, key.jkt) else repr(jkt)
    return f"new token_type {new.token_type} bound to {bound}; API {api_observed}", ok


def _attacker_refresh(state: _State, key: DPoPKey | None) -> Answer:
    """POST the stolen refresh token as the (public) client would, nonce round trip included."""
    client = state.need(state.client, "no token client")
    tokens = state.need(state.refreshed or state.tokens, "no tokens")
    # The client's current refresh token: still unused, so only the key binding can stop it.
    stolen = state.need(tokens.refresh_token, "no refresh token")
    endpoint = client.metadata.token_endpoint
    form = {
        "grant_type": "refresh_token",
        "refresh_token": stolen,
        "client_id": state.target.client_id,  # a public client: no secret to steal
    }
    nonce: str | None = None
    for _ in range(2):
        headers = {"Accept": "application/json"}
        if key is not None:
            headers[DPOP_HEADER] = create_proof(
                key, htm="POST", htu=endpoint, nonce=nonce, allow_insecure_http=True
            )
        response = state.attacker.post(endpoint, data=form, headers=headers)
        answer = _answer(response)
        sent = "no proof" if key is None else "own proof" + (" + nonce" if nonce else "")
        state.notes.append(f"POST {urlsplit(endpoint).path} ({sent}) -> {answer}")
        nonce = response.headers.get(DPOP_NONCE_HEADER)
        if key is None or answer.error != "use_dpop_nonce" or nonce is None:
            return answer
    return answer


def _step_refresh_own_key(state: _State) -> tuple[str, bool]:
    attacker_key = DPoPKey.generate()
    state.notes.append("the attacker stole the client's current (unused) refresh token")
    state.notes.append(f"attacker's key: jkt = {attacker_key.jkt}")
    answer = _attacker_refresh(state, attacker_key)
    return str(answer), _expect(answer, 400, "invalid_grant")


def _step_refresh_no_proof(state: _State) -> tuple[str, bool]:
    answer = _attacker_refresh(state, None)
    return str(answer), _expect(answer, 400, "invalid_dpop_proof")


_STEPS: tuple[_Step, ...] = (
    _Step(
        "client-key",
        "The client generates its DPoP key pair",
        "a new private key; its public thumbprint (jkt) identifies it",
        _step_key,
    ),
    _Step(
        "token",
        "The client gets a DPoP-bound token (authorization code + PKCE + dpop_jkt)",
        "400 use_dpop_nonce + DPoP-Nonce, retry with the nonce -> 200, token_type DPoP, "
        "cnf.jkt = client jkt, a refresh token",
        _step_token,
    ),
    _Step(
        "api-call",
        "The client calls the API with the token and a fresh proof",
        "200, principal jkt = client jkt",
        _step_call,
    ),
    _Step(
        "stolen-token-no-proof",
        "An attacker who stole the access token calls without a proof",
        "401 invalid_dpop_proof",
        _step_no_proof,
    ),
    _Step(
        "stolen-token-own-proof",
        "The attacker calls with a proof signed by its own key",
        "401 invalid_token (proof key != cnf.jkt)",
        _step_own_proof,
    ),
    _Step(
        "replayed-proof",
        "The attacker replays the client's captured DPoP header with the token",
        "401 invalid_dpop_proof (jti already used)",
        _step_replay,
    ),
    _Step(
        "bearer-downgrade",
        "The attacker presents the bound token as a Bearer token",
        "401 with a DPoP challenge (a bound token is never a Bearer token)",
        _step_bearer,
    ),
    _Step(
        "refresh",
        "The client refreshes with its own key; the new token works",
        "new token_type DPoP, cnf.jkt = client jkt; API 200, principal jkt = client jkt",
        _step_refresh,
    ),
    _Step(
        "stolen-refresh-own-key",
        "The attacker redeems the stolen refresh token with a proof from its own key",
        "400 invalid_grant (the refresh token is bound to the client's key)",
        _step_refresh_own_key,
    ),
    _Step(
        "stolen-refresh-no-proof",
        "The attacker redeems the stolen refresh token without a proof",
        "400 invalid_dpop_proof (this client must use DPoP)",
        _step_refresh_no_proof,
    ),
)


def run_story(
    target: DemoTarget,
    *,
    timeout: float = 5.0,
    budget: float = 60.0,
    on_step: Callable[[int, StepResult], object] | None = None,
) -> DemoReport:
    """Play the client and the attacker against ``target`` and check every answer.

    RFC 9449 §2 (keys), §5 and §10 (bound tokens, ``dpop_jkt``), §7 (protected
    resources), §8 (AS nonces), §11.1 (proof replay).

    Args:
        target: the AS and API to use.
        timeout: seconds each HTTP request may take.
        budget: seconds after which the remaining steps are not started (they fail).
        on_step: called with ``(number, result)`` after each step (for live output).

    Returns:
        The report; a step that raised or whose prerequisite failed is not ok.
        Network and protocol failures never escape: they become failed steps.
    """
    timeouts = httpx.Timeout(timeout)
    deadline = time.monotonic() + budget
    results: list[StepResult] = []
    with (
        httpx.Client(timeout=timeouts, follow_redirects=False) as http,
        httpx.Client(timeout=timeouts, follow_redirects=False) as attacker,
    ):
        state = _State(
            target=target, http=http, attacker=attacker, recorder=Recorder(httpx_sender(http))
        )
        for number, step in enumerate(_STEPS, start=1):
            state.notes = []
            ran = True
            try:
                if time.monotonic() > deadline:
                    raise _NotRunError("the time budget ran out")
                observed, ok = step.run(state)
            except _NotRunError as exc:
                observed, ok, ran = f"not run: {exc}", False, False
            except DPoPError as exc:
                code = exc.error or type(exc).__name__
                observed, ok = f"error: {code} ({exc.reason}): {exc.description}", False
            except httpx.HTTPError as exc:
                observed, ok = f"HTTP failure: {type(exc).__name__}: {exc}", False
            result = StepResult(
                name=step.name,
                title=step.title,
                expected=step.expected,
                observed=observed,
                ok=ok,
                ran=ran,
                details=tuple(state.notes),
            )
            results.append(result)
            if on_step is not None:
                on_step(number, result)
    return DemoReport(issuer=target.issuer, api_url=target.api_url, steps=tuple(results))


def play(
    target: DemoTarget,
    *,
    out: TextIO,
    as_json: bool = False,
    timeout: float = 5.0,
    budget: float = 60.0,
) -> int:
    """Run the story against ``target``, writing it to ``out``; the exit status.

    Args:
        target: the AS and API.
        out: where the narration (or the JSON report) goes.
        as_json: print only ``{ok, issuer, api, steps: [{name, expected, observed, ok}]}``.
        timeout: seconds each HTTP request may take.
        budget: seconds after which the remaining steps are not started.

    Returns:
        0 when every step behaved as expected, else 1.
    """

    def show(number: int, step: StepResult) -> None:
        print(format_step(number, step), file=out, flush=True)

    if not as_json:
        print("dpopkit demo: DPoP (RFC 9449) end to end, on this machine", file=out)
        print(f"  authorization server  {target.issuer}", file=out)
        print(f"  protected API         {target.api_url}", file=out)
        print(file=out, flush=True)
    report = run_story(target, timeout=timeout, budget=budget, on_step=None if as_json else show)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2), file=out)
    else:
        print(file=out)
        print(format_summary(report), file=out)
    return 0 if report.ok else 1
