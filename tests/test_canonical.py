"""canonical_json: byte-identical to the reference rfc8785.dumps, key-order independent, strict about non-JSON."""

from __future__ import annotations

import datetime
import enum
import json
import math
import os
import random
import struct
import uuid

import orjson
import pytest
import rfc8785
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aop_client.canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    _FAST,
    _scan,
    canonical_json,
    canonical_json_of_parsed,
    es6_number,
)
from aop_client.errors import ValidationError

SOAK = os.environ.get("AOP_SOAK") == "1"
MANY = 20_000 if SOAK else 600  # cheap scalar properties
STRUCTURES = 10_000 if SOAK else 500  # nested values against the (slow) reference encoder
SOME = 2_000 if SOAK else 100
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Characters that matter: controls (escaped), quote/backslash, DEL and U+2028 (not escaped),
# BMP non-ASCII, the U+E000..U+FFFF block and astral characters (UTF-16 order differs there).
TRICKY_CHARS = st.sampled_from(
    ["a", "z", "\x00", "\x1f", "\n", "\t", '"', "\\", "/", "\x7f", "\u00e9", "\u2028", "\ud7ff",
     "\ue000", "\uffff", "\ufffd", "\U00010000", "\U0001f600", "\U0010ffff"]
)
ANY_CHAR = st.characters(blacklist_categories=("Cs",))
TEXT = st.text(alphabet=st.one_of(TRICKY_CHARS, ANY_CHAR), max_size=12)
EDGE_FLOATS = st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 0.95, 1e21, 1e20, 9.999999999999999e20, 1e-7, 1e-6, 1.5e-7, 5e-324,
     2.2250738585072014e-308, 1.7976931348623157e308, 1e16, 9007199254740992.0, 1e-4, 9.999999999999999e-05,
     0.1 + 0.2, 123456789.125, 1e15 + 0.5]
)
FLOATS = st.one_of(st.floats(allow_nan=False, allow_infinity=False), EDGE_FLOATS)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    st.sampled_from([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 0]), FLOATS, TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(TEXT, inner, max_size=6),
    ),
    max_leaves=30,
)


def float_from_bits(bits: int) -> float:
    """The IEEE 754 double with the given 64-bit pattern."""
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def shuffled(value, rng: random.Random):
    """A deep copy of value whose dicts have their keys inserted in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {key: shuffled(item, rng) for key, item in items}
    if isinstance(value, (list, tuple)):
        return type(value)(shuffled(item, rng) for item in value)
    return value


@settings(relaxed, max_examples=STRUCTURES)
@given(JSON_VALUES)
@example({"\ue000": 1, "\U0001f600": 2})
@example([1.0, -0.0, 1e21, 5e-324, 1e-7, MAX_SAFE_INTEGER])
@example({"": {}, "a": [], "\x00": "\x00\x1f\x7f\u2028"})
def test_fast_path_is_byte_identical_to_rfc8785(value):
    """canonical_json(x) == rfc8785.dumps(x) byte for byte on arbitrary JSON values."""
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(relaxed, max_examples=SOME)
@given(JSON_VALUES, st.randoms(use_true_random=False))
def test_key_order_does_not_change_the_canonical_form(value, rng):
    """Reinserting every object's keys in another order yields the same bytes."""
    assert canonical_json(shuffled(value, rng)) == canonical_json(value)


@settings(relaxed, max_examples=MANY)
@given(FLOATS)
def test_float_formatting_matches_rfc8785(number):
    """es6_number and canonical_json format every finite float exactly as rfc8785 does."""
    reference = rfc8785.dumps(number)
    assert es6_number(number).encode() == reference
    assert canonical_json(number) == reference
    assert canonical_json({"x": [number]}) == b'{"x":[' + reference + b"]}"


@settings(relaxed, max_examples=MANY)
@given(st.integers(0, 2**64 - 1))
def test_float_formatting_matches_rfc8785_on_random_bit_patterns(bits):
    """Uniform random IEEE 754 bit patterns (all exponents): same bytes as rfc8785, or refused if not finite."""
    number = float_from_bits(bits)
    if math.isfinite(number):
        assert canonical_json([number]) == rfc8785.dumps([number])
    else:
        with pytest.raises(ValidationError):
            canonical_json([number])


@settings(relaxed, max_examples=MANY)
@given(st.floats(min_value=1e-4, max_value=1e16, exclude_max=True).filter(lambda f: not f.is_integer()))
def test_orjson_float_text_is_ecmascript_in_the_fast_range(number):
    """The premise of the fast path: in its float range orjson writes the ECMAScript form."""
    assert orjson.dumps(number) == rfc8785.dumps(number)
    assert orjson.dumps(-number) == rfc8785.dumps(-number)


