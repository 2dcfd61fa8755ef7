"""JWT access tokens outside a refresh family are not stored until revoked.

A ``client_credentials`` JWT access token (RFC 9068) carries everything introspection
reports, signed by the AS: the grant store writes nothing when it is issued (one
durable write per token request is left: the proof's replay record, RFC 9449 §11.1).
Revoking it (RFC 7009) writes its row, marked revoked: a deny-list entry kept until the
token expires, on SQLite and PostgreSQL alike. Tokens of a refresh family are stored
with it, so that a family revocation reaches them (RFC 9700 §4.14.2).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from dpopkit import DPoPKey
from dpopkit.server.jwt import SigningKey
from dpopkit.storage.sql import SQLGrantStore

from .conftest import (
    AS,
    ISSUER,
    Clock,
    body_of,
    code_params,
    get_code,
    make_service,
)

CC = {"grant_type": "client_credentials"}


def test_client_credentials_jwt_is_not_stored_yet_introspects(both_stores: SQLGrantStore) -> None:
    """RFC 7662 §2.2 from the JWT alone: the same members a stored record gave."""
    clock = Clock(1_700_000_000.0)
    as_ = AS(make_service(both_stores, clock), both_stores, clock)
    body = body_of(as_.token({**CC, "scope": "read"}))
    assert both_stores.count_access_tokens() == 0
    info = as_.introspect(body["access_token"])
    assert info["active"] is True
    assert info["client_id"] == "conf"
    assert info["sub"] == "conf"
    assert info["scope"] == "read"
    assert info["aud"] in (ISSUER, [ISSUER])
    assert info["cnf"] == {"jkt": as_.key.jkt}  # RFC 9449 §6.2
    assert info["exp"] - info["iat"] == as_.service.settings.access_token_lifetime


def test_revoked_jwt_is_a_durable_deny_list_row(both_stores: SQLGrantStore) -> None:
    """RFC 7009 §2.1: after /revoke the token is inactive, for a new server process on the
    same store too; only the revoked token has a row, and it goes when it expires."""
    clock = Clock(1_700_000_000.0)
    as_ = AS(make_service(both_stores, clock), both_stores, clock)
    revoked = body_of(as_.token(CC))["access_token"]
    kept = body_of(as_.token(CC))["access_token"]
    as_.revoke(revoked)
    as_.revoke(revoked)  # idempotent
    assert both_stores.count_access_tokens() == 1
    restarted = AS(make_service(both_stores, clock), both_stores, clock)
    assert restarted.introspect(revoked) == {"active": False}
    assert restarted.introspect(kept)["active"] is True
    clock.now += restarted.service.settings.access_token_lifetime + 61
    both_stores.purge_expired(now=clock.now - 60)
    assert both_stores.count_access_tokens() == 0


def test_revocations_at_once_leave_one_revoked_row(both_stores: SQLGrantStore) -> None:
    """Eight concurrent /revoke calls for one unstored token: each answers 200 (RFC 7009
    §2.2), and exactly one deny-list row results."""
    clock = Clock(1_700_000_000.0)
    as_ = AS(make_service(both_stores, clock), both_stores, clock)
    token = body_of(as_.token(CC))["access_token"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: as_.revoke(token), range(8)))
    assert both_stores.count_access_tokens() == 1
    assert as_.introspect(token) == {"active": False}


def test_only_the_tokens_own_client_revokes_it(as_: AS) -> None:
    """RFC 7009 §2.1: another client's revocation request changes nothing."""
    token = body_of(as_.token(CC))["access_token"]
    as_.revoke(token, client="post")
    assert as_.store.count_access_tokens() == 0
    assert as_.introspect(token)["active"] is True


def test_unstored_jwt_still_needs_our_signature_and_issuer(as_: AS) -> None:
    """Without a row the signature is the whole proof of issue: a token with the same
    claims signed by another key, or another issuer's token, is inactive (RFC 9068 §4)."""
    token = body_of(as_.token(CC))["access_token"]
    claims = as_.introspect(token)
    kid = as_.service.keyring.current(now=as_.clock.now).kid
    stranger = SigningKey(kid=kid, key=DPoPKey.generate("ES256"))
    forged_claims = {k: claims[k] for k in ("iss", "sub", "aud", "client_id", "jti", "iat", "exp")}
    forged_claims["cnf"] = claims["cnf"]
    forged = stranger.sign(forged_claims, typ="at+jwt")
    assert as_.introspect(forged) == {"active": False}
    other_issuer = as_.service.keyring.current(now=as_.clock.now).sign(
        {**forged_claims, "iss": "http://other.test"}, typ="at+jwt"
    )
    assert as_.introspect(other_issuer) == {"active": False}


def test_unstored_jwt_expires(as_: AS) -> None:
    """RFC 7662 §2.2: past ``exp`` the token is inactive."""
    token = body_of(as_.token(CC))["access_token"]
    as_.clock.now += as_.service.settings.access_token_lifetime
    assert as_.introspect(token) == {"active": False}


def test_family_tokens_are_stored_and_revoked_with_their_family(as_: AS) -> None:
    """RFC 9700 §4.14.2: a refresh token reused after rotation revokes its family,
    access tokens included; so these JWTs are stored when issued."""
    key = DPoPKey.generate("ES256")
    code, verifier = get_code(as_, dpop_jkt=key.jkt)
    first = body_of(as_.token(code_params(code, verifier), client=None, proof=as_.proof(key)))
    assert as_.store.count_access_tokens() == 1
    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": first["refresh_token"],
        "client_id": "public",
    }
    second = body_of(as_.token(refresh, client=None, proof=as_.proof(key)))
    assert as_.store.count_access_tokens() == 2
    assert as_.token(refresh, client=None, proof=as_.proof(key)).status == 400  # reuse
    assert as_.introspect(first["access_token"]) == {"active": False}
    assert as_.introspect(second["access_token"]) == {"active": False}


def test_revocation_at_a_server_that_has_not_read_the_signing_key(store: SQLGrantStore) -> None:
    """RFC 7009 §2.2: a token signed with a key server B has not read yet (made by A,
    sharing the store) is active at B's /introspect and revoked by B's /revoke: B re-reads
    the keys when it meets an unknown one, so the revocation is never lost."""
    clock = Clock(1_700_000_000.0)
    a = AS(make_service(store, clock), store, clock)
    b = AS(make_service(store, clock), store, clock)
    body_of(b.token(CC))  # B has read the keys of this moment
    a.service.keyring.publish_ahead = 0.0  # A signs with a key B has not read
    a.service.keyring.rotate(now=clock.now)
    token = body_of(a.token(CC))["access_token"]
    assert b.introspect(token)["active"] is True
    b.revoke(token)
    assert store.count_access_tokens() == 1
    assert a.introspect(token) == {"active": False}
