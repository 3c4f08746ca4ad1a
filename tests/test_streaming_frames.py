"""Tests of the pure streaming rules: event framing, server frames, URLs and reconnect timing."""

from __future__ import annotations

import os
import uuid

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from aop_client.errors import ConfigError, ValidationError
from aop_client.streaming.frames import (
    Ack,
    Nack,
    encode_ack,
    encode_event,
    encode_nack,
    http_stream_url,
    parse_server_frame,
    reconnect_delay,
    websocket_url,
)

EXAMPLES = settings(max_examples=int(os.environ.get("AOP_STREAM_EXAMPLES", "60")), deadline=None)
ids = st.uuids().map(str)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=20))
payloads = st.dictionaries(st.text(max_size=8), json_scalars, max_size=5)


def _event(event_id: str, run_id: str, payload: dict) -> dict:
    return {"event_id": event_id, "run_id": run_id, "seq": 1, "t": "2025-12-05T10:00:00.000Z", "type": "custom", "payload": payload}


@EXAMPLES
@given(ids, ids, payloads)
def test_encode_event_dict_and_bytes_agree(event_id: str, run_id: str, payload: dict) -> None:
    """A dict and its JSON bytes frame to the same ids, and the body parses back to the envelope."""
    event = _event(event_id, run_id, payload)
    from_dict = encode_event(event)
    from_bytes = encode_event(orjson.dumps(event))
    assert (from_dict.event_id, from_dict.run_id) == (event_id, run_id) == (from_bytes.event_id, from_bytes.run_id)
    assert orjson.loads(from_dict.body) == event == orjson.loads(from_bytes.body)
    assert b"\n" not in from_dict.body


def test_encode_event_rewrites_multiline_json_to_one_line() -> None:
    """Pretty-printed input becomes a single NDJSON line with the same content."""
    event = _event(str(uuid.uuid4()), str(uuid.uuid4()), {"a": [1, 2]})
    framed = encode_event(orjson.dumps(event, option=orjson.OPT_INDENT_2))
    assert b"\n" not in framed.body and orjson.loads(framed.body) == event


@pytest.mark.parametrize(
    "bad, field",
    [
        (b"not json", "event"),
        (b"[1, 2]", "event"),
        ({"run_id": "r"}, "event_id"),
        ({"event_id": "e", "run_id": 7}, "run_id"),
        ({"event_id": "", "run_id": "r"}, "event_id"),
        (12, "event"),
    ],
)
def test_encode_event_refuses_bad_input_naming_the_field(bad: object, field: str) -> None:
    """Inputs without a usable event_id/run_id raise ValidationError naming the field."""
    with pytest.raises(ValidationError) as info:
        encode_event(bad)  # type: ignore[arg-type]
    assert info.value.field == field


@EXAMPLES
@given(ids, st.text(max_size=40))
def test_server_frames_round_trip(event_id: str, reason: str) -> None:
    """encode_ack/encode_nack parse back to the same Ack/Nack."""
    assert parse_server_frame(encode_ack(event_id)) == Ack(event_id)
    assert parse_server_frame(encode_nack(event_id, reason)) == Nack(event_id, reason)
    assert parse_server_frame(encode_ack(event_id).encode()) == Ack(event_id)


@pytest.mark.parametrize("frame", ["", "{", "[]", '{"ok": 1}', '{"ack": 5}', '{"nack": ""}', '"ack"'])
def test_parse_server_frame_refuses_garbage(frame: str) -> None:
    """Frames that are not an ack or nack object raise ValidationError."""
    with pytest.raises(ValidationError):
        parse_server_frame(frame)


@EXAMPLES
@given(st.integers(0, 200), st.floats(0, 1, exclude_max=True), st.floats(0.001, 1), st.floats(1, 60))
def test_reconnect_delay_is_full_jitter_within_cap(attempt: int, u: float, base: float, cap: float) -> None:
    """The delay is u * min(cap, base * 2**attempt): never negative, never above the cap."""
    delay = reconnect_delay(attempt, u, base=base, cap=cap)
    assert 0.0 <= delay <= cap
    assert delay == pytest.approx(u * min(cap, base * 2.0 ** min(attempt, 1000)))


def test_reconnect_delay_grows_with_attempts() -> None:
    """For the same draw, later attempts wait longer until the cap."""
    delays = [reconnect_delay(a, 0.5, base=0.1, cap=5.0) for a in range(10)]
    assert delays == sorted(delays) and delays[0] == pytest.approx(0.05) and delays[-1] == pytest.approx(2.5)


def test_websocket_url_appends_run_id() -> None:
    """The run URL is streaming_url + run_id, with or without the trailing slash."""
    assert websocket_url("ws://h:1/ws/trace/", "abc") == "ws://h:1/ws/trace/abc"
    assert websocket_url("wss://h/ws/trace", "abc") == "wss://h/ws/trace/abc"


@pytest.mark.parametrize("url, run_id, error", [("http://h/ws/trace/", "r", ConfigError), ("ws://h/ws/", "a/b", ValidationError), ("ws://h/", "", ValidationError)])
def test_websocket_url_refuses_bad_parts(url: str, run_id: str, error: type) -> None:
    """A non-ws URL or a run_id that would change the path is refused."""
    with pytest.raises(error):
        websocket_url(url, run_id)


def test_http_stream_url_variants() -> None:
    """base_url wins; an http URL is completed; a ws URL maps to its http twin."""
    assert http_stream_url(None, "http://h:8000/") == "http://h:8000/api/v1/traces/stream"
    assert http_stream_url("http://h:8000", None) == "http://h:8000/api/v1/traces/stream"
    assert http_stream_url("http://h/api/v1/traces/stream", None) == "http://h/api/v1/traces/stream"
    assert http_stream_url("wss://h:9/ws/trace/", None) == "https://h:9/api/v1/traces/stream"
    with pytest.raises(ConfigError):
        http_stream_url("ftp://h", None)