def test_typical_event_takes_the_orjson_fast_path():
    """An ordinary event (ASCII keys, non-integral floats) is classified for the fast path."""
    event = {"seq": 1, "payload": {"steps": [{"confidence": 0.95, "ok": True}], "note": None, "n": [1, 2]}}
    assert _scan(event, 0) == _FAST


@pytest.mark.parametrize(
    "value, expected",
    [
        (-0.0, b"0"),
        (1.0, b"1"),
        (1e21, b"1e+21"),
        (1e20, b"100000000000000000000"),
        (1e-7, b"1e-7"),
        (1e-6, b"0.000001"),
        (5e-324, b"5e-324"),
        (MAX_SAFE_INTEGER, b"9007199254740991"),
        (-MAX_SAFE_INTEGER, b"-9007199254740991"),
        ({"b": 1, "a": 2}, b'{"a":2,"b":1}'),
        ("\u2028\x7f\x1f", b'"\xe2\x80\xa8\x7f\\u001f"'),
    ],
)
def test_known_canonical_forms(value, expected):
    """Hand-checked RFC 8785 forms from the spec's number and string rules."""
    assert canonical_json(value) == expected


class Colour(enum.Enum):
    """A plain enum: not a JSON value."""

    RED = 1


class Level(str, enum.Enum):
    """A str-valued enum: written as its value, like rfc8785."""

    LOW = "low"


class Count(enum.IntEnum):
    """An int-valued enum: written as its value, like rfc8785."""

    THREE = 3


class Tagged(dict):
    """A dict subclass."""


class KeyText(str):
    """A str subclass used as an object key (orjson refuses it; the reference path takes over)."""


def test_subclasses_of_json_types_match_rfc8785():
    """str/int enums, dict and tuple subclasses are accepted and written as rfc8785 writes them."""
    value = Tagged(level=Level.LOW, count=Count.THREE, items=(1, 2.5), name="x")
    assert canonical_json(value) == rfc8785.dumps(value) == b'{"count":3,"items":[1,2.5],"level":"low","name":"x"}'
    keyed = {"outer": {KeyText("b"): 1, "a": 2}}
    assert canonical_json(keyed) == rfc8785.dumps(keyed) == b'{"outer":{"a":2,"b":1}}'


@pytest.mark.parametrize(
    "value",
    [
        {"\ue000": 1, "\U0001f600": 2, "a": 3},  # orjson path, then UTF-16 re-sort
        {"\ue000": 1.0, "\U0001f600": [2.0], "a": {"\uffff": 0, "\U00010000": -0.0}},  # Fragment path + re-sort
        {"a": "\ue000 \U0001f600", "b": "\ufffd"},  # high characters only in values: no re-sort needed
        [{"\U0001f600": 1}, {"\uffff": 1}],
    ],
)
def test_utf16_key_order_cases(value):
    """Keys whose UTF-16 order differs from code point order are sorted as RFC 8785 requires."""
    assert canonical_json(value) == rfc8785.dumps(value)


BAD_VALUES = [
    (float("nan"), "NaN"),
    (float("inf"), "NaN and infinities"),
    (float("-inf"), "NaN and infinities"),
    (MAX_SAFE_INTEGER + 1, "2**53"),
    (-MAX_SAFE_INTEGER - 1, "2**53"),
    (10**30, "2**53"),
    ({1, 2}, "set is not a JSON value"),
    (b"bytes", "bytes is not a JSON value"),
    (datetime.datetime(2025, 1, 1), "datetime is not a JSON value"),
    (uuid.UUID(int=1), "UUID is not a JSON value"),
    (Colour.RED, "Colour is not a JSON value"),
    (object(), "object is not a JSON value"),
    ("lone \ud800 surrogate", "lone surrogate"),
]


@pytest.mark.parametrize("bad, reason", BAD_VALUES)
def test_non_json_values_raise_validation_error_naming_path_and_value(bad, reason):
    """A non-JSON leaf deep in an event raises ValidationError with its dotted path and the value."""
    event = {"payload": {"steps": [{"confidence": bad}]}}
    with pytest.raises(ValidationError) as caught:
        canonical_json(event)
    err = caught.value
    assert err.field == "payload.steps[0].confidence"
    assert err.value is bad
    assert str(err).startswith("payload.steps[0].confidence: ")
    assert reason in str(err)


