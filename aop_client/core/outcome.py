"""Classification of one batch upload's answer into what the flusher must do (protocol section 2).

``classify`` is total: every status (including ``None`` for a timeout or a
connection error), every header map and every body maps to exactly one of the
closed set of outcomes below; it never raises on server input.

Decisions where the protocol is silent (also documented in docs/perf-drain.md):

* A 2xx whose body is not the documented batch response (garbage, cut
  because it was larger than the transport's limit, wrong shape, malformed ``rejected`` entry) is a
  ``Retry``: the client never acknowledges what it cannot read, because an
  unreadable ``rejected`` list could hide refused events. Re-sending is safe:
  the server deduplicates by ``event_id``. The Content-Type is not checked; the
  body's shape is.
* ``rejected`` entries naming an event that is not in the batch are ignored.
* 1xx and 3xx (redirects are not followed) are a ``Pause``: a misconfigured
  ``base_url`` is not fixed by retrying quickly and must not cost events.
* A status outside 100..599 is a ``Retry`` (a broken intermediary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

import orjson

from .backoff import parse_retry_after

__all__ = ["Outcome", "Delivered", "Split", "Pause", "Retry", "DeadLetter", "classify", "MAX_REASON_CHARS"]

#: Reasons longer than this are cut (a server could send megabytes of reason text).
MAX_REASON_CHARS = 500

_RETRYABLE_4XX = frozenset({408, 425, 429})
_SPLIT_STATUSES = frozenset({400, 413})
_AUTH_STATUSES = frozenset({401, 403})


@dataclass(frozen=True)
class Delivered:
    """A readable 2xx: ``delivered_ids`` are acknowledged, ``rejected`` (id -> reason) go to dead letters."""

    delivered_ids: tuple[str, ...]
    duplicates: int = 0
    rejected: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    """400/413 on a batch of two or more events: send the halves separately."""

    reason: str
    status: int


@dataclass(frozen=True)
class Pause:
    """Credentials refused (401/403) or an unusable answer (1xx/3xx): keep everything, back off, report."""

    reason: str
    status: int


@dataclass(frozen=True)
class Retry:
    """A retryable failure (timeouts, connection errors, 408/425/429/5xx, unreadable 2xx)."""

    reason: str
    retry_after: float | None = None
    status: int | None = None


@dataclass(frozen=True)
class DeadLetter:
    """The server refused the whole batch for good (other 4xx, or 400/413 on a single event)."""

    reason: str
    status: int


Outcome = Union[Delivered, Split, Pause, Retry, DeadLetter]


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def _body_excerpt(body: bytes) -> str:
    return _short(body[:MAX_REASON_CHARS].decode("utf-8", "replace").strip())


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return value if isinstance(value, str) else None
    return None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_batch_response(body: bytes, batch_ids: Sequence[str]) -> Delivered | str:
    """The Delivered outcome of a 2xx body, or a string saying why it cannot be read."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "2xx body is not JSON"
    if not isinstance(doc, dict):
        return f"2xx body is a JSON {type(doc).__name__}, not an object"
    if not _is_count(doc.get("accepted")):
        return f"2xx body field 'accepted' is {doc.get('accepted')!r}, not an int >= 0"
    duplicates = doc.get("duplicates", 0)
    if not _is_count(duplicates):
        return f"2xx body field 'duplicates' is {duplicates!r}, not an int >= 0"
    rejected_list = doc.get("rejected", [])
    if not isinstance(rejected_list, list):
        return f"2xx body field 'rejected' is a {type(rejected_list).__name__}, not a list"
    in_batch = set(batch_ids)
    rejected: dict[str, str] = {}
    for position, entry in enumerate(rejected_list):
        if not isinstance(entry, dict) or not isinstance(entry.get("event_id"), str):
            return f"2xx body field 'rejected[{position}]' has no string event_id"
        event_id = entry["event_id"]
        if event_id in in_batch:
            reason = entry.get("reason")
            rejected[event_id] = _short(reason if isinstance(reason, str) else "rejected by server")
    delivered = tuple(dict.fromkeys(batch_ids if not rejected else (i for i in batch_ids if i not in rejected)))
    return Delivered(delivered_ids=delivered, duplicates=duplicates, rejected=rejected)


def classify(
    status: int | None,
    headers: Mapping[str, str],
    body: bytes,
    *,
    batch_event_ids: Sequence[str],
    now: float,
    error: str | None = None,
    truncated: bool = False,
) -> Outcome:
    """Map one upload answer (status None = timeout/connection error) to the flusher's next move.

    ``truncated`` says the body was cut at the transport's size limit: a cut
    2xx body is never read (a prefix can parse while the whole does not).
    """
    if status is None:
        return Retry(reason=_short(f"no answer: {error or 'connection error or timeout'}"))
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        return Retry(reason=_short(f"invalid HTTP status {status!r}"), status=None)
    if 200 <= status <= 299:
        if truncated:
            return Retry(reason=f"HTTP {status} unreadable: body larger than the response size limit", status=status)
        read = _read_batch_response(body, batch_event_ids)
        if isinstance(read, Delivered):
            return read
        return Retry(reason=_short(f"HTTP {status} unreadable: {read}"), status=status)
    detail = _body_excerpt(body)
    reason = _short(f"HTTP {status}" + (f": {detail}" if detail else ""))
    if status in _AUTH_STATUSES or status < 200 or 300 <= status <= 399:
        return Pause(reason=reason, status=status)
    if status in _SPLIT_STATUSES:
        if len(batch_event_ids) > 1:
            return Split(reason=reason, status=status)
        return DeadLetter(reason=reason, status=status)
    if status in _RETRYABLE_4XX or status >= 500:
        return Retry(reason=reason, retry_after=parse_retry_after(_header(headers, "retry-after"), now), status=status)
    return DeadLetter(reason=reason, status=status)
