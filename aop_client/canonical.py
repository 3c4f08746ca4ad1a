"""Canonical JSON (RFC 8785, JSON Canonicalization Scheme) of event values: pure, no I/O.

This module owns the byte form that event signatures cover. Its one public
function, :func:`canonical_json`, returns exactly the bytes of the reference
implementation ``rfc8785.dumps`` for every value that it accepts (a hypothesis
property test in ``tests/test_canonical.py`` checks this byte for byte), but
about 10-40x faster on typical events.

How it is fast: one lean Python pass (:func:`_scan`) looks only at value types,
integer range and floats, and picks an encoder:

* ``_FAST`` - only plain ``dict``/``list``/``tuple``/``str``/``int``/``bool``/``None``
  and floats whose shortest decimal form is the same in orjson and ECMAScript
  (non-integral, 1e-4 <= |f| < 1e16): ``orjson.dumps(OPT_SORT_KEYS)`` is RFC 8785
  here, because orjson escapes strings exactly as RFC 8785 does (only U+0000-U+001F,
  ``"`` and ``\\``, with the same short forms and lowercase ``\\u00xx``) and sorts
  keys by code point, which equals UTF-16 order unless a key holds a character at
  or above U+E000 (checked afterwards, only when the output holds such a character;
  then objects are re-sorted by UTF-16 code units);
* ``_FLOATS`` - some other float (1.0, 1e16, 1e-7, -0.0 ...): the containers on the
  way to each float are copied with the float as an ``orjson.Fragment`` of its
  ECMAScript form (:func:`es6_number`);
* ``_SLOW`` - subclasses of the JSON types and anything else: the reference
  ``rfc8785.dumps`` itself, which is also used whenever orjson refuses a value.

:func:`canonical_json_of_parsed`, for values fresh from ``orjson.loads``, skips
the walk: orjson encodes at once, and byte searches of the output for every token
orjson may write differently from RFC 8785 send the rare value they hit back here.

When a value is refused, a thorough second walk (:func:`_locate_invalid`) finds the
offending node and names its path.

Refused (``ValidationError`` naming the path, e.g. ``payload.steps[0].confidence``,
and the value): NaN and infinities (orjson would silently write ``null``), integers
outside +-(2**53-1) (as ``rfc8785`` does), non-string keys, strings holding lone
surrogates, nesting deeper than :data:`MAX_DEPTH`, and any other type (sets,
bytes, datetimes, UUIDs, enums that are not str/int, dataclasses ...). ``-0.0``
is written ``0`` (RFC 8785 and ``rfc8785``); a str- or int-valued enum member is
written as its str/int value, as ``rfc8785`` does.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
import rfc8785

from .errors import ValidationError
from .protocol import MAX_JSON_DEPTH, MAX_SAFE_INTEGER, json_error

__all__ = ["canonical_json", "canonical_json_of_parsed", "orjson_form_of_parsed", "es6_number", "large_integers_as_doubles", "MAX_SAFE_INTEGER", "MAX_DEPTH"]

#: The protocol's limits (:mod:`aop_client.protocol`): |int| <= 2**53 - 1, nesting of at most
#: MAX_DEPTH objects/arrays (orjson itself stops at 255).
MAX_DEPTH = MAX_JSON_DEPTH

_FAST = 0
_FLOATS = 1
_SLOW = 2

_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
_dumps = orjson.dumps
_Fragment = orjson.Fragment
_isfinite = math.isfinite
_UTF16_ORDER_RISK = "\ue000"  # keys with a char >= this may sort differently in UTF-16
_HIGH_UTF8 = re.compile(b"[\xee-\xf4]")  # UTF-8 lead bytes of U+E000 and above
_TWO_53 = 9007199254740992.0


class _Invalid(Exception):
    """Internal: the scan met a node it refuses; the protocol's walk then names the path and reason."""


