"""Making delivery failures visible: the flusher's rate-limited log lines and the spool's last-error file.

:class:`FailureReporter` applies the pure decisions of
:mod:`aop_client.core.failure_report` (first failure of each kind at WARNING
with what to check, then "still failing" at most once a minute, "recovered"
when a delivery works again) and writes the last error down in the spool as
``last_error.json`` so that every process (``aop status``) can read it::

    {"kind": "auth", "message": "HTTP 401: ...", "hint": "...", "count": 12,
     "first_seen": 1764650000.1, "last_seen": 1764650042.9, "recovered_at": null, "pid": 4242}

The file is written on a change of kind, on recovery, and at most every few
seconds otherwise: created 0600 with ``O_NOFOLLOW | O_EXCL`` under a fresh
temporary name and renamed into place (a rename replaces a planted link, never
writes through it). :func:`read_last_error` opens it with ``O_NOFOLLOW`` and
ignores a file owned by another user than the spool's owner. Messages are made
of statuses, exception types and server error text: never an event's content.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Optional

import orjson

from .core.failure_report import DELIVERY_KINDS, HINTS, Decision, ReportState, failure_kind, on_failure, on_success
from .core.outcome import Delivered
from .store.layout import read_owned_file, write_private_file

__all__ = ["FailureReporter", "read_last_error", "write_last_error", "dead_letters_text", "LAST_ERROR_FILE"]

LAST_ERROR_FILE = "last_error.json"
_MAX_FILE_BYTES = 64 * 1024

log = logging.getLogger("aop_client.flusher")


def dead_letters_text(n: int) -> str:
    """What is said about dead letters (the server's reasons stay in the store: they may quote the events)."""
    return f"the server refused {n} event(s) for good; `aop dead-letters list` shows its reasons"


def write_last_error(directory: str, record: dict) -> None:
    """Atomically replace ``<directory>/last_error.json`` with ``record`` (0600, no link followed)."""
    write_private_file(directory, LAST_ERROR_FILE, orjson.dumps(record))


def read_last_error(directory: str) -> Optional[dict]:
    """The last error a flusher of this spool wrote down, or None (no file, a link, a foreign or bad file)."""
    try:
        raw = read_owned_file(os.path.join(directory, LAST_ERROR_FILE), owner=os.stat(directory).st_uid,
                              limit=_MAX_FILE_BYTES + 1)
        doc = orjson.loads(raw) if len(raw) <= _MAX_FILE_BYTES else None
    except (OSError, orjson.JSONDecodeError):  # StoreError (not ours) is an OSError too
        return None
    return doc if isinstance(doc, dict) else None


class FailureReporter:
    """Thread-safe holder of one flusher's :class:`ReportState`: logs what it decides, writes the file."""

    def __init__(self, directory: Optional[str], logger: logging.Logger = log, *, debug: bool = False) -> None:
        self.directory = directory
        self.log = logger
        self.debug = debug
        self._written: Optional[tuple] = None  # (kind, count) last written to the file
        self._state = ReportState()
        self._lock = threading.Lock()

    @property
    def state(self) -> ReportState:
        """The current (immutable) state."""
        return self._state

    def failure(self, kind: str, message: str, now: float) -> None:
        """Note one failure of ``kind``; logs and writes the file when the core says so."""
        with self._lock:
            decision = on_failure(self._state, kind, message, now)
            self._state = decision.state
        self._apply(decision, now, recovered=False)

    def success(self, now: float) -> None:
        """Note a delivery that worked; logs "recovered" once after failures."""
        if not any(r.kind in DELIVERY_KINDS for r in self._state.kinds):  # the common case: no lock
            return
        with self._lock:
            decision = on_success(self._state, now)
            self._state = decision.state
        self._apply(decision, now, recovered=True)

    def write_now(self, now: float) -> None:
        """Write the current failure down if the file does not show it yet (a flusher that stops calls this)."""
        rec = self._state.last
        if rec is not None and self.directory and self._written != (rec.kind, rec.count):
            self._write(self._state, now, recovered=False)

    def answer(self, attempt: Any, response: Any, outcome: Any, step: Any, latency: float, now: float) -> None:
        """One batch answer: its outcome line (INFO with ``debug``, else DEBUG), then success or failure."""
        delivered = isinstance(outcome, Delivered)
        level = logging.INFO if self.debug else logging.DEBUG
        if self.log.isEnabledFor(level):
            status = response.status
            self.log.log(level, "aop_client batch %s: %s, %d event(s), acknowledged %d, duplicates %d, rejected %d, "
                         "%.1f ms%s", attempt.batch_id, "no answer" if status is None else f"HTTP {status}",
                         len(attempt.event_ids), len(step.ack), outcome.duplicates if delivered else 0,
                         len(step.dead), latency * 1000, "" if delivered else f" ({type(outcome).__name__.lower()})")
        if delivered:
            self.success(now)
            if step.dead:
                self.failure("rejected", dead_letters_text(len(step.dead)), now)
            return
        kind = failure_kind(response.status, response.headers, response.body, response.error, now=now)
        if kind == "rejected":  # the server's text about refused events may quote their content
            n = len(step.dead) + sum(map(len, step.halves))
            self.failure(kind, f"HTTP {response.status} for a batch of {n} event(s) (split when it has more "
                               "than one, else dead letters: `aop dead-letters list` shows why)", now)
        else:
            self.failure(kind, step.reason or type(outcome).__name__, now)

    def _apply(self, decision: Decision, now: float, *, recovered: bool) -> None:
        report = decision.report
        if report is not None:
            self.log.log(logging.WARNING if report.level == "warning" else logging.INFO, "aop_client %s", report.text)
        if decision.persist and self.directory:
            self._write(decision.state, now, recovered)

    def _write(self, state: ReportState, now: float, recovered: bool) -> None:
        record: dict[str, Any]
        if recovered:
            previous = read_last_error(self.directory or "") or {}
            record = {**previous, "recovered_at": now}
        else:
            rec = state.last
            if rec is None:
                return
            record = {"kind": rec.kind, "message": rec.message, "hint": HINTS.get(rec.kind, ""),
                      "count": rec.count, "first_seen": rec.first_seen, "last_seen": rec.last_seen,
                      "recovered_at": None, "pid": os.getpid()}
        try:
            write_last_error(self.directory or "", record)
            self._written = (record.get("kind"), record.get("count"))
        except OSError as e:  # reporting must never stop delivery
            self.log.debug("aop_client could not write %s: %s", LAST_ERROR_FILE, e)
