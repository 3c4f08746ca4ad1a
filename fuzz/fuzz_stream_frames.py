"""Fuzz harness for the stream's parsers: server ack frames, event framing and raw WebSocket frames.

Invariant: each call returns a valid value or raises ValidationError, never
anything else. Examples per test from env AOP_FUZZ_EXAMPLES (default 200).
"""

from __future__ import annotations

import os

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from aop_client.errors import ValidationError
from aop_client.streaming.frames import Ack, Nack, OutgoingEvent, encode_event, parse_server_frame
from aop_client.streaming.ws_codec import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameReader

FUZZ = settings(max_examples=int(os.environ.get("AOP_FUZZ_EXAMPLES", "200")), deadline=None, suppress_health_check=list(HealthCheck))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["ack", "nack", "reason", "event_id", "run_id", "x"]), inner, max_size=4)),
    max_leaves=12,
)
raw_inputs = st.one_of(st.binary(max_size=200), st.text(max_size=200), json_values.map(orjson.dumps))


@FUZZ
@given(raw_inputs)
def fuzz_parse_server_frame(raw: bytes | str) -> None:
    """parse_server_frame returns an Ack/Nack with a non-empty id or raises ValidationError."""
    try:
        frame = parse_server_frame(raw)
    except ValidationError:
        return
    assert isinstance(frame, (Ack, Nack)) and isinstance(frame.event_id, str) and frame.event_id


@FUZZ
@given(st.one_of(raw_inputs, json_values))
def fuzz_encode_event(raw: object) -> None:
    """encode_event returns a one-line OutgoingEvent whose ids are in its body, or raises ValidationError."""
    try:
        framed = encode_event(raw)  # type: ignore[arg-type]
    except ValidationError:
        return
    assert isinstance(framed, OutgoingEvent) and b"\n" not in framed.body
    envelope = orjson.loads(framed.body)
    assert envelope["event_id"] == framed.event_id and envelope["run_id"] == framed.run_id


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def fuzz_frame_reader(chunks: list[bytes]) -> None:
    """FrameReader.feed returns (opcode, bytes) messages with known opcodes, or raises ValidationError."""
    reader = FrameReader(max_message=4096)
    try:
        for chunk in chunks:
            for opcode, payload in reader.feed(chunk):
                assert opcode in (OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG) and isinstance(payload, bytes)
    except ValidationError:
        return
