"""The sans-I/O client flow, driven step by step (RFC 9449 §7.1, §8, §9; C-1..C-23)."""

from __future__ import annotations

import threading

import pytest

from dpopkit import (
    ChallengeError,
    DPoPKey,
    Headers,
    MissingNonceError,
    NonceRetryExhaustedError,
    Reason,
    access_token_hash,
)
from dpopkit.client.flow import (
    DONE,
    DPoPFlow,
    NonceCache,
    Retry,
    origin_of,
    parse_json_body,
    wants_body,
)

from .helpers import claims_of, header_of, http_date, verified

NOW = 1_700_000_000.0
AS_TOKEN = "https://as.example/token"
RS_URL = "https://api.example/items?page=2#frag"


@pytest.fixture(scope="module")
def key() -> DPoPKey:
    return DPoPKey.generate("ES256")


def make_flow(key: DPoPKey, nonces: NonceCache | None = None, **kw: object) -> DPoPFlow:
    return DPoPFlow(key=key, nonces=nonces or NonceCache(), clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def rs_challenge(error: str = "use_dpop_nonce", scheme: str = "DPoP") -> str:
    return f'{scheme} error="{error}", error_description="x", algs="ES256"'


# -- prepare ------------------------------------------------------------------------------------


def test_c3_proof_carries_required_header_and_claims(key: DPoPKey) -> None:
    """C-3 / P-1..P-9: typ, alg, public jwk; jti, htm, htu (no query/fragment), iat."""
    headers = make_flow(key).prepare("GET", RS_URL)
    proof = headers["DPoP"]
    header = header_of(proof)
    assert header == {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk}
    claims = verified(proof, htm="GET", htu="https://api.example/items", now=NOW)
    assert set(claims) == {"jti", "htm", "htu", "iat"}
    assert claims["htu"] == "https://api.example/items"
    assert claims["iat"] == int(NOW)
    assert "Authorization" not in headers


def test_c4_c5_token_sent_as_dpop_scheme_with_ath(key: DPoPKey) -> None:
    """C-4, C-5: Authorization is exactly "DPoP " + token and the proof has ath."""
    headers = make_flow(key).prepare("POST", RS_URL, "tok.en-1")
    assert headers["Authorization"] == "DPoP tok.en-1"
    claims = verified(
        headers["DPoP"],
        htm="POST",
        htu="https://api.example/items",
        now=NOW,
        access_token="tok.en-1",
    )
    assert claims["ath"] == access_token_hash("tok.en-1")


def test_c6_never_proxy_authorization(key: DPoPKey) -> None:
    """C-6: the DPoP scheme never goes into Proxy-Authorization."""
    flow = make_flow(key)
    headers = flow.prepare("GET", RS_URL, "t")
    retry = flow.on_response(401, {"WWW-Authenticate": rs_challenge(), "DPoP-Nonce": "n1"})
    assert isinstance(retry, Retry)
    for hdrs in (headers, retry.headers):
        assert all(name.lower() != "proxy-authorization" for name in hdrs)


def test_c2_new_jti_every_send_including_retries(key: DPoPKey) -> None:
    """C-2: every send, retries included, carries a new jti."""
    flow = make_flow(key)
    jtis = {claims_of(flow.prepare("GET", RS_URL)["DPoP"])["jti"] for _ in range(20)}
    first = flow.prepare("GET", RS_URL)
    retry = flow.on_response(401, {"WWW-Authenticate": rs_challenge(), "DPoP-Nonce": "n1"})
    assert isinstance(retry, Retry)
    jtis |= {claims_of(first["DPoP"])["jti"], claims_of(retry.headers["DPoP"])["jti"]}
    assert len(jtis) == 22


def test_http_target_needs_explicit_switch(key: DPoPKey) -> None:
    with pytest.raises(ValueError, match=r"."):
        make_flow(key).prepare("GET", "http://127.0.0.1:8000/x")
    headers = make_flow(key, allow_insecure_http=True).prepare("GET", "http://127.0.0.1:8000/x")
    assert claims_of(headers["DPoP"])["htu"] == "http://127.0.0.1:8000/x"


def test_on_response_before_prepare_is_a_programming_error(key: DPoPKey) -> None:
    with pytest.raises(RuntimeError):
        make_flow(key).on_response(200, {})


# -- nonces -------------------------------------------------------------------------------------


def test_c11_nonce_from_a_200_is_used_next(key: DPoPKey) -> None:
    """C-11 / fig. 23: a DPoP-Nonce on a success response is used by the next request."""
    cache = NonceCache()
    flow = make_flow(key, cache)
    flow.prepare("POST", AS_TOKEN)
    assert flow.on_response(200, {"DPoP-Nonce": "eyJ7S_zG.eyJH0-Z.HX4w-7v"}) is DONE
    nxt = make_flow(key, cache).prepare("POST", AS_TOKEN)
    assert claims_of(nxt["DPoP"])["nonce"] == "eyJ7S_zG.eyJH0-Z.HX4w-7v"


def test_c10_as_use_dpop_nonce_400_json_then_retry(key: DPoPKey) -> None:
    """C-10 / fig. 20: a 400 JSON use_dpop_nonce → one retry with the nonce and a new jti."""
    flow = make_flow(key)
    first = flow.prepare("POST", AS_TOKEN)
    assert "nonce" not in claims_of(first["DPoP"])
    action = flow.on_response(
        400,
        {"DPoP-Nonce": "eyJ7S_zG.eyJH0-Z.HX4w-7v", "Content-Type": "application/json"},
        {"error": "use_dpop_nonce", "error_description": "Authorization server requires nonce"},
    )
    assert isinstance(action, Retry)
    assert action.reason == "nonce"
    claims = verified(action.headers["DPoP"], htm="POST", htu=AS_TOKEN, now=NOW)
    assert claims["nonce"] == "eyJ7S_zG.eyJH0-Z.HX4w-7v"
    assert claims["jti"] != claims_of(first["DPoP"])["jti"]
    assert flow.on_response(200, {}) is DONE
    assert flow.retries == 1


def test_c10_rs_use_dpop_nonce_401_challenge_then_retry(key: DPoPKey) -> None:
    """C-10 / fig. 24: a 401 DPoP challenge use_dpop_nonce → retry carrying token and nonce."""
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "AT")
    action = flow.on_response(
        401, {"WWW-Authenticate": rs_challenge(), "DPoP-Nonce": "eyJ0eXAiOiJKV1QiLCJhbGciOiJFU"}
    )
    assert isinstance(action, Retry)
    assert action.headers["Authorization"] == "DPoP AT"
    claims = claims_of(action.headers["DPoP"])
    assert claims["nonce"] == "eyJ0eXAiOiJKV1QiLCJhbGciOiJFU"
    assert claims["ath"] == access_token_hash("AT")


