"""The event model: ids, timestamps, envelope checks, the JSON walk and the size bound."""

from __future__ import annotations

import math
import re
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import strategies as S  # noqa: E402

from aop_client import events as ev  # noqa: E402
from aop_client.errors import ValidationError  # noqa: E402
from aop_client.protocol import segment  # noqa: E402

CANONICAL_T = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def _event(**changes):
    event = ev.make_event(
        run_id="550e8400-e29b-41d4-a716-446655440000",
        agent_id=123,
        seq=1,
        type="final_output",
        payload={"text": "done"},
        now=1764928800.0,
        event_id="6ba7b810-9dad-41d1-80b4-00c04fd430c8",
    )
    event.update(changes)
    return event


def test_new_ids_are_distinct_uuid4_strings():
    """new_event_id/new_run_id return distinct version-4 UUID strings."""
    ids = {ev.new_event_id() for _ in range(100)} | {ev.new_run_id() for _ in range(100)}
    assert len(ids) == 200
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)


def test_format_timestamp_matches_protocol_example():
    """format_timestamp writes RFC 3339 UTC with milliseconds and Z, as in protocol-v1."""
    assert ev.format_timestamp(1764928800.0) == "2025-12-05T10:00:00.000Z"
    assert ev.format_timestamp(1764928800.25) == "2025-12-05T10:00:00.250Z"
    assert ev.format_timestamp(0) == "1970-01-01T00:00:00.000Z"


def test_format_timestamp_rounds_into_next_second():
    """A time within half a millisecond of the next second rolls over correctly."""
    assert ev.format_timestamp(1764928800.9999) == "2025-12-05T10:00:01.000Z"


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, 253402300800.0, "1764928800", None])
def test_format_timestamp_rejects_unwritable_times(bad):
    """Times outside 1970..9999, NaN, infinities and non-numbers raise ValidationError on field t."""
    with pytest.raises(ValidationError) as info:
        ev.format_timestamp(bad)
    assert info.value.field == "t"


@S.PROPERTY_SETTINGS
@given(S.millis)
def test_timestamp_round_trip_is_exact_to_the_millisecond(ms):
    """parse_timestamp(format_timestamp(x)) recovers x to the millisecond, in canonical form."""
    text = ev.format_timestamp(ms / 1000)
    assert CANONICAL_T.fullmatch(text)
    assert round(ev.parse_timestamp(text) * 1000) == ms


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2025-12-05T10:00:00Z", 1764928800.0),
        ("2025-12-05T10:00:00.5Z", 1764928800.5),
        ("2025-12-05t10:00:00.123456z", 1764928800.123456),
        ("2025-12-05T10:00:00+00:00", 1764928800.0),
        ("2024-02-29T00:00:00.000Z", 1709164800.0),
    ],
)
def test_parse_timestamp_accepts_rfc3339_utc_forms(text, expected):
    """parse_timestamp accepts Z/+00:00 and any fraction length, returning unix seconds."""
    assert ev.parse_timestamp(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    ["2025-12-05 10:00:00Z", "2025-12-05T10:00:00", "2025-12-05T10:00:00+01:00", "2025-02-30T00:00:00Z",
     "2025-13-01T00:00:00Z", "2025-12-05T24:00:00Z", "2025-12-05T10:00:00.Z", "", 5],
)
def test_parse_timestamp_rejects_other_forms(text):
    """Non-UTC offsets, missing zone, impossible dates and non-strings raise ValidationError on t."""
    with pytest.raises(ValidationError) as info:
        ev.parse_timestamp(text)
    assert info.value.field == "t"


def test_make_event_has_protocol_key_order_and_values():
    """make_event builds the envelope in protocol order with the given values."""
    event = _event()
    assert list(event) == ["event_id", "run_id", "agent_id", "seq", "t", "type", "payload"]
    assert event["t"] == "2025-12-05T10:00:00.000Z"
    ev.validate_event(event)


def test_make_event_assigns_a_fresh_event_id_when_none_given():
    """Without event_id, make_event assigns a new uuid4 each time."""
    a = ev.make_event(run_id=ev.new_run_id(), agent_id=1, seq=1, type="custom", payload={}, now=0)
    b = ev.make_event(run_id=a["run_id"], agent_id=1, seq=2, type="custom", payload={}, now=0)
    assert a["event_id"] != b["event_id"] and uuid.UUID(a["event_id"]).version == 4