def _scan(node: Any, depth: int) -> int:
    """Classify a value for the encoder (_FAST/_FLOATS/_SLOW); raise _Invalid (no path) on non-JSON.

    It applies the protocol's limits (nesting, integer bound, finite floats) with
    the same depth count as :func:`aop_client.protocol.check_json`; what it refuses
    is judged and explained by that walk.

    The hot path: no path bookkeeping and no key checks (orjson refuses non-str
    keys and lone surrogates itself, and the reference path then locates them).
    """
    t = type(node)
    if t is dict:
        if depth >= MAX_DEPTH:
            raise _Invalid()
        depth += 1
        flags = _FAST
        for value in node.values():
            t = type(value)
            if t is str or value is None or t is bool:
                continue
            if t is int:
                if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                    continue
                raise _Invalid()
            if t is float:
                if 1e-4 <= value < 1e16 or -1e16 < value <= -1e-4:
                    if not value.is_integer():
                        continue
                elif not _isfinite(value):
                    raise _Invalid()
                flags |= _FLOATS
                continue
            flags |= _scan(value, depth)
        return flags
    if t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise _Invalid()
        depth += 1
        flags = _FAST
        for value in node:
            t = type(value)
            if t is str or value is None or t is bool:
                continue
            flags |= _scan(value, depth)
        return flags
    if t is str or node is None or t is bool:
        return _FAST
    if t is int:
        if -MAX_SAFE_INTEGER <= node <= MAX_SAFE_INTEGER:
            return _FAST
        raise _Invalid()
    if t is float:
        if not _isfinite(node):
            raise _Invalid()
        return _FLOATS
    return _SLOW  # subclasses and other types: the reference encoder decides


def _has_utf16_order_risk(value: Any) -> bool:
    """True if some object key holds a character >= U+E000 (code point and UTF-16 order may differ)."""
    t = type(value)
    if t is dict:
        for key, item in value.items():
            if not key.isascii() and max(key) >= _UTF16_ORDER_RISK:
                return True
            if _has_utf16_order_risk(item):
                return True
    elif t is list or t is tuple:
        return any(_has_utf16_order_risk(item) for item in value)
    return False


def es6_number(value: float) -> str:
    """Format a finite float as ECMAScript Number.prototype.toString does (RFC 8785 section 3.2.2.3)."""
    if type(value) is not float:
        value = float(value)
    if value.is_integer() and -_TWO_53 < value < _TWO_53:
        return str(int(value))  # exact and shortest below 2**53; -0.0 gives "0" as RFC 8785 requires
    if not _isfinite(value):
        raise ValidationError(f"(root): NaN and infinities are not JSON: {value!r}", field="(root)", value=value)
    text = repr(value)  # shortest round-trip digits, as ECMAScript requires
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


