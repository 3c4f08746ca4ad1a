"""HMAC-SHA256 signatures of protocol v1: per-event ``sig`` and the request ``X-AOP-Signature``.

This module owns both sides of signing, as pure functions (no clock, no I/O:
callers pass ``now``):

* event signature: ``"v1=" + hex(HMAC-SHA256(key, canonical_json(event minus "sig")))``
  (:func:`event_signature`, :func:`sign_event`, the emit hot path :func:`signed_body`,
  :func:`verify_event`, and the verifier's hot paths :func:`verify_parsed_event` and
  :func:`verified_bodies`);
* request signature: ``"t=<unix seconds>,v1=<hex HMAC-SHA256(key, b"<t>." + body)>"``
  (:func:`request_signature`, :func:`parse_signature_header`, :func:`verify_request`).

Keys are ``str`` (encoded as UTF-8) or ``bytes``; they never appear in messages.
Comparisons use :func:`hmac.compare_digest`. HMAC-SHA256 is RFC 2104 over stdlib
``hashlib``, with the keyed inner/outer SHA-256 states computed once per key and
copied per message (:func:`_hmac_sha256_hex`): about 2.5x faster than the one-shot
:func:`hmac.digest` for a 355-byte event (OpenSSL 3 re-derives the key and fetches
the digest on every call) and 4x faster than ``cryptography``'s HMAC object (see
``bench/bench_sign.py`` and docs/perf-signing.md); a test checks it against
:func:`hmac.digest` for keys and messages of every length.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from typing import Any, Mapping

from .canonical import canonical_json, canonical_json_of_parsed, large_integers_as_doubles, orjson_form_of_parsed
from .errors import ConfigError, SignatureError, ValidationError
from .protocol import EVENT_SIG_RE as _EVENT_SIG

__all__ = [
    "event_signature",
    "sign_event",
    "signed_body",
    "verify_event",
    "verify_parsed_event",
    "verified_bodies",
    "request_signature",
    "parse_signature_header",
    "verify_request",
    "SIGNATURE_HEADER",
    "DEFAULT_TOLERANCE",
    "MAX_HEADER_LENGTH",
]

#: Name of the HTTP header carrying the request signature.
SIGNATURE_HEADER = "X-AOP-Signature"
#: Largest accepted distance, in seconds, between a request's ``t`` and the verifier's clock.
DEFAULT_TOLERANCE = 300.0
#: Longest ``X-AOP-Signature`` value parsed (a bound against hostile input).
MAX_HEADER_LENGTH = 4096

_SHA256_BLOCK = 64
_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))
_MAX_CACHED_KEYS = 16
_keyed_states: dict[Any, tuple[Any, Any]] = {}  # key -> (inner, outer) SHA-256 states; memory only
_sha256 = hashlib.sha256
_HEX64 = re.compile(r"[0-9a-f]{64}\Z", re.ASCII)
_TIMESTAMP = re.compile(r"[0-9]{1,15}\Z", re.ASCII)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z", re.ASCII)


def _key_bytes(key: str | bytes) -> bytes:
    """The HMAC key as bytes; refuses empty or non-text keys without echoing them."""
    if type(key) is bytes:
        raw = key
    elif isinstance(key, str):
        try:
            raw = key.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ConfigError("org_salt_key: key is not valid Unicode text", field="org_salt_key") from e
    elif isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
    else:
        raise ConfigError(
            f"org_salt_key: key must be str or bytes, got {type(key).__name__}", field="org_salt_key"
        )
    if not raw:
        raise ConfigError("org_salt_key: key is empty", field="org_salt_key")
    return raw


def _keyed(key: str | bytes) -> tuple[Any, Any]:
    """The SHA-256 states after absorbing key XOR ipad / key XOR opad (RFC 2104), cached per key."""
    try:
        return _keyed_states[key]
    except (KeyError, TypeError):  # TypeError: unhashable key such as bytearray
        pass
    raw = _key_bytes(key)
    block = _sha256(raw).digest() if len(raw) > _SHA256_BLOCK else raw
    block = block.ljust(_SHA256_BLOCK, b"\0")
    states = (_sha256(block.translate(_INNER_PAD)), _sha256(block.translate(_OUTER_PAD)))
    if type(key) is str or type(key) is bytes:
        if len(_keyed_states) >= _MAX_CACHED_KEYS:
            _keyed_states.clear()
        _keyed_states[key] = states
    return states


def _hmac_sha256_hex(key: str | bytes, message: bytes) -> str:
    """Lowercase hex HMAC-SHA256(key, message), equal to ``hmac.digest(key, message, "sha256").hex()``."""
    inner_state, outer_state = _keyed(key)
    inner = inner_state.copy()
    inner.update(message)
    outer = outer_state.copy()
    outer.update(inner.digest())
    return outer.hexdigest()


def _event_dict(event: Mapping) -> dict:
    if type(event) is dict:
        return event
    if isinstance(event, Mapping):
        return dict(event)
    raise ValidationError(
        f"(root): an event must be a JSON object (mapping), got {type(event).__name__}",
        field="(root)",
        value=type(event).__name__,
    )


def _unsigned_canonical(event: Mapping) -> bytes:
    """canonical_json of the event without its ``sig`` field."""
    event = _event_dict(event)
    if "sig" in event:
        event = {name: value for name, value in event.items() if name != "sig"}
    return canonical_json(event)


def event_signature(event: Mapping, key: str | bytes) -> str:
    """Return ``"v1=<64 lowercase hex>"``: HMAC-SHA256 over the canonical event without ``sig``."""
    return "v1=" + _hmac_sha256_hex(key, _unsigned_canonical(event))


def sign_event(event: Mapping, key: str | bytes) -> dict:
    """Return a new dict: the event with ``sig`` set (an existing ``sig`` is ignored and replaced)."""
    signed = dict(event)
    signed["sig"] = event_signature(event, key)
    return signed


def signed_body(event: Mapping, key: str | bytes | None) -> tuple[str | None, bytes]:
    """Return ``(sig or None, UTF-8 JSON bytes of the event with that sig)``: the emit hot path.

    The bytes are the canonical form of the event without ``sig``, with ``"sig"``
    spliced in as the last member when a key is given (so they parse back to the
    event plus ``sig``, but are not themselves canonical). An existing ``sig`` in
    ``event`` is always dropped; with ``key=None`` the body carries no ``sig``.
    Raises ValidationError (non-JSON value, with its path) or ConfigError (bad key).
    """
    canonical = _unsigned_canonical(event)
    if key is None:
        return None, canonical
    sig = "v1=" + _hmac_sha256_hex(key, canonical)
    return sig, _with_sig(canonical, sig)


def _with_sig(canonical: bytes, sig: str) -> bytes:
    """The canonical object bytes with ``"sig"`` spliced in as the last member."""
    if len(canonical) == 2:  # b"{}"
        return b'{"sig":"' + sig.encode() + b'"}'
    return b"".join((canonical[:-1], b',"sig":"', sig.encode(), b'"}'))


def verify_event(event: Mapping, key: str | bytes) -> None:
    """Check an event's ``sig`` in constant time; raise SignatureError saying why it fails."""
    if not isinstance(event, Mapping):
        raise SignatureError(f"malformed event: expected a JSON object, got {type(event).__name__}")
    sig = event.get("sig")
    if sig is None:
        raise SignatureError("missing signature: the event has no 'sig' field")
    if not isinstance(sig, str) or not _EVENT_SIG.match(sig):
        raise SignatureError("malformed signature: 'sig' must be 'v1=' followed by 64 lowercase hex digits")
    try:
        expected = event_signature(event, key)
    except ValidationError as strict_error:
        # A parsed body may hold ints > 2**53 that were integral doubles when signed (1e20 is
        # written 100000000000000000000); read them back as doubles, as RFC 8785 does.
        try:
            expected = event_signature(large_integers_as_doubles(_event_dict(event)), key)
        except ValidationError:
            raise SignatureError(f"unverifiable event: {strict_error}") from strict_error
    if not hmac.compare_digest(expected.encode(), sig.encode()):
        raise SignatureError("signature mismatch: 'sig' does not match the event content")


