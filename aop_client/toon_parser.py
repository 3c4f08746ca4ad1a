"""Text formats of trace events: payload builders (ToonBuilder), parse_toon and to_toon.

This module owns reading and writing events as text. TOON (Token-Oriented
Object Notation, spec v4) goes through the official ``toon-format`` package
behind a thin adapter (:func:`decode_toon_value`, :func:`encode_toon_value`)
that translates its errors into :class:`aop_client.errors.ToonParseError`.

``parse_toon(text)`` accepts ``str`` or UTF-8 ``bytes`` holding either JSON
text or TOON, and detects which (:func:`detect_format`): input whose first
non-blank character is ``{``, or ``[`` not followed by a TOON root-array
header such as ``[2]:``, is JSON; everything else is TOON. TOON indentation
is detected from the first indented line (2 spaces by default), so the output
of ``to_toon(..., pretty=True)`` (4 spaces) reads back as well as the default.

What it returns, by the shape of the decoded value:

* an event object -> that event (``dict``);
* a list of events (a trace) -> ``list[dict]`` (possibly empty);
* an object with an ``"events"`` list and no ``"type"`` (the replay-file
  format of the brief, or a batch body) -> its events as ``list[dict]``.

Every event is checked by :func:`aop_client.events.validate_imported_event`:
``seq`` (int >= 1), ``t`` (RFC 3339 UTC, ``Z`` or ``+00:00``, fraction optional,
e.g. ``2025-12-05T10:00:00Z``), ``type`` and ``payload`` (object) are required;
``event_id``/``run_id`` (UUID strings), ``agent_id`` (int) and ``sig`` are
optional and checked when present; values must be JSON as defined in
:mod:`aop_client.events`. Events are returned as written: nothing is added or
rewritten (a ``sig`` keeps verifying). Number policy: an integer literal beyond
+-(2**53-1) that is exactly an IEEE double (e.g. the TOON encoder's plain-decimal
form of ``1e300``) is read as that ``float``; any other is refused.
Nesting beyond the decoders' depth raises ``ToonParseError``; events deeper than
:data:`aop_client.protocol.MAX_JSON_DEPTH` fail their validation. JSON input
with duplicate keys, NaN or Infinity is refused. Any bad input, of any type,
raises ``ToonParseError`` (line and column when known, and the reason).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import toon_format

from .errors import ToonParseError, ValidationError
from .protocol import MAX_DOCUMENT_DEPTH
from .events import (
    DEFAULT_MAX_EVENT_BYTES,
    ELLIPSIS_PLACEHOLDER,
    MAX_SAFE_INTEGER,
    check_confidence,
    check_json_value,
    check_uncertainty,
    copy_json_value,
    validate_imported_event,
)

__all__ = [
    "ToonBuilder",
    "parse_toon",
    "to_toon",
    "detect_format",
    "is_toon",
    "decode_toon_value",
    "encode_toon_value",
    "PRETTY_INDENT",
]

PRETTY_INDENT = 4
_PRETTY_ORDER = ("event_id", "run_id", "agent_id", "seq", "t", "type", "sig")
_TOON_ROOT_ARRAY_RE = re.compile(r"\[\d+[\t|]?\](?:\{[^\n]*\})?:")
_FIRST_INDENT_RE = re.compile(r"^( +)\S", re.MULTILINE)


_FIELD_DEPTH = 2  # a payload field sits in the event (level 1) and its payload (level 2)


def _copy_data(value: Any, field: str, depth: int = _FIELD_DEPTH) -> Any:
    return copy_json_value(value, field, ellipsis_placeholder=True, depth=depth)


def _text_field(value: Any, field: str, *, allow_empty: bool = False) -> str:
    if value is Ellipsis:
        return ELLIPSIS_PLACEHOLDER
    if not isinstance(value, str) or (not allow_empty and not value):
        expected = "a string" if allow_empty else "a non-empty string"
        raise ValidationError(f"{field}: expected {expected}, got {value!r:.80}", field=field, value=value)
    check_json_value(value, field)
    return value


def _object_field(value: Any, field: str, depth: int = _FIELD_DEPTH) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(f"{field}: expected an object (dict), got {value!r:.80}", field=field, value=value)
    copied: dict[str, Any] = _copy_data(value if type(value) is dict else dict(value), field, depth)  # one copy, validated
    return copied


def _list_of_objects(value: Any, field: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ValidationError(f"{field}: expected a list of objects, got {value!r:.80}", field=field, value=value)
    return [_object_field(item, f"{field}[{index}]", _FIELD_DEPTH + 1) for index, item in enumerate(value)]


class ToonBuilder:
    """Builders of the payload of each event type; each returns a fresh, validated JSON dict.

    Required fields are always present; optional ones appear only when given
    (not ``None``). Inputs are deep-copied (tuples become lists), so later
    changes to the caller's objects do not alter a built payload. A Python
    ``...`` (Ellipsis) in any argument is read as the placeholder string
    ``"..."``, so documentation snippets such as ``data={"results": [...]}`` run
    as written. Invalid input raises ValidationError naming the payload path.
    """

    @staticmethod
    def build_reasoning_payload(
        goal: str,
        steps: Sequence[Mapping[str, Any]] | None = None,
        safety_checks: Sequence[Mapping[str, Any]] | None = None,
        uncertainty: str = "low",
        **extra: Any,
    ) -> dict[str, Any]:
        """Return ``{goal, steps, safety_checks, uncertainty, **extra}``; step confidences must be in 0..1."""
        payload: dict[str, Any] = {
            "goal": _text_field(goal, "payload.goal"),
            "steps": _list_of_objects(steps, "payload.steps"),
            "safety_checks": _list_of_objects(safety_checks, "payload.safety_checks"),
        }
        built_steps: list[dict[str, Any]] = payload["steps"]
        for index, step in enumerate(built_steps):
            if "confidence" in step:
                check_confidence(step["confidence"], f"payload.steps[{index}].confidence")
        check_uncertainty(uncertainty)
        payload["uncertainty"] = uncertainty
        for key, value in extra.items():
            payload[key] = _copy_data(value, f"payload.{key}")
        return payload

    @staticmethod
    def build_action_request_payload(
        action: str, params: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Return ``{action, params[, context]}`` (params defaults to ``{}``)."""
        payload = {
            "action": _text_field(action, "payload.action"),
            "params": _object_field({} if params is None else params, "payload.params"),
        }
        if context is not None:
            payload["context"] = _object_field(context, "payload.context")
        return payload

    @staticmethod
    def build_action_response_payload(
        status: str, data: Any = None, meta: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Return ``{status[, data][, meta]}``; ``data`` may be any JSON value."""
        payload: dict[str, Any] = {"status": _text_field(status, "payload.status")}
        if data is not None:
            payload["data"] = _copy_data(data, "payload.data")
        if meta is not None:
            payload["meta"] = _object_field(meta, "payload.meta")
        return payload

    @staticmethod
    def build_final_output_payload(text: str, structured: Any = None) -> dict[str, Any]:
        """Return ``{text[, structured]}``; ``text`` may be empty, ``structured`` any JSON value."""
        payload: dict[str, Any] = {"text": _text_field(text, "payload.text", allow_empty=True)}
        if structured is not None:
            payload["structured"] = _copy_data(structured, "payload.structured")
        return payload

    @staticmethod
    def build_error_payload(
        message: str | BaseException,
        error_type: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Return ``{message[, error_type][, details]}``; an exception gives its text and class name."""
        if isinstance(message, BaseException):
            error_type = type(message).__name__ if error_type is None else error_type
            message = str(message) or type(message).__name__
        payload: dict[str, Any] = {"message": _text_field(message, "payload.message")}
        if error_type is not None:
            payload["error_type"] = _text_field(error_type, "payload.error_type")
        if details is not None:
            payload["details"] = _object_field(details, "payload.details")
        return payload

    @staticmethod
    def build_custom_payload(data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Return the payload of a ``custom`` event: a validated copy of the caller's own object.

        Per protocol v1 section 1 the payload *is* the caller's object (so a redaction
        hook that looks for ``payload["email"]`` finds it); the event's name is not in
        the payload but the envelope's top-level ``name`` (see ``TraceBuilder.create_custom``).
        """
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            raise ValidationError(
                f"payload: a custom event's payload is your own object (a dict of JSON values), "
                f"got {type(data).__name__}; wrap other values, e.g. {{\"value\": ...}}",
                field="payload", value=type(data).__name__)
        copied: dict[str, Any] = _copy_data(data if type(data) is dict else dict(data), "payload", depth=1)
        return copied

    @staticmethod
    def custom_name(name: str) -> str:
        """Check a custom event's name (a non-empty string): it goes to the envelope's top-level ``name``."""
        return _text_field(name, "name")


# ---------------------------------------------------------------------------
# TOON adapter (thin layer over toon_format)


def _int_within_double_range(text: str) -> int | float:
    """parse_int hook: keep safe integers, read larger exact doubles as float, refuse the rest."""
    value = int(text)
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return value
    as_float = float(value)  # OverflowError beyond the double range, translated by the caller
    if as_float == value:
        return as_float
    raise ValueError(f"integer {text[:40]} is beyond +-(2**53-1) and not exactly representable")


def decode_toon_value(
    text: str | bytes, *, strict: bool = True, indent_size: int = 2, exact_doubles_only: bool = False
) -> Any:
    """Decode a TOON document into a JSON value; raise ToonParseError (with line) on any failure.

    ``exact_doubles_only=True`` applies the event number policy: integers beyond
    +-(2**53-1) become floats when exactly representable, otherwise are refused.
    The broad ``except`` is deliberate: this is the boundary to a foreign
    decoder, and any failure inside it means the input was not acceptable.
    """
    parse_int = _int_within_double_range if exact_doubles_only else None
    try:
        return toon_format.decode(text, strict=strict, indent_size=indent_size, parse_int=parse_int)
    except toon_format.ToonDecodeError as e:
        where = f" in {e.source.strip()[:60]!r}" if e.source else ""
        raise ToonParseError(f"{e.msg}{where}", line=e.line, source_format="toon") from e
    except RecursionError as e:
        raise ToonParseError("nesting is too deep", source_format="toon") from e
    except Exception as e:  # a foreign decoder failure of any kind is still bad input to us
        raise ToonParseError(f"{type(e).__name__}: {e}"[:200], source_format="toon") from e


def encode_toon_value(value: Any, *, indent_size: int = 2, delimiter: str = ",") -> str:
    """Encode a JSON value as TOON; raise ValidationError if it is not JSON (NaN, sets, bytes...)."""
    check_json_value(value, "value", exact_doubles_only=False, depth=0, max_depth=MAX_DOCUMENT_DEPTH)
    try:
        return toon_format.encode(value, indent_size=indent_size, delimiter=delimiter)
    except (TypeError, ValueError, RecursionError) as e:
        raise ValidationError(f"value: cannot be encoded as TOON ({e})", field="value") from e


# ---------------------------------------------------------------------------
# parse_toon / to_toon


def detect_format(text: str) -> str:
    """Return ``"json"`` or ``"toon"`` for a document, by its first non-blank character."""
    stripped = text.lstrip(" \t\r\n\ufeff")
    if stripped.startswith("{"):
        return "json"
    if stripped.startswith("["):
        return "toon" if _TOON_ROOT_ARRAY_RE.match(stripped) else "json"
    return "toon"


def is_toon(text: str | bytes) -> bool:
    """Return True when ``text`` would be read as TOON (not JSON) by parse_toon."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8", errors="replace")
    return isinstance(text, str) and detect_format(text) == "toon"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r:.60}")
            seen.add(key)
    return result


