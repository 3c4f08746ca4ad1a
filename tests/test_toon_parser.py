"""parse_toon / to_toon / ToonBuilder: format detection, round trips, accepted shapes and errors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import strategies as S  # noqa: E402

from aop_client import parse_toon as exported_parse_toon  # noqa: E402
from aop_client.errors import ToonParseError, ValidationError  # noqa: E402
from aop_client.toon_parser import ToonBuilder, detect_format, is_toon, parse_toon, to_toon  # noqa: E402

HAND_WRITTEN = {"seq": 1, "t": "2025-12-05T10:00:00Z", "type": "final_output", "payload": {"text": "done"}}


def test_brief_parse_and_serialize_snippet_with_the_dots_filled_in():
    """The brief's snippet works: a hand-written JSON event parses and to_toon(pretty=True) reads back."""
    event = exported_parse_toon('{"seq": 1, "t": "2025-12-05T10:00:00Z", "type": "final_output", '
                                '"payload": {"text": "done"}}')
    assert event == HAND_WRITTEN
    toon_str = to_toon(event, pretty=True)
    assert toon_str.startswith("seq: 1\n") and parse_toon(toon_str) == event


def test_brief_toon_builder_snippet_runs_as_written():
    """The brief's ToonBuilder snippet (including its [...] placeholders) runs and builds the documented shapes."""
    reasoning = ToonBuilder.build_reasoning_payload(
        goal="Analyze customer request",
        steps=[{"step_id": "s1", "description": "Parse input", "confidence": 0.9}],
        safety_checks=[{"name": "input_validation", "result": "passed"}],
        uncertainty="low",
    )
    action_req = ToonBuilder.build_action_request_payload(
        action="search_database", params={"query": "customer_id:123"}, context={"timeout": 5000})
    action_resp = ToonBuilder.build_action_response_payload(
        status="ok", data={"results": [...]}, meta={"latency_ms": 245})
    final = ToonBuilder.build_final_output_payload(
        text="Found 3 matching records", structured={"count": 3, "records": [...]})
    assert reasoning["uncertainty"] == "low" and reasoning["steps"][0]["confidence"] == 0.9
    assert action_req == {"action": "search_database", "params": {"query": "customer_id:123"},
                          "context": {"timeout": 5000}}
    assert action_resp == {"status": "ok", "data": {"results": ["..."]}, "meta": {"latency_ms": 245}}
    assert final == {"text": "Found 3 matching records", "structured": {"count": 3, "records": ["..."]}}


def test_error_and_custom_builders():
    """build_error_payload and build_custom_payload include optional fields only when given."""
    assert ToonBuilder.build_error_payload("m") == {"message": "m"}
    assert ToonBuilder.build_error_payload(ValueError("v"), details={"k": 1}) == {
        "message": "v", "error_type": "ValueError", "details": {"k": 1}}
    assert ToonBuilder.build_custom_payload() == {}
    data = {"email": "a@example.com", "items": (1, 2)}
    payload = ToonBuilder.build_custom_payload(data)
    assert payload == {"email": "a@example.com", "items": [1, 2]} and payload is not data  # the object itself, copied
    with pytest.raises(ValidationError) as info:
        ToonBuilder.build_custom_payload("n")
    assert info.value.field == "payload"
    with pytest.raises(ValidationError) as info:
        ToonBuilder.custom_name("")
    assert info.value.field == "name"


@pytest.mark.parametrize("text,expected", [
    ('{"seq": 1}', "json"), ("  \n[1, 2]", "json"), ("[]", "json"), ('["a"]', "json"),
    ("[2]: a,b", "toon"), ("[1]{a}:\n  1", "toon"), ("[2|]: a|b", "toon"), ("seq: 1", "toon"),
    ('"seq": 1', "toon"), ("\ufeff{}", "json"),
])
def test_detect_format(text, expected):
    """JSON starts with { or with [ not followed by a TOON root header; everything else is TOON."""
    assert detect_format(text) == expected
    assert is_toon(text) == (expected == "toon")
    assert is_toon(text.encode()) == (expected == "toon")


def test_parse_toon_reads_toon_notation_of_a_hand_written_event():
    """TOON text with only the required fields parses to the event, values typed per TOON."""
    text = 'seq: 3\nt: "2025-12-05T10:00:00.000Z"\ntype: action_request\npayload:\n  action: search\n  params:\n    q: "12"'
    assert parse_toon(text) == {"seq": 3, "t": "2025-12-05T10:00:00.000Z", "type": "action_request",
                                "payload": {"action": "search", "params": {"q": "12"}}}


def test_parse_toon_accepts_bytes_and_a_bom():
    """UTF-8 bytes and a leading byte-order mark are accepted."""
    text = "\ufeff" + json.dumps(HAND_WRITTEN)
    assert parse_toon(text.encode("utf-8")) == HAND_WRITTEN
    assert parse_toon(bytearray(text.encode("utf-8"))) == HAND_WRITTEN


def test_parse_toon_returns_events_of_a_replay_file():
    """The brief's replay-file object (run_id, metadata, events) yields its events list."""
    events = [dict(HAND_WRITTEN, seq=1), dict(HAND_WRITTEN, seq=2)]
    replay = {"run_id": "550e8400-e29b-41d4-a716-446655440000", "timestamp": "2025-12-05T10:30:00.000Z",
              "event_count": 2, "metadata": {"agent_id": 123, "seed": 42, "stats": {}}, "events": events}
    assert parse_toon(json.dumps(replay)) == events
    assert parse_toon(to_toon(replay)) == events
    assert parse_toon(to_toon(replay, pretty=True)) == events


