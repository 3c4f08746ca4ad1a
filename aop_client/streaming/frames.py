"""The sans-I/O half of streaming: URLs, event framing, server-frame parsing, reconnect timing.

Pure functions and frozen values only: nothing here sleeps, reads a clock,
draws random numbers or touches sockets. The I/O adapters
(:mod:`aop_client.streaming.client`) and the reference collector's stream
routes (:mod:`aop_client.collector.streaming_routes`) both use it, so the
wire of protocol-v1 section 4 is written down once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union
from urllib.parse import urlsplit

import orjson

from ..core.backoff import RetryPolicy
from ..errors import ConfigError, ValidationError

__all__ = [
    "Ack",
    "Nack",
    "OutgoingEvent",
    "ServerFrame",
    "STREAM_PATH",
    "encode_event",
    "parse_server_frame",
    "encode_ack",
    "encode_nack",
    "reconnect_delay",
    "websocket_url",
    "http_stream_url",
]

#: Path of the chunked NDJSON endpoint under base_url (protocol section 4).
STREAM_PATH = "/api/v1/traces/stream"


@dataclass(frozen=True)
class Ack:
    """The server holds ``event_id`` (accepted now or before)."""

    event_id: str


@dataclass(frozen=True)
class Nack:
    """The server refused ``event_id`` on the stream for ``reason``."""

    event_id: str
    reason: str


ServerFrame = Union[Ack, Nack]


@dataclass(frozen=True)
class OutgoingEvent:
    """One event ready for the wire: its identity and its exact envelope bytes (no newline).

    ``seq`` (when known) lets an ack be settled in the durable store by (event_id, run_id, seq).
    """

    event_id: str
    run_id: str
    body: bytes
    seq: int | None = None


def _require_str(envelope: dict[str, Any], key: str) -> str:
    value = envelope.get(key)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"event field {key!r} must be a non-empty string, got {value!r}", field=key, value=value)
    return value


def encode_event(event: dict[str, Any] | bytes | bytearray | memoryview | str) -> OutgoingEvent:
    """Frame an event envelope (a dict, or its UTF-8 JSON bytes) for the stream.

    Raises ValidationError when the input is not a JSON object with string
    ``event_id`` and ``run_id`` (the stream needs both: acks name the event, the
    WebSocket URL names the run).
    """
    if isinstance(event, dict):
        envelope = event
        try:
            body = orjson.dumps(event)
        except (TypeError, orjson.JSONEncodeError) as e:
            raise ValidationError(f"event is not JSON-serializable: {e}", field="event", value=None) from e
    elif isinstance(event, (bytes, bytearray, memoryview, str)):
        body = event.encode("utf-8") if isinstance(event, str) else bytes(event)
        try:
            envelope = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise ValidationError(f"event body is not valid JSON at position {e.pos}: {e.msg}", field="event", value=body[:64]) from e
        if not isinstance(envelope, dict):
            raise ValidationError(f"event body must be a JSON object, got {type(envelope).__name__}", field="event", value=body[:64])
        if b"\n" in body or b"\r" in body:
            # Re-serialize so that one envelope is always exactly one NDJSON line.
            body = orjson.dumps(envelope)
    else:
        raise ValidationError(f"event must be a dict or JSON bytes, got {type(event).__name__}", field="event", value=None)
    seq = envelope.get("seq")
    return OutgoingEvent(event_id=_require_str(envelope, "event_id"), run_id=_require_str(envelope, "run_id"), body=body,
                         seq=seq if type(seq) is int else None)


def parse_server_frame(text: str | bytes) -> ServerFrame:
    """Read one server frame: ``{"ack": id}`` -> Ack, ``{"nack": id, "reason": r}`` -> Nack.

    Raises ValidationError naming the problem for anything else.
    """
    try:
        doc: Any = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ValidationError(f"server frame is not JSON at position {e.pos}: {e.msg}", field="frame", value=text[:64]) from e
    if not isinstance(doc, dict):
        raise ValidationError(f"server frame must be a JSON object, got {type(doc).__name__}", field="frame", value=text[:64])
    if "ack" in doc:
        event_id = doc["ack"]
        if not isinstance(event_id, str) or not event_id:
            raise ValidationError(f"server frame field 'ack' must be a non-empty string, got {event_id!r}", field="ack", value=event_id)
        return Ack(event_id)
    if "nack" in doc:
        event_id = doc["nack"]
        if not isinstance(event_id, str) or not event_id:
            raise ValidationError(f"server frame field 'nack' must be a non-empty string, got {event_id!r}", field="nack", value=event_id)
        reason = doc.get("reason", "unspecified")
        return Nack(event_id, reason if isinstance(reason, str) else str(reason))
    raise ValidationError(f"server frame has neither 'ack' nor 'nack': keys {sorted(doc)[:5]!r}", field="frame", value=text[:64])


def encode_ack(event_id: str) -> str:
    """The server's acknowledgement frame for ``event_id``."""
    return orjson.dumps({"ack": event_id}).decode()


def encode_nack(event_id: str, reason: str) -> str:
    """The server's refusal frame for ``event_id`` with ``reason``."""
    return orjson.dumps({"nack": event_id, "reason": reason}).decode()


def reconnect_delay(attempt: int, u: float, *, base: float, cap: float) -> float:
    """Seconds before reconnect attempt ``attempt`` (0-based): full jitter, ``u * min(cap, base*2**attempt)``."""
    return RetryPolicy(max_retries=0, base=base, cap=cap).delay(attempt, u)


def websocket_url(streaming_url: str, run_id: str) -> str:
    """The WebSocket URL of one run: ``streaming_url + run_id`` (a missing trailing slash is added)."""
    parts = urlsplit(streaming_url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(f"streaming_url must be a ws:// or wss:// URL, got {streaming_url!r}", field="streaming_url", value=streaming_url)
    if not run_id or "/" in run_id or "?" in run_id or "#" in run_id:
        raise ValidationError(f"run_id cannot be used in a URL path: {run_id!r}", field="run_id", value=run_id)
    return streaming_url.rstrip("/") + "/" + run_id


def http_stream_url(url: str | None, base_url: str | None) -> str:
    """The chunked NDJSON endpoint: ``base_url + STREAM_PATH``, or ``url`` when it is already an http(s) URL."""
    if base_url:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"base_url must be an http:// or https:// URL, got {base_url!r}", field="base_url", value=base_url)
        return base_url.rstrip("/") + STREAM_PATH
    given = url or ""
    parts = urlsplit(given)
    if parts.scheme in ("http", "https") and parts.netloc:
        return given if parts.path.rstrip("/").endswith(STREAM_PATH) else given.rstrip("/") + STREAM_PATH
    if parts.scheme in ("ws", "wss") and parts.netloc:
        scheme = "https" if parts.scheme == "wss" else "http"
        return f"{scheme}://{parts.netloc}{STREAM_PATH}"
    raise ConfigError(f"http streaming needs base_url or an http(s) url, got url={url!r}", field="base_url", value=base_url)
