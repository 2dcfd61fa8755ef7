"""DPoP (RFC 9449) for Authlib's ``AuthorizationServer`` and ``ResourceProtector``.

One call, :func:`register_dpop`, adds DPoP to an Authlib authorization server
(Flask, Django or any other Authlib integration):

* every token request that carries a ``DPoP`` header has its proof checked by
  :func:`dpopkit.core.proof.verify_proof` (RFC 9449 §4.3, ``htm=POST``, ``htu`` = the
  configured token endpoint URL), before the grant reads anything, for every grant;
* optional stateless nonces (:class:`~dpopkit.core.nonce.NonceIssuer`, RFC 9449 §8):
  ``use_dpop_nonce`` is a 400 with ``DPoP-Nonce``;
* the proof's ``jti`` is recorded in the replay cache (RFC 9449 §11.1) only after the
  grant's own checks (client, code, PKCE, ``dpop_jkt``, refresh-token key) passed, and
  before anything is written: a code is never consumed by a request whose proof fails,
  including the ``use_dpop_nonce`` round trip;
* issued tokens are bound: ``token_type`` is ``DPoP``, JWT access tokens made by
  Authlib's ``JWTBearerTokenGenerator`` (RFC 9068) carry ``cnf.jkt`` (RFC 9449 §6.1),
  and the thumbprint is handed to ``save_token`` under ``jkt_field`` (``dpop_jkt``) so
  opaque tokens and refresh tokens are stored with their key;
* ``dpop_jkt`` at the authorization endpoint (RFC 9449 §10) is checked for form and
  left in the request for ``save_authorization_code``; the token request must then be
  proved with that key;
* refresh tokens of public clients are bound to the key and checked on refresh
  (RFC 9449 §5); clients with ``dpop_bound_access_tokens`` (RFC 9449 §5.2) must send
  proofs.

For resource servers, :func:`protect` registers :class:`DPoPTokenValidator` (the
``DPoP`` scheme, RFC 9449 §7) on a ``ResourceProtector`` and wraps the Bearer
validator so that a bound token presented as Bearer is refused (RFC 9449 §7.2).
"""

from __future__ import annotations

import contextvars
import hmac
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from dpopkit.core.algorithms import ALGORITHMS
from dpopkit.core.http import DPOP_HEADER, DPOP_NONCE_HEADER, Headers
from dpopkit.core.jws import JWSError, b64url_decode
from dpopkit.core.nonce import NonceIssuer
from dpopkit.core.proof import ProofPolicy, VerifiedProof, extract_proof, verify_proof
from dpopkit.core.replay import ReplayCache, record_proof
from dpopkit.errors import (
    DPoPError,
    InsufficientScopeError,
    InvalidGrantError,
    InvalidProofError,
    InvalidRequestError,
    InvalidTokenError,
    Reason,
    UseNonceError,
    requires_extra,
)

with requires_extra("authlib", needed_by=__name__):
    from authlib.oauth2.base import OAuth2Error
    from authlib.oauth2.rfc6749 import AuthorizationServer, ResourceProtector, TokenValidator
    from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator

__all__ = [
    "AuthlibDPoPError",
    "DPoPAuthorizationServer",
    "DPoPTokenValidator",
    "bound_jkt",
    "current_jkt",
    "protect",
    "register_dpop",
]

_JKT_RE: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # a SHA-256 thumbprint, base64url (RFC 7638)
_NOT_RFC6749: Final = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
#: the thumbprint of the token request being answered (read by token generators)
_CURRENT_JKT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dpopkit_authlib_jkt", default=None
)


def current_jkt() -> str | None:
    """The thumbprint the tokens being issued right now are bound to, or None.

    Set while Authlib's grant builds its token response after a proof passed; a
    custom token generator reads it to put ``cnf.jkt`` into its own JWTs (RFC 9449 §6.1).
    """
    return _CURRENT_JKT.get()


