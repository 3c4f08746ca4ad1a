"""Event and request signatures: published vectors, tamper detection, round trips, verifier errors."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import random
import sys
from pathlib import Path

import orjson
import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aop_client.canonical import canonical_json, large_integers_as_doubles
from aop_client.errors import AOPError, ConfigError, SignatureError, ValidationError
from aop_client.signing import (
    event_signature,
    parse_signature_header,
    request_signature,
    sign_event,
    signed_body,
    verify_event,
    verify_request,
)

VECTORS_DIR = Path(__file__).parent / "vectors"
VECTORS = json.loads((VECTORS_DIR / "signing-v1.json").read_text(encoding="ascii"))
SOAK = os.environ.get("AOP_SOAK") == "1"
SOME = 2_000 if SOAK else 100
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(["a", "\x00", "\n", '"', "\\", "\u00e9", "\ue000", "\U0001f600"]),
        st.characters(blacklist_categories=("Cs",)),
    ),
    max_size=10,
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53 - 1), 2**53 - 1),
    st.floats(allow_nan=False, allow_infinity=False), TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=20,
)
EVENTS = st.fixed_dictionaries(
    {
        "event_id": st.uuids().map(str),
        "run_id": st.uuids().map(str),
        "agent_id": st.integers(0, 10**6),
        "seq": st.integers(1, 10**6),
        "t": st.just("2025-12-05T10:00:00.000Z"),
        "type": st.sampled_from(["reasoning", "action_request", "final_output", "custom"]),
        "payload": st.dictionaries(TEXT, VALUES, max_size=5),
    },
    optional={"extra": VALUES},
)
KEYS = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    st.binary(min_size=1, max_size=64),
)
BODIES = st.binary(max_size=300)
NOW = st.integers(0, 4_000_000_000)


def reference_sig(event: dict, key: str) -> str:
    """The event signature computed from the reference rfc8785 + stdlib hmac only."""
    unsigned = {k: v for k, v in event.items() if k != "sig"}
    return "v1=" + hmac.new(key.encode(), rfc8785.dumps(unsigned), hashlib.sha256).hexdigest()


def flip_byte(data: bytes, position: int, new: int) -> bytes:
    """data with the byte at position replaced by a different byte derived from new."""
    old = data[position]
    replacement = new if new != old else (new + 1) % 256
    return data[:position] + bytes([replacement]) + data[position + 1 :]


# --- published vectors -------------------------------------------------------------------


def test_vector_file_is_exactly_what_the_reference_generator_writes():
    """signing-v1.json is reproduced byte for byte by the rfc8785+hmac generator script."""
    sys.path.insert(0, str(VECTORS_DIR))
    try:
        import generate_signing_v1
    finally:
        sys.path.remove(str(VECTORS_DIR))
    assert (VECTORS_DIR / "signing-v1.json").read_text(encoding="ascii") == generate_signing_v1.render()


@pytest.mark.parametrize("case", VECTORS["event_cases"], ids=lambda case: case["name"])
def test_event_vectors(case):
    """Our canonical form and event signature equal the published vector; the signed event verifies."""
    unsigned = {k: v for k, v in case["event"].items() if k != "sig"}
    canonical = canonical_json(unsigned)
    assert canonical.decode("utf-8") == case["canonical"]
    assert canonical.hex() == case["canonical_utf8_hex"]
    assert event_signature(case["event"], case["key"]) == case["sig"]
    sig, body = signed_body(case["event"], case["key"])
    assert sig == case["sig"]
    assert orjson.loads(body) == dict(unsigned, sig=case["sig"])
    verify_event(dict(case["event"], sig=case["sig"]), case["key"])


@pytest.mark.parametrize("case", VECTORS["request_cases"], ids=lambda case: case["name"])
def test_request_vectors(case):
    """Our request signature equals the published header; each verify expectation holds."""
    body = case["body"].encode("utf-8")
    assert request_signature(body, case["key"], now=case["t"] + 0.999) == case["header"]
    for check in case["verify"]:
        if check["result"] == "ok":
            verify_request(body, case["header"], case["key"], now=check["now"], tolerance=check["tolerance"])
        else:
            with pytest.raises(SignatureError, match="stale timestamp"):
                verify_request(body, case["header"], case["key"], now=check["now"], tolerance=check["tolerance"])


def test_vectors_cover_the_required_cases():
    """The published set has ASCII, unicode, float, nested, and request cases."""
    names = {case["name"] for case in VECTORS["event_cases"]}
    assert {"ascii-reasoning", "unicode-and-escapes", "numbers", "nested-payload"} <= names
    assert len(VECTORS["request_cases"]) >= 1
    unicode_case = next(c for c in VECTORS["event_cases"] if c["name"] == "unicode-and-escapes")
    assert "\U0001f600" in unicode_case["canonical"] and "\\u0000" in unicode_case["canonical"]


# --- event signatures: properties ------------------------------------------------------------


@settings(relaxed, max_examples=SOME)
@given(EVENTS, st.text(min_size=1, max_size=20, alphabet=st.characters(blacklist_categories=("Cs",))))
def test_event_signature_equals_reference_and_round_trips(event, key):
    """sig == reference HMAC over rfc8785; signed_body parses back to sign_event and verifies."""
    sig, body = signed_body(event, key)
    assert sig == event_signature(event, key) == reference_sig(event, key)
    parsed = orjson.loads(body)
    assert sign_event(event, key) == dict(event, sig=sig)
    # JSON numbers are doubles: an integral double >= 2**53 comes back as a (textually equal) int
    assert canonical_json(large_integers_as_doubles(parsed)) == canonical_json(dict(event, sig=sig))
    verify_event(parsed, key)
    assert "sig" not in event  # the input is not modified


@settings(relaxed, max_examples=SOME)
@given(EVENTS, KEYS, st.randoms(use_true_random=False))
def test_event_signature_is_independent_of_key_order(event, key, rng):
    """Reordering the keys of the event (and nested objects) leaves the signature unchanged."""

    def reorder(value):
        if isinstance(value, dict):
            items = list(value.items())
            rng.shuffle(items)
            return {k: reorder(v) for k, v in items}
        if isinstance(value, list):
            return [reorder(v) for v in value]
        return value

    assert event_signature(reorder(event), key) == event_signature(event, key)


@settings(relaxed, max_examples=SOME)
@given(EVENTS, KEYS, st.data())
def test_any_single_byte_change_of_a_signed_event_body_breaks_verification(event, key, data):
    """Changing one byte of the signed body: it no longer parses, or it verifies only if the content is unchanged."""
    _, body = signed_body(event, key)
    position = data.draw(st.integers(0, len(body) - 1), label="position")
    tampered = flip_byte(body, position, data.draw(st.integers(0, 255), label="byte"))
    try:
        parsed = json.loads(tampered.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return  # not an event any more: nothing could verify
    original = dict(event, sig=event_signature(event, key))
    try:
        same_content = isinstance(parsed, dict) and canonical_json(
            large_integers_as_doubles(parsed)
        ) == canonical_json(original)
    except ValidationError:  # e.g. a digit appended to a 16-digit integer
        same_content = False
    if same_content:  # e.g. an escape written in another case: "\u001f" -> "\u001F"
        verify_event(parsed, key)
    else:
        with pytest.raises(SignatureError):
            verify_event(parsed, key)


@settings(relaxed, max_examples=SOME)
@given(EVENTS, KEYS, KEYS)
def test_a_different_key_does_not_verify(event, key, other_key):
    """An event signed with one key fails verification with any other key."""
    raw = key.encode() if isinstance(key, str) else key
    other_raw = other_key.encode() if isinstance(other_key, str) else other_key
    signed = sign_event(event, key)
    if raw == other_raw:
        verify_event(signed, other_key)
    else:
        with pytest.raises(SignatureError, match="signature mismatch"):
            verify_event(signed, other_key)


def test_str_key_is_its_utf8_bytes():
    """A str key signs exactly as its UTF-8 encoding does."""
    event = {"a": 1}
    assert event_signature(event, "cl\u00e9") == event_signature(event, "cl\u00e9".encode("utf-8"))
    assert event_signature(event, "cl\u00e9") != event_signature(event, "cl\u00e9".encode("latin-1"))


def test_existing_sig_is_ignored_and_replaced():
    """A stale sig in the input does not affect the signature, and signed_body writes one sig only."""
    event = {"seq": 1, "payload": {}}
    stale = dict(event, sig="v1=" + "0" * 64)
    assert event_signature(stale, "k") == event_signature(event, "k")
    sig, body = signed_body(stale, "k")
    assert body.count(b'"sig"') == 1 and orjson.loads(body) == dict(event, sig=sig)
    assert sign_event(stale, "k")["sig"] == sig
    assert signed_body(stale, None) == (None, canonical_json(event))


def test_signed_body_edge_cases():
    """The empty event and a key-less call both give valid JSON with the right content."""
    sig, body = signed_body({}, "k")
    assert orjson.loads(body) == {"sig": sig}
    assert sig == "v1=" + hmac.new(b"k", b"{}", hashlib.sha256).hexdigest()
    assert signed_body({"b": 1, "a": 0.5}, None) == (None, b'{"a":0.5,"b":1}')


def test_non_json_events_are_refused_when_signing():
    """NaN in a payload raises ValidationError naming the path (nothing is signed)."""
    with pytest.raises(ValidationError) as caught:
        signed_body({"payload": {"steps": [{"confidence": float("nan")}]}}, "k")
    assert caught.value.field == "payload.steps[0].confidence"
    with pytest.raises(ValidationError):
        signed_body(["not", "an", "event"], "k")  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["", b"", 123, None, "bad \ud800 key"])
def test_bad_keys_raise_config_error_without_echoing_the_key(key):
    """Empty, non-text or non-encodable keys raise ConfigError; the message never contains the key."""
    with pytest.raises(ConfigError) as caught:
        event_signature({"a": 1}, key)  # type: ignore[arg-type]
    assert caught.value.field == "org_salt_key"
    if isinstance(key, str) and key:
        assert key not in str(caught.value)


@pytest.mark.parametrize(
    "event, reason",
    [
        ({"a": 1}, "missing signature"),
        ({"a": 1, "sig": None}, "missing signature"),
        ({"a": 1, "sig": 5}, "malformed signature"),
        ({"a": 1, "sig": "v1=" + "A" * 64}, "malformed signature"),
        ({"a": 1, "sig": "v2=" + "a" * 64}, "malformed signature"),
        ({"a": 1, "sig": "v1=" + "a" * 63}, "malformed signature"),
        ({"a": 1, "sig": "v1=" + "a" * 64 + "\n"}, "malformed signature"),
        ({"a": 1, "sig": "v1=" + "a" * 64}, "signature mismatch"),
        ({"a": float("nan"), "sig": "v1=" + "a" * 64}, "unverifiable event"),
        (["a"], "malformed event"),
    ],
)
def test_verify_event_reasons(event, reason):
    """verify_event raises SignatureError whose message starts with the documented reason."""
    with pytest.raises(SignatureError) as caught:
        verify_event(event, "secret-key")
    assert str(caught.value).startswith(reason)
    assert "secret-key" not in str(caught.value)
    assert isinstance(caught.value, AOPError)
    assert pickle.loads(pickle.dumps(caught.value)).reason == caught.value.reason


# --- request signatures --------------------------------------------------------------------


@settings(relaxed, max_examples=SOME)
@given(BODIES, KEYS, NOW, st.floats(0, 0.999))
def test_request_signature_matches_reference_and_verifies(body, key, now, fraction):
    """The header is t=<floor(now)>,v1=<reference HMAC>, and it verifies at that time."""
    raw = key.encode() if isinstance(key, str) else key
    header = request_signature(body, key, now=now + fraction)
    expected = hmac.new(raw, f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"t={now},v1={expected}"
    assert parse_signature_header(header) == (now, [expected])
    verify_request(body, header, key, now=now + fraction)


@settings(relaxed, max_examples=SOME)
@given(BODIES, KEYS, NOW, st.data())
def test_any_single_byte_change_of_request_body_or_header_breaks_verification(body, key, now, data):
    """Changing one byte of the body, or one character of the header, makes verify_request raise."""
    header = request_signature(body, key, now=now)
    if body:
        position = data.draw(st.integers(0, len(body) - 1), label="body position")
        tampered = flip_byte(body, position, data.draw(st.integers(0, 255), label="byte"))
        with pytest.raises(SignatureError, match="signature mismatch"):
            verify_request(tampered, header, key, now=now)
    position = data.draw(st.integers(0, len(header) - 1), label="header position")
    replacement = data.draw(st.characters().filter(lambda c: c != header[position]), label="char")
    tampered_header = header[:position] + replacement + header[position + 1 :]
    with pytest.raises(SignatureError):
        verify_request(body, tampered_header, key, now=now)


@settings(relaxed, max_examples=SOME)
@given(NOW, st.integers(-100_000, 100_000), st.integers(0, 1000))
def test_timestamp_tolerance_boundary(t, offset, tolerance):
    """A signature verifies iff |now - t| <= tolerance; otherwise the error says how far off t is."""
    header = request_signature(b"body", "k", now=t)
    now = t + offset
    if now < 0:
        return
    if abs(offset) <= tolerance:
        verify_request(b"body", header, "k", now=now, tolerance=tolerance)
    else:
        with pytest.raises(SignatureError) as caught:
            verify_request(b"body", header, "k", now=now, tolerance=tolerance)
        assert str(caught.value).startswith(f"stale timestamp: t={t} is {abs(offset)} s from now")


def test_stale_message_reports_distance_and_direction():
    """The stale-timestamp message names t, the distance in seconds, and past/future."""
    header = request_signature(b"x", "k", now=1000)
    with pytest.raises(SignatureError, match=r"t=1000 is 412 s from now \(in the past, tolerance 300 s\)"):
        verify_request(b"x", header, "k", now=1412)
    with pytest.raises(SignatureError, match=r"t=1000 is 500 s from now \(in the future"):
        verify_request(b"x", header, "k", now=500)


def test_header_parsing_is_tolerant_of_whitespace_order_and_several_v1():
    """Whitespace, item order, empty items, unknown schemes and several v1 entries are accepted."""
    good = hmac.new(b"k", b"1000.body", hashlib.sha256).hexdigest()
    other = "0" * 64
    header = f"  v1 = {other} ,, v0=legacy ,t=1000 , v1={good},v2=future "
    assert parse_signature_header(header) == (1000, [other, good])
    verify_request(b"body", header, "k", now=1000)  # one matching v1 among several is enough
    with pytest.raises(SignatureError, match="signature mismatch"):
        verify_request(b"body", f"t=1000,v1={other}", "k", now=1000)


@pytest.mark.parametrize(
    "header, reason",
    [
        ("", "no 't' item"),
        ("t=1000", "no 'v1' item"),
        ("v1=" + "a" * 64, "no 't' item"),
        ("t=1000,t=1000,v1=" + "a" * 64, "more than one 't'"),
        ("t=-5,v1=" + "a" * 64, "not a unix time"),
        ("t=+5,v1=" + "a" * 64, "not a unix time"),
        ("t=1_000,v1=" + "a" * 64, "not a unix time"),
        ("t=\u0661\u0662,v1=" + "a" * 64, "not a unix time"),
        ("t=1e3,v1=" + "a" * 64, "not a unix time"),
        ("t=" + "9" * 16 + ",v1=" + "a" * 64, "not a unix time"),
        ("t=1000,v1=" + "A" * 64, "not 64 lowercase hex"),
        ("t=1000,v1=" + "a" * 65, "not 64 lowercase hex"),
        ("t=1000,junk,v1=" + "a" * 64, "is not 'name=value'"),
        ("t=1000,=x,v1=" + "a" * 64, "is not 'name=value'"),
        ("t=1000,v1=" + "a" * 64 + "," * 5000, "characters, limit"),
    ],
)
def test_malformed_headers(header, reason):
    """Malformed X-AOP-Signature values raise SignatureError naming what is wrong."""
    with pytest.raises(SignatureError, match="malformed signature header") as caught:
        parse_signature_header(header)
    assert reason in str(caught.value)
    with pytest.raises(SignatureError):
        verify_request(b"", header, "k", now=1000)


def test_missing_header_and_bad_arguments():
    """No header raises SignatureError; a non-bytes body or a bad now raise ValidationError."""
    with pytest.raises(SignatureError, match="missing signature: no X-AOP-Signature header"):
        verify_request(b"x", None, "k", now=1000)
    with pytest.raises(ValidationError) as caught:
        request_signature("text", "k", now=1000)  # type: ignore[arg-type]
    assert caught.value.field == "body"
    for bad_now in (float("nan"), float("inf"), -1, "1000", True):
        with pytest.raises(ValidationError) as caught:
            request_signature(b"x", "k", now=bad_now)  # type: ignore[arg-type]
        assert caught.value.field == "now"


def test_bytes_like_bodies_sign_like_bytes():
    """bytearray and memoryview bodies give the same header as bytes."""
    header = request_signature(b"abc", "k", now=7)
    assert request_signature(bytearray(b"abc"), "k", now=7) == header
    assert request_signature(memoryview(b"abc"), "k", now=7) == header
    verify_request(bytearray(b"abc"), header, "k", now=7)


def test_verification_is_constant_time_compare(monkeypatch):
    """verify_event and verify_request compare with hmac.compare_digest (recorded via a spy)."""
    import aop_client.signing as signing

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((type(a), type(b)))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    verify_event(sign_event({"a": 1}, "k"), "k")
    verify_request(b"x", request_signature(b"x", "k", now=5), "k", now=5)
    assert calls == [(bytes, bytes), (bytes, bytes)]


def test_random_events_with_random_mutations_of_one_field_fail():
    """Changing any single top-level or payload value of a signed event breaks verification."""
    rng = random.Random(1234)
    event = sign_event(
        {"event_id": "e", "run_id": "r", "agent_id": 1, "seq": 3, "t": "2025-12-05T10:00:00.000Z",
         "type": "reasoning", "payload": {"goal": "g", "steps": [{"confidence": 0.95}]}},
        "key",
    )
    for field in [k for k in event if k != "sig"]:
        tampered = dict(event)
        tampered[field] = [tampered[field], rng.random()]
        with pytest.raises(SignatureError, match="signature mismatch"):
            verify_event(tampered, "key")


@settings(relaxed, max_examples=SOME)
@given(st.floats(min_value=2.0**53, max_value=1e300).map(float.__floor__).map(float), st.booleans())
def test_integral_doubles_beyond_2_53_verify_after_a_json_round_trip(number, negative):
    """1e20 is signed as 100000000000000000000; parsed back as an int it still verifies."""
    number = -number if negative else number
    signed_bytes = signed_body({"payload": {"x": number}}, "k")[1]
    parsed = json.loads(signed_bytes)
    if abs(number) < 1e21:
        assert type(parsed["payload"]["x"]) is int
    verify_event(parsed, "k")


def test_integers_no_double_is_written_as_stay_unverifiable():
    """An int that RFC 8785 never writes (2**53 + 1) makes the event unverifiable, not silently rounded."""
    assert large_integers_as_doubles([2**53 + 1, 2**53, 10**400]) == [2**53 + 1, float(2**53), 10**400]
    with pytest.raises(SignatureError, match="unverifiable event"):
        verify_event({"x": 2**53 + 1, "sig": "v1=" + "a" * 64}, "k")


@settings(relaxed, max_examples=SOME)
@given(st.one_of(st.binary(min_size=1, max_size=200), st.text(min_size=1, max_size=100).filter(
    lambda k: not any("\ud800" <= c <= "\udfff" for c in k))), st.binary(max_size=500))
def test_precomputed_hmac_equals_stdlib_hmac_for_every_key_length(key, message):
    """The cached-pad HMAC equals hmac.digest for short, block-sized and longer-than-block keys."""
    from aop_client.signing import _hmac_sha256_hex

    raw = key.encode() if isinstance(key, str) else key
    assert _hmac_sha256_hex(key, message) == hmac.digest(raw, message, "sha256").hex()
    assert _hmac_sha256_hex(bytearray(raw), message) == hmac.digest(raw, message, "sha256").hex()


def test_hmac_key_lengths_around_the_block_size():
    """Keys of 63, 64, 65 and 1000 bytes (hashed first per RFC 2104) sign like the stdlib."""
    from aop_client.signing import _hmac_sha256_hex

    for length in (1, 63, 64, 65, 1000):
        key = bytes(range(256)) * 4
        key = key[:length]
        assert _hmac_sha256_hex(key, b"msg") == hmac.digest(key, b"msg", "sha256").hex()


def test_read_only_and_subclassed_mappings_sign_like_dicts():
    """A MappingProxyType or dict subclass event signs and verifies exactly like the equal plain dict."""
    from types import MappingProxyType

    class EventDict(dict):
        """A dict subclass."""

    event = {"seq": 2, "payload": {"x": [1, 0.5]}}
    expected = event_signature(event, "k")
    assert event_signature(MappingProxyType(event), "k") == expected
    assert signed_body(EventDict(event), "k") == signed_body(event, "k")
    verify_event(MappingProxyType(dict(event, sig=expected)), "k")
