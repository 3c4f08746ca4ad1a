"""The trace event model of protocol v1, section 1: envelope, payloads and their validation.

This module owns what a valid event *is*. It is pure (no I/O, no clock, no
randomness except the uuid4 helpers): callers pass ``now`` in.

Envelope (key order as built by :func:`make_event`)::

    event_id  str   UUID, the idempotency token, fixed at creation
    run_id    str   UUID of the agent run
    agent_id  int   from the client configuration
    seq       int   1, 2, 3... without gaps within a run, at most MAX_SEQ (2**53 - 1)
    t         str   RFC 3339 UTC with milliseconds: 2025-12-05T10:00:00.000Z
    type      str   one of EVENT_TYPES
    name      str   custom events only: the custom event's name
    payload   dict  built by the build_*_payload functions below; for ``custom``
                    the caller's own object, as given (protocol v1 section 1)
    sig       str   optional, "v1=" + 64 lowercase hex digits (added at emit time)

Extra top-level fields are allowed (they are signed too). The envelope's rules,
``EVENT_TYPES`` and ``MAX_SEQ`` are :mod:`aop_client.protocol.envelope`'s: this
module re-exports them for its callers.

JSON policy: :mod:`aop_client.protocol` defines it once, for the builders, this
module and signing alike - ``dict`` with ``str`` keys, ``list`` and ``tuple``,
``str`` (valid Unicode), ``bool``, ``None``, ``int`` with ``|n| <= 2**53 - 1``
(RFC 8785 / I-JSON) and finite ``float``; nesting at most ``MAX_JSON_DEPTH``
levels counted from the event (the event is level 1, its payload level 2).

Three validation levels:

* :func:`validate_envelope` - the emit hot path: envelope fields only, a few us
  (it is :func:`aop_client.protocol.check_envelope`).
* :func:`validate_event` - envelope, the full JSON walk, payload rules
  (reasoning ``uncertainty`` level, ``steps[i].confidence`` in 0..1) and the
  size bound ``len(orjson.dumps(event)) <= max_event_bytes``.
* :func:`validate_imported_event` - for events read from text (``parse_toon``):
  ``seq``, ``t``, ``type`` and ``payload`` are required; ``t`` may have any
  number of fractional digits (or none) and a ``Z`` or ``+00:00`` suffix;
  ``event_id``, ``run_id``, ``agent_id``, ``sig`` and a custom event's ``name``
  are optional but checked when present (files written before custom events
  had a top-level name still read).

Every failure raises :class:`aop_client.errors.ValidationError` whose message
and ``field`` name the path (e.g. ``payload.steps[0].confidence``) and value.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from .errors import ValidationError
from .protocol import (ELLIPSIS_PLACEHOLDER, ENVELOPE_FIELDS, EVENT_TYPES, MAX_JSON_DEPTH, MAX_SAFE_INTEGER, MAX_SEQ,
                       check_envelope, check_json, copy_json, is_uuid, parse_timestamp, segment)
from .protocol import field_error as _fail

__all__ = [
    "EVENT_TYPES", "UNCERTAINTY_LEVELS", "ENVELOPE_FIELDS", "DEFAULT_MAX_EVENT_BYTES", "MAX_JSON_DEPTH",
    "MAX_SAFE_INTEGER", "MAX_SEQ", "ELLIPSIS_PLACEHOLDER", "new_event_id", "new_run_id", "format_timestamp",
    "parse_timestamp", "make_event", "is_uuid", "validate_envelope", "check_json_value", "copy_json_value",
    "check_confidence", "check_uncertainty", "validate_payload", "check_event_size", "validate_event",
    "validate_imported_event",
]

UNCERTAINTY_LEVELS: frozenset[str] = frozenset({"low", "medium", "high"})
DEFAULT_MAX_EVENT_BYTES = 1_000_000
_MAX_UNIX_SECONDS = 253402300800  # 10000-01-01T00:00:00Z, first instant RFC 3339 cannot write

def _uuid4_text() -> str:
    """A random (version 4, RFC 4122 variant) UUID in canonical text form.

    The same bits as ``str(uuid.uuid4())`` (16 bytes from os.urandom, which is
    fork-safe), without building a UUID object: about 3x faster on the create path.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_event_id() -> str:
    """Return a fresh idempotency token (uuid4 string)."""
    return _uuid4_text()


def new_run_id() -> str:
    """Return a fresh run identifier (uuid4 string)."""
    return _uuid4_text()


_last_second: tuple[int, str] = (-1, "")


def format_timestamp(unix_seconds: float) -> str:
    """Format unix seconds as RFC 3339 UTC with milliseconds, e.g. ``2025-12-05T10:00:00.000Z``."""
    global _last_second
    if type(unix_seconds) not in (int, float) or not 0 <= unix_seconds < _MAX_UNIX_SECONDS:
        raise _fail("t", "timestamp must be finite unix seconds in years 1970..9999", unix_seconds)
    whole, millis = divmod(int(round(unix_seconds * 1000)), 1000)
    cached_second, prefix = _last_second
    if cached_second != whole:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _last_second = (whole, prefix)
    return f"{prefix}.{millis:03d}Z"


