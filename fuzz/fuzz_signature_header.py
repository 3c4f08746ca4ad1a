"""Fuzz harness: parse_signature_header / verify_request / verify_event on hostile input.

Invariant: each returns a valid result (or None) or raises SignatureError, nothing else.
Run with more examples: AOP_FUZZ_EXAMPLES=100000 python -m pytest fuzz/fuzz_signature_header.py
"""

from __future__ import annotations

import os

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aop_client.errors import SignatureError
from aop_client.signing import parse_signature_header, request_signature, sign_event, verify_event, verify_request

FUZZ = settings(
    max_examples=int(os.environ.get("AOP_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
KEY = "fuzz-key"
HEX = st.text(alphabet="0123456789abcdefABCDEF", min_size=0, max_size=70)
DIGITS = st.text(alphabet="0123456789-+_ e.\u0661", max_size=20)
ITEMS = st.one_of(
    st.tuples(st.sampled_from(["t", "v1", "v0", "v2", "T", "", " t", "v1 "]), st.one_of(HEX, DIGITS, st.text(max_size=10))).map(
        lambda pair: f"{pair[0]}={pair[1]}"
    ),
    st.text(max_size=12),
)
STRUCTURED_HEADERS = st.lists(ITEMS, max_size=6).map(",".join)
HEADERS = st.one_of(st.text(max_size=200), STRUCTURED_HEADERS, st.none())
NOW = st.one_of(st.integers(0, 2**40), st.floats(0, 1e12, allow_nan=False))


def check_parse_result(result: object) -> None:
    """A successful parse is (non-negative int, non-empty list of 64-char lowercase hex)."""
    assert isinstance(result, tuple) and len(result) == 2
    timestamp, signatures = result
    assert isinstance(timestamp, int) and timestamp >= 0
    assert signatures and all(len(s) == 64 and set(s) <= set("0123456789abcdef") for s in signatures)


@FUZZ
@given(st.one_of(HEADERS, STRUCTURED_HEADERS))
@example("t=1,v1=" + "a" * 64)
@example("t=" + "9" * 15 + ",v1=" + "0" * 64)
def test_parse_signature_header(header):
    """parse_signature_header returns a well-formed (t, [v1...]) or raises SignatureError."""
    try:
        result = parse_signature_header(header)  # type: ignore[arg-type]
    except SignatureError:
        return
    check_parse_result(result)


@FUZZ
@given(st.binary(max_size=200), HEADERS, NOW, st.one_of(st.integers(0, 10**6), st.floats(0, 1e6)))
def test_verify_request(body, header, now, tolerance):
    """verify_request with arbitrary header, body, clock and tolerance returns None or raises SignatureError."""
    try:
        assert verify_request(body, header, KEY, now=now, tolerance=tolerance) is None
    except SignatureError:
        return


@FUZZ
@given(st.binary(max_size=200), NOW, st.data())
def test_verify_request_near_valid_headers(body, now, data):
    """A valid header with a random edit around it verifies (None) or raises SignatureError."""
    header = request_signature(body, KEY, now=now)
    position = data.draw(st.integers(0, len(header)), label="position")
    cut = data.draw(st.integers(0, 3), label="cut")
    insert = data.draw(st.text(max_size=4), label="insert")
    edited = header[:position] + insert + header[position + cut :]
    try:
        assert verify_request(body, edited, KEY, now=now) is None
    except SignatureError:
        return


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=15,
)


@FUZZ
@given(st.dictionaries(st.text(max_size=6), JSON, max_size=5), st.one_of(st.none(), st.text(max_size=70), JSON))
def test_verify_event(event, sig):
    """verify_event on arbitrary events (NaN, huge ints included) and sig values raises only SignatureError."""
    if sig is not None:
        event = dict(event, sig=sig)
    try:
        assert verify_event(event, KEY) is None
    except SignatureError:
        return


@FUZZ
@given(st.binary(max_size=300))
def test_verify_event_on_parsed_bodies(raw):
    """Arbitrary bytes parsed as JSON and verified as an event raise only SignatureError (or verify)."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    try:
        verify_event(event, KEY)
    except SignatureError:
        return


def test_signed_events_still_verify():
    """Sanity anchor for the harness: a properly signed event verifies."""
    assert verify_event(sign_event({"a": [1, 2.5, "x"]}, KEY), KEY) is None
