"""Which kind of delivery failure an answer is, what to check for it, and when to say so (pure).

Two pure pieces, no I/O and no clock (the caller passes ``now``):

* :func:`failure_kind` maps one upload answer (status, headers, body, transport
  error text) to a closed set of kinds (:data:`HINTS` has one line of "what to
  check" per kind): a wrong API key, a refused request signature (wrong
  ``org_salt_key``), clock skew, connection refused, DNS, TLS, timeouts, 5xx ...
* :class:`ReportState` with :func:`on_failure` / :func:`on_success` decides the
  log lines: the first failure of each kind is reported at once (WARNING, with
  its cause and hint), then at most one "still failing (N times since HH:MM:SS)"
  line per kind every ``interval`` seconds, and one "recovered" line when a
  delivery succeeds again. It also says when the last error is worth writing
  down for other processes (``aop status``): on a change of kind, on recovery,
  or at most every ``persist_every`` seconds.

The texts built here carry only what they are given (the flusher passes
reasons made of statuses, exception types and server error text, never an
event's content).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Mapping, Optional

__all__ = ["HINTS", "failure_kind", "KindRecord", "ReportState", "Report", "Decision", "on_failure",
           "on_success", "clock_text", "DELIVERY_KINDS", "REPORT_INTERVAL", "PERSIST_EVERY", "SIGNATURE_WINDOW"]

#: Seconds between two "still failing" lines of one kind.
REPORT_INTERVAL = 60.0
#: Longest time between two writes of an unchanged kind's last error.
PERSIST_EVERY = 5.0
#: The protocol's request signature window (seconds of clock difference a server accepts).
SIGNATURE_WINDOW = 300.0

#: What to check, per kind of failure.
HINTS: Mapping[str, str] = {
    "auth": "the server refused the API key: check api_key (AOP_API_KEY) and that it is valid for base_url",
    "signature": "the server refused the request signature: check that org_salt_key (AOP_ORG_SALT_KEY) is "
                 "the organisation's salt key",
    "clock_skew": f"the request timestamp is outside the server's +-{SIGNATURE_WINDOW:g} s signature window: "
                  "check this host's clock (NTP)",
    "refused": "nothing accepts connections at base_url: check base_url (AOP_BASE_URL) and that the server runs",
    "dns": "the host name of base_url does not resolve: check base_url (AOP_BASE_URL) and DNS",
    "tls": "the TLS handshake failed: check verify_ssl (AOP_VERIFY_SSL), the CA bundle and the server certificate",
    "timeout": "the server did not answer in time: check the network and the server's load, or raise "
               "connect_timeout / read_timeout",
    "connection": "the connection to the server failed: check base_url (AOP_BASE_URL) and the network",
    "server": "the server failed (5xx): events are kept and retried; check the server's health and logs",
    "throttled": "the server asks to slow down (429): events are kept and retried",
    "redirect": "the server answered with a redirect or 1xx: check base_url (scheme, host and path prefix)",
    "bad_answer": "the server's answer is not the protocol's batch response: check that base_url points at an "
                  "AOP server, not a proxy or another service",
    "rejected": "the server refused events for good: see `aop dead-letters list`",
    "store": "the local spool failed: check spool_dir (AOP_SPOOL_DIR), its free space and permissions",
    "internal": "an unexpected error in the flusher; events stay in the spool and are retried",
    "pre_send_hook": "the pre_send_hook raised: fix the hook (delivery goes on; see hook_errors in get_stats())",
    "post_send_hook": "the post_send_hook raised: fix the hook (delivery goes on; see hook_errors in get_stats())",
    "redaction_hook": "the redaction_hook raised or returned an invalid envelope: the event was dropped "
                      "(get_stats()['dropped']['redaction_error']); fix the hook",
    "spool_identity": "this flusher does not send: the spool is bound to other credentials than this client's "
                      "(see the message; `aop spool adopt` rebinds a spool on purpose)",
    "store_error": "an event could not be stored and was dropped: check spool_dir (AOP_SPOOL_DIR), its free "
                   "space and permissions",
}

#: The kinds a delivery that works ends (every kind :func:`failure_kind` returns but ``rejected``:
#: events refused for good say nothing about the next batch). The others are only rate-limited.
DELIVERY_KINDS = frozenset({"auth", "signature", "clock_skew", "refused", "dns", "tls", "timeout", "connection",
                            "server", "throttled", "redirect", "bad_answer"})

_REFUSED = re.compile(r"refused|Errno 111|ECONNREFUSED", re.I)
_DNS = re.compile(r"NameResolution|resolve|getaddrinfo|Name or service not known|nodename", re.I)
_TLS = re.compile(r"SSL|\bTLS\b|certificate")
_TIMEOUT = re.compile(r"timed? ?out", re.I)
_SKEW = re.compile(r"stale timestamp|clock|skew", re.I)
_SIGNATURE = re.compile(r"signature", re.I)


def _server_clock_offset(headers: Mapping[str, str], now: float) -> Optional[float]:
    """Seconds between the server's Date header and ``now`` (None without a readable Date)."""
    value = next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == "date"), None)
    if not isinstance(value, str):
        return None
    try:
        return parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def failure_kind(status: Optional[int], headers: Mapping[str, str], body: bytes, error: Optional[str], *,
                 now: float) -> str:
    """The kind (a key of :data:`HINTS`) of a failed upload answer; status None = no answer.

    A 401/403 is ``clock_skew`` when the server says the timestamp is stale, or
    when its Date header is farther from ``now`` than the signature window;
    ``signature`` when it names the signature; ``auth`` otherwise.
    """
    if status is None:
        text = error or ""
        for kind, pattern in (("tls", _TLS), ("dns", _DNS), ("timeout", _TIMEOUT), ("refused", _REFUSED)):
            if pattern.search(text):
                return kind
        return "connection"
    if isinstance(status, bool) or not isinstance(status, int):
        return "bad_answer"
    if status in (401, 403):
        text = body[:2000].decode("utf-8", "replace")
        offset = _server_clock_offset(headers, now)
        if _SKEW.search(text) or (offset is not None and abs(offset) > SIGNATURE_WINDOW):
            return "clock_skew"
        return "signature" if _SIGNATURE.search(text) else "auth"
    if status == 429:
        return "throttled"
    if status in (408, 425):
        return "timeout"
    if 500 <= status <= 599:
        return "server"
    if status < 200 or 300 <= status <= 399:
        return "redirect"
    if 200 <= status <= 299:
        return "bad_answer"
    return "rejected"


