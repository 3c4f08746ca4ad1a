"""The collector's sans-I/O half of protocol v1: decode and check request bodies, judge events.

Pure functions over bytes and parsed JSON: no clock (``now`` is passed in),
no sockets, no database. The aiohttp app (``app.py``) turns their verdicts
into HTTP answers; :class:`RequestRefused` carries the status and reason.
The rules an event is judged by (envelope, event types, seq bound, JSON value
limits) are :mod:`aop_client.protocol`'s; this module applies them to requests.
"""

from __future__ import annotations

import hmac
import types
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import orjson

from ..errors import SignatureError
from ..protocol import (EVENT_TYPES, MAX_JSON_DEPTH, MAX_SAFE_INTEGER, MAX_SEQ, envelope_refusal,
                      is_uuid, json_error, well_formed_envelope)
from ..signing import verified_bodies, verify_event, verify_parsed_event, verify_request

_inflate: types.ModuleType
try:  # ISA-L inflates a 500-event batch in 0.21 ms (zlib: 0.60 ms); same API, same bound on the output
    from isal import isal_zlib as _inflate
except ImportError:  # the 'fast' extra is not installed: zlib, the same format
    _inflate = zlib
_INFLATE_ERRORS: tuple[type[BaseException], ...] = (zlib.error, _inflate.error)

__all__ = [
    "RequestRefused",
    "BatchRequest",
    "CompletionRequest",
    "EVENT_TYPES",
    "check_api_key",
    "check_request_signature",
    "decode_body",
    "parse_batch",
    "event_refusal",
    "event_verdict",
    "judge_events",
    "judge_batch",
    "JudgedBatch",
    "parse_completion",
    "missing_seqs",
    "MAX_MISSING_LISTED",
]

MAX_MISSING_LISTED = 100_000  # a run completion lists at most this many missing seqs
_MAX_REASON = 300


class RequestRefused(Exception):
    """The whole request is refused with ``status`` (400, 401, 413) for ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason[:_MAX_REASON]


@dataclass(frozen=True)
class BatchRequest:
    """A parsed batch body: its id and its events (parsed JSON values, not yet judged)."""

    batch_id: str
    events: list


@dataclass(frozen=True)
class CompletionRequest:
    """A parsed run-completion body."""

    run_id: str
    agent_id: int
    event_count: int
    last_seq: int


def check_api_key(authorization: Optional[str], api_key: str) -> None:
    """Refuse (401) unless ``authorization`` is ``Bearer <api_key>`` (constant-time compare)."""
    if not authorization:
        raise RequestRefused(401, "missing Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RequestRefused(401, "Authorization header is not 'Bearer <api_key>'")
    if not hmac.compare_digest(token.strip().encode("utf-8", "replace"), api_key.encode()):
        raise RequestRefused(401, "invalid API key")


def check_request_signature(body: bytes, header: Optional[str], org_salt_key: Optional[str], *,
                            now: float, tolerance: float) -> None:
    """Refuse (401) a missing, stale or wrong X-AOP-Signature when an org salt key is configured."""
    if org_salt_key is None:
        return
    try:
        verify_request(body, header, org_salt_key, now=now, tolerance=tolerance)
    except SignatureError as e:
        raise RequestRefused(401, f"X-AOP-Signature: {e.reason}") from e


def decode_body(raw: bytes, content_encoding: Optional[str], *, max_decompressed: int) -> bytes:
    """Undo ``Content-Encoding`` (identity or gzip); 400 for unknown/corrupt, 413 above ``max_decompressed``."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        if len(raw) > max_decompressed:
            raise RequestRefused(413, f"body of {len(raw)} bytes exceeds {max_decompressed}")
        return raw
    if encoding not in ("gzip", "x-gzip"):
        raise RequestRefused(400, f"unsupported Content-Encoding {encoding[:40]!r} (use gzip or identity)")
    inflater = _inflate.decompressobj(31)
    try:
        out = inflater.decompress(raw, max_decompressed + 1)
        if len(out) > max_decompressed:
            raise RequestRefused(413, f"gunzipped body exceeds {max_decompressed} bytes")
        if not inflater.eof:
            raise RequestRefused(400, "gzip body is truncated")
        if inflater.unused_data:
            raise RequestRefused(400, "trailing data after the gzip stream")
    except _INFLATE_ERRORS as e:
        raise RequestRefused(400, f"gzip body is corrupt: {e}") from e
    return out


