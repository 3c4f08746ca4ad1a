"""The protocol's rules for JSON values, defined once: limits and the one thorough JSON-value walk.

Protocol v1 signs the RFC 8785 form of an event, and RFC 8785 (like I-JSON,
RFC 7493) reads every number as an IEEE 754 double. This module owns what a
JSON value of an event may be, for every part of the library that asks: the
builders and ``validate_event`` (:mod:`aop_client.events`), canonical JSON and
signing (:mod:`aop_client.canonical`), the hook copy of the emit path and the
reference collector. The envelope's rules are :mod:`aop_client.protocol.envelope`'s.

Limits:

* :data:`MAX_SAFE_INTEGER` = 2**53 - 1: integers with ``|n| <= 2**53 - 1`` are
  exact doubles (RFC 8785 section 3.2.2.3, I-JSON section 2.2); any other is refused.
* :data:`MAX_JSON_DEPTH` = 128: objects and arrays nest at most this deep, counted
  from the event (the event object is level 1, its payload level 2, ...).
* :data:`MAX_DOCUMENT_DEPTH`: a document that holds events (a trace list, a replay
  or batch object ``{"events": [...]}``) may add two levels around them.

The walk (:func:`check_json`, :func:`copy_json`) is depth-checked, so 10,000
levels of nesting are a :class:`~aop_client.errors.ValidationError`, never a
``RecursionError``. It accepts ``dict`` with ``str`` keys, ``list``, ``tuple``,
``str`` (valid Unicode: no lone surrogates), ``bool``, ``None``, safe ``int`` and
finite ``float`` (subclasses included, as ``rfc8785`` does) and names the path
and the value of the first thing it refuses. Canonical JSON's fast classifier
(``canonical._scan``) applies the same limits and sends every refusal here for
the verdict and its message.
"""

from __future__ import annotations

import json
import re
import reprlib
from typing import Any

from ..errors import ValidationError

__all__ = [
    "MAX_SAFE_INTEGER", "MAX_JSON_DEPTH", "MAX_DOCUMENT_DEPTH", "ELLIPSIS_PLACEHOLDER", "TOO_DEEP",
    "BIG_INT", "NOT_FINITE", "JSONValueProblem", "segment", "show", "problem_error", "check_json",
    "copy_json", "json_error",
]

#: Largest integer magnitude an IEEE 754 double (RFC 8785, I-JSON) holds exactly, and the protocol accepts.
MAX_SAFE_INTEGER = 2**53 - 1
#: Deepest nesting of objects/arrays in an event, the event object itself counting as one level.
MAX_JSON_DEPTH = 128
#: Deepest nesting of a document of events: a replay or batch object and its "events" list add two levels.
MAX_DOCUMENT_DEPTH = MAX_JSON_DEPTH + 2
#: What a Python ``...`` becomes where the builders accept documentation-style placeholders.
ELLIPSIS_PLACEHOLDER = "..."

TOO_DEEP = "nesting deeper than {} levels (the event object counts as level 1)"
BIG_INT = "integer outside +-(2**53-1) cannot be represented exactly in JSON (RFC 8785, I-JSON)"
NOT_FINITE = "NaN and infinities are not JSON"
_SURROGATE = "string holds a lone surrogate (not valid Unicode)"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTAINER = object()  # _scalar's answer for dicts, lists and tuples
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 70, 70, 6, 6
_MAX_SHOWN_INT_BITS = 4000  # repr() of larger ints is slow, and refused beyond 4300 digits