def _decode_json(text: str) -> Any:
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_int=_int_within_double_range,
            object_pairs_hook=_reject_duplicate_keys,
        )
    except json.JSONDecodeError as e:
        raise ToonParseError(e.msg, line=e.lineno, column=e.colno, source_format="json") from e
    except RecursionError as e:
        raise ToonParseError("nesting is too deep", source_format="json") from e
    except (ValueError, OverflowError) as e:
        raise ToonParseError(str(e)[:200], source_format="json") from e


def _detect_indent(text: str) -> int:
    match = _FIRST_INDENT_RE.search(text)
    return len(match.group(1)) if match else 2


def _events_from(value: Any, source_format: str, max_event_bytes: int) -> dict[str, Any] | list[dict[str, Any]]:
    if isinstance(value, dict) and "events" in value and "type" not in value:
        events, prefix = value["events"], "events"
        if not isinstance(events, list):
            raise ToonParseError('"events" must be a list of event objects', source_format=source_format)
    elif isinstance(value, list):
        events, prefix = value, ""
    elif isinstance(value, dict):
        try:
            validate_imported_event(value, max_event_bytes=max_event_bytes)
        except ValidationError as e:
            raise ToonParseError(f"invalid event: {e}", source_format=source_format) from e
        return value
    else:
        raise ToonParseError(
            f"expected an event object, a list of events or an object with \"events\", got {type(value).__name__}",
            source_format=source_format,
        )
    for index, event in enumerate(events):
        try:
            validate_imported_event(event, max_event_bytes=max_event_bytes)
        except ValidationError as e:
            raise ToonParseError(f"invalid event {prefix}[{index}]: {e}", source_format=source_format) from e
    return events