def test_parse_toon_returns_empty_list_for_empty_trace():
    """An empty list (JSON or TOON) is an empty trace."""
    assert parse_toon("[]") == []
    assert parse_toon(to_toon([])) == []


def test_large_exact_doubles_survive_the_toon_round_trip():
    """Doubles that TOON writes as long integers (1e20, 1e300) read back as the same floats."""
    event = dict(HAND_WRITTEN, payload={"big": 1e20, "huge": 1e300, "tiny": 5e-324, "neg_zero": -0.0})
    assert parse_toon(to_toon(event)) == event


BAD_INPUTS = [
    ("", None, "empty"),
    ("   \n ", None, "empty"),
    ('{"seq": 1,', 1, "Expecting"),
    ('{"seq": 1, "seq": 2, "t": "2025-12-05T10:00:00Z", "type": "custom", "payload": {}}', None, "duplicate key"),
    ('{"seq": NaN}', None, "NaN"),
    ('{"seq": Infinity}', None, "Infinity"),
    ("x[2]: 1", 1, "length"),
    ("a:\n  b: 1\n   c: 2", 3, "ndent"),
    ('seq: "1"\nt: 2025-12-05T10:00:00Z\ntype: custom\npayload:\n  a: 1', None, "seq"),
    ("42", None, "expected an event object"),
    ('"just a string"', None, "expected an event object"),
    ('{"events": 5}', None, '"events" must be a list'),
    ('[{"seq": 1}]', None, "invalid event [0]"),
    ('{"seq": 1, "t": "2025-12-05T10:00:00Z", "type": "custom", "payload": {"x": 1e999}}', None, "payload.x"),
    ('{"seq": 1, "t": "2025-12-05T10:00:00Z", "type": "custom", "payload": {"x": 9007199254740993}}', None,
     "9007199254740993"),
    ('{"seq": 1, "t": "2025-12-05T10:00:00+02:00", "type": "custom", "payload": {}}', None, "t:"),
    ('{"seq": 1, "t": "2025-12-05T10:00:00Z", "type": "reasoning", "payload": {"uncertainty": "huge"}}', None,
     "payload.uncertainty"),
    ("[" * 50000, None, "deep"),
    ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 3000)), None, ""),
    (b"\xff\xfe", None, "UTF-8"),
    (None, None, "expected str or bytes"),
    (12, None, "expected str or bytes"),
]


@pytest.mark.parametrize("text,line,needle", BAD_INPUTS, ids=[repr(b[0])[:40] for b in BAD_INPUTS])
def test_bad_input_raises_toon_parse_error_with_reason(text, line, needle):
    """Every kind of bad input raises ToonParseError (never another type), with line and reason when known."""
    with pytest.raises(ToonParseError) as info:
        parse_toon(text)
    assert needle in str(info.value)
    if line is not None:
        assert info.value.line == line and f"line {line}" in str(info.value)


def test_json_syntax_errors_carry_line_and_column():
    """A JSON syntax error reports its line and column."""
    with pytest.raises(ToonParseError) as info:
        parse_toon('{\n  "seq": 1\n  "t": 2}')
    assert (info.value.line, info.value.column, info.value.source_format) == (3, 3, "json")


def test_oversized_event_is_a_parse_error():
    """An event above max_event_bytes raises ToonParseError naming the bound."""
    big = dict(HAND_WRITTEN, payload={"text": "x" * 2000})
    with pytest.raises(ToonParseError, match="max_event_bytes=1000"):
        parse_toon(json.dumps(big), max_event_bytes=1000)


@pytest.mark.parametrize("bad,field", [
    ({"x": math.nan}, "value.x"), ({"s": {1}}, "value.s"), ({"b": b"1"}, "value.b"), ({"n": 2**60}, "value.n"),
])
def test_to_toon_refuses_values_that_are_not_json(bad, field):
    """to_toon raises ValidationError naming the path instead of silently turning NaN into null."""
    with pytest.raises(ValidationError) as info:
        to_toon(dict(HAND_WRITTEN, payload=bad))
    assert info.value.field == field.replace("value.", "value.payload.")


def test_pretty_changes_layout_not_content():
    """pretty=True indents by 4 and puts payload last; pretty=False keeps the given key order at 2."""
    event = {"payload": {"a": {"b": 1}}, "type": "custom", "t": "2025-12-05T10:00:00.000Z", "seq": 2}
    compact, pretty = to_toon(event), to_toon(event, pretty=True)
    assert compact.splitlines()[0] == "payload:" and "\n    b: 1" in compact
    assert pretty.splitlines()[:3] == ["seq: 2", 't: "2025-12-05T10:00:00.000Z"', "type: custom"]
    assert "\n        b: 1" in pretty
    assert parse_toon(compact) == parse_toon(pretty) == event


@S.PROPERTY_SETTINGS
@given(S.events(), st.booleans())
def test_toon_round_trip_of_generated_events(event, pretty):
    """parse_toon(to_toon(e, pretty)) == e for valid events with tricky nested payloads."""
    assert parse_toon(to_toon(event, pretty=pretty)) == event


@S.PROPERTY_SETTINGS
@given(S.events())
def test_json_text_round_trip_of_generated_events(event):
    """parse_toon(json.dumps(e)) == e, compact or indented."""
    assert parse_toon(json.dumps(event)) == event
    assert parse_toon(json.dumps(event, indent=2, ensure_ascii=False)) == event


@S.PROPERTY_SETTINGS
@given(S.traces, st.booleans())
def test_trace_round_trip_returns_the_list(trace, pretty):
    """A list of events round-trips through to_toon/parse_toon as a list, in order."""
    assert parse_toon(to_toon(trace, pretty=pretty)) == trace
