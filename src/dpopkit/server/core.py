"""The service core every endpoint and grant works on: state, and the shared steps.

:class:`ServiceCore` holds what the endpoints share: the :class:`ServerSettings`,
the grant store, the replay cache, the nonce issuer, the signing keys, the
registered grants and the clock. Its methods are the steps endpoints and grants
combine, each delegating to the module that owns it:

- client authentication (:mod:`dpopkit.server.clientauth`);
- DPoP proof checks, nonces and replay records (:mod:`dpopkit.server.proofs`);
- scope and resource decisions (:mod:`dpopkit.server.targets`);
- token minting and reading tokens back (:mod:`dpopkit.server.minting`);
- rendering errors and finishing responses (``Cache-Control``, ``DPoP-Nonce``).

It answers no endpoint itself: each endpoint is a module of
:mod:`dpopkit.server.endpoints` and each grant one of :mod:`dpopkit.server.grants`;
:class:`~dpopkit.server.service.TokenService` puts them together.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dpopkit.core.http import RequestView, ResponseView
from dpopkit.core.nonce import NonceIssuer
from dpopkit.core.proof import VerifiedProof
from dpopkit.core.replay import ReplayCache
from dpopkit.errors import (
    DPoPError,
    Reason,
    ServerConfigurationError,
    TemporarilyUnavailableError,
)
from dpopkit.server.clientauth import ClientAuth, ClientAuthenticator
from dpopkit.server.form import Form
from dpopkit.server.jwt import KeyRing
from dpopkit.server.minting import TokenMinter
from dpopkit.server.proofs import ProofChecker, ReplayLog
from dpopkit.server.settings import AccessTokenFormat, ServerSettings
from dpopkit.server.targets import resolve_resource, resolve_scope
from dpopkit.storage._health import StoreHealth
from dpopkit.storage.memory import MemoryReplayCache
from dpopkit.storage.sql import (
    AccessTokenRecord,
    ClientRecord,
    SQLGrantStore,
    StoreError,
)
from dpopkit.storage.sqlite import SQLiteReplayCache

__all__ = ["Grant", "GrantContext", "ServiceCore", "json_response"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantContext:
    """What a grant function sees: the authenticated client, the form and the checked proof.

    ``proof`` passed every RFC 9449 §4.3 check and its ``jti`` is recorded.
    """

    service: ServiceCore
    client: ClientRecord
    form: Form
    proof: VerifiedProof | None
    now: float

    @property
    def jkt(self) -> str | None:
        """The proof key thumbprint, or None without a proof."""
        return None if self.proof is None else self.proof.jkt


#: A grant: takes the context, returns the token response JSON members or raises.
Grant = Callable[[GrantContext], dict[str, Any]]


def json_response(status: int, body: Mapping[str, Any], *extra: tuple[str, str]) -> ResponseView:
    """A compact JSON answer that is never cached (RFC 6749 §5.1)."""
    return ResponseView(
        status=status,
        headers=(("Content-Type", "application/json"), ("Cache-Control", "no-store"), *extra),
        body=json.dumps(body, separators=(",", ":")).encode(),
    )


class ServiceCore:
    """The shared state and steps of the authorization server's endpoints.

    Args:
        settings: the :class:`ServerSettings`.
        store: the grant store (SQLite or PostgreSQL).
        replay: the replay cache for proof and client-assertion ``jti`` values.
        grants: ``grant_type`` → grant function.
        nonces: the AS nonce issuer; required unless ``settings.nonce_policy == "off"``.
        keyring: the signing keys; built from ``store`` when None.
        clock: returns the current time (seconds since the epoch).

    Raises:
        ServerConfigurationError: a nonce policy without a nonce issuer.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        store: SQLGrantStore,
        replay: ReplayCache,
        grants: Mapping[str, Grant],
        nonces: NonceIssuer | None = None,
        keyring: KeyRing | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if settings.nonce_policy != "off" and nonces is None:
            raise ServerConfigurationError(
                Reason.CONFIGURATION, "a nonce policy needs a NonceIssuer"
            )
        self.settings = settings
        self._store = store
        self.nonces = nonces if settings.nonce_policy != "off" else None
        self.keyring = keyring or KeyRing(
            store,
            alg=settings.signing_alg,
            rotate_after=settings.key_rotation,
            refresh_interval=settings.key_refresh_interval,
            retire_grace=max(settings.access_token_lifetime, settings.refresh_token_lifetime),
        )
        self.grants: dict[str, Grant] = dict(grants)
        self.clock = clock
        self.replay_log = ReplayLog(replay)
        self.proofs = ProofChecker(settings, self.nonces)
        self.clients = ClientAuthenticator(settings, store=store, replay_log=self.replay_log)
        self.minter = TokenMinter(settings, store=store, keyring=self.keyring)
        #: Seconds between deletions of expired codes, requests and tokens.
        self.purge_interval = 300.0
        self._last_purge = clock()

    @property
    def store(self) -> SQLGrantStore:
        """The grant store (clients, codes, requests, tokens, signing keys)."""
        return self._store

    @store.setter
    def store(self, store: SQLGrantStore) -> None:
        self._store = self.clients.store = self.minter.store = store

    @property
    def replay(self) -> ReplayCache:
        """The replay cache of proof and client-assertion ``jti`` values."""
        return self.replay_log.replay

    @replay.setter
    def replay(self, replay: ReplayCache) -> None:
        self.replay_log.replay = replay

    def stores_are_local(self) -> bool:
        """Whether no handler of this service can wait on a network.

        True when the grant store is a SQLite file and the replay cache is in memory or
        a SQLite file.
        """
        local_replay = isinstance(self.replay, (MemoryReplayCache, SQLiteReplayCache))
        return local_replay and SQLGrantStore.sqlite_path(self.store.url) is not None

    @property
    def replay_health(self) -> StoreHealth:
        """Outages and recoveries of the replay cache, logged on ``dpopkit.storage``."""
        return self.replay_log.health

    @property
    def client_cache_ttl(self) -> float:
        """Seconds a client record is reused before it is read again (0 disables the cache)."""
        return self.clients.cache_ttl

    @client_cache_ttl.setter
    def client_cache_ttl(self, seconds: float) -> None:
        self.clients.cache_ttl = seconds

    def close(self) -> None:
        """Release the grant store's and the replay cache's connections."""
        self.store.close()
        close = getattr(self.replay, "close", None)
        if callable(close):
            close()

    # -- clients (dpopkit.server.clientauth) ----------------------------------------------

    def get_client(self, client_id: str, *, now: float) -> ClientRecord | None:
        """A registered client, from a short-lived cache (``client_cache_ttl`` seconds)."""
        return self.clients.get_client(client_id, now=now)

    def authenticate_client(
        self, request: RequestView, form: Form, *, endpoint: str, now: float
    ) -> ClientAuth:
        """Identify and authenticate the client (RFC 6749 §2.3, RFC 7523 §3).

        See :meth:`~dpopkit.server.clientauth.ClientAuthenticator.authenticate`.
        """
        return self.clients.authenticate(request, form, endpoint=endpoint, now=now)

    def record_assertion(self, auth: ClientAuth, *, now: float) -> None:
        """Record a client assertion's ``jti`` (RFC 7523 §3 (7)); a repeat is refused."""
        self.clients.record_assertion(auth, now=now)

    # -- DPoP (dpopkit.server.proofs) -----------------------------------------------------

    def nonce_required(self, client: ClientRecord | None) -> bool:
        """Whether proofs from ``client`` must carry a server nonce (RFC 9449 §8)."""
        return self.proofs.nonce_required(client)

    def check_proof(
        self, request: RequestView, client: ClientRecord | None, *, htu: str, now: float
    ) -> VerifiedProof | None:
        """Run every RFC 9449 §4.3 check on the request's proof, without recording it.

        See :meth:`~dpopkit.server.proofs.ProofChecker.check`.
        """
        return self.proofs.check(request, client, htu=htu, now=now)

    def record_proof(self, proof: VerifiedProof, *, now: float) -> None:
        """RFC 9449 §11.1: the atomic replay record of a proof that passed every check."""
        self.replay_log.record_proof(proof, now=now)

    # -- what a token is for (dpopkit.server.targets) -------------------------------------

    def resolve_scope(self, requested: str | None, *, allowed: str) -> str:
        """The granted scope (:func:`~dpopkit.server.targets.resolve_scope`)."""
        return resolve_scope(requested, allowed=allowed)

    def resolve_resource(
        self, values: Sequence[str], *, client: ClientRecord | None = None
    ) -> tuple[str, ...]:
        """The RFC 8707 resources (:func:`~dpopkit.server.targets.resolve_resource`)."""
        return resolve_resource(self.settings, values, client=client)

    # -- tokens (dpopkit.server.minting) --------------------------------------------------

    def token_format(self, client: ClientRecord) -> AccessTokenFormat:
        """The access-token format for ``client``: its own setting, else the server's."""
        return self.minter.token_format(client)

    def mint_access_token(
        self,
        *,
        client_id: str,
        sub: str,
        scope: str,
        resource: Sequence[str],
        jkt: str | None,
        family_id: str | None,
        now: float,
        token_format: str | None = None,
    ) -> tuple[str, AccessTokenRecord]:
        """Make an access token and its record (:meth:`.TokenMinter.mint_access_token`)."""
        return self.minter.mint_access_token(
            client_id=client_id,
            sub=sub,
            scope=scope,
            resource=resource,
            jkt=jkt,
            family_id=family_id,
            now=now,
            token_format=token_format,
        )

    def token_response(
        self, token: str, record: AccessTokenRecord, *, refresh_token: str | None = None
    ) -> dict[str, Any]:
        """The RFC 6749 §5.1 JSON members (:meth:`.TokenMinter.token_response`)."""
        return self.minter.token_response(token, record, refresh_token=refresh_token)

    def lookup_access_token(self, token: str, *, now: float) -> AccessTokenRecord | None:
        """The live record of one of our access tokens, or None (inactive)."""
        return self.minter.lookup_access_token(token, now=now)

    # -- responses ------------------------------------------------------------------------

    def error_response(self, exc: DPoPError | StoreError) -> ResponseView:
        """Render an error as RFC 6749 §5.2 JSON; a store failure becomes 503."""
        if isinstance(exc, StoreError):
            exc = TemporarilyUnavailableError(Reason.STORE_UNAVAILABLE, "storage unavailable")
        return exc.as_response(role="as")

    def finish(
        self,
        response: ResponseView,
        client: ClientRecord | None,
        proof: VerifiedProof | None,
        *,
        now: float,
    ) -> ResponseView:
        """Add ``Cache-Control: no-store`` (RFC 6749 §5.1) and a due ``DPoP-Nonce``."""
        headers = list(response.headers)
        if not any(name.lower() == "cache-control" for name, _ in headers):
            headers.append(("Cache-Control", "no-store"))  # RFC 6749 §5.1, AS-19
        nonce = self.proofs.nonce_header(headers, client, proof, now=now)
        if nonce is not None:
            headers.append(nonce)
        return replace(response, headers=tuple(headers))

    def housekeeping(self, now: float) -> None:
        """Delete expired rows every ``purge_interval`` seconds (a minute of grace)."""
        if now - self._last_purge < self.purge_interval:
            return
        self._last_purge = now
        self.store.purge_expired(now=now - 60)