def clock_text(at: float) -> str:
    """``HH:MM:SS UTC`` of a Unix time."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(at))


@dataclass(frozen=True)
class KindRecord:
    """One kind's failures since the last success: when, how often, and when last reported."""

    kind: str
    message: str
    first_seen: float
    last_seen: float
    count: int
    reported_at: float
    reported_count: int  # count when last reported


@dataclass(frozen=True)
class Report:
    """One log line to write: ``level`` is "warning" or "info"."""

    level: str
    text: str


@dataclass(frozen=True)
class ReportState:
    """Failures since the last success (per kind, in first-seen order) and what was last written down."""

    kinds: tuple[KindRecord, ...] = ()
    latest: Optional[str] = None  # the kind of the most recent failure
    persisted_kind: Optional[str] = None
    persisted_at: Optional[float] = None
    interval: float = REPORT_INTERVAL
    persist_every: float = PERSIST_EVERY

    def record(self, kind: str) -> Optional[KindRecord]:
        """The record of ``kind``, or None when it has not failed since the last success."""
        return next((r for r in self.kinds if r.kind == kind), None)

    @property
    def last(self) -> Optional[KindRecord]:
        """The record of the most recent failure (None while delivering fine)."""
        return None if self.latest is None else self.record(self.latest)


@dataclass(frozen=True)
class Decision:
    """The next state, the line to log (if any) and whether to write the last error down now."""

    state: ReportState
    report: Optional[Report]
    persist: bool


def _with(state: ReportState, rec: KindRecord) -> ReportState:
    """``state`` with ``rec`` as its kind's record (appended when new) and as the latest failure."""
    if state.record(rec.kind) is None:
        return replace(state, kinds=state.kinds + (rec,), latest=rec.kind)
    return replace(state, kinds=tuple(rec if r.kind == rec.kind else r for r in state.kinds), latest=rec.kind)


def _persist(state: ReportState, kind: Optional[str], now: float) -> bool:
    return (kind != state.persisted_kind or state.persisted_at is None
            or now - state.persisted_at >= state.persist_every or now < state.persisted_at)


def _subject(kind: str, still: bool) -> str:
    failing = "still failing" if still else "failing"
    return f"delivery {failing} ({kind})" if kind in DELIVERY_KINDS else f"{kind} {failing}"


def on_failure(state: ReportState, kind: str, message: str, now: float) -> Decision:
    """One failure of ``kind`` at ``now``: report the first at once, then once per ``interval``."""
    old = state.record(kind)
    hint = HINTS.get(kind, HINTS["internal"])
    if old is None:
        rec = KindRecord(kind, message, now, now, 1, now, 1)
        report: Optional[Report] = Report("warning", f"{_subject(kind, False)}: {message}; {hint}")
    else:
        rec = replace(old, message=message, last_seen=now, count=old.count + 1)
        report = None
        if now - old.reported_at >= state.interval or now < old.reported_at:
            report = Report("warning", f"{_subject(kind, True)}: {rec.count} times since "
                                       f"{clock_text(rec.first_seen)}; last: {message}; {hint}")
            rec = replace(rec, reported_at=now, reported_count=rec.count)
    persist = _persist(state, kind, now)
    new = _with(state, rec)
    if persist:
        new = replace(new, persisted_kind=kind, persisted_at=now)
    return Decision(new, report, persist)


def on_success(state: ReportState, now: float) -> Decision:
    """A delivery worked at ``now``: end every delivery failure; one "recovered" line if there were any.

    Kinds outside :data:`DELIVERY_KINDS` (a hook, the store) are not ended by a
    delivery: they keep their rate limit.
    """
    ended = tuple(r for r in state.kinds if r.kind in DELIVERY_KINDS)
    if not ended:
        return Decision(state, None, False)
    total = sum(r.count for r in ended)
    since = min(r.first_seen for r in ended)
    names = ", ".join(r.kind for r in ended)
    report = Report("info", f"delivery recovered after {total} failure(s) ({names}) since {clock_text(since)}")
    kept = tuple(r for r in state.kinds if r.kind not in DELIVERY_KINDS)
    latest = state.latest if state.latest not in DELIVERY_KINDS else None
    return Decision(replace(state, kinds=kept, latest=latest, persisted_kind=None, persisted_at=now), report, True)
