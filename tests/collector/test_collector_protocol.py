"""Properties of the collector's sans-I/O protocol functions (no server involved)."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client.collector.protocol import (
    RequestRefused,
    check_api_key,
    decode_body,
    event_refusal,
    parse_batch,
)
from aop_client.signing import sign_event
from collector_helpers import make_event

PROPS = settings(max_examples=100, deadline=None)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@PROPS
@given(data=st.binary(max_size=4096), level=st.integers(0, 9))
def test_gzip_decoding_round_trips(data: bytes, level: int) -> None:
    """Property: decode_body(gzip(x)) == x and identity passes x through."""
    assert decode_body(gzip.compress(data, level), "gzip", max_decompressed=4096) == data
    assert decode_body(data, None, max_decompressed=4096) == data


@PROPS
@given(size=st.integers(1, 5000), limit=st.integers(1, 5000))
def test_decoded_size_bound_is_413_exactly_above_the_limit(size: int, limit: int) -> None:
    """Property: a body inflating to more than max_decompressed bytes is 413, otherwise returned whole."""
    packed = gzip.compress(b"a" * size)
    if size > limit:
        with pytest.raises(RequestRefused) as info:
            decode_body(packed, "gzip", max_decompressed=limit)
        assert info.value.status == 413
    else:
        assert len(decode_body(packed, "gzip", max_decompressed=limit)) == size


@PROPS
@given(event=JSON, salted=st.booleans())
def test_event_refusal_is_total(event, salted: bool) -> None:
    """Property: any JSON value gets a reason string or None, never an exception."""
    reason = event_refusal(event, "salt" if salted else None)
    assert reason is None or (isinstance(reason, str) and reason)


@PROPS
@given(field=st.sampled_from(["event_id", "run_id", "agent_id", "seq", "t", "type", "payload"]), value=JSON)
def test_replacing_a_required_field_is_refused_or_valid(field: str, value) -> None:
    """Property: a re-signed event with one field replaced is accepted only if the value is valid for it."""
    base = make_event("0b7ac4d4-6f50-4f52-8f0f-5b0e6c6c0a11", 1, None)
    base[field] = value
    try:
        signed = sign_event(base, "salt")
    except ValueError:
        return  # not signable (e.g. big ints); covered by the fuzz harness
    reason = event_refusal(signed, "salt")
    valid = {
        "agent_id": isinstance(value, int) and not isinstance(value, bool),
        "seq": isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        "payload": isinstance(value, dict),
    }.get(field, False)
    assert (reason is None) == valid
    if reason is not None:
        assert reason.startswith(field)


@pytest.mark.parametrize("header", ["Bearer k", "bearer k", "BEARER   k  "])
def test_api_key_accepts_case_insensitive_scheme(header: str) -> None:
    """The Bearer scheme is case-insensitive and surrounding blanks are ignored."""
    check_api_key(header, "k")


def test_parse_batch_rejects_mismatched_idempotency_key() -> None:
    """The Idempotency-Key header must equal batch_id when sent."""
    with pytest.raises(RequestRefused, match="Idempotency-Key") as info:
        parse_batch(b'{"batch_id": "a", "events": []}', "b")
    assert info.value.status == 400
    assert parse_batch(b'{"batch_id": "a", "events": []}', "a").batch_id == "a"


@pytest.mark.parametrize("mangle, reason", [
    (lambda g: g + b"extra", "trailing data after the gzip stream"),
    (lambda g: g[:-4], "gzip body is truncated"),
    (lambda g: g[:10] + bytes([g[10] ^ 0xFF]) + g[11:], "gzip body is corrupt"),
])
def test_damaged_gzip_bodies_are_400_naming_the_damage(mangle, reason) -> None:
    """Trailing bytes, a cut stream and flipped bits each get a 400 whose reason says which."""
    with pytest.raises(RequestRefused) as info:
        decode_body(mangle(gzip.compress(b'{"batch_id": "b", "events": []}' * 20)), "gzip", max_decompressed=10_000)
    assert info.value.status == 400 and info.value.reason.startswith(reason)