@pytest.mark.parametrize("key", [1, None, 2.5, ("a",), "\udc00"])
def test_bad_object_keys_raise_validation_error(key):
    """Non-string keys and keys holding lone surrogates are refused with the key's path."""
    with pytest.raises(ValidationError) as caught:
        canonical_json({"payload": {key: 1}})
    assert caught.value.field.startswith("payload[")


def test_nan_is_not_silently_written_as_null():
    """orjson writes NaN as null; canonical_json refuses it at the top level as well."""
    with pytest.raises(ValidationError) as caught:
        canonical_json(float("nan"))
    assert caught.value.field == "(root)"


def test_depth_limit_and_cycles_are_refused():
    """Nesting beyond MAX_DEPTH, and a self-containing list, raise ValidationError (not RecursionError)."""
    deep: list = []
    node = deep
    for _ in range(MAX_DEPTH):
        node.append([])
        node = node[0]
    with pytest.raises(ValidationError, match="nesting deeper"):
        canonical_json(deep)
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(ValidationError, match="nesting deeper"):
        canonical_json(cycle)
    shallow: list = []
    node = shallow
    for _ in range(MAX_DEPTH - 1):
        node.append([])
        node = node[0]
    assert canonical_json(shallow) == rfc8785.dumps(shallow)


PATH_STEPS = st.lists(
    st.one_of(st.integers(0, 3), st.sampled_from(["payload", "steps", "x_1", "a b", "é", ""])), max_size=6
)


def expected_path(steps) -> str:
    """The path string canonical_json should report for a list of keys/indices."""
    text = ""
    for step in steps:
        if isinstance(step, int):
            text += f"[{step}]"
        elif step.isascii() and step.replace("_", "a").isalnum() and not step[0].isdigit():
            text += ("." if text else "") + step
        else:
            text += "[" + json.dumps(step) + "]"
    return text or "(root)"


@settings(relaxed, max_examples=SOME)
@given(PATH_STEPS, st.sampled_from([float("nan"), float("inf"), 2**53, {1}, b"x"]), JSON_VALUES)
def test_error_path_names_exactly_where_the_bad_value_is(steps, bad, filler):
    """A bad value planted at any path of a random structure is reported at that path."""
    value = bad
    for step in reversed(steps):
        if isinstance(step, int):
            value = [filler] * step + [value]
        else:
            value = {step: value}
    with pytest.raises(ValidationError) as caught:
        canonical_json(value)
    assert caught.value.field == expected_path(steps)


# --- canonical_json_of_parsed: the verifier's fast path for values fresh from orjson.loads ---------

# Strings that look like the number tokens the fast path searches for (false positives: slow path).
LOOKALIKE_TEXT = st.sampled_from(["x:1.0,", ".0}", "e-5]", "1e+16,", "[2.0]", "ab-e-1,", "\ue000", "\U0001f600"])
PARSED_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([2**53 - 1, 2**53, -(2**53)]),
    FLOATS, st.floats(min_value=-1e-3, max_value=1e-3), st.floats(min_value=1e14, max_value=1e22), TEXT, LOOKALIKE_TEXT,
)
PARSED_KEYS = st.one_of(TEXT, LOOKALIKE_TEXT)
PARSED_VALUES = st.recursive(
    PARSED_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(PARSED_KEYS, inner, max_size=6)),
    max_leaves=30,
)


def outcome(function, value):
    """('ok', bytes) or ('error', message) of function(value), so that two encoders can be compared."""
    try:
        return "ok", function(value)
    except ValidationError as e:
        return "error", str(e)


@settings(relaxed, max_examples=STRUCTURES)
@given(st.one_of(PARSED_VALUES.map(lambda v: {"payload": v}), st.lists(PARSED_VALUES, max_size=3)))
@example({"a": [1.0, -0.0, 1e16, 1e-7, 5e-324, 1e21, 0.95, 1e-5, 123456789012345.6]})
@example({"\ue000": {"\U0001f600": 1}, "b": [1e300]})
@example({"k": 2**60, "j": -(2**53 - 1)})
@example({"note": "x:1.0,", "e": "n:e-5]"})
def test_canonical_json_of_parsed_equals_reference_after_an_orjson_round_trip(value):
    """For any value parsed by orjson, the fast path gives rfc8785's bytes, or raises exactly as canonical_json."""
    parsed = orjson.loads(json.dumps(value))  # json: integers of any size, floats in repr form
    got = outcome(canonical_json_of_parsed, parsed)
    assert got == outcome(canonical_json, parsed)
    if got[0] == "ok":
        assert got[1] == rfc8785.dumps(parsed)