_ABSENT = object()
_MALFORMED_SIG = "malformed signature: 'sig' must be 'v1=' followed by 64 lowercase hex digits"


def verify_parsed_event(event: dict, key: str | bytes) -> bytes:
    """:func:`verify_event` for an event dict fresh from ``orjson.loads``; returns its signed body bytes.

    Same checks, same SignatureError reasons, but faster: ``sig`` is popped
    and put back (it becomes the last key) instead of copying the event, and
    the canonical form comes from :func:`canonical_json_of_parsed`. The bytes
    returned are what :func:`signed_body` writes for the event: its canonical
    form without ``sig``, with ``sig`` spliced in as the last member.
    """
    if type(event) is not dict:
        if not isinstance(event, Mapping):
            raise SignatureError(f"malformed event: expected a JSON object, got {type(event).__name__}")
        event = dict(event)
    sig = event.pop("sig", _ABSENT)
    try:
        if sig is _ABSENT or sig is None:
            raise SignatureError("missing signature: the event has no 'sig' field")
        if type(sig) is not str or not sig.isascii():
            raise SignatureError(_MALFORMED_SIG)
        try:
            canonical = canonical_json_of_parsed(event)
        except ValidationError as strict_error:
            if not _EVENT_SIG.match(sig):
                raise SignatureError(_MALFORMED_SIG) from None
            # As in verify_event: integral doubles beyond 2**53 were parsed back as ints. Their
            # canonical text equals the ints' text, so the body below still holds the parsed ints.
            try:
                canonical = canonical_json(large_integers_as_doubles(event))
            except ValidationError:
                raise SignatureError(f"unverifiable event: {strict_error}") from strict_error
        # Equal to a fresh hex digest means well formed: the format check is needed only to explain a failure.
        if not hmac.compare_digest("v1=" + _hmac_sha256_hex(key, canonical), sig):
            if not _EVENT_SIG.match(sig):
                raise SignatureError(_MALFORMED_SIG)
            raise SignatureError("signature mismatch: 'sig' does not match the event content")
        return _with_sig(canonical, sig)
    finally:
        if sig is not _ABSENT:
            event["sig"] = sig


