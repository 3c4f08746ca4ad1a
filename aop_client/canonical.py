"""Canonical JSON (RFC 8785, JSON Canonicalization Scheme) of event values: pure, no I/O.

This module owns the byte form that event signatures cover. Its one public
function, :func:`canonical_json`, returns exactly the bytes of the reference
implementation ``rfc8785.dumps`` for every value that it accepts (a hypothesis
property test in ``tests/test_canonical.py`` checks this byte for byte), but
about 10-40x faster on typical events.

How it is fast: one Python pass (:func:`_scan`) checks every node, raising
:class:`~aop_client.errors.ValidationError` with the path of a non-JSON value,
and classifies the value:

* ``_FAST`` - plain ``dict``/``list``/``tuple``/``str``/``int``/``bool``/``None``
  and floats whose shortest decimal form is the same in orjson and ECMAScript
  (non-integral, 1e-4 <= |f| < 1e16): ``orjson.dumps(OPT_SORT_KEYS)`` is RFC 8785
  here, because orjson escapes strings exactly as RFC 8785 does (only U+0000-U+001F,
  ``"`` and ``\\``, with the same short forms and lowercase ``\\u00xx``) and sorts
  keys by code point, which equals UTF-16 order unless a key holds a character at
  or above U+E000 (flagged ``_SLOW``);
* ``_FLOATS`` - some other float (1.0, 1e16, 1e-7, -0.0 ...): the floats are
  replaced by ``orjson.Fragment`` holding their ECMAScript form (:func:`es6_number`);
* ``_SLOW`` - subclasses of the JSON types or keys where UTF-16 order may differ:
  the reference ``rfc8785.dumps`` itself.

Refused (``ValidationError`` naming the path, e.g. ``payload.steps[0].confidence``,
and the value): NaN and infinities (orjson would silently write ``null``), integers
outside +-(2**53-1) (as ``rfc8785`` does), non-string keys, strings holding lone
surrogates, nesting deeper than :data:`MAX_DEPTH`, and any other type (sets,
bytes, datetimes, UUIDs, enums that are not str/int, dataclasses ...). ``-0.0``
is written ``0`` (RFC 8785 and ``rfc8785``); a str- or int-valued enum member is
written as its str/int value, as ``rfc8785`` does.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson
import rfc8785

from .errors import ValidationError

__all__ = ["canonical_json", "es6_number", "large_integers_as_doubles", "MAX_SAFE_INTEGER", "MAX_DEPTH"]

#: Largest integer magnitude RFC 8785 (an IEEE 754 double) represents exactly.
MAX_SAFE_INTEGER = 2**53 - 1
#: Deepest nesting of objects/arrays accepted (orjson itself stops at 255).
MAX_DEPTH = 128

_FAST = 0
_FLOATS = 1
_SLOW = 2

_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
_dumps = orjson.dumps
_Fragment = orjson.Fragment
_isfinite = math.isfinite
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_UTF16_ORDER_RISK = "\ue000"  # keys with a char >= this may sort differently in UTF-16


class _Invalid(Exception):
    """Internal: a non-JSON node; ``segments`` collects the path bottom-up."""

    def __init__(self, reason: str, value: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.value = value
        self.segments: list[str] = []


def _segment(key: Any) -> str:
    if type(key) is int:
        return f"[{key}]"
    if isinstance(key, str) and _IDENTIFIER.match(key):
        return "." + key
    return "[" + json.dumps(key if isinstance(key, str) else repr(key)) + "]"


def _path(segments: list[str]) -> str:
    path = "".join(reversed(segments))
    if not path:
        return "(root)"
    return path[1:] if path.startswith(".") else path


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _classify_float(value: float) -> int:
    if not _isfinite(value):
        raise _Invalid("NaN and infinities are not JSON", value)
    magnitude = -value if value < 0 else value
    if 1e-4 <= magnitude < 1e16 and not value.is_integer():
        return _FAST
    return _FLOATS


def _scan_other(value: Any, depth: int) -> int:
    """Classify a node whose type is not an exact JSON type (subclasses go _SLOW)."""
    if isinstance(value, str):
        return _SLOW
    if isinstance(value, int):  # int subclasses (IntEnum); bool is handled before
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return _SLOW
        raise _Invalid("integer outside +-(2**53-1) cannot be represented exactly", value)
    if isinstance(value, float):
        _classify_float(value)
        return _SLOW
    if isinstance(value, dict):
        return _scan_dict(value, depth) | _SLOW
    if isinstance(value, (list, tuple)):
        return _scan_list(value, depth) | _SLOW
    raise _Invalid(f"{type(value).__name__} is not a JSON value", value)


def _scan_value(value: Any, depth: int) -> int:
    t = type(value)
    if t is str or t is bool or value is None:
        return _FAST
    if t is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return _FAST
        raise _Invalid("integer outside +-(2**53-1) cannot be represented exactly", value)
    if t is float:
        return _classify_float(value)
    if t is dict:
        return _scan_dict(value, depth)
    if t is list or t is tuple:
        return _scan_list(value, depth)
    return _scan_other(value, depth)


def _scan_dict(node: dict, depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise _Invalid(f"nesting deeper than {MAX_DEPTH} levels", node)
    depth += 1
    flags = _FAST
    key: Any = None
    try:
        for key, value in node.items():
            if type(key) is not str:
                if not isinstance(key, str):
                    raise _Invalid(f"object key of type {type(key).__name__} is not a string", key)
                flags |= _SLOW
            elif not key.isascii() and max(key) >= _UTF16_ORDER_RISK:
                flags |= _SLOW
            t = type(value)
            if t is str or t is bool or value is None:
                continue
            if t is int:
                if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                    continue
                raise _Invalid("integer outside +-(2**53-1) cannot be represented exactly", value)
            if t is float:
                flags |= _classify_float(value)
            elif t is dict:
                flags |= _scan_dict(value, depth)
            elif t is list or t is tuple:
                flags |= _scan_list(value, depth)
            else:
                flags |= _scan_other(value, depth)
    except _Invalid as invalid:
        invalid.segments.append(_segment(key))
        raise
    return flags


def _scan_list(node: list | tuple, depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise _Invalid(f"nesting deeper than {MAX_DEPTH} levels", node)
    depth += 1
    flags = _FAST
    index = 0
    try:
        for index, value in enumerate(node):
            t = type(value)
            if t is str or t is bool or value is None:
                continue
            flags |= _scan_value(value, depth)
    except _Invalid as invalid:
        invalid.segments.append(f"[{index}]")
        raise
    return flags


def _find_unencodable(value: Any, depth: int = 0) -> None:
    """Raise _Invalid at the first string (key or value) that is not valid UTF-8 (lone surrogates)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid("string holds a lone surrogate (not valid Unicode)", value) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            try:
                _find_unencodable(key, depth + 1)
                _find_unencodable(item, depth + 1)
            except _Invalid as invalid:
                invalid.segments.append(_segment(key))
                raise
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            try:
                _find_unencodable(item, depth + 1)
            except _Invalid as invalid:
                invalid.segments.append(f"[{index}]")
                raise


