"""Shared hypothesis strategies and keys for the property tests."""

from __future__ import annotations

import string
from functools import cache

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from dpopkit import ALGORITHMS, DPoPKey

#: Base settings of every property: no per-example deadline (RSA signing, a loaded CI
#: machine) and no "too slow" health check; each test sets its own ``max_examples``.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Every supported algorithm; RSA keys are generated once per session (slow).
ALL_ALGS: tuple[str, ...] = ALGORITHMS


@cache
def key_for(alg: str) -> DPoPKey:
    return DPoPKey.generate(alg)


UNRESERVED = string.ascii_letters + string.digits + "-._~"
SUB_DELIMS = "!$&'()*+,;="
TOKEN_CHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
TOKEN68_CHARS = string.ascii_letters + string.digits + "-._~+/"
# RFC 6749 App. A: NQCHAR = %x21 / %x23-5B / %x5D-7E.
NQCHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"\\')

#: RFC 9110 §9.1 method tokens (case-sensitive), common and odd.
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "get"]) | st.text(
    alphabet=TOKEN_CHARS, min_size=1, max_size=12
)

#: token68 values such as access tokens (RFC 9449 §7.1 Figure 12).
tokens = st.builds(
    lambda body, pad: body + "=" * pad,
    st.text(alphabet=TOKEN68_CHARS, min_size=1, max_size=80),
    st.integers(0, 2),
)

#: Server nonces: 1*NQCHAR (RFC 9449 §8.1).
nonces = st.text(alphabet=NQCHARS, min_size=1, max_size=64)

hosts = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9]{1,8}){1,2}", fullmatch=True)

#: A path segment that is already in normal form and never a dot segment.
segments = st.text(alphabet=UNRESERVED + SUB_DELIMS + ":@", min_size=0, max_size=12).filter(
    lambda s: s not in (".", "..")
)

#: Normalised absolute paths (``/`` plus segments).
paths = st.lists(segments, min_size=0, max_size=5).map(lambda segs: "/" + "/".join(segs))

ports = st.none() | st.integers(1, 65535)

#: Query strings and fragments (dropped by normalisation).
queries = st.none() | st.text(alphabet=UNRESERVED + SUB_DELIMS + ":@/?", max_size=20)


def https_url(host: str, path: str, port: int | None, query: str | None) -> str:
    netloc = host if port is None else f"{host}:{port}"
    url = f"https://{netloc}{path}"
    return url if query is None else f"{url}?{query}"


urls = st.builds(https_url, hosts, paths, ports, queries)

#: Any JSON value (strings may hold lone surrogates: the serializer escapes them).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