def large_integers_as_doubles(value: Any, _room: int = MAX_DEPTH) -> Any:
    """Copy of a parsed JSON value with integers beyond +-(2**53-1) that are exact doubles made floats.

    RFC 8785 reads every number as an IEEE 754 double and writes an integral
    double such as ``1e20`` as ``100000000000000000000``; a Python JSON parser
    reads that back as an ``int``, which :func:`canonical_json` refuses. A
    verifier applies this first, so such a value canonicalizes as the double
    it was signed as. Integers not written as RFC 8785 writes some double stay
    integers (and are refused). Containers nested deeper than :data:`MAX_DEPTH`
    are returned as they are (canonical_json refuses them), so the copy never recurses
    past the protocol's limit.
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
    if (t is dict or t is list or t is tuple) and _room <= 0:
        return value
    if t is dict:
        return {key: large_integers_as_doubles(item, _room - 1) for key, item in value.items()}
    if t is list or t is tuple:
        return [large_integers_as_doubles(item, _room - 1) for item in value]
    return value


def _needs_fragment(value: float) -> bool:
    """True for floats that orjson writes differently from ECMAScript (the scan's _FLOATS case)."""
    return not ((1e-4 <= value < 1e16 or -1e16 < value <= -1e-4) and not value.is_integer())


def _with_float_fragments(value: Any) -> Any:
    """The value with each float orjson would misformat replaced by an ECMAScript Fragment.

    Only the containers on the way to such a float are copied; the rest is shared.
    """
    t = type(value)
    if t is dict:
        copy = None
        for key, item in value.items():
            kind = type(item)
            if kind is float:
                if _needs_fragment(item):
                    if copy is None:
                        copy = dict(value)
                    copy[key] = _Fragment(es6_number(item).encode())
            elif kind is dict or kind is list or kind is tuple:
                replaced = _with_float_fragments(item)
                if replaced is not item:
                    if copy is None:
                        copy = dict(value)
                    copy[key] = replaced
        return value if copy is None else copy
    if t is list or t is tuple:
        items = None
        for index, item in enumerate(value):
            kind = type(item)
            if kind is float:
                if not _needs_fragment(item):
                    continue
                replaced = _Fragment(es6_number(item).encode())
            elif kind is dict or kind is list or kind is tuple:
                replaced = _with_float_fragments(item)
                if replaced is item:
                    continue
            else:
                continue
            if items is None:
                items = list(value)
            items[index] = replaced
        return value if items is None else items
    if t is float:
        return _Fragment(es6_number(value).encode())
    return value


def _utf16_key(item: tuple[str, Any]) -> bytes:
    return item[0].encode("utf-16-be")


def _rebuilt_in_utf16_order(value: Any) -> Any:
    """Copy of an exact-typed value, objects in UTF-16 key order (RFC 8785), floats as Fragments."""
    t = type(value)
    if t is float:
        return _Fragment(es6_number(value).encode())
    if t is dict:
        return {key: _rebuilt_in_utf16_order(item) for key, item in sorted(value.items(), key=_utf16_key)}
    if t is list or t is tuple:
        return [_rebuilt_in_utf16_order(item) for item in value]
    return value


def _located_error(value: Any, cause: BaseException | None) -> ValidationError:
    """The ValidationError, naming path and value, for a value that was refused (the protocol's walk)."""
    error = json_error(value)
    if error is not None:
        return error
    return ValidationError(f"(root): cannot canonicalize value: {cause!r:.200}", field="(root)", value=None)


def _reference(value: Any) -> bytes:
    """The reference encoder, for values the fast encoders do not cover."""
    try:
        return rfc8785.dumps(value)
    except (ValueError, TypeError, RecursionError) as e:  # CanonicalizationError is a ValueError
        raise _located_error(value, e) from e


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 canonical JSON bytes of ``value`` (raises ValidationError naming the path)."""
    try:
        flags = _scan(value, 0)
    except _Invalid as invalid:
        raise _located_error(value, invalid) from None
    if flags & _SLOW:
        return _reference(value)
    try:
        if flags == _FAST:
            encoded = _dumps(value, option=_ORJSON_OPTIONS)
        else:
            encoded = _dumps(_with_float_fragments(value), option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: non-str key, lone surrogate ... or unsortable keys
        return _reference(value)
    if not encoded.isascii() and _HIGH_UTF8.search(encoded) and _has_utf16_order_risk(value):
        return _dumps(_rebuilt_in_utf16_order(value), option=orjson.OPT_STRICT_INTEGER)
    return encoded


# Subclasses, datetimes, dataclasses and ints beyond 2**53 make orjson raise instead of encoding.
_PARSED_OPTIONS = (_ORJSON_OPTIONS | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME
                   | orjson.OPT_PASSTHROUGH_DATACLASS)
# orjson writes a float as digits "." digits, or with "e+"/"e-"; the forms ECMAScript writes otherwise
# are integral floats (1.0, -0.0) and exponent forms (1e+16, 1e-7). Literal prefixes keep the searches
# at C speed; a string that merely looks like such a token only costs the slow path.
# One translate pass serves three checks: it deletes the brackets (their count bounds the depth)
# and turns "+" into "-", so one search finds both exponent signs. Neither change can hide a
# token (numbers hold no brackets); at worst it makes a string look like one.
_INTEGRAL_FLOAT = re.compile(rb"\.0[,\]}]")
_EXPONENT = re.compile(rb"e-[0-9]+[,\]}]")
_PLUS_AS_MINUS = bytes.maketrans(b"+", b"-")
_BRACKETS = b"[{"


def canonical_json_of_parsed(value: Any) -> bytes:
    """:func:`canonical_json` of a value as returned by ``orjson.loads`` (exact JSON types), faster.

    Same bytes and same errors as :func:`canonical_json` for such values (a
    hypothesis test checks this against ``rfc8785.dumps``). Other values, e.g.
    ``uuid.UUID`` or ``enum.Enum`` members, which orjson encodes but
    :func:`canonical_json` refuses, must go to :func:`canonical_json` itself.
    """
    kind = type(value)
    if kind is dict or kind is list:
        encoded = orjson_form_of_parsed(value)
        if encoded is not None:
            return encoded
    return canonical_json(value)


def orjson_form_of_parsed(value: Any) -> bytes | None:
    """orjson's sorted-keys encoding of a parsed dict or list when it is the RFC 8785 form; else None.

    The fast half of :func:`canonical_json_of_parsed`, for callers with their own
    slow path (None sends them there): no exception, no fallback encoding.
    """
    try:
        encoded = _dumps(value, option=_PARSED_OPTIONS)
    except TypeError:  # big int, lone surrogate, non-str key, subclass, too deep for orjson
        return None
    reduced = encoded.translate(_PLUS_AS_MINUS, _BRACKETS)
    if (
        len(encoded) - len(reduced) <= MAX_DEPTH
        and _INTEGRAL_FLOAT.search(reduced) is None
        and _EXPONENT.search(reduced) is None
        and (encoded.isascii() or _HIGH_UTF8.search(encoded) is None)
    ):
        return encoded
    return None
