"""The protocol's rules, each defined once: JSON value limits and walk, the event envelope, the event types.

Everything that judges an event (the builders and ``emit_event`` in
:mod:`aop_client.events`, canonical JSON and signing, the store, the TOON
import, ``aop replay`` and the reference collector) imports its rules from here.
Imports point one way: :mod:`aop_client.errors` <- this package <- the rest;
it imports nothing else of ``aop_client``.

* :mod:`.json_values` - the limits (:data:`MAX_SAFE_INTEGER`, :data:`MAX_JSON_DEPTH`)
  and the one depth-checked JSON-value walk (:func:`check_json`, :func:`copy_json`).
* :mod:`.envelope` - :data:`EVENT_TYPES`, :data:`ENVELOPE_FIELDS`, :data:`MAX_SEQ`,
  the ``t`` format, and the one envelope check (:func:`check_envelope`) with its
  fast front for parsed events (:func:`envelope_refusal`).
"""

from __future__ import annotations

from .envelope import (
    ENVELOPE_FIELDS,
    EVENT_SIG_RE,
    EVENT_TYPES,
    IMPORTED_FIELDS,
    MAX_SEQ,
    check_envelope,
    envelope_refusal,
    field_error,
    is_uuid,
    parse_timestamp,
    well_formed_envelope,
)
from .json_values import (
    BIG_INT,
    ELLIPSIS_PLACEHOLDER,
    MAX_DOCUMENT_DEPTH,
    MAX_JSON_DEPTH,
    MAX_SAFE_INTEGER,
    NOT_FINITE,
    TOO_DEEP,
    JSONValueProblem,
    check_json,
    copy_json,
    json_error,
    problem_error,
    segment,
    show,
)

__all__ = [
    "MAX_SAFE_INTEGER", "MAX_JSON_DEPTH", "MAX_DOCUMENT_DEPTH", "ELLIPSIS_PLACEHOLDER", "TOO_DEEP",
    "BIG_INT", "NOT_FINITE", "JSONValueProblem", "segment", "show", "problem_error", "check_json",
    "copy_json", "json_error",
    "EVENT_TYPES", "ENVELOPE_FIELDS", "IMPORTED_FIELDS", "MAX_SEQ", "EVENT_SIG_RE", "is_uuid", "parse_timestamp",
    "check_envelope", "envelope_refusal", "well_formed_envelope", "field_error",
]