def verified_bodies(events: list, key: str | bytes) -> list[bytes | None]:
    """For a batch fresh from ``orjson.loads``: each event's signed body when its ``sig`` checks out, else None.

    The verifier's batch hot path. An event gets its body (the bytes
    :func:`verify_parsed_event` returns) only when the common case holds: a
    dict whose ``sig`` is ``"v1=" + 64 hex`` and matches, with an orjson form
    that is already RFC 8785. None means "not decided here": the caller asks
    :func:`verify_parsed_event` for the verdict or the reason. Never raises
    for an event; each dict gets its ``sig`` back as its last key.
    """
    _keyed(key)  # a bad key raises here, once, not once per event
    compare = hmac.compare_digest
    bodies: list[bytes | None] = []
    append = bodies.append
    for event in events:
        if type(event) is not dict:
            append(None)
            continue
        sig = event.pop("sig", _ABSENT)
        body = None
        if type(sig) is str and len(sig) == 67 and sig.isascii() and sig.startswith("v1="):
            encoded = orjson_form_of_parsed(event)
            if encoded is not None and compare(_hmac_sha256_hex(key, encoded), sig[3:]):
                body = _with_sig(encoded, sig)
        if sig is not _ABSENT:
            event["sig"] = sig
        append(body)
    return bodies


def _timestamp(now: float) -> int:
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now) or now < 0:
        raise ValidationError(f"now: must be a finite, non-negative unix time, got {now!r}", field="now", value=now)
    return int(now)


def _body_bytes(body: Any) -> bytes:
    if type(body) is bytes:
        return body
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise ValidationError(f"body: must be bytes, got {type(body).__name__}", field="body", value=type(body).__name__)


def _request_digest(key: str | bytes, timestamp: int, body: bytes) -> str:
    return _hmac_sha256_hex(key, b"%d." % timestamp + body)


def request_signature(body: bytes, key: str | bytes, *, now: float) -> str:
    """Return the ``X-AOP-Signature`` value ``"t=<int(now)>,v1=<hex HMAC-SHA256(key, b'<t>.' + body)>"``."""
    timestamp = _timestamp(now)
    return f"t={timestamp},v1={_request_digest(key, timestamp, _body_bytes(body))}"


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """Parse ``"t=<digits>,v1=<hex>[,v1=<hex>...]"`` into ``(t, [v1 hex, ...])``.

    Whitespace around items, keys and values is ignored, as are empty items and
    items of unknown schemes (e.g. a future ``v2=``); exactly one ``t`` and at
    least one ``v1`` are required. Raises SignatureError naming the problem.
    """
    if not isinstance(header, str):
        raise SignatureError(f"malformed signature header: expected text, got {type(header).__name__}")
    if len(header) > MAX_HEADER_LENGTH:
        raise SignatureError(f"malformed signature header: {len(header)} characters, limit {MAX_HEADER_LENGTH}")
    timestamp: int | None = None
    signatures: list[str] = []
    for position, item in enumerate(header.split(",")):
        item = item.strip()
        if not item:
            continue
        name, separator, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not separator or not _SCHEME.match(name):
            raise SignatureError(f"malformed signature header: item {position} is not 'name=value'")
        if name == "t":
            if timestamp is not None:
                raise SignatureError("malformed signature header: more than one 't' item")
            if not _TIMESTAMP.match(value):
                raise SignatureError(
                    f"malformed signature header: t={value[:20]!r} is not a unix time in decimal digits"
                )
            timestamp = int(value)
        elif name == "v1":
            if not _HEX64.match(value):
                raise SignatureError(
                    f"malformed signature header: v1 item {position} is not 64 lowercase hex digits"
                )
            signatures.append(value)
    if timestamp is None:
        raise SignatureError("malformed signature header: no 't' item")
    if not signatures:
        raise SignatureError("malformed signature header: no 'v1' item")
    return timestamp, signatures


def verify_request(
    body: bytes,
    header: str | None,
    key: str | bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Check an ``X-AOP-Signature`` against the body and clock; raise SignatureError naming the reason."""
    if header is None:
        raise SignatureError(f"missing signature: no {SIGNATURE_HEADER} header")
    timestamp, signatures = parse_signature_header(header)
    _timestamp(now)  # validates now
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ValidationError(
            f"tolerance: must be a non-negative number, got {tolerance!r}", field="tolerance", value=tolerance
        )
    skew = now - timestamp
    if abs(skew) > tolerance:
        side = "in the past" if skew > 0 else "in the future"
        raise SignatureError(
            f"stale timestamp: t={timestamp} is {abs(round(skew))} s from now ({side}, tolerance {tolerance:g} s)"
        )
    expected = _request_digest(key, timestamp, _body_bytes(body)).encode()
    matched = False
    for candidate in signatures:
        matched |= hmac.compare_digest(expected, candidate.encode())
    if not matched:
        raise SignatureError("signature mismatch: no v1 signature matches the body")