class JSONValueProblem(Exception):
    """Internal: the walk refused ``value``; ``segments`` collects its path on the way out."""

    def __init__(self, reason: str, value: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.value = value
        self.segments: list[str] = []


def segment(key: Any) -> str:
    """The path segment of a key or index: ``.name``, ``["a b"]``, ``[3]``."""
    if type(key) is int:
        return f"[{key}]"
    if isinstance(key, str) and _IDENTIFIER.match(key):
        return "." + key
    return "[" + json.dumps(key if isinstance(key, str) else repr(key)) + "]"


def show(value: Any) -> str:
    """A short repr of ``value`` for messages; safe for deep containers, huge ints and odd reprs."""
    if isinstance(value, int) and value.bit_length() > _MAX_SHOWN_INT_BITS:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = _REPR.repr(value)
    except Exception:  # a user type whose __repr__ fails still gets a message
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def problem_error(problem: JSONValueProblem, path: str) -> ValidationError:
    """The ValidationError for a refused value: ``"<path>: <reason>, got <value>"``, field = path."""
    field = (path + "".join(reversed(problem.segments))).lstrip(".") if path else \
        "".join(reversed(problem.segments)).lstrip(".") or "(root)"
    shown = field if len(field) <= 120 else f"{field[:60]}...{field[-40:]}"  # deep paths: the ends tell
    return ValidationError(f"{shown}: {problem.reason}, got {show(problem.value)}", field=field, value=problem.value)


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise JSONValueProblem(f"object keys must be strings, got a key of type {type(key).__name__}", key)
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise JSONValueProblem("object key is not valid Unicode (it holds a lone surrogate)", key) from None


def _scalar(value: Any, int_bound: float, placeholders: bool) -> Any:
    """``value`` (or its placeholder) when it is an acceptable scalar, _CONTAINER for a container; else raise."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise JSONValueProblem(_SURROGATE, value) from None
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if -int_bound <= value <= int_bound:
            return value
        raise JSONValueProblem(BIG_INT, value)
    if isinstance(value, float):
        if value - value == 0.0:
            return value
        raise JSONValueProblem(NOT_FINITE, value)
    if isinstance(value, (dict, list, tuple)):
        return _CONTAINER
    if value is Ellipsis and placeholders:
        return ELLIPSIS_PLACEHOLDER
    raise JSONValueProblem(f"{type(value).__name__} is not a JSON value", value)


def _walk(value: Any, room: int, int_bound: float, copy: bool, placeholders: bool) -> Any:
    """The one walk: check ``value`` (``room`` = container levels still allowed); return it, or a copy.

    Exact builtin types take inlined fast paths (this walk runs on every create_*
    and on the hook copy of every emit). A copy turns tuples into lists and dict
    subclasses into dicts; scalars are shared.
    """
    kind = type(value)
    if kind is dict:
        is_dict = True
    elif kind is list or kind is tuple:
        is_dict = False
    else:
        result = _scalar(value, int_bound, placeholders)
        if result is not _CONTAINER:
            return result
        is_dict = isinstance(value, dict)
    if room <= 0:
        raise JSONValueProblem(TOO_DEEP, type(value).__name__)
    room -= 1
    if is_dict:
        out: Any = {} if copy else value
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                _key_at(key)
            kind = type(item)
            if kind is str:
                if item.isascii():
                    if copy:
                        out[key] = item
                    continue
            elif kind is float:
                if item - item == 0.0:
                    if copy:
                        out[key] = item
                    continue
            elif kind is int:
                if -int_bound <= item <= int_bound:
                    if copy:
                        out[key] = item
                    continue
            elif kind is bool or item is None:
                if copy:
                    out[key] = item
                continue
            try:
                item = _walk(item, room, int_bound, copy, placeholders)
            except JSONValueProblem as problem:
                problem.segments.append(segment(key))
                raise
            if copy:
                out[key] = item
        return out
    out = [None] * len(value) if copy else value
    index = 0
    for item in value:
        kind = type(item)
        if not (kind is str and item.isascii() or kind is bool or item is None):
            try:
                item = _walk(item, room, int_bound, copy, placeholders)
            except JSONValueProblem as problem:
                problem.segments.append(f"[{index}]")
                raise
        if copy:
            out[index] = item
        index += 1
    return out

def _key_at(key: Any) -> None:
    """Check an object key that is not plain ASCII; a refusal names the key in the path."""
    try:
        _check_key(key)
    except JSONValueProblem as problem:
        problem.segments.append(segment(key))
        raise


def _run(value: Any, path: str, depth: int, max_depth: int, int_bound: float, copy: bool, placeholders: bool) -> Any:
    try:
        return _walk(value, max_depth - depth, int_bound, copy, placeholders)
    except JSONValueProblem as problem:
        if problem.reason is TOO_DEEP:
            problem.reason = TOO_DEEP.format(max_depth)
        raise problem_error(problem, path) from None


def check_json(value: Any, path: str = "", *, depth: int = 0, max_depth: int = MAX_JSON_DEPTH,
               int_bound: float = MAX_SAFE_INTEGER) -> None:
    """Raise ValidationError (naming e.g. ``payload.steps[0].x`` and the value) unless ``value`` is JSON.

    ``depth`` is how many containers enclose ``value`` (0 for an event itself, 1 for
    its payload, 2 for a payload field); ``int_bound=math.inf`` lifts the integer bound
    for plain data that is not going to be signed.
    """
    _run(value, path, depth, max_depth, int_bound, False, False)


def copy_json(value: Any, path: str = "", *, depth: int = 0, placeholders: bool = False) -> Any:
    """A deep copy of ``value`` (tuples become lists) after the checks of :func:`check_json`.

    With ``placeholders=True`` a Python ``...`` becomes the string ``"..."``.
    """
    return _run(value, path, depth, MAX_JSON_DEPTH, MAX_SAFE_INTEGER, True, placeholders)


def json_error(value: Any, path: str = "") -> ValidationError | None:
    """The ValidationError :func:`check_json` would raise for ``value`` (depth 0), or None when it is JSON."""
    try:
        check_json(value, path)
    except ValidationError as error:
        return error
    return None

