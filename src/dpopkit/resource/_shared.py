"""Checks shared by the JWT and introspection validators: claims, audiences, URLs, errors."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

from dpopkit.errors import (
    InvalidTokenError,
    Reason,
    SecurityWarning,
    ServerConfigurationError,
    TemporarilyUnavailableError,
)

JKT_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url SHA-256, RFC 9449 §6.1
#: Confirmation members naming a proof-of-possession key (RFC 7800 §3, RFC 8705 §3.1, RFC 9449).
CNF_KEY_MEMBERS = frozenset({"jwk", "jwe", "jku", "kid", "jkt", "x5t#S256"})


def invalid_token(reason: Reason = Reason.TOKEN_INVALID, **detail: object) -> InvalidTokenError:
    return InvalidTokenError(reason, "the access token is not valid", detail=detail)


def upstream_unavailable(
    what: str, exc: BaseException | None = None
) -> TemporarilyUnavailableError:
    detail: dict[str, object] = {"source": what}
    if exc is not None:
        detail["error"] = type(exc).__name__
    return TemporarilyUnavailableError(
        Reason.UPSTREAM_UNAVAILABLE, "the token issuer cannot be reached", detail=detail
    )


def granted_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    scp = claims.get("scp")  # Okta / Azure AD spelling: a list or a string
    if isinstance(scp, str):
        return frozenset(scp.split())
    if isinstance(scp, list) and all(isinstance(item, str) for item in scp):
        return frozenset(cast(list[str], scp))
    return frozenset()


def bound_jkt(claims: Mapping[str, Any]) -> str | None:
    """Read ``cnf.jkt`` (RFC 9449 §6.1, RFC 7800 §3.1: one confirmation key).

    A ``cnf`` naming a key we cannot check (``x5t#S256``, ``jwk``, ...) is refused:
    treating such a token as unbound would be a downgrade.
    """
    if "cnf" not in claims:
        return None
    cnf = claims["cnf"]
    if not isinstance(cnf, dict):
        raise invalid_token(claim="cnf")
    # RFC 7800 §3.1: a single proof-of-possession key; unknown members are ignored.
    methods = CNF_KEY_MEMBERS.intersection(cnf)
    if methods != {"jkt"}:
        raise invalid_token(claim="cnf", methods=sorted(methods))
    jkt = cnf["jkt"]
    # RFC 9449 §6.1: base64url SHA-256 thumbprint; other hashes are refused (SEC-17).
    if not isinstance(jkt, str) or not JKT_RE.fullmatch(jkt):
        raise invalid_token(claim="cnf.jkt")
    return jkt


def str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def check_https(url: str, allow_insecure_http: bool, what: str) -> str:
    parts = urlsplit(url)
    secure = parts.scheme == "https" or (parts.scheme == "http" and allow_insecure_http)
    if secure and parts.hostname:
        return url
    raise ValueError(f"{what} must be an https URL (allow_insecure_http=True for loopback tests)")


def required_audiences(audience: str | Sequence[str] | None, skip: bool) -> tuple[str, ...] | None:
    """The audiences a validator requires (RFC 9068 §4, RFC 7662 §2.2, RFC 8707 §2).

    Both validator families require one: a token minted for another resource of the
    same AS must not work here. ``insecure_skip_audience_check=True`` is the loud
    opt-out (a ``SecurityWarning``); it cannot be combined with an audience.

    Raises:
        ServerConfigurationError: no audience and no opt-out, both, or an empty value.
    """
    if skip:
        if audience is not None:
            raise ServerConfigurationError(
                description="give audience= or insecure_skip_audience_check=True, not both"
            )
        warnings.warn(
            "insecure_skip_audience_check=True: tokens issued for any resource of this"
            " issuer are accepted here (RFC 9068 §4, RFC 8707)",
            SecurityWarning,
            stacklevel=4,
        )
        return None
    if audience is None:
        raise ServerConfigurationError(
            description=(
                "audience= is required: this resource's identifier as the AS writes it in aud"
                " (or insecure_skip_audience_check=True, not recommended)"
            )
        )
    audiences = (audience,) if isinstance(audience, str) else tuple(audience)
    if not audiences or not all(isinstance(cast(object, a), str) and a for a in audiences):
        raise ServerConfigurationError(
            description="audience must be a non-empty string or list of strings"
        )
    return audiences


def has_audience(claims: Mapping[str, Any], audiences: tuple[str, ...]) -> bool:
    """Whether ``aud`` (a string or a list of strings) names one of ``audiences``."""
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    return any(a in auds for a in audiences)


def discovery_urls(issuer: str) -> list[str]:
    """RFC 8414 §3.1 (well-known inserted before the path), then OIDC Discovery §4."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return [
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}{path}/.well-known/openid-configuration",
    ]