@pytest.mark.parametrize(
    ("name", "scheme"),
    [
        ("WWW-Authenticate", "DPoP"),
        ("www-authenticate", "dpop"),
        ("WWW-AUTHENTICATE", "DPOP"),
        ("Www-Authenticate", "dPoP"),
    ],
)
def test_scheme_and_header_names_case_insensitive(key: DPoPKey, name: str, scheme: str) -> None:
    """X-18 / RS-6: header and scheme names compare case-insensitively."""
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "AT")
    action = flow.on_response(401, {name: rs_challenge(scheme=scheme), "dpop-NONCE": "n-1"})
    assert isinstance(action, Retry)
    assert claims_of(action.headers["DPoP"])["nonce"] == "n-1"


def test_param_name_case_insensitive(key: DPoPKey) -> None:
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "AT")
    action = flow.on_response(
        401, {"WWW-Authenticate": 'DPoP ERROR="use_dpop_nonce"', "DPoP-Nonce": "n"}
    )
    assert isinstance(action, Retry)


def test_c15_several_challenges_in_one_header_unknown_params_ignored(key: DPoPKey) -> None:
    """C-15 / fig. 17: Bearer and DPoP challenges in one field; unknown params ignored."""
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "AT")
    value = (
        'Bearer realm="api", error="invalid_token", '
        'DPoP foo="bar", error="use_dpop_nonce", algs="ES256 PS256"'
    )
    action = flow.on_response(401, {"WWW-Authenticate": value, "DPoP-Nonce": "n2"})
    assert isinstance(action, Retry)


def test_several_www_authenticate_fields(key: DPoPKey) -> None:
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "AT")
    headers = Headers(
        [
            ("WWW-Authenticate", 'Bearer realm="api"'),
            ("WWW-Authenticate", rs_challenge()),
            ("DPoP-Nonce", "n3"),
        ]
    )
    assert isinstance(flow.on_response(401, headers), Retry)