@settings(relaxed, max_examples=MANY)
@given(st.integers(0, 2**64 - 1))
def test_canonical_json_of_parsed_formats_every_float_bit_pattern_as_rfc8785(bits):
    """Every finite double, parsed back from orjson's text, is written exactly as rfc8785 writes it."""
    number = float_from_bits(bits)
    if math.isfinite(number):
        parsed = orjson.loads(orjson.dumps({"x": [number]}))
        assert canonical_json_of_parsed(parsed) == rfc8785.dumps(parsed)


@pytest.mark.parametrize(
    "text",
    [b'{"a":1.0}', b'{"a":-0.0}', b'{"a":1E2}', b'{"a":100e-2}', b'{"a":1.000}', b'{"a":0.0000001}',
     b'{"a":12345678901234567.5}', b'{"a":[1e16,1e-7,1.5e300]}', b'{"a":100000000000000000000}',
     b'{"\xee\x80\x80":1,"\xf0\x9f\x98\x80":2}', b'{"a":"\\u00e9","b":"\\ud83d\\ude00"}'],
)
def test_canonical_json_of_parsed_on_number_and_key_edge_texts(text):
    """Number texts that parse to integral, tiny or huge doubles, and UTF-16-ordered keys, match rfc8785."""
    parsed = orjson.loads(text)
    assert canonical_json_of_parsed(parsed) == rfc8785.dumps(parsed) == canonical_json(parsed)


def test_canonical_json_of_parsed_keeps_the_depth_limit_and_big_integer_refusal():
    """Nesting beyond MAX_DEPTH and integers beyond 2**53 are refused as canonical_json refuses them."""
    deep = orjson.loads(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    with pytest.raises(ValidationError, match="nesting deeper"):
        canonical_json_of_parsed(deep)
    limit = orjson.loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    assert canonical_json_of_parsed(limit) == rfc8785.dumps(limit)
    with pytest.raises(ValidationError, match=r"2\*\*53") as caught:
        canonical_json_of_parsed({"payload": {"n": [2**53]}})
    assert caught.value.field == "payload.n[0]"
    wide = {"items": [[i] for i in range(300)]}  # many brackets, shallow: correct (via the slow path)
    assert canonical_json_of_parsed(wide) == rfc8785.dumps(wide)


def test_canonical_json_of_parsed_sends_non_parsed_types_to_the_strict_encoder():
    """Subclasses and datetimes (never produced by a parser) are judged by canonical_json, not orjson."""
    assert canonical_json_of_parsed({"t": Tagged(a=1), "l": Level.LOW}) == canonical_json({"t": {"a": 1}, "l": "low"})
    with pytest.raises(ValidationError, match="datetime is not a JSON value"):
        canonical_json_of_parsed({"at": datetime.datetime(2025, 1, 1)})
    assert canonical_json_of_parsed(1.0) == b"1" and canonical_json_of_parsed("x") == b'"x"'


def test_typical_parsed_event_takes_the_orjson_fast_path(monkeypatch):
    """An ordinary parsed event is encoded by orjson alone: the strict encoder is never consulted."""
    import aop_client.canonical as canonical

    event = orjson.loads(
        b'{"seq":1,"t":"2025-12-05T10:00:00.000Z","payload":{"steps":[{"confidence":0.95,"ok":true}],'
        b'"note":null,"n":[1,2],"text":"caf\\u00e9 1.5e-7"}}'
    )
    expected = rfc8785.dumps(event)
    monkeypatch.setattr(canonical, "canonical_json", lambda value: pytest.fail("slow path taken"))
    assert canonical.canonical_json_of_parsed(event) == expected


@settings(relaxed, max_examples=MANY)
@given(st.floats(min_value=0.1, max_value=1.0), st.integers(-12, 24), st.integers(1, 17), st.booleans())
def test_canonical_json_of_parsed_around_every_plain_and_exponent_threshold(mantissa, exponent, digits, negative):
    """Floats near the magnitudes where orjson or ECMAScript switch notation (1e-7..1e-4, 1e16..1e21) match rfc8785."""
    number = float("%.*g" % (digits, mantissa * 10.0**exponent)) * (-1 if negative else 1)
    parsed = orjson.loads(orjson.dumps({"x": number, "y": [number]}))
    assert canonical_json_of_parsed(parsed) == rfc8785.dumps(parsed)