def parse_toon(text: str | bytes, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> dict[str, Any] | list[dict[str, Any]]:
    """Parse JSON text or TOON into one validated event or a list of them; raise ToonParseError otherwise."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ToonParseError(f"input is not UTF-8 ({e.reason} at byte {e.start})") from e
    if not isinstance(text, str):
        raise ToonParseError(f"expected str or bytes, got {type(text).__name__}")
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise ToonParseError("input is empty")
    source_format = detect_format(text)
    if source_format == "json":
        value = _decode_json(text)
    else:
        value = decode_toon_value(text, indent_size=_detect_indent(text), exact_doubles_only=True)
    return _events_from(value, source_format, max_event_bytes)


def _pretty_event(event: dict[str, Any]) -> dict[str, Any]:
    ordered = {key: event[key] for key in _PRETTY_ORDER if key in event}
    ordered.update((key, value) for key, value in event.items() if key not in ordered and key != "payload")
    if "payload" in event:
        ordered["payload"] = event["payload"]
    return ordered


def _pretty(obj: Any) -> Any:
    if isinstance(obj, dict) and "type" in obj and "payload" in obj:
        return _pretty_event(obj)
    if isinstance(obj, dict) and isinstance(obj.get("events"), list):
        return {**obj, "events": [_pretty(event) for event in obj["events"]]}
    if isinstance(obj, list):
        return [_pretty(item) for item in obj]
    return obj


def to_toon(obj: Any, pretty: bool = False) -> str:
    """Serialize an event, a list of events or a replay object (any JSON value) as TOON.

    ``pretty=False`` (default): standard TOON as the reference encoder writes
    it - 2-space indentation, keys in the order given - readable by any TOON
    decoder with default options. ``pretty=True``: 4-space indentation, and in
    every event the envelope fields first in protocol order (event_id, run_id,
    agent_id, seq, t, type, sig, then extra fields) with ``payload`` last;
    nested payload key order is kept. Both read back with ``parse_toon`` to an
    equal value (``dict`` equality ignores key order). Values that are not JSON
    (NaN, infinities, sets, bytes, non-str keys, integers beyond +-(2**53-1)) raise
    ValidationError instead of being silently converted.
    """
    check_json_value(obj, "value", depth=0, max_depth=MAX_DOCUMENT_DEPTH)  # a trace document holds events
    if pretty:
        return encode_toon_value(_pretty(obj), indent_size=PRETTY_INDENT)
    return encode_toon_value(obj)