BAD_ENVELOPES = [
    ("event_id", "not-a-uuid"),
    ("event_id", 12),
    ("run_id", "550e8400e29b41d4a716446655440000"),
    ("agent_id", "123"),
    ("agent_id", True),
    ("seq", 0),
    ("seq", 1.0),
    ("seq", True),
    ("t", "2025-12-05T10:00:00Z"),
    ("t", "2025-02-30T10:00:00.000Z"),
    ("t", 1764928800),
    ("type", "thought"),
    ("type", ["reasoning"]),
    ("payload", []),
    ("payload", "text"),
    ("sig", "v1=ABC"),
    ("sig", "v2=" + "0" * 64),
]


@pytest.mark.parametrize("field,value", BAD_ENVELOPES, ids=[f"{f}={v!r}" for f, v in BAD_ENVELOPES])
def test_validate_envelope_names_the_bad_field_and_value(field, value):
    """Each malformed envelope field raises ValidationError with that field and value in the message."""
    with pytest.raises(ValidationError) as info:
        ev.validate_envelope(_event(**{field: value}))
    assert info.value.field == field
    assert field in str(info.value) and repr(value)[:20] in str(info.value)


@pytest.mark.parametrize("field", ev.ENVELOPE_FIELDS)
def test_validate_envelope_requires_every_envelope_field(field):
    """Dropping any envelope field raises ValidationError naming it."""
    event = _event()
    del event[field]
    with pytest.raises(ValidationError) as info:
        ev.validate_envelope(event)
    assert info.value.field == field


def test_validate_envelope_rejects_non_mappings():
    """A list where an event should be raises ValidationError, not TypeError."""
    with pytest.raises(ValidationError):
        ev.validate_envelope([1, 2])


@S.PROPERTY_SETTINGS
@given(S.events())
def test_generated_events_pass_every_validation(event):
    """Every generated valid event passes validate_envelope, validate_event and validate_imported_event."""
    ev.validate_envelope(event)
    ev.validate_event(event)
    ev.validate_imported_event(event)


BAD_VALUES = [
    (math.nan, "NaN"),
    (-math.inf, "NaN and infinities"),
    ({1, 2}, "set"),
    (b"raw", "bytes"),
    (2**53 + 1, "2**53"),
    (-(2**53) - 1, "2**53"),
    (object(), "object"),
    ("\ud800", "Unicode"),
    ({1: "x"}, "keys must be strings"),
    ({"\udc80": 1}, "key is not valid Unicode"),
]


def _insert_at(value, path, bad):
    """Return (copy of value with bad placed at the path, the path's text)."""
    if not path:
        return {"x": bad}, ".x"
    head, rest = path[0], path[1:]
    inner, text = _insert_at(None, rest, bad)
    if head is None:
        return [inner], "[0]" + text
    return {head: inner}, "." + head + text


@S.PROPERTY_SETTINGS
@given(st.lists(st.sampled_from(["a", "b_1", None]), max_size=6), st.sampled_from(BAD_VALUES))
def test_check_json_value_names_the_exact_path_of_a_bad_value(path, bad_and_reason):
    """A non-JSON value nested anywhere is reported with its full path, e.g. payload.a[0].b."""
    bad, reason = bad_and_reason
    value, text = _insert_at(None, path, bad)
    expected_field = "payload" + text
    if isinstance(bad, dict):  # a bad key: its own path segment, e.g. payload.x[1]
        expected_field += segment(next(iter(bad)))
    with pytest.raises(ValidationError) as info:
        ev.check_json_value(value)
    assert info.value.field == expected_field
    assert reason in str(info.value)
    with pytest.raises(ValidationError) as copied:
        ev.copy_json_value(value)
    assert copied.value.field == expected_field


def test_check_json_value_quotes_unusual_keys_in_the_path():
    """Keys that are not identifiers appear JSON-quoted in brackets."""
    with pytest.raises(ValidationError) as info:
        ev.check_json_value({"a b": [0, {"c": math.nan}]}, "payload")
    assert info.value.field == 'payload["a b"][1].c'


def test_check_json_value_refuses_excessive_nesting():
    """Nesting beyond MAX_JSON_DEPTH raises ValidationError instead of RecursionError."""
    value: object = 1
    for _ in range(ev.MAX_JSON_DEPTH + 5):
        value = [value]
    with pytest.raises(ValidationError, match="nesting"):
        ev.check_json_value(value)


