"""aop_client.delivery_report: the last-error file (cheap, private, fresh enough) and PII-free batch reports."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from aop_client.core.flush_machine import BatchAttempt, Step
from aop_client.core.outcome import Delivered, DeadLetter
from aop_client.delivery_report import LAST_ERROR_FILE, FailureReporter, read_last_error
from aop_client.transport import Response

T0 = 1_764_650_000.0
MARKER = "carol-41de@example.com"


def test_file_written_on_first_failure_change_of_kind_and_every_few_seconds(tmp_path: Path) -> None:
    """Not on every failure: on the first, on a change of kind, after PERSIST_EVERY s, and by write_now."""
    reporter = FailureReporter(str(tmp_path))
    reporter.failure("auth", "HTTP 401", T0)
    assert read_last_error(str(tmp_path))["count"] == 1
    stamp = os.stat(tmp_path / LAST_ERROR_FILE).st_mtime_ns
    for i in range(1, 50):
        reporter.failure("auth", "HTTP 401", T0 + i * 0.01)
    assert read_last_error(str(tmp_path))["count"] == 1  # 49 failures within 0.5 s: no write
    assert os.stat(tmp_path / LAST_ERROR_FILE).st_mtime_ns == stamp
    reporter.failure("auth", "HTTP 401", T0 + 6)
    doc = read_last_error(str(tmp_path))
    assert doc["count"] == 51 and doc["first_seen"] == T0 and doc["last_seen"] == T0 + 6
    reporter.failure("refused", "no answer", T0 + 6.1)
    assert read_last_error(str(tmp_path))["kind"] == "refused"
    reporter.failure("refused", "no answer", T0 + 6.2)
    reporter.write_now(T0 + 6.3)
    assert read_last_error(str(tmp_path))["count"] == 2
    reporter.success(T0 + 7)
    doc = read_last_error(str(tmp_path))
    assert doc["kind"] == "refused" and doc["recovered_at"] == T0 + 7
    assert (os.stat(tmp_path / LAST_ERROR_FILE).st_mode & 0o777) == 0o600


def test_a_foreign_or_linked_last_error_file_is_not_read(tmp_path: Path) -> None:
    """read_last_error ignores a symlink and a file owned by another user than the spool's owner."""
    target = tmp_path / "elsewhere.json"
    target.write_text('{"kind": "auth"}')
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / LAST_ERROR_FILE).symlink_to(target)
    assert read_last_error(str(spool)) is None
    (spool / LAST_ERROR_FILE).unlink()
    (spool / LAST_ERROR_FILE).write_text('{"kind": "auth"}')
    assert read_last_error(str(spool)) == {"kind": "auth"}
    if os.geteuid() == 0:  # CI runs as root: the chown to nobody is possible there
        os.chown(spool / LAST_ERROR_FILE, 65534, 65534)
        assert read_last_error(str(spool)) is None


def test_refused_events_are_reported_without_the_servers_reasons(tmp_path: Path, caplog: Any) -> None:
    """A server's rejection reason may quote the event: it stays out of the log line and the file."""
    caplog.set_level(logging.DEBUG)
    reporter = FailureReporter(str(tmp_path), debug=True)
    attempt = BatchAttempt("b-1", ("e1", "e2"))
    quoted = f"events[0]: seq must be an integer >= 1, got {MARKER!r}"
    delivered = Delivered(delivered_ids=("e2",), rejected={"e1": quoted})
    reporter.answer(attempt, Response(200), delivered, Step(ack=("e2",), dead=(("e1", quoted),)), 0.01, T0)
    whole = DeadLetter(reason=f"HTTP 422: {MARKER}", status=422)
    body = f'{{"error": "payload.email {MARKER} refused"}}'.encode()
    reporter.answer(attempt, Response(422, body=body), whole, Step(dead=(("e1", whole.reason), ("e2", whole.reason)),
                                                                   reason=whole.reason), 0.01, T0 + 100)
    assert "refused 1 event(s) for good" in caplog.text and "HTTP 422 for a batch of 2" in caplog.text
    assert MARKER not in caplog.text
    assert MARKER not in (tmp_path / LAST_ERROR_FILE).read_text()