class AuthlibDPoPError(OAuth2Error):  # type: ignore[misc]
    """A dpopkit error rendered the way Authlib renders OAuth errors.

    Args:
        exc: the dpopkit error (its ``error`` code and description go on the wire).
        status_code: the HTTP status (the AS or RS status of ``exc``).
        headers: extra response headers (``DPoP-Nonce``, ``WWW-Authenticate``).
    """

    def __init__(
        self, exc: DPoPError, *, status_code: int, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        super().__init__(
            description=_NOT_RFC6749.sub("?", exc.description),
            status_code=status_code,
            error=exc.error,
        )
        self.reason: Reason = exc.reason
        self.extra_headers: list[tuple[str, str]] = list(headers)

    def get_headers(self) -> list[tuple[str, str]]:
        """Authlib's JSON headers plus ``DPoP-Nonce`` / ``WWW-Authenticate``."""
        return [*super().get_headers(), *self.extra_headers]


def _as_error(exc: DPoPError) -> AuthlibDPoPError:
    headers = [(DPOP_NONCE_HEADER, exc.nonce)] if isinstance(exc, UseNonceError) else []
    return AuthlibDPoPError(exc, status_code=exc.as_status, headers=headers)


def _headers(request: Any) -> Headers:
    raw = request.headers
    items = raw.items() if hasattr(raw, "items") else raw
    return Headers([(str(k), str(v)) for k, v in items])


def _client_requires_dpop(client: Any) -> bool:
    value = getattr(client, "dpop_bound_access_tokens", None)
    if value is None:
        metadata = getattr(client, "client_metadata", None)
        if isinstance(metadata, Mapping):
            value = metadata.get("dpop_bound_access_tokens")
    return value is True


def bound_jkt(token: Any, *, jkt_field: str = "dpop_jkt") -> str | None:
    """The thumbprint a token (or code) is bound to, or None when it is not bound.

    Reads ``cnf.jkt`` of JWT claims (a mapping, RFC 9449 §6.1) or the ``jkt_field``
    attribute (or key) of a stored token or authorization code.
    """
    if token is None:
        return None
    if isinstance(token, Mapping):
        cnf = token.get("cnf")
        value = cnf.get("jkt") if isinstance(cnf, Mapping) else token.get(jkt_field)
    else:
        value = getattr(token, jkt_field, None)
    return value if isinstance(value, str) and value else None


def _jwt_claims(token: str) -> Mapping[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(b64url_decode(parts[1]))
    except (JWSError, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


class DPoPAuthorizationServer:
    """The DPoP layer of one Authlib ``AuthorizationServer`` (built by :func:`register_dpop`).

    Attributes:
        server: the Authlib server.
        token_endpoint: the token endpoint URL clients use (the proofs' ``htu``).
        policy: the proof policy (algorithms, maximum age, nonce requirement).
        nonces: the nonce issuer, or None.
        nonce_required: which clients must put a nonce in their proofs (all when None).
        require_dpop: every token request must carry a proof.
        jkt_field: the name under which the thumbprint reaches ``save_token`` and is read
            back from stored tokens and codes.
    """

    def __init__(
        self,
        server: AuthorizationServer,
        *,
        token_endpoint: str,
        replay: ReplayCache,
        nonces: NonceIssuer | None = None,
        nonce_required: Callable[[Any], bool] | None = None,
        require_dpop: bool = False,
        algorithms: Iterable[str] = ALGORITHMS,
        max_age: float = 60.0,
        jkt_field: str = "dpop_jkt",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        self.token_endpoint = token_endpoint
        self.replay = replay
        self.nonces = nonces
        self.nonce_required = nonce_required
        self.require_dpop = require_dpop
        # A nonce in a proof is always checked; whether one is required depends on the
        # client, known only after client authentication (see _needs_nonce).
        self.policy = ProofPolicy(algorithms=frozenset(algorithms), max_age=max_age)
        self.jkt_field = jkt_field
        self.clock = clock

    def _needs_nonce(self, client: Any) -> bool:
        if self.nonces is None:
            return False
        return self.nonce_required is None or self.nonce_required(client)

    # -- metadata -----------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The AS metadata member of RFC 9449 §5.1 (merge it into your RFC 8414 document)."""
        return {
            "dpop_signing_alg_values_supported": [
                a for a in ALGORITHMS if a in self.policy.algorithms
            ]
        }

    # -- authorization endpoint ----------------------------------------------------------------

    def _check_dpop_jkt(self, grant: Any, *args: Any) -> None:
        """RFC 9449 §10: ``dpop_jkt`` is one SHA-256 JWK thumbprint (else invalid_request)."""
        payload = grant.request.payload
        values = payload.datalist.get("dpop_jkt", [])
        if not values:
            return
        if len(values) > 1 or not _JKT_RE.fullmatch(str(values[0])):
            raise _as_error(InvalidRequestError(Reason.INVALID_REQUEST, "dpop_jkt is invalid"))

    def _on_authorization_grant(self, server: Any, grant: Any) -> None:
        grant.register_hook("after_validate_authorization_request_payload", self._check_dpop_jkt)

    # -- token endpoint --------------------------------------------------------------------------

    def _verify(self, request: Any, now: float) -> VerifiedProof | None:
        """RFC 9449 §4.3 on the token request's proof; no record is written here."""
        headers = _headers(request)
        if not headers.get_all(DPOP_HEADER):
            return None
        return verify_proof(
            extract_proof(headers),
            htm=request.method,
            htu=self.token_endpoint,
            policy=self.policy,
            nonce_check=self.nonces,
            now=now,
        )

    def _bound_grant_jkt(self, grant: Any) -> str | None:
        """The key the grant is bound to (a code's ``dpop_jkt``, a public client's refresh).

        RFC 9449 §10 for codes, §5 for refresh tokens of public clients.
        """
        request = grant.request
        code = getattr(request, "authorization_code", None)
        if code is not None:
            return bound_jkt(code, jkt_field=self.jkt_field)
        refresh = getattr(request, "refresh_token", None)
        if refresh is not None and getattr(request, "auth_method", None) == "none":
            return bound_jkt(refresh, jkt_field=self.jkt_field)
        return None

    def _attach(self, grant: Any) -> Any:
        validate = grant.validate_token_request
        create = grant.create_token_response
        state: dict[str, Any] = {}

        def validate_token_request() -> None:
            now = self.clock()
            state["now"] = now
            try:
                # The proof first: a bad proof reads and writes nothing.
                state["proof"] = self._verify(grant.request, now)
            except DPoPError as exc:
                raise _as_error(exc) from None
            validate()

        def create_token_response() -> Any:
            proof: VerifiedProof | None = state.get("proof")
            now = state.get("now", self.clock())
            client = grant.request.client
            try:
                bound = self._bound_grant_jkt(grant)
                if proof is None and (
                    bound is not None or self.require_dpop or _client_requires_dpop(client)
                ):
                    # RFC 9449 §5.2, §10: this grant needs a proof.
                    raise InvalidProofError(Reason.MISSING_PROOF, "a DPoP proof is required")
                if (
                    proof is not None
                    and self.nonces is not None
                    and proof.nonce_info is None
                    and self._needs_nonce(client)
                ):
                    # RFC 9449 §8: use_dpop_nonce; nothing was read into a write yet.
                    raise self.nonces.challenge(Reason.NONCE_REQUIRED, now=now)
                if (
                    proof is not None
                    and bound is not None
                    and not hmac.compare_digest(proof.jkt, bound)
                ):
                    raise InvalidGrantError(
                        Reason.JKT_MISMATCH, "the grant is bound to another key"
                    )
                if proof is not None:
                    # RFC 9449 §11.1: recorded after every check, before any write.
                    record_proof(self.replay, proof, now=now)
            except DPoPError as exc:
                raise _as_error(exc) from None
            reset = _CURRENT_JKT.set(proof.jkt if proof is not None else None)
            try:
                status, body, headers = create()
            finally:
                _CURRENT_JKT.reset(reset)
            if isinstance(body, dict):
                body.pop(self.jkt_field, None)
            headers = list(headers)
            if (
                self.nonces is not None
                and proof is not None
                and self._needs_nonce(client)
                and (proof.nonce_info is None or not proof.nonce_info.current)
            ):
                headers.append((DPOP_NONCE_HEADER, self.nonces.issue(now=now)))
            return status, body, headers

        grant.validate_token_request = validate_token_request
        grant.create_token_response = create_token_response
        return grant

    def _bind(self, token: dict[str, Any], jkt: str, generator: Any) -> dict[str, Any]:
        access = token.get("access_token")
        claims = _jwt_claims(access) if isinstance(access, str) else None
        if claims is not None and bound_jkt(claims) != jkt:
            raise RuntimeError(
                f"the token generator {type(generator).__name__} made a JWT without cnf.jkt: "
                "use JWTBearerTokenGenerator or read dpopkit's current_jkt()"
            )
        token["token_type"] = "DPoP"  # noqa: S105 - a token type
        token[self.jkt_field] = jkt
        return token

    def _generator(self, grant_type: str) -> Any:
        gens = self.server._token_generators
        return gens.get(grant_type) or gens.get("default")

    def install(self) -> DPoPAuthorizationServer:
        """Wire the hooks into the server (called by :func:`register_dpop`).

        Raises:
            ValueError: DPoP is already registered with this server (a second layer
                would check every proof twice).
        """
        server = self.server
        if getattr(server, "_dpopkit_layer", None) is not None:
            raise ValueError("register_dpop was already called for this server")
        server._dpopkit_layer = self
        get_token_grant = server.get_token_grant
        generate_token = server.generate_token

        def get_token_grant_with_dpop(request: Any) -> Any:
            return self._attach(get_token_grant(request))

        def generate_token_with_dpop(grant_type: str, client: Any, **kw: Any) -> Any:
            jkt = _CURRENT_JKT.get()
            generator = self._generator(grant_type)
            if jkt is not None and isinstance(generator, JWTBearerTokenGenerator):
                _add_cnf(generator)
            token = generate_token(grant_type=grant_type, client=client, **kw)
            if jkt is None or not isinstance(token, dict):
                return token
            return self._bind(token, jkt, generator)

        server.get_token_grant = get_token_grant_with_dpop
        server.generate_token = generate_token_with_dpop
        server.register_hook("after_get_authorization_grant", self._on_authorization_grant)
        return self


def _add_cnf(generator: Any) -> None:
    """Make an RFC 9068 generator put ``cnf.jkt`` into its JWTs (once per generator)."""
    if getattr(generator, "_dpopkit_cnf", False):
        return
    extra = generator.get_extra_claims

    def get_extra_claims(client: Any, grant_type: str, user: Any, scope: Any) -> Any:
        claims = dict(extra(client, grant_type, user, scope) or {})
        jkt = _CURRENT_JKT.get()
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}
        return claims

    generator.get_extra_claims = get_extra_claims
    generator._dpopkit_cnf = True


def register_dpop(
    server: AuthorizationServer,
    *,
    token_endpoint: str,
    replay: ReplayCache,
    nonces: NonceIssuer | None = None,
    nonce_required: Callable[[Any], bool] | None = None,
    require_dpop: bool = False,
    algorithms: Iterable[str] = ALGORITHMS,
    max_age: float = 60.0,
    jkt_field: str = "dpop_jkt",
    clock: Callable[[], float] = time.time,
) -> DPoPAuthorizationServer:
    """Add DPoP to an Authlib authorization server (every grant, registered before or after).

    Args:
        server: an Authlib ``AuthorizationServer`` (Flask, Django, ...).
        token_endpoint: the token endpoint URL as clients use it (the proofs' ``htu``).
        replay: the replay cache proofs are recorded in (share it between instances).
        nonces: a nonce issuer; proofs must then carry a current nonce (RFC 9449 §8).
        nonce_required: which clients need nonces, given the Authlib client (all when None).
        require_dpop: refuse token requests without a proof (default: clients that
            do not send DPoP keep getting Bearer tokens, unless their metadata says
            ``dpop_bound_access_tokens``).
        algorithms: the accepted proof algorithms (advertised in metadata).
        max_age: seconds a proof stays acceptable after its ``iat``.
        jkt_field: the key under which the thumbprint reaches ``save_token`` (a column
            of your token model) and is read from stored codes and refresh tokens.
        clock: the time source.

    Returns:
        The :class:`DPoPAuthorizationServer` (its :meth:`~DPoPAuthorizationServer.metadata`
        goes into the server metadata).

    Raises:
        ValueError: already registered with this server.
    """
    layer = DPoPAuthorizationServer(
        server,
        token_endpoint=token_endpoint,
        replay=replay,
        nonces=nonces,
        nonce_required=nonce_required,
        require_dpop=require_dpop,
        algorithms=algorithms,
        max_age=max_age,
        jkt_field=jkt_field,
        clock=clock,
    )
    return layer.install()


# -- resource servers ------------------------------------------------------------------------------


def _rs_error(exc: DPoPError, algs: str, *, bearer: bool = False) -> AuthlibDPoPError:
    headers = [
        (
            "WWW-Authenticate",
            exc.www_authenticate(algs=algs.split(), bearer=bearer, bearer_error=bearer),
        ),
        *exc.extra_headers(),
    ]
    if isinstance(exc, UseNonceError) and not any(n == DPOP_NONCE_HEADER for n, _ in headers):
        headers.append((DPOP_NONCE_HEADER, exc.nonce))
    return AuthlibDPoPError(exc, status_code=exc.rs_status, headers=headers)


def _token_string(request: Any) -> str:
    auth = _headers(request).get("Authorization") or ""
    parts = auth.split(None, 1)
    return parts[1].strip() if len(parts) == 2 else ""


class DPoPTokenValidator(TokenValidator):  # type: ignore[misc]
    """Authlib token validator for the ``DPoP`` scheme (RFC 9449 §7).

    The wrapped validator finds and checks the token (expiry, revocation, scope);
    this one then requires the token to be bound and the request's proof to be valid
    for it (RFC 9449 §4.3 with ``ath`` and ``cnf.jkt``) and records the proof.

    Args:
        tokens: the Authlib validator that loads tokens (e.g. a ``BearerTokenValidator``
            or RFC 9068 ``JWTBearerTokenValidator`` subclass).
        replay: the replay cache.
        nonces: a nonce issuer; when given every proof must carry a current nonce (§9).
        algorithms: the accepted proof algorithms.
        max_age: seconds a proof stays acceptable after its ``iat``.
        jkt_field: the attribute of a stored token holding its thumbprint.
        public_url: the URL the client used, from the Authlib request (default:
            ``request.uri``); set it behind a proxy.
        clock: the time source.
    """

    TOKEN_TYPE = "dpop"  # noqa: S105 - an authorization scheme

    def __init__(
        self,
        tokens: TokenValidator,
        *,
        replay: ReplayCache,
        nonces: NonceIssuer | None = None,
        algorithms: Iterable[str] = ALGORITHMS,
        max_age: float = 60.0,
        jkt_field: str = "dpop_jkt",
        public_url: Callable[[Any], str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(realm=tokens.realm, **tokens.extra_attributes)
        self.tokens = tokens
        self.replay = replay
        self.nonces = nonces
        self.policy = ProofPolicy(
            algorithms=frozenset(algorithms), max_age=max_age, require_nonce=nonces is not None
        )
        self.jkt_field = jkt_field
        self.public_url = public_url
        self.clock = clock

    def authenticate_token(self, token_string: str) -> Any:
        """Load the token with the wrapped validator."""
        return self.tokens.authenticate_token(token_string)

    def validate_request(self, request: Any) -> None:
        """Nothing to check before the token is loaded."""

    def validate_token(self, token: Any, scopes: Any, request: Any, **kwargs: Any) -> None:
        """The wrapped checks, then the binding and the proof (RFC 9449 §7.1)."""
        algs = self.policy.algs_param
        try:
            self.tokens.validate_token(token, scopes, request, **kwargs)
        except AuthlibDPoPError:
            raise
        except OAuth2Error as exc:
            inner: DPoPError = InvalidTokenError(
                Reason.INVALID_REQUEST, "the access token is not valid"
            )
            if getattr(exc, "error", None) == "insufficient_scope":
                inner = InsufficientScopeError(Reason.INVALID_REQUEST, "insufficient scope")
            raise _rs_error(inner, algs) from None
        jkt = bound_jkt(token, jkt_field=self.jkt_field)
        now = self.clock()
        try:
            if jkt is None:
                raise InvalidTokenError(
                    Reason.UNBOUND_TOKEN_AS_DPOP, "the access token is not DPoP-bound"
                )
            url = self.public_url(request) if self.public_url is not None else request.uri
            proof = verify_proof(
                extract_proof(_headers(request)),
                htm=request.method,
                htu=url,
                policy=self.policy,
                access_token=_token_string(request),
                nonce_check=self.nonces,
                now=now,
            )
            # RFC 9449 §6, §7.1: cnf.jkt equals the proof key (as dpopkit's ResourceGuard).
            if not hmac.compare_digest(jkt.encode(), proof.jkt.encode()):
                raise InvalidTokenError(Reason.JKT_MISMATCH, "the token is bound to another key")
            record_proof(self.replay, proof, now=now)
        except DPoPError as exc:
            raise _rs_error(exc, algs) from None


class _BearerUnlessBound(TokenValidator):  # type: ignore[misc]
    """The Bearer validator, refusing DPoP-bound tokens (RFC 9449 §7.2)."""

    TOKEN_TYPE = "bearer"  # noqa: S105 - an authorization scheme

    def __init__(self, tokens: TokenValidator, *, jkt_field: str, algs: str) -> None:
        super().__init__(realm=tokens.realm, **tokens.extra_attributes)
        self.tokens = tokens
        self.jkt_field = jkt_field
        self.algs = algs

    def authenticate_token(self, token_string: str) -> Any:
        return self.tokens.authenticate_token(token_string)

    def validate_request(self, request: Any) -> None:
        self.tokens.validate_request(request)

    def validate_token(self, token: Any, scopes: Any, request: Any, **kwargs: Any) -> None:
        self.tokens.validate_token(token, scopes, request, **kwargs)
        if bound_jkt(token, jkt_field=self.jkt_field) is not None:
            exc = InvalidTokenError(
                Reason.BOUND_TOKEN_AS_BEARER, "a DPoP-bound token needs the DPoP scheme"
            )
            raise _rs_error(exc, self.algs, bearer=True)


def protect(
    protector: ResourceProtector,
    tokens: TokenValidator,
    *,
    replay: ReplayCache,
    allow_bearer: bool = True,
    nonces: NonceIssuer | None = None,
    algorithms: Iterable[str] = ALGORITHMS,
    max_age: float = 60.0,
    jkt_field: str = "dpop_jkt",
    public_url: Callable[[Any], str] | None = None,
    clock: Callable[[], float] = time.time,
) -> DPoPTokenValidator:
    """Register DPoP (and Bearer for unbound tokens) on an Authlib ``ResourceProtector``.

    Register ``tokens`` through this call only (not with ``register_token_validator``):
    the Bearer scheme then accepts unbound tokens and refuses bound ones.

    Args:
        protector: the Authlib resource protector.
        tokens: the validator that loads and checks tokens.
        replay: the replay cache.
        allow_bearer: keep accepting unbound tokens with the Bearer scheme.
        nonces: a nonce issuer (RFC 9449 §9); see :class:`DPoPTokenValidator`.
        algorithms: the accepted proof algorithms.
        max_age: seconds a proof stays acceptable after its ``iat``.
        jkt_field: the attribute of a stored token holding its thumbprint.
        public_url: the URL the client used, from the Authlib request.
        clock: the time source.

    Returns:
        The registered :class:`DPoPTokenValidator`.
    """
    validator = DPoPTokenValidator(
        tokens,
        replay=replay,
        nonces=nonces,
        algorithms=algorithms,
        max_age=max_age,
        jkt_field=jkt_field,
        public_url=public_url,
        clock=clock,
    )
    protector.register_token_validator(validator)
    if allow_bearer:
        protector.register_token_validator(
            _BearerUnlessBound(tokens, jkt_field=jkt_field, algs=validator.policy.algs_param)
        )
    return validator
