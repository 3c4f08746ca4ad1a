"""The collector's fast paths agree with the general code.

verify_parsed_event with verify_event, verified_bodies with verify_parsed_event,
event_verdict with event_refusal, judge_events with event_verdict.
"""

from __future__ import annotations

import json
import os

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aop_client.collector.protocol import event_refusal, event_verdict, judge_events
from aop_client.errors import SignatureError
from aop_client.signing import signed_body, verified_bodies, verify_event, verify_parsed_event

SOAK = os.environ.get("AOP_SOAK") == "1"
PROPS = settings(max_examples=2_000 if SOAK else 150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KEY = "org-salt"
TEXT = st.one_of(
    st.text(alphabet=st.one_of(st.sampled_from(["a", "\x00", '"', "\\", "\ue000", "\U0001f600"]),
                               st.characters(blacklist_categories=("Cs",))), max_size=10),
    st.sampled_from([":1.0,", "x:e-5]", "[2.0}"]),  # text that looks like the tokens the fast path looks for
)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**66), 2**66) | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=15,
)
UUIDS = st.uuids().map(str)
# Envelope values: mostly valid, sometimes wrong in type, length, alphabet or range.
ENVELOPE = {
    "event_id": st.one_of(UUIDS, UUIDS.map(str.upper), UUIDS.map(lambda u: u[:-1] + "g"), UUIDS.map(lambda u: u + "0"),
                          UUIDS.map(lambda u: u.replace("-", "_", 1)), st.integers(), st.none()),
    "run_id": st.one_of(UUIDS, UUIDS.map(lambda u: "\u0661" + u[1:]), VALUES),
    "agent_id": st.one_of(st.integers(-(2**40), 2**40), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), TEXT),
    "seq": st.one_of(st.integers(1, 2**63 - 1), st.integers(-3, 0), st.just(2**63), st.booleans(), st.just(1.0)),
    "t": st.one_of(st.just("2025-12-05T10:00:00.000Z"), st.just("2025-12-05T10:00:00.000Z "),
                   st.just("2025-12-05 10:00:00.000Z"), st.just("\u0662025-12-05T10:00:00.000Z"),
                   st.just("2025-12-05T10:00:00.00Z"), TEXT),
    "type": st.one_of(st.sampled_from(["reasoning", "custom", "error", "Reasoning", ""]), VALUES),
    "payload": st.one_of(st.dictionaries(TEXT, VALUES, max_size=4), VALUES),
}
EVENTS = st.fixed_dictionaries({name: strategy for name, strategy in ENVELOPE.items()},
                               optional={"extra": VALUES})
SIGNATURES = st.one_of(st.none(), st.integers(), st.just("v1=" + "a" * 64), st.just("v1=" + "A" * 64),
                       st.just("v1=" + "\u00e9" * 64), TEXT)


def parsed(value):
    """value as the collector sees it: serialized by a client and parsed by orjson."""
    return orjson.loads(json.dumps(value))


def signed_and_parsed(event: dict, key: str = KEY) -> tuple[dict, bytes]:
    """(the event with its sig as parsed from its signed body, that body)."""
    body = signed_body(event, key)[1]
    return orjson.loads(body), body


def reason_of(check, event) -> str | None:
    """The SignatureError reason of check(event, KEY), or None when it passes."""
    try:
        check(event, KEY)
    except SignatureError as e:
        return e.reason
    return None


def signable(event: dict) -> bool:
    """True when the client's signer accepts the event (otherwise it can't be signed)."""
    try:
        signed_body(event, KEY)
    except ValueError:
        return False
    return True


@PROPS
@given(EVENTS)
@example({"event_id": "x", "payload": {"n": 1e20, "m": 2.0**60, "f": 1.0, "e": 1e-7}})
def test_verify_parsed_event_returns_the_signed_body_of_every_validly_signed_event(event):
    """A signed event parsed back verifies and yields exactly the body the client sent; the dict is unchanged."""
    event = parsed(event)
    if not signable(event):
        return
    received, body = signed_and_parsed(event)
    before = dict(received)
    assert verify_parsed_event(received, KEY) == body
    assert received == before
    verify_event(received, KEY)


