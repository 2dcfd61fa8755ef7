"""htu properties: idempotence, equivalence of spellings, distinct paths (checklist V-9, §3.2)."""

from __future__ import annotations

import json

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dpopkit import htu_matches, normalize_htu

from .strategies import PROPERTY, UNRESERVED, hosts, paths, ports, queries, urls


@settings(PROPERTY, max_examples=300)
@given(uri=st.text(max_size=80) | urls | st.builds(lambda p: "https://a.example" + p, st.text()))
def test_normalize_is_total_and_idempotent(uri: str) -> None:
    try:
        normal = normalize_htu(uri)
    except ValueError:
        assert not htu_matches(uri, uri)
        return
    assert normalize_htu(normal) == normal
    assert htu_matches(uri, normal)
    assert "?" not in normal
    assert "#" not in normal
    # create_proof writes the normalised htu into JSON without escaping it (proof.py).
    assert json.dumps(normal, ensure_ascii=False) == f'"{normal}"'
    assert normal.isascii()


def _spell(draw: st.DrawFn, text: str) -> str:
    """Spell a normal-form path differently: %-encode unreserved characters at random."""
    out = []
    for char in text:
        if char in UNRESERVED and draw(st.booleans()):
            hex_code = f"{ord(char):02X}"
            out.append("%" + (hex_code.lower() if draw(st.booleans()) else hex_code))
        else:
            out.append(char)
    return "".join(out)


def _random_case(draw: st.DrawFn, text: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in text)


@st.composite
def spellings(draw: st.DrawFn) -> tuple[str, str]:
    """A URL in normal form and another spelling of the same resource."""
    host = draw(hosts)
    path = draw(paths)
    port = draw(ports)
    port = None if port == 443 else port
    netloc = host if port is None else f"{host}:{port}"
    normal = f"https://{netloc}{path}"
    # The other spelling: scheme/host case, explicit default port, encoded unreserved
    # characters, an extra dot segment, and a query and fragment.
    scheme = _random_case(draw, "https")
    other_host = _random_case(draw, host)
    default_ports = st.sampled_from(["", ":", ":443", ":0443"])
    other_port = draw(default_ports) if port is None else f":{port}"
    other_path = _spell(draw, path)
    if draw(st.booleans()):
        other_path = "/." + other_path
    if draw(st.booleans()):
        other_path = "/x/.." + other_path
    query = draw(queries)
    other = f"{scheme}://{other_host}{other_port}{other_path}"
    if query is not None:
        other += "?" + query
    if draw(st.booleans()):
        other += "#frag"
    return normal, other


@settings(PROPERTY, max_examples=300)
@given(pair=spellings())
def test_equivalent_spellings_match(pair: tuple[str, str]) -> None:
    normal, other = pair
    assert normalize_htu(other) == normalize_htu(normal) == normal
    assert htu_matches(other, normal)
    assert htu_matches(normal, other)


@settings(PROPERTY, max_examples=200)
@given(host=hosts, first=paths, second=paths)
def test_different_paths_never_match(host: str, first: str, second: str) -> None:
    assume(first != second)
    assert not htu_matches(f"https://{host}{first}", f"https://{host}{second}")


@settings(PROPERTY, max_examples=100)
@given(host=hosts, path=paths, other_host=hosts)
def test_different_hosts_or_schemes_never_match(host: str, path: str, other_host: str) -> None:
    assert not htu_matches(f"https://{host}{path}", f"http://{host}{path}")
    assume(host != other_host)
    assert not htu_matches(f"https://{host}{path}", f"https://{other_host}{path}")