def _load_json_object(body: bytes, what: str) -> dict:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise RequestRefused(400, f"{what} is not valid UTF-8 JSON: {e}") from e
    if not isinstance(value, dict):
        raise RequestRefused(400, f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def parse_batch(body: bytes, idempotency_key: Optional[str]) -> BatchRequest:
    """Parse ``{"batch_id", "events": [...]}``; 400 when the shape is wrong or the key disagrees."""
    doc = _load_json_object(body, "batch body")
    batch_id = doc.get("batch_id")
    if not isinstance(batch_id, str) or not batch_id:
        raise RequestRefused(400, f"batch_id must be a non-empty string, got {batch_id!r}"[:_MAX_REASON])
    events = doc.get("events")
    if not isinstance(events, list):
        raise RequestRefused(400, f"events must be a list, got {type(events).__name__}")
    if idempotency_key is not None and idempotency_key != batch_id:
        raise RequestRefused(400, f"Idempotency-Key {idempotency_key[:60]!r} differs from batch_id {batch_id[:60]!r}")
    return BatchRequest(batch_id, events)


_dumps = orjson.dumps
_STRICT = orjson.OPT_STRICT_INTEGER


def _unsigned_body(event: dict) -> tuple[Optional[str], Optional[bytes]]:
    """``(reason, None)`` when an unsigned event breaks the protocol's value limits, else ``(None, body)``.

    Signed events meet the limits through canonical JSON; here orjson's 53-bit integer
    check and a bracket count (an upper bound of the depth) keep the common case cheap,
    and anything they doubt goes to the protocol's walk for the verdict.
    """
    try:
        body = _dumps(event, option=_STRICT)
    except TypeError:
        body = None
    if body is not None and body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return None, body
    error = json_error(event)
    if error is not None:
        return str(error)[:_MAX_REASON], None
    return None, body if body is not None else _dumps(event)


def event_verdict(event: Any, org_salt_key: Optional[str]) -> tuple[Optional[str], Optional[bytes]]:
    """``(reason, None)`` when one event of a batch is rejected, else ``(None, body bytes to store)``.

    The reasons are :func:`event_refusal`'s. With a key, the body is the event's
    canonical form with ``sig`` spliced in last (what the client signed and sent);
    without one, orjson's encoding of the event.
    """
    if not well_formed_envelope(event):  # the common case in one call; else the reference's verdict
        reason = envelope_refusal(event)
        if reason is not None:
            return reason[:_MAX_REASON], None
    if org_salt_key is not None:
        try:
            return None, verify_parsed_event(event, org_salt_key)
        except SignatureError as e:
            return f"sig: {e.reason}"[:_MAX_REASON], None
    if "sig" in event and not isinstance(event["sig"], str):
        return f"sig must be a string, got {type(event['sig']).__name__}", None
    return _unsigned_body(event)


def judge_events(events: list, org_salt_key: Optional[str]) -> tuple[list[tuple], list[dict]]:
    """Judge every event of a parsed batch: ``(accepted, rejected)``, each in batch order.

    ``accepted`` holds ``(event_id, run_id, seq, agent_id, type, body)`` tuples
    (IncomingEvent's field order); ``rejected`` the protocol's
    ``{"event_id", "reason"}`` items, the reason prefixed with ``events[<index>]``.
    Verdicts and bodies are :func:`event_verdict`'s; with a key, the common case
    (well-formed envelope, good signature) is decided for the whole batch at once
    by :func:`~aop_client.signing.verified_bodies`, everything else one by one.
    """
    accepted: list[tuple] = []
    rejected: list[dict] = []
    bodies = verified_bodies(events, org_salt_key) if org_salt_key is not None else None
    for index, event in enumerate(events):
        body = bodies[index] if bodies is not None else None
        if body is None or not well_formed_envelope(event):
            reason, body = event_verdict(event, org_salt_key)
            if reason is not None:
                event_id = event.get("event_id") if isinstance(event, dict) else None
                rejected.append({"event_id": event_id if isinstance(event_id, str) else None,
                                 "reason": f"events[{index}]: {reason}"})
                continue
        accepted.append((event["event_id"], event["run_id"], event["seq"], event["agent_id"], event["type"], body))
    return accepted, rejected


@dataclass(frozen=True)
class JudgedBatch:
    """A batch body after every event was judged: what to store and what to reject."""

    batch_id: str
    event_count: int
    accepted: list  # (event_id, run_id, seq, agent_id, type, body) tuples, batch order
    rejected: list  # {"event_id", "reason"} items, batch order


def judge_batch(body: bytes, idempotency_key: Optional[str], org_salt_key: Optional[str]) -> JudgedBatch:
    """:func:`parse_batch` then :func:`judge_events`: a decoded batch body judged event by event."""
    batch = parse_batch(body, idempotency_key)
    accepted, rejected = judge_events(batch.events, org_salt_key)
    return JudgedBatch(batch.batch_id, len(batch.events), accepted, rejected)


def event_refusal(event: Any, org_salt_key: Optional[str]) -> Optional[str]:
    """Why one event of a batch is rejected (a reason naming the field), or None when it is acceptable."""
    reason = envelope_refusal(event)
    if reason is not None:
        return reason[:_MAX_REASON]
    if org_salt_key is not None:
        try:
            verify_event(event, org_salt_key)
        except SignatureError as e:
            return f"sig: {e.reason}"[:_MAX_REASON]
    elif "sig" in event and not isinstance(event["sig"], str):
        return f"sig must be a string, got {type(event['sig']).__name__}"
    else:
        return _unsigned_body(event)[0]
    return None


def parse_completion(body: bytes, path_run_id: str) -> CompletionRequest:
    """Parse a run-completion body and check it against the run id in the URL (400 otherwise)."""
    doc = _load_json_object(body, "run completion body")
    run_id = doc.get("run_id")
    if run_id != path_run_id:
        raise RequestRefused(400, f"run_id {run_id!r} does not match the URL's {path_run_id!r}"[:_MAX_REASON])
    if not is_uuid(run_id):
        raise RequestRefused(400, f"run_id must be a UUID string, got {run_id!r}"[:_MAX_REASON])
    values: dict[str, int] = {}
    for name, low, high in (("agent_id", -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER), ("event_count", 0, MAX_SEQ),
                            ("last_seq", 0, MAX_SEQ)):
        value = doc.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise RequestRefused(400, f"{name} must be an integer in {low}..{high}, got {value!r}"[:_MAX_REASON])
        values[name] = value
    return CompletionRequest(run_id, values["agent_id"], values["event_count"], values["last_seq"])


def missing_seqs(present: Iterable[int], last_seq: int, *, limit: int = MAX_MISSING_LISTED) -> tuple[list[int], int]:
    """The first ``limit`` seqs of 1..last_seq absent from ``present`` (sorted), and how many are absent."""
    have = sorted({s for s in present if 1 <= s <= last_seq})
    listed: list[int] = []
    expected = 1
    for seq in have + [last_seq + 1]:
        if seq > expected and len(listed) < limit:
            listed.extend(range(expected, min(seq, expected + limit - len(listed))))
        expected = seq + 1
    return listed, last_seq - len(have)


def batch_answer(accepted: int, duplicates: int, rejected: Iterable[Mapping[str, Any]]) -> dict:
    """The 200 body of protocol section 2."""
    return {"accepted": accepted, "duplicates": duplicates, "rejected": list(rejected)}