def test_c17_bearer_only_challenge_no_retry(key: DPoPKey) -> None:
    """C-17: a Bearer-only challenge never causes a retry (Bearer fallback is off)."""
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "AT")
    value = 'Bearer error="use_dpop_nonce"'
    assert flow.on_response(401, {"WWW-Authenticate": value, "DPoP-Nonce": "n"}) is DONE
    assert flow.last_error is None


def test_malformed_challenge_is_final(key: DPoPKey) -> None:
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "AT")
    assert flow.on_response(401, {"WWW-Authenticate": 'DPoP error="unterminated'}) is DONE


def test_other_errors_are_final(key: DPoPKey) -> None:
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "AT")
    assert flow.on_response(401, {"WWW-Authenticate": rs_challenge("invalid_token")}) is DONE
    assert flow.last_error == "invalid_token"
    flow.prepare("POST", AS_TOKEN)
    assert flow.on_response(400, {}, {"error": "invalid_grant"}) is DONE
    assert flow.on_response(403, {"DPoP-Nonce": "n"}, {"error": "use_dpop_nonce"}) is DONE


def test_sec113_missing_nonce_rs_raises(key: DPoPKey) -> None:
    """SEC-113: use_dpop_nonce without DPoP-Nonce raises instead of looping (RS)."""
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "AT")
    with pytest.raises(MissingNonceError) as info:
        flow.on_response(401, {"WWW-Authenticate": rs_challenge()})
    assert info.value.reason is Reason.MISSING_NONCE
    assert info.value.error == "use_dpop_nonce"


def test_sec113_missing_nonce_as_raises(key: DPoPKey) -> None:
    flow = make_flow(key)
    flow.prepare("POST", AS_TOKEN)
    with pytest.raises(MissingNonceError) as info:
        flow.on_response(400, {}, {"error": "use_dpop_nonce"})
    assert info.value.reason is Reason.MISSING_NONCE


@pytest.mark.parametrize("bad", ["", "has space", 'quo"te', "x" * 2000, "ümlaut"])
def test_c13_unusable_nonce_counts_as_missing(key: DPoPKey, bad: str) -> None:
    """C-13: nonces are opaque but must be NQCHAR; an unusable value is not stored."""
    cache = NonceCache()
    flow = make_flow(key, cache)
    flow.prepare("GET", RS_URL, "AT")
    with pytest.raises(MissingNonceError):
        flow.on_response(401, {"WWW-Authenticate": rs_challenge(), "DPoP-Nonce": bad})
    assert cache.get(flow.origin) is None


def test_c13_nonce_echoed_verbatim(key: DPoPKey) -> None:
    """C-13: any 1*NQCHAR value is echoed verbatim, never parsed."""
    odd = "!#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~"
    flow = make_flow(key)
    flow.prepare("POST", AS_TOKEN)
    action = flow.on_response(400, {"DPoP-Nonce": odd}, {"error": "use_dpop_nonce"})
    assert isinstance(action, Retry)
    assert claims_of(action.headers["DPoP"])["nonce"] == odd


def test_sec114_repeated_nonce_raises(key: DPoPKey) -> None:
    """SEC-114: the server repeats the nonce just sent → NonceRetryExhaustedError, no loop."""
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "AT")
    hdrs = {"WWW-Authenticate": rs_challenge(), "DPoP-Nonce": "same"}
    assert isinstance(flow.on_response(401, hdrs), Retry)
    with pytest.raises(NonceRetryExhaustedError) as info:
        flow.on_response(401, hdrs)
    assert info.value.reason is Reason.NONCE_RETRY_EXHAUSTED


def test_sec114_repeated_cached_nonce_on_first_answer_raises(key: DPoPKey) -> None:
    """A cached nonce rejected with the very same nonce is not retried (it cannot help)."""
    cache = NonceCache()
    flow = make_flow(key, cache)
    flow.prepare("GET", RS_URL, "AT")
    cache.put(flow.origin, "cached")
    flow.prepare("GET", RS_URL, "AT")
    with pytest.raises(NonceRetryExhaustedError):
        flow.on_response(401, {"WWW-Authenticate": rs_challenge(), "DPoP-Nonce": "cached"})