@S.PROPERTY_SETTINGS
@given(S.json_values)
def test_copy_json_value_returns_an_equal_independent_copy(value):
    """copy_json_value accepts every JSON value and returns an equal deep copy sharing no containers."""
    ev.check_json_value(value)
    copy = ev.copy_json_value(value)
    assert copy == value
    assert orjson.dumps(copy) == orjson.dumps(value)
    if isinstance(value, (dict, list)):
        assert copy is not value


def test_copy_json_value_turns_tuples_into_lists_and_accepts_subclasses():
    """Tuples are JSON arrays (as in RFC 8785) and become lists; str/int subclasses are accepted."""

    class Name(str):
        pass

    assert ev.copy_json_value({"p": (1, (2, Name("x")))}) == {"p": [1, [2, "x"]]}
    ev.check_json_value({"p": (1, 2)})


def test_validate_payload_checks_reasoning_uncertainty_and_confidence():
    """Reasoning payloads need a known uncertainty level and step confidences in 0..1."""
    ev.validate_payload("reasoning", {"uncertainty": "medium", "steps": [{"confidence": 1}, {"confidence": 0.0}]})
    with pytest.raises(ValidationError) as info:
        ev.validate_payload("reasoning", {"steps": [{}, {"confidence": 1.01}]})
    assert info.value.field == "payload.steps[1].confidence"
    with pytest.raises(ValidationError) as info:
        ev.validate_payload("reasoning", {"uncertainty": "extreme"})
    assert info.value.field == "payload.uncertainty" and "extreme" in str(info.value)
    ev.validate_payload("custom", {"uncertainty": "extreme"})


@S.PROPERTY_SETTINGS
@given(st.integers(min_value=0, max_value=3000), st.integers(min_value=200, max_value=3000))
def test_validate_event_enforces_the_size_bound_exactly(text_len, limit):
    """An event is accepted exactly when len(orjson.dumps(event)) <= max_event_bytes."""
    event = _event(payload={"text": "x" * text_len})
    size = len(orjson.dumps(event))
    if size <= limit:
        ev.validate_event(event, max_event_bytes=limit)
    else:
        with pytest.raises(ValidationError) as info:
            ev.validate_event(event, max_event_bytes=limit)
        assert info.value.field == "event" and str(size) in str(info.value)


def test_validate_event_walks_extra_top_level_fields():
    """Extra top-level fields are allowed but must be JSON; the error names the field path."""
    ev.validate_event(_event(trace_tags=["a", "b"]))
    with pytest.raises(ValidationError) as info:
        ev.validate_event(_event(trace_tags={"k": {1, 2}}))
    assert info.value.field == "trace_tags.k"


def test_validate_event_rejects_bad_payload_values_with_path():
    """validate_event reports a NaN inside the payload with its full path."""
    with pytest.raises(ValidationError) as info:
        ev.validate_event(_event(payload={"steps": [{"confidence": math.nan}]}))
    assert info.value.field == "payload.steps[0].confidence"


def test_validate_imported_event_requires_only_seq_t_type_payload():
    """A hand-written event needs seq, t, type, payload; t may omit milliseconds."""
    ev.validate_imported_event({"seq": 1, "t": "2025-12-05T10:00:00Z", "type": "custom", "payload": {}})
    for field in ("seq", "t", "type", "payload"):
        event = {"seq": 1, "t": "2025-12-05T10:00:00Z", "type": "custom", "payload": {}}
        del event[field]
        with pytest.raises(ValidationError) as info:
            ev.validate_imported_event(event)
        assert info.value.field == field


def test_validate_imported_event_checks_optional_identity_fields_when_present():
    """event_id, run_id, agent_id and sig are optional, but checked when present."""
    base = {"seq": 1, "t": "2025-12-05T10:00:00Z", "type": "custom", "payload": {}}
    for field, bad in [("event_id", "x"), ("run_id", 5), ("agent_id", "7"), ("sig", "bad")]:
        with pytest.raises(ValidationError) as info:
            ev.validate_imported_event({**base, field: bad})
        assert info.value.field == field


def test_generated_ids_are_random_version4_uuids():
    """new_event_id/new_run_id give canonical uuid4 text that uuid.UUID reads back unchanged, never repeating."""
    import uuid as _uuid

    from aop_client.events import new_event_id, new_run_id

    seen = set()
    for make in (new_event_id, new_run_id) * 500:
        text = make()
        parsed = _uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == _uuid.RFC_4122
        seen.add(text)
    assert len(seen) == 1000
