"""Unit and property tests of the RFC 8785 canonicalizer."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from mission_ledger.domain.canonical import MAX_EXACT_INT, canonicalize, dumps, dumps_general

SAFE_INT = 2**53 - 1  # rfc8785 (the reference) stops at the I-JSON safe range

_text = st.text(st.characters(codec="utf-8"))  # no lone surrogates


def _json(int_bound: int) -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-int_bound, int_bound)
        | st.floats(allow_nan=False, allow_infinity=False)
        | _text
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5)
        ),
        max_leaves=25,
    )


@settings(max_examples=500)
@given(_json(SAFE_INT))
def test_matches_the_rfc8785_package(value: Any) -> None:
    assert canonicalize(value) == rfc8785.dumps(value)


@settings(max_examples=500)
@given(_json(MAX_EXACT_INT))
def test_fast_path_equals_the_general_serializer(value: Any) -> None:
    # canonicalize() tries the C json encoder first and falls back when it could differ
    # (floats, huge ints, tuples, non-BMP characters); both must give the same bytes.
    assert canonicalize(value) == dumps_general(value).encode("utf-8")


def test_fast_path_falls_back_where_the_json_module_differs() -> None:
    assert dumps({"a": 1.0, "b": 1e21, "c": 5e-7}) == '{"a":1,"b":1e+21,"c":5e-7}'
    assert dumps({"\U0001f600": 1, "\ufb33": 2}) == '{"\U0001f600":1,"\ufb33":2}'
    assert dumps(("x", (1, 2))) == '["x",[1,2]]'


@settings(max_examples=500)
@given(_json(MAX_EXACT_INT))
def test_round_trips_through_json(value: Any) -> None:
    # JCS numbers are doubles: a large float is written in integer notation (5.88e16 becomes
    # "58805295823215660"), which Python would read back as a different int, so read every
    # number as a double. Every int within ±2**53 is one exactly, so ints compare equal too.
    assert json.loads(canonicalize(value), parse_int=float) == value


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_digits_round_trip_exactly(x: float) -> None:
    assert float(dumps(x)) == x


def test_literals_and_containers() -> None:
    assert dumps([None, True, False, (1, "a"), {}]) == '[null,true,false,[1,"a"],{}]'
    assert dumps({"b": 1, "a": {"d": [], "c": 2.5}}) == '{"a":{"c":2.5,"d":[]},"b":1}'


def test_string_escapes() -> None:
    assert dumps("\b\t\n\f\r\x00\x1f\x7f") == '"\\b\\t\\n\\f\\r\\u0000\\u001f\x7f"'
    assert dumps('"\\/') == '"\\"\\\\/"'
    assert canonicalize("\u2028\u2029é\U0001f600") == '"\u2028\u2029é\U0001f600"'.encode()


def test_numbers() -> None:
    assert dumps(-0.0) == "0"
    assert dumps(0) == "0"
    assert dumps(1.0) == "1"
    assert dumps(1e21) == "1e+21"
    assert dumps(1e20) == "100000000000000000000"
    assert dumps(1e-7) == "1e-7"
    assert dumps(1.5e-7) == "1.5e-7"
    assert dumps(-1.5e-6) == "-0.0000015"
    assert dumps(MAX_EXACT_INT) == "9007199254740992"
    assert dumps(-MAX_EXACT_INT) == "-9007199254740992"


@pytest.mark.parametrize("n", [MAX_EXACT_INT + 1, -MAX_EXACT_INT - 1, 10**21])
def test_big_int_refused(n: int) -> None:
    with pytest.raises(ValueError, match="IEEE-754 doubles"):
        canonicalize(n)


@pytest.mark.parametrize("x", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_refused(x: float) -> None:
    with pytest.raises(ValueError, match="NaN and Infinity"):
        canonicalize([x])


@pytest.mark.parametrize("value", ["a\ud800", {"\udfff": 1}, ["\ud83d"]])
def test_lone_surrogate_refused(value: object) -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        canonicalize(value)


@pytest.mark.parametrize("key", [1, None, b"a", ("a",)])
def test_non_str_key_refused(key: object) -> None:
    with pytest.raises(TypeError, match="member names must be str"):
        canonicalize({key: 1})


@pytest.mark.parametrize("value", [b"bytes", {1, 2}, object()])
def test_non_json_value_refused(value: object) -> None:
    with pytest.raises(TypeError, match="not a JSON value"):
        canonicalize(value)