def test_c10_new_nonce_every_time_stops_after_budget(key: DPoPKey) -> None:
    """C-10 / SEC-114: a server that always challenges with a new nonce → one retry, then error."""
    cache = NonceCache()
    flow = make_flow(key, cache)
    flow.prepare("POST", AS_TOKEN)
    assert isinstance(
        flow.on_response(400, {"DPoP-Nonce": "n1"}, {"error": "use_dpop_nonce"}), Retry
    )
    with pytest.raises(NonceRetryExhaustedError):
        flow.on_response(400, {"DPoP-Nonce": "n2"}, {"error": "use_dpop_nonce"})
    # The newest nonce is still remembered for the next request.
    assert cache.get(flow.origin) == "n2"


def test_retry_budget_is_configurable(key: DPoPKey) -> None:
    flow = make_flow(key, max_nonce_retries=2)
    flow.prepare("POST", AS_TOKEN)
    for nonce in ("n1", "n2"):
        assert isinstance(
            flow.on_response(400, {"DPoP-Nonce": nonce}, {"error": "use_dpop_nonce"}), Retry
        )
    with pytest.raises(NonceRetryExhaustedError):
        flow.on_response(400, {"DPoP-Nonce": "n3"}, {"error": "use_dpop_nonce"})
    zero = make_flow(key, max_nonce_retries=0)
    zero.prepare("POST", AS_TOKEN)
    with pytest.raises(NonceRetryExhaustedError):
        zero.on_response(400, {"DPoP-Nonce": "n1"}, {"error": "use_dpop_nonce"})
    with pytest.raises(ValueError, match=r"."):
        make_flow(key, max_nonce_retries=50)


def test_c12_nonce_reused_until_replaced(key: DPoPKey) -> None:
    """C-12: after one challenge, later requests keep carrying N1 until a new one arrives."""
    cache = NonceCache()
    flow = make_flow(key, cache)
    flow.prepare("GET", RS_URL, "AT")
    flow.on_response(401, {"WWW-Authenticate": rs_challenge(), "DPoP-Nonce": "N1"})
    flow.on_response(200, {})
    for _ in range(2):
        nxt = make_flow(key, cache)
        assert claims_of(nxt.prepare("GET", RS_URL, "AT")["DPoP"])["nonce"] == "N1"
        assert nxt.on_response(200, {}) is DONE
    nxt = make_flow(key, cache)
    nxt.prepare("GET", RS_URL, "AT")
    nxt.on_response(200, {"DPoP-Nonce": "N2"})
    assert claims_of(make_flow(key, cache).prepare("GET", RS_URL)["DPoP"])["nonce"] == "N2"


def test_c14_nonces_kept_per_origin(key: DPoPKey) -> None:
    """C-14: an RS nonce is never sent to the AS and vice versa."""
    cache = NonceCache()
    rs = make_flow(key, cache)
    rs.prepare("GET", RS_URL, "AT")
    rs.on_response(200, {"DPoP-Nonce": "rs-nonce"})
    as_ = make_flow(key, cache)
    assert "nonce" not in claims_of(as_.prepare("POST", AS_TOKEN)["DPoP"])
    as_.on_response(200, {"DPoP-Nonce": "as-nonce"})
    assert claims_of(make_flow(key, cache).prepare("GET", RS_URL)["DPoP"])["nonce"] == "rs-nonce"
    other_port = "https://api.example:8443/items"
    assert "nonce" not in claims_of(make_flow(key, cache).prepare("GET", other_port)["DPoP"])
    # Same origin spelled differently shares the nonce.
    same = "HTTPS://API.EXAMPLE:443/other"
    assert claims_of(make_flow(key, cache).prepare("GET", same)["DPoP"])["nonce"] == "rs-nonce"


