"""WebSocket framing (RFC 6455) for the stream's hot path: client frames out, server frames in. Sans-I/O.

websocket-client opens the connection (handshake, TLS, proxies); after that
the stream writes and reads frames itself, because per-frame Python overhead
in the generic library dominated the cost of streaming small events. The
mask key is an argument (the caller draws it from ``os.urandom``), so every
function here is pure; :class:`FrameReader` only keeps the bytes of a frame
that has not fully arrived.
"""

from __future__ import annotations

import struct

from ..errors import ValidationError

__all__ = [
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "mask_payload",
    "encode_client_frame",
    "FrameReader",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_CONTROL = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_KNOWN = frozenset({OP_CONT, OP_TEXT, OP_BINARY}) | _CONTROL
#: Largest server message accepted (acks are tiny; this only guards memory).
MAX_SERVER_MESSAGE = 1 << 20


def mask_payload(payload: bytes, mask_key: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``mask_key`` (its own inverse)."""
    size = len(payload)
    if size == 0:
        return b""
    key = (mask_key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


def encode_client_frame(opcode: int, payload: bytes, mask_key: bytes) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.2) carrying ``payload``."""
    if len(mask_key) != 4:
        raise ValidationError(f"mask_key must be 4 bytes, got {len(mask_key)}", field="mask_key", value=len(mask_key))
    if opcode not in _KNOWN:
        raise ValidationError(f"unknown WebSocket opcode {opcode:#x}", field="opcode", value=opcode)
    size = len(payload)
    if opcode in _CONTROL and size > 125:
        raise ValidationError(f"control frame payload is {size} bytes, over 125", field="payload", value=size)
    first = 0x80 | opcode
    if size < 126:
        header = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, size)
    return header + mask_key + mask_payload(payload, mask_key)


class FrameReader:
    """Turns received bytes into complete server messages ``(opcode, payload)``, reassembling fragments."""

    def __init__(self, max_message: int = MAX_SERVER_MESSAGE) -> None:
        self.max_message = max_message
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; return every message completed by them, in order.

        Raises ValidationError for a protocol violation (masked server frame,
        reserved bits, unknown opcode, oversized or fragmented control frame).
        """
        buffer = self._buffer
        buffer += data
        messages: list[tuple[int, bytes]] = []
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            fin, opcode, masked, size = first & 0x80, first & 0x0F, second & 0x80, second & 0x7F
            if first & 0x70:
                raise ValidationError(f"server frame sets reserved bits {first & 0x70:#x}", field="frame", value=first)
            if opcode not in _KNOWN:
                raise ValidationError(f"server frame has unknown opcode {opcode:#x}", field="opcode", value=opcode)
            if masked:
                raise ValidationError("server frame is masked (RFC 6455 forbids it)", field="frame", value=second)
            head = 2
            if size == 126:
                if end - offset < 4:
                    break
                size = struct.unpack_from("!H", buffer, offset + 2)[0]
                head = 4
            elif size == 127:
                if end - offset < 10:
                    break
                size = struct.unpack_from("!Q", buffer, offset + 2)[0]
                head = 10
            if opcode in _CONTROL and (size > 125 or not fin):
                raise ValidationError(f"bad control frame: {size} bytes, fin={bool(fin)}", field="frame", value=opcode)
            if size > self.max_message:
                raise ValidationError(f"server frame of {size} bytes is over {self.max_message}", field="frame", value=size)
            if end - offset < head + size:
                break
            payload = bytes(buffer[offset + head : offset + head + size])
            offset += head + size
            message = self._assemble(bool(fin), opcode, payload)
            if message is not None:
                messages.append(message)
        del buffer[:offset]
        return messages

    def _assemble(self, fin: bool, opcode: int, payload: bytes) -> tuple[int, bytes] | None:
        if opcode in _CONTROL:
            return opcode, payload
        if opcode == OP_CONT:
            if self._fragment_opcode is None:
                raise ValidationError("continuation frame without a started message", field="opcode", value=opcode)
        elif self._fragment_opcode is not None:
            raise ValidationError("new data frame while a fragmented message is open", field="opcode", value=opcode)
        else:
            if fin:
                return opcode, payload
            self._fragment_opcode = opcode
        self._fragments.append(payload)
        if sum(map(len, self._fragments)) > self.max_message:
            raise ValidationError(f"fragmented server message is over {self.max_message} bytes", field="frame", value=None)
        if not fin:
            return None
        started, parts = self._fragment_opcode, self._fragments
        self._fragment_opcode, self._fragments = None, []
        return started, b"".join(parts)