@PROPS
@given(EVENTS, SIGNATURES, st.booleans())
def test_verify_parsed_event_fails_exactly_as_verify_event(event, sig, keep_sig_field):
    """On any parsed event, valid or tampered, with any sig value, both verifiers agree on the reason."""
    event = parsed(event)
    if keep_sig_field:
        event["sig"] = sig
    copy = dict(event)
    assert reason_of(verify_parsed_event, event) == reason_of(verify_event, event)
    assert event == copy


@PROPS
@given(EVENTS, st.sampled_from(["event_id", "payload", "seq", "extra"]), VALUES)
def test_tampering_after_signing_is_a_signature_mismatch(event, field, value):
    """Replacing one field of a signed event after signing fails both verifiers with the same reason."""
    event = parsed(event)
    if not signable(event):
        return
    received, _ = signed_and_parsed(event)
    received[field] = parsed([value])[0]
    expected = reason_of(verify_event, received)
    assert reason_of(verify_parsed_event, received) == expected
    same = orjson.dumps(received, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        orjson.loads(signed_body(event, KEY)[1]), option=orjson.OPT_SORT_KEYS)
    if same:  # (0 == False in Python, not in JSON: compare the JSON texts)
        assert expected is None


@pytest.mark.parametrize("number", [1e20, 2.0**60, 2.0**53, -1e300, 1e16])
def test_large_integral_doubles_verify_after_a_round_trip(number):
    """An integral double beyond 2**53, signed as a double and parsed back as an int, verifies and keeps its text."""
    received, body = signed_and_parsed({"payload": {"x": number}})
    if abs(number) < 2**64:
        assert type(received["payload"]["x"]) is int  # RFC 8785 wrote it without a fraction or exponent
    assert verify_parsed_event(received, KEY) == body
    assert orjson.loads(body) == received


def test_unverifiable_and_malformed_reasons():
    """Integers no double is written as are unverifiable; a malformed sig is named before anything else."""
    with pytest.raises(SignatureError, match="unverifiable event"):
        verify_parsed_event({"x": 2**53 + 1, "sig": "v1=" + "a" * 64}, KEY)
    with pytest.raises(SignatureError, match="malformed signature"):
        verify_parsed_event({"x": 2**53 + 1, "sig": "v1=" + "A" * 64}, KEY)
    with pytest.raises(SignatureError, match="malformed event"):
        verify_parsed_event(["x"], KEY)  # type: ignore[arg-type]
    event = {"x": 1, "sig": None}
    with pytest.raises(SignatureError, match="missing signature"):
        verify_parsed_event(event, KEY)
    assert event == {"x": 1, "sig": None}


@PROPS
@given(st.one_of(EVENTS, VALUES), st.booleans(), st.one_of(st.none(), SIGNATURES), st.booleans())
def test_event_verdict_agrees_with_event_refusal(event, salted, sig, sign):
    """Property: event_verdict's reason is event_refusal's; an accepted event's body parses back to the event."""
    event = parsed(event)
    key = KEY if salted else None
    if isinstance(event, dict):
        if sign and signable(event):
            event = signed_and_parsed(event)[0] if salted else event
        elif sig is not None:
            event["sig"] = sig
    reason, body = event_verdict(event, key)
    assert reason == event_refusal(event, key)
    if reason is None:
        assert orjson.loads(body) == event
    else:
        assert body is None and reason


def _batch_item(draw_event, salted: bool, sig, sign: bool):
    """One event of a batch as the collector parses it: signed, given a stray sig, or left alone."""
    event = parsed(draw_event)
    if isinstance(event, dict):
        if sign and signable(event):
            event = signed_and_parsed(event)[0] if salted else event
        elif sig is not None:
            event["sig"] = sig
    return event


BATCH_ITEMS = st.lists(st.tuples(st.one_of(EVENTS, VALUES), st.one_of(st.none(), SIGNATURES), st.booleans()),
                       max_size=6)


@PROPS
@given(BATCH_ITEMS)
def test_verified_bodies_decides_only_what_verify_parsed_event_accepts(items):
    """Property: a body from verified_bodies is verify_parsed_event's; events come back unchanged, sig last."""
    events = [_batch_item(event, True, sig, sign) for event, sig, sign in items]
    before = [orjson.dumps(e) if not isinstance(e, dict) else dict(e) for e in events]
    bodies = verified_bodies(events, KEY)
    assert len(bodies) == len(events)
    for event, earlier, body in zip(events, before, bodies):
        if isinstance(event, dict):
            assert event == earlier
            if "sig" in event:
                assert list(event)[-1] == "sig"
        if body is not None:
            assert verify_parsed_event(event, KEY) == body