def test_origin_of() -> None:
    assert origin_of("HTTPS://Api.Example:443/a/b?q") == "https://api.example"
    assert origin_of("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    with pytest.raises(ValueError, match=r"."):
        origin_of("ftp://x/")


def test_nonce_cache_is_bounded_lru() -> None:
    cache = NonceCache(maxsize=3)
    for i in range(3):
        cache.put(f"https://o{i}", f"n{i}")
    assert cache.get("https://o0") == "n0"  # touch o0: o1 is now the oldest
    cache.put("https://o3", "n3")
    assert len(cache) == 3
    assert cache.get("https://o1") is None
    assert cache.get("https://o0") == "n0"
    assert "n0" not in repr(cache)
    with pytest.raises(ValueError, match=r"."):
        NonceCache(maxsize=0)


def test_c12_nonce_cache_lookup_reads_nonce_and_offset_and_touches_lru() -> None:
    """C-12: ``lookup`` returns what a proof needs and counts as a use of the origin."""
    cache = NonceCache(maxsize=2)
    assert cache.lookup("https://a") == (None, 0.0)
    cache.put("https://a", "na")
    cache.set_clock_offset("https://a", 30.0)
    cache.put("https://b", "nb")
    assert cache.lookup("https://a") == ("na", 30.0)  # touch a: b is now the oldest
    cache.put("https://c", "nc")
    assert cache.get("https://b") is None
    assert cache.lookup("https://a") == ("na", 30.0)


def test_nonce_cache_thread_safe() -> None:
    cache = NonceCache(maxsize=50)

    def work(n: int) -> None:
        for i in range(500):
            cache.put(f"https://o{(n * 7 + i) % 80}", f"v{i}")
            cache.get(f"https://o{i % 80}")
            cache.set_clock_offset(f"https://o{i % 90}", float(i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50


# -- clock skew ---------------------------------------------------------------------------------


def test_clock_skew_learned_from_date_on_use_dpop_nonce(key: DPoPKey) -> None:
    """SEC-5/SEC-6: a server whose Date is 10 min ahead → later iat shifted for that origin only."""
    cache = NonceCache()
    flow = make_flow(key, cache)
    flow.prepare("GET", RS_URL, "AT")
    hdrs = {"WWW-Authenticate": rs_challenge(), "DPoP-Nonce": "n", "Date": http_date(NOW + 600)}
    action = flow.on_response(401, hdrs)
    assert isinstance(action, Retry)
    assert claims_of(action.headers["DPoP"])["iat"] == int(NOW) + 600
    assert claims_of(make_flow(key, cache).prepare("GET", RS_URL)["DPoP"])["iat"] == int(NOW) + 600
    assert claims_of(make_flow(key, cache).prepare("POST", AS_TOKEN)["DPoP"])["iat"] == int(NOW)


def test_clock_skew_learned_from_invalid_dpop_proof_without_retry(key: DPoPKey) -> None:
    cache = NonceCache()
    flow = make_flow(key, cache)
    flow.prepare("POST", AS_TOKEN)
    action = flow.on_response(400, {"Date": http_date(NOW - 3600)}, {"error": "invalid_dpop_proof"})
    assert action is DONE
    assert (
        claims_of(make_flow(key, cache).prepare("POST", AS_TOKEN)["DPoP"])["iat"] == int(NOW) - 3600
    )


def test_same_nonce_retried_when_clock_offset_changed(key: DPoPKey) -> None:
    """A stale-iat use_dpop_nonce with the cached nonce is retried once the offset is learned."""
    cache = NonceCache()
    flow = make_flow(key, cache)
    flow.prepare("GET", RS_URL, "AT")
    cache.put(flow.origin, "N")
    flow.prepare("GET", RS_URL, "AT")
    hdrs = {"WWW-Authenticate": rs_challenge(), "DPoP-Nonce": "N", "Date": http_date(NOW + 120)}
    action = flow.on_response(401, hdrs)
    assert isinstance(action, Retry)
    assert claims_of(action.headers["DPoP"])["iat"] == int(NOW) + 120


@pytest.mark.parametrize(
    ("date", "expected_offset"),
    [
        (NOW + 3, 0),  # under the threshold
        (NOW + 10 * 86400, 0),  # implausible: ignored
        (None, 0),
        ("not a date", 0),
        ("Tue, 14 Nov 2023 22:13:20", 0),  # no zone
    ],
)
def test_clock_skew_ignored_when_small_or_implausible(
    key: DPoPKey, date: float | str | None, expected_offset: float
) -> None:
    cache = NonceCache()
    flow = make_flow(key, cache)
    flow.prepare("POST", AS_TOKEN)
    hdrs: dict[str, str] = {"DPoP-Nonce": "n"}
    if isinstance(date, float):
        hdrs["Date"] = http_date(date)
    elif isinstance(date, str):
        hdrs["Date"] = date
    flow.on_response(400, hdrs, {"error": "use_dpop_nonce"})
    assert cache.clock_offset(flow.origin) == expected_offset


def test_clock_skew_not_learned_from_success_or_when_disabled(key: DPoPKey) -> None:
    cache = NonceCache()
    flow = make_flow(key, cache)
    flow.prepare("POST", AS_TOKEN)
    flow.on_response(200, {"Date": http_date(NOW + 600)})
    assert cache.clock_offset(flow.origin) == 0
    off = make_flow(key, cache, learn_clock_skew=False)
    off.prepare("POST", AS_TOKEN)
    off.on_response(
        400, {"DPoP-Nonce": "n", "Date": http_date(NOW + 600)}, {"error": "use_dpop_nonce"}
    )
    assert cache.clock_offset(flow.origin) == 0


def test_clock_offset_forgotten_when_clock_agrees_again(key: DPoPKey) -> None:
    cache = NonceCache()
    cache.set_clock_offset("https://as.example", 600.0)
    flow = make_flow(key, cache)
    flow.prepare("POST", AS_TOKEN)
    flow.on_response(400, {"Date": http_date(NOW)}, {"error": "invalid_dpop_proof"})
    assert cache.clock_offset("https://as.example") == 0


# -- adapters' helpers ----------------------------------------------------------------------------


def test_wants_body_only_for_400_json_or_nonce() -> None:
    assert wants_body(400, {"DPoP-Nonce": "n"})
    assert wants_body(400, {"content-type": "application/json; charset=utf-8"})
    assert wants_body(400, {"Content-Type": "application/problem+json"})
    assert not wants_body(400, {"Content-Type": "text/html"})
    assert not wants_body(401, {"DPoP-Nonce": "n"})
    assert not wants_body(200, {"Content-Type": "application/json"})


def test_invalid_token_is_reported_for_refresh(key: DPoPKey) -> None:
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "old")
    assert flow.on_response(401, {"WWW-Authenticate": rs_challenge("invalid_token")}) is DONE
    assert flow.last_error == "invalid_token"
    retry = flow.with_token("new")
    assert retry.reason == "token"
    assert retry.headers["Authorization"] == "DPoP new"
    assert claims_of(retry.headers["DPoP"])["ath"] == access_token_hash("new")


def test_misuse_raises_at_construction(key: DPoPKey) -> None:
    with pytest.raises(TypeError):
        DPoPFlow(key="not a key")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"."):
        make_flow(key, skew_threshold=0)
    with pytest.raises(ValueError, match=r"."):
        make_flow(key, skew_threshold=100, max_clock_offset=10)


def test_parse_json_body_never_raises() -> None:
    assert parse_json_body(b'{"error": "use_dpop_nonce"}') == {"error": "use_dpop_nonce"}
    assert parse_json_body(b"not json") is None
    assert parse_json_body(b"\xff\xfe") is None
    assert parse_json_body(b"[1, 2]") is None
    assert parse_json_body(b"[" * 100_000) is None
    assert parse_json_body(b'{"a": "' + b"x" * 70_000 + b'"}') is None


def test_401_without_challenge_is_final(key: DPoPKey) -> None:
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "AT")
    assert flow.on_response(401, {"DPoP-Nonce": "n"}) is DONE
    assert flow.last_error is None