def es6_number(value: float) -> str:
    """Format a finite float as ECMAScript Number.prototype.toString does (RFC 8785 section 3.2.2.3)."""
    if not _isfinite(value):
        raise ValidationError(f"(root): NaN and infinities are not JSON: {value!r}", field="(root)", value=value)
    if value == 0:
        return "0"  # also -0.0, as RFC 8785 requires
    text = repr(float(value))  # shortest round-trip digits, as ECMAScript requires
    if "e" not in text:  # 1e-4 <= |value| < 1e16: plain decimal, same digits as ECMAScript
        return text[:-2] if text.endswith(".0") else text
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, exponent_text = text.split("e")
    digits = mantissa.replace(".", "").rstrip("0") or "0"
    point = int(exponent_text) + 1  # value = 0.<digits> * 10**point
    count = len(digits)
    if count <= point <= 21:
        body = digits + "0" * (point - count)
    elif 0 < point <= 21:
        body = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        body = "0." + "0" * (-point) + digits
    else:
        exponent = point - 1
        body = digits[0] + ("." + digits[1:] if count > 1 else "") + "e" + ("+" if exponent > 0 else "-") + str(abs(exponent))
    return sign + body


def large_integers_as_doubles(value: Any) -> Any:
    """Copy of a parsed JSON value with integers beyond +-(2**53-1) that are exact doubles made floats.

    RFC 8785 reads every number as an IEEE 754 double and writes an integral
    double such as ``1e20`` as ``100000000000000000000``; a Python JSON parser
    reads that back as an ``int``, which :func:`canonical_json` refuses. A
    verifier applies this first, so such a value canonicalizes as the double
    it was signed as. Integers not written as RFC 8785 writes some double stay
    integers (and are refused).
    """
    t = type(value)
    if t is int and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        try:
            as_double = float(value)
        except OverflowError:
            return value
        # 5.228359080517314e16 is written 52283590805173140 (shortest digits, zero-padded),
        # which is not its exact value: compare texts, not numbers.
        return as_double if es6_number(as_double) == str(value) else value
    if t is dict:
        return {key: large_integers_as_doubles(item) for key, item in value.items()}
    if t is list or t is tuple:
        return [large_integers_as_doubles(item) for item in value]
    return value


def _with_float_fragments(value: Any) -> Any:
    """Copy of an exact-typed value with every float replaced by its ECMAScript form."""
    t = type(value)
    if t is float:
        return _Fragment(es6_number(value).encode())
    if t is dict:
        return {key: _with_float_fragments(item) for key, item in value.items()}
    if t is list or t is tuple:
        return [_with_float_fragments(item) for item in value]
    return value


def _invalid_to_error(invalid: _Invalid) -> ValidationError:
    field = _path(invalid.segments)
    return ValidationError(
        f"{field}: {invalid.reason}: {_short_repr(invalid.value)}", field=field, value=invalid.value
    )


def _diagnose(value: Any, cause: Exception) -> ValidationError:
    """Build the ValidationError for a value the scan accepted but the encoder refused."""
    try:
        _find_unencodable(value)
    except _Invalid as invalid:
        return _invalid_to_error(invalid)
    return ValidationError(f"(root): cannot canonicalize value: {cause}", field="(root)", value=None)


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 canonical JSON bytes of ``value`` (raises ValidationError naming the path)."""
    try:
        flags = _scan_value(value, 0)
    except _Invalid as invalid:
        raise _invalid_to_error(invalid) from None
    except RecursionError as e:
        raise ValidationError("(root): value nested too deeply", field="(root)", value=None) from e
    try:
        if flags == _FAST:
            return _dumps(value, option=_ORJSON_OPTIONS)
        if flags == _FLOATS:
            return _dumps(_with_float_fragments(value), option=_ORJSON_OPTIONS)
        return rfc8785.dumps(value)
    except (orjson.JSONEncodeError, rfc8785.CanonicalizationError) as e:
        raise _diagnose(value, e) from e
