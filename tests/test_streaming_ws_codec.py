"""Tests of the stream's WebSocket framing: client frames match RFC 6455 and server frames decode in any chunking."""

from __future__ import annotations

import os
import struct

import pytest
import websocket
from hypothesis import given, settings, strategies as st

from aop_client.errors import ValidationError
from aop_client.streaming.ws_codec import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    encode_client_frame,
    mask_payload,
)

EXAMPLES = settings(max_examples=int(os.environ.get("AOP_STREAM_EXAMPLES", "60")), deadline=None)
keys = st.binary(min_size=4, max_size=4)


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """An unmasked server frame, as a server writes it."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return bytes((first, 126)) + struct.pack("!H", size) + payload
    return bytes((first, 127)) + struct.pack("!Q", size) + payload


@EXAMPLES
@given(st.one_of(st.binary(max_size=300), st.integers(0, 70_000).map(lambda n: bytes(range(256)) * (n // 256))), keys)
def test_mask_is_its_own_inverse(payload: bytes, key: bytes) -> None:
    """Masking twice with the same key gives the payload back."""
    assert mask_payload(mask_payload(payload, key), key) == payload


@EXAMPLES
@given(st.sampled_from([OP_TEXT, OP_BINARY]), st.binary(max_size=300), keys)
def test_client_frames_match_websocket_client(opcode: int, payload: bytes, key: bytes) -> None:
    """encode_client_frame produces exactly the bytes websocket-client's ABNF writes for the same mask key."""
    frame = websocket.ABNF.create_frame(payload, opcode)
    frame.get_mask_key = lambda _n: key
    assert encode_client_frame(opcode, payload, key) == frame.format()


@pytest.mark.parametrize("size", [125, 126, 65535, 65536])
def test_client_frames_match_websocket_client_at_length_boundaries(size: int) -> None:
    """The 7-bit, 16-bit and 64-bit length encodings match websocket-client's at their boundaries."""
    payload, key = os.urandom(size), os.urandom(4)
    frame = websocket.ABNF.create_frame(payload, OP_BINARY)
    frame.get_mask_key = lambda _n: key
    assert encode_client_frame(OP_BINARY, payload, key) == frame.format()


@EXAMPLES
@given(
    st.lists(st.tuples(st.sampled_from([OP_TEXT, OP_BINARY, OP_PING, OP_PONG]), st.binary(max_size=125)), max_size=12),
    st.lists(st.integers(1, 50), min_size=1, max_size=10),
)
def test_reader_decodes_any_chunking(messages: list[tuple[int, bytes]], cuts: list[int]) -> None:
    """However the byte stream is cut, the reader yields the same messages in order."""
    wire = b"".join(server_frame(op, data) for op, data in messages)
    reader = FrameReader()
    out: list[tuple[int, bytes]] = []
    position, i = 0, 0
    while position < len(wire):
        step = cuts[i % len(cuts)]
        out += reader.feed(wire[position : position + step])
        position += step
        i += 1
    assert out == messages


def test_reader_reassembles_fragments_around_control_frames() -> None:
    """A fragmented text message is joined; a ping between its fragments comes out on its own."""
    wire = server_frame(OP_TEXT, b"ab", fin=False) + server_frame(OP_PING, b"p") + server_frame(OP_CONT, b"cd")
    assert FrameReader().feed(wire) == [(OP_PING, b"p"), (OP_TEXT, b"abcd")]


def test_reader_reads_extended_lengths() -> None:
    """16-bit and 64-bit payload lengths decode."""
    big, huge = os.urandom(300), os.urandom(70_000)
    assert FrameReader().feed(server_frame(OP_BINARY, big) + server_frame(OP_BINARY, huge)) == [(OP_BINARY, big), (OP_BINARY, huge)]


@pytest.mark.parametrize(
    "wire",
    [
        bytes((0x81, 0x81)) + b"mask" + b"x",  # masked server frame
        bytes((0xC1, 0x01)) + b"x",  # reserved bit
        bytes((0x83, 0x00)),  # unknown opcode
        bytes((0x09, 0x00)),  # fragmented ping
        server_frame(OP_CONT, b"x"),  # continuation without a start
        bytes((0x82, 127)) + struct.pack("!Q", 1 << 40),  # oversized
    ],
)
def test_reader_refuses_protocol_violations(wire: bytes) -> None:
    """Frames RFC 6455 forbids from a server raise ValidationError."""
    with pytest.raises(ValidationError):
        FrameReader().feed(wire)


def test_encoder_refuses_bad_arguments() -> None:
    """A wrong mask size, an unknown opcode or a long control payload raise ValidationError."""
    with pytest.raises(ValidationError):
        encode_client_frame(OP_TEXT, b"x", b"abc")
    with pytest.raises(ValidationError):
        encode_client_frame(0x3, b"x", b"abcd")
    with pytest.raises(ValidationError):
        encode_client_frame(OP_CLOSE, b"x" * 126, b"abcd")