def test_c16_rs_algs_without_our_alg_raises(key: DPoPKey) -> None:
    """C-16: a 401 DPoP challenge whose algs leaves out our alg → ChallengeError, no retry."""
    flow = make_flow(key)
    flow.prepare("GET", RS_URL, "AT")
    value = 'DPoP error="use_dpop_nonce", algs="PS256 RS256"'
    with pytest.raises(ChallengeError) as info:
        flow.on_response(401, {"WWW-Authenticate": value, "DPoP-Nonce": "n"})
    assert info.value.reason is Reason.UNSUPPORTED_ALG


def test_c16_rs_algs_with_rfc9864_twin_accepted() -> None:
    eddsa = DPoPKey.generate("EdDSA")
    flow = make_flow(eddsa)
    flow.prepare("GET", RS_URL, "AT")
    value = 'DPoP error="use_dpop_nonce", algs="Ed25519 ES256"'
    assert isinstance(flow.on_response(401, {"WWW-Authenticate": value, "DPoP-Nonce": "n"}), Retry)
    flow.prepare("GET", RS_URL, "AT")
    bad = 'DPoP error="use_dpop_nonce", algs="Ed25519 ES256", x="'
    assert flow.on_response(401, {"WWW-Authenticate": bad, "DPoP-Nonce": "n2"}) is DONE