def make_event(
    *,
    run_id: str,
    agent_id: int,
    seq: int,
    type: str,
    payload: dict,
    now: float,
    event_id: str | None = None,
    name: str | None = None,
) -> dict:
    """Build an envelope dict (not validated, not signed) in protocol key order.

    ``name`` is the top-level name of a ``custom`` event (given only for those).
    """
    event = {
        "event_id": event_id if event_id is not None else str(uuid.uuid4()),
        "run_id": run_id,
        "agent_id": agent_id,
        "seq": seq,
        "t": format_timestamp(now),
        "type": type,
    }
    if name is not None:
        event["name"] = name
    event["payload"] = payload
    return event


validate_envelope = check_envelope  # the emit hot path's check: the protocol's, under its historic name


def check_json_value(value: Any, path: str = "payload", *, exact_doubles_only: bool = True, depth: int = 1,
                     max_depth: int = MAX_JSON_DEPTH) -> None:
    """Walk ``value`` and raise ValidationError (naming e.g. ``payload.steps[0].x``) if it is not JSON.

    The walk and its limits are :mod:`aop_client.protocol`'s. ``depth`` is how many
    containers enclose ``value`` in its event (1 for the payload, 2 for a payload
    field); ``exact_doubles_only=False`` lifts the +-(2**53-1) integer bound (plain
    JSON/TOON data that is not going to be signed).
    """
    check_json(value, path, depth=depth, max_depth=max_depth,
               int_bound=MAX_SAFE_INTEGER if exact_doubles_only else math.inf)


def copy_json_value(value: Any, path: str = "payload", *, ellipsis_placeholder: bool = False, depth: int = 1) -> Any:
    """Return a deep copy of ``value`` (tuples become lists) after the checks of check_json_value.

    With ``ellipsis_placeholder=True`` a Python ``...`` becomes the string ``"..."``
    (documentation-style placeholders such as ``{"results": [...]}``).
    """
    return copy_json(value, path, depth=depth, placeholders=ellipsis_placeholder)


def check_confidence(value: Any, field: str) -> None:
    """Raise ValidationError unless ``value`` is a real number in 0..1."""
    if type(value) not in (int, float) or not 0.0 <= value <= 1.0:
        raise _fail(field, "confidence must be a number between 0 and 1", value)


def check_uncertainty(value: Any, field: str = "payload.uncertainty") -> None:
    """Raise ValidationError unless ``value`` is one of UNCERTAINTY_LEVELS."""
    if type(value) is not str or value not in UNCERTAINTY_LEVELS:
        raise _fail(field, f"expected one of {sorted(UNCERTAINTY_LEVELS)}", value)


def validate_payload(event_type: str, payload: Mapping) -> None:
    """Check the type-specific payload rules (reasoning: uncertainty level, step confidences)."""
    if event_type != "reasoning":
        return
    uncertainty = payload.get("uncertainty", "low")
    if type(uncertainty) is not str or uncertainty not in UNCERTAINTY_LEVELS:
        check_uncertainty(uncertainty)
    steps = payload.get("steps")
    if type(steps) is list or isinstance(steps, (list, tuple)):
        for index, step in enumerate(steps):
            if type(step) is dict or isinstance(step, Mapping):
                confidence = step.get("confidence", 0.0)
                if type(confidence) is not float or not 0.0 <= confidence <= 1.0:
                    check_confidence(confidence, f"payload.steps[{index}].confidence")


_CHECKED_FIELDS = frozenset({"event_id", "run_id", "agent_id", "seq", "t", "type", "sig"})  # scalars checked above


def _check_body_and_size(event: Mapping, max_event_bytes: int) -> None:
    for key, value in event.items():
        if type(key) is not str and not isinstance(key, str):
            raise _fail("event", "top-level keys must be strings", key)
        if key not in _CHECKED_FIELDS:
            check_json_value(value, segment(key).lstrip("."))
    validate_payload(event["type"], event["payload"])
    check_event_size(event, max_event_bytes)


def check_event_size(event: Mapping, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
    """Raise ValidationError when ``len(orjson.dumps(event)) > max_event_bytes``."""
    try:
        size = len(orjson.dumps(event))
    except (orjson.JSONEncodeError, TypeError) as e:
        raise _fail("event", f"cannot be serialized as JSON ({e})", type(event).__name__) from e
    if size > max_event_bytes:
        raise ValidationError(
            f"event: serialized size {size} bytes exceeds max_event_bytes={max_event_bytes}",
            field="event",
            value=size,
        )


def validate_event(event: Mapping, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
    """Full check before emit: envelope, JSON walk of every field, payload rules and size."""
    validate_envelope(event)
    _check_body_and_size(event, max_event_bytes)


def validate_imported_event(event: Mapping, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
    """Check an event read from text: seq, t, type, payload required; identity fields optional."""
    check_envelope(event, imported=True)
    _check_body_and_size(event, max_event_bytes)
