"""Strict JSON: ``json_loads_object`` agrees with a plain reference parser (RFC 8259).

The reference is the standard library with the same rules spelled out the slow way
(duplicate member names, NaN/Infinity, overflowing numbers, lone surrogates, nesting
deeper than 32, anything but an object: all refused). The fast paths of the real
parser must give the same answer for every input.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpopkit import Reason
from dpopkit.core.jws import JWSError, json_loads_object

from .strategies import PROPERTY, json_values

INVALID = object()


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError("duplicate")
    return dict(pairs)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("non-finite")
    return value


def _reject(name: str) -> Any:
    raise ValueError(name)


def _clean(value: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return all(_clean(k, depth) and _clean(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_clean(v, depth + 1) for v in value)
    return True


def reference(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_pairs, parse_float=_float, parse_constant=_reject)
    except (ValueError, RecursionError):
        return INVALID
    if not isinstance(obj, dict) or not _clean(obj):
        return INVALID
    return obj


def check_agrees(data: bytes) -> None:
    expected = reference(data)
    if expected is INVALID:
        with pytest.raises(JWSError) as info:
            json_loads_object(data)
        assert info.value.reason is Reason.MALFORMED
    else:
        assert json_loads_object(data) == expected


objects = st.dictionaries(st.text(max_size=8), json_values, max_size=6)
dump_styles = st.sampled_from(
    [
        {"separators": (",", ":")},
        {"separators": (", ", ": ")},
        {"indent": 1},
        {"separators": (",", ":"), "ensure_ascii": False},
    ]
)


def _dump(value: Any, style: dict[str, Any]) -> bytes:
    return json.dumps(value, allow_nan=True, **style).encode("utf-8", "surrogatepass")


@settings(PROPERTY, max_examples=150)
@given(value=objects, style=dump_styles)
def test_serialised_objects_agree(value: dict[str, Any], style: dict[str, Any]) -> None:
    check_agrees(_dump(value, style))


@settings(PROPERTY, max_examples=150)
@given(value=objects.filter(bool), style=dump_styles, data=st.data())
def test_duplicated_member_is_refused_wherever_it_hides(
    value: dict[str, Any], style: dict[str, Any], data: st.DataObject
) -> None:
    # Re-append one existing member textually: the object now names it twice.
    name = data.draw(st.sampled_from(sorted(value)))
    member = _dump({name: data.draw(json_values)}, {"separators": (",", ":")})[1:-1]
    text = _dump(value, style).rstrip()
    assert text.endswith(b"}")
    duplicated = text[:-1] + b"," + member + b"}"
    check_agrees(duplicated)
    with pytest.raises(JWSError):
        json_loads_object(duplicated)


@settings(PROPERTY, max_examples=150)
@given(
    value=objects,
    style=dump_styles,
    position=st.integers(min_value=0),
    insert=st.sampled_from(list(b'{}[],:"\\ \n0e-.ntfu')) | st.integers(0, 255),
)
def test_mutated_text_agrees(
    value: dict[str, Any], style: dict[str, Any], position: int, insert: int
) -> None:
    text = _dump(value, style)
    index = position % (len(text) + 1)
    check_agrees(text[:index] + bytes([insert]) + text[index:])
    check_agrees(text[:index] + text[index + 1 :])


@settings(PROPERTY, max_examples=200)
@given(
    data=st.binary(max_size=60)
    | st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
def test_arbitrary_bytes_agree(data: bytes) -> None:
    check_agrees(data)