def test_verified_bodies_takes_the_common_case_and_leaves_the_rest_undecided():
    """A well-signed event gets its client bytes; bad, missing or odd signatures get None, never an exception."""
    event = {"event_id": "0b7ac4d4-6f50-4f52-8f0f-5b0e6c6c0a11", "run_id": "1b7ac4d4-6f50-4f52-8f0f-5b0e6c6c0a11",
             "agent_id": 7, "seq": 3, "t": "2025-12-05T10:00:00.000Z", "type": "reasoning",
             "payload": {"goal": "g", "steps": [{"confidence": 0.95}]}}
    good, body = signed_and_parsed(event)
    tampered = dict(good, seq=4)
    unsigned = dict(event)
    none_sig = dict(event, sig=None)
    upper = dict(good, sig=good["sig"].upper().replace("V1=", "v1="))
    tiny = signed_and_parsed(dict(event, payload={"n": 1e-7}))[0]  # an exponent: the general path decides
    assert verified_bodies([good, tampered, unsigned, none_sig, upper, tiny, ["x"], 5], KEY) == [
        body, None, None, None, None, None, None, None]
    assert none_sig == dict(event, sig=None) and unsigned == event
    assert verify_parsed_event(tiny, KEY)  # ... and accepts it


@PROPS
@given(BATCH_ITEMS, st.booleans())
def test_judge_events_agrees_with_event_verdict(items, salted):
    """Property: judge_events accepts and rejects exactly as event_verdict does, event by event, in order."""
    key = KEY if salted else None
    events = [_batch_item(event, salted, sig, sign) for event, sig, sign in items]
    expected_accepted, expected_rejected = [], []
    for index, event in enumerate(events):
        reason, body = event_verdict(event, key)
        if reason is None:
            expected_accepted.append((event["event_id"], event["run_id"], event["seq"], event["agent_id"],
                                      event["type"], body))
        else:
            event_id = event.get("event_id") if isinstance(event, dict) else None
            expected_rejected.append({"event_id": event_id if isinstance(event_id, str) else None,
                                      "reason": f"events[{index}]: {reason}"})
    assert judge_events(events, key) == (expected_accepted, expected_rejected)


def test_event_verdict_accepts_a_typical_signed_event_and_names_each_bad_field():
    """A valid signed event is accepted with the client's bytes; each broken envelope field is named."""
    event = {"event_id": "0b7ac4d4-6f50-4f52-8f0f-5b0e6c6c0a11", "run_id": "1b7ac4d4-6f50-4f52-8f0f-5b0e6c6c0a11",
             "agent_id": 7, "seq": 3, "t": "2025-12-05T10:00:00.000Z", "type": "reasoning",
             "payload": {"goal": "g", "steps": [{"confidence": 0.95}]}}
    received, body = signed_and_parsed(event)
    assert event_verdict(received, KEY) == (None, body)
    for field, bad in [("event_id", "x"), ("run_id", 5), ("agent_id", True), ("seq", 0), ("t", "yesterday"),
                       ("type", "other"), ("payload", [])]:
        reason, stored = event_verdict(dict(received, **{field: bad}), KEY)
        assert stored is None and reason.startswith(field)
    reason, _ = event_verdict(dict(received, payload={"goal": "h", "steps": [{"confidence": 0.95}]}), KEY)
    assert reason == "sig: signature mismatch: 'sig' does not match the event content"
    # ids whose lengths trade a character (35 + 37) still add up to two UUIDs' worth: each is checked alone
    shifted = dict(received, event_id=received["event_id"][:-1], run_id=received["event_id"][-1] + received["run_id"])
    reason, stored = event_verdict(shifted, KEY)
    assert stored is None and reason.startswith("event_id")


def test_collector_process_gc_tuning_freezes_the_heap_and_widens_generation_0():
    """tune_gc_for_batches (run by the collector's own process) moves startup objects out of collection."""
    import subprocess
    import sys

    code = ("import gc; from aop_client.collector.cli import tune_gc_for_batches; tune_gc_for_batches(); "
            "print(gc.get_threshold()[0], gc.get_freeze_count() > 1000, gc.isenabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["50000", "True", "True"]
