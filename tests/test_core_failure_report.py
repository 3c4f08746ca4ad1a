"""aop_client.core.failure_report: the kind of each failure and the rate limit of its log lines (pure)."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client.core.failure_report import (
    DELIVERY_KINDS, HINTS, PERSIST_EVERY, REPORT_INTERVAL, ReportState, clock_text, failure_kind, on_failure,
    on_success,
)

NOW = 1_764_650_000.0

KINDS = sorted(HINTS)


@pytest.mark.parametrize("status, headers, body, error, kind", [
    (401, {}, b'{"error": "invalid API key"}', None, "auth"),
    (403, {}, b'{"error": "forbidden"}', None, "auth"),
    (401, {}, b'{"error": "X-AOP-Signature: signature mismatch: no v1 signature matches the body"}', None,
     "signature"),
    (401, {}, b'{"error": "X-AOP-Signature: stale timestamp: t=1 is 900 s from now"}', None, "clock_skew"),
    # the server does not say why, but its clock is 20 minutes away from ours: the signature window
    (401, {"Date": formatdate(NOW + 1200, usegmt=True)}, b'{"error": "unauthorized"}', None, "clock_skew"),
    (401, {"date": formatdate(NOW + 5, usegmt=True)}, b'{"error": "invalid API key"}', None, "auth"),
    (401, {"date": "not a date"}, b"", None, "auth"),
    (None, {}, b"", "NewConnectionError: <urllib3.connection.HTTPConnection object at 0x7f>: Failed to "
                    "establish a new connection: [Errno 111] Connection refused", "refused"),
    (None, {}, b"", "NameResolutionError: <urllib3.connection.HTTPSConnection object at 0x7f>: Failed to "
                    "resolve 'aop.invalid' ([Errno -2] Name or service not known)", "dns"),
    (None, {}, b"", "SSLError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", "tls"),
    (None, {}, b"", "ConnectTimeoutError: Connection to 10.255.255.1 timed out. (connect timeout=5.0)", "timeout"),
    (None, {}, b"", "ReadTimeoutError: HTTPConnectionPool(host='h', port=1): Read timed out.", "timeout"),
    (None, {}, b"", "HTTP 200: body read exceeded read_timeout", "timeout"),
    (None, {}, b"", "NewConnectionError: [Errno 101] Network is unreachable", "connection"),
    (None, {}, b"", None, "connection"),
    (500, {}, b"boom", None, "server"),
    (503, {}, b"", None, "server"),
    (429, {}, b"", None, "throttled"),
    (408, {}, b"", None, "timeout"),
    (302, {"location": "/x"}, b"", None, "redirect"),
    (200, {}, b"<html>", None, "bad_answer"),
    (422, {}, b"schema", None, "rejected"),
])
def test_failure_kind_of_known_answers(status, headers, body, error, kind) -> None:
    """Each answer a user meets maps to the kind whose hint says what to check."""
    assert failure_kind(status, headers, body, error, now=NOW) == kind


@given(status=st.one_of(st.none(), st.integers(-10, 1000), st.booleans()),
       headers=st.dictionaries(st.sampled_from(["Date", "date", "x"]), st.text(max_size=40), max_size=3),
       body=st.binary(max_size=200), error=st.one_of(st.none(), st.text(max_size=100)),
       now=st.floats(0, 4e9))
def test_failure_kind_is_total(status, headers, body, error, now) -> None:
    """Every input maps to a kind with a hint; nothing raises on server input."""
    assert failure_kind(status, headers, body, error, now=now) in DELIVERY_KINDS | {"rejected"}
    assert DELIVERY_KINDS < set(HINTS)


# one step: (kind or None for a success, seconds since the previous step)
steps = st.lists(st.tuples(st.one_of(st.none(), st.sampled_from(KINDS)), st.floats(0, 200)), max_size=60)


def run(script: list) -> list:
    """Apply a script of steps; returns (kind, now, decision) per step."""
    state, now, out = ReportState(), NOW, []
    for kind, dt in script:
        now += dt
        decision = on_success(state, now) if kind is None else on_failure(state, kind, f"{kind} happened", now)
        out.append((kind, now, decision))
        state = decision.state
    return out


@settings(max_examples=300)
@given(steps)
def test_first_failure_of_each_kind_is_reported_then_rate_limited(script) -> None:
    """The first failure of a kind (since the last success that ended it) is a WARNING naming its hint;
    two WARNINGs of one kind are at least REPORT_INTERVAL apart; with no time passing, one WARNING per kind."""
    active: dict[str, float] = {}  # kind -> time of its last warning
    for kind, now, d in run(script):
        if kind is None:
            ended = [k for k in active if k in DELIVERY_KINDS]
            assert (d.report is not None) == bool(ended)
            if ended:
                assert d.report.level == "info" and "recovered" in d.report.text
                assert all(k in d.report.text for k in ended)
            for k in ended:
                del active[k]
            continue
        if kind not in active:
            assert d.report is not None and d.report.level == "warning"
            assert HINTS[kind] in d.report.text and f"{kind} happened" in d.report.text
            active[kind] = now
        elif d.report is not None:
            assert d.report.level == "warning" and "still failing" in d.report.text
            assert now - active[kind] >= REPORT_INTERVAL
            active[kind] = now
        else:
            assert now - active[kind] < REPORT_INTERVAL


@given(st.lists(st.sampled_from(KINDS), min_size=1, max_size=50))
def test_a_burst_logs_one_warning_per_kind(kinds) -> None:
    """Many failures at the same instant: exactly one WARNING per distinct kind."""
    reports = [d.report for _, _, d in run([(k, 0.0) for k in kinds]) if d.report is not None]
    assert len(reports) == len(set(kinds))


@given(st.lists(st.sampled_from(sorted(DELIVERY_KINDS)), min_size=1, max_size=30), st.floats(0, 10))
def test_still_failing_says_how_often_and_since_when(kinds, dt) -> None:
    """After REPORT_INTERVAL, the next failure's line counts every failure of its kind since it began."""
    kind = kinds[0]
    script = [(kind, dt) for _ in kinds] + [(kind, REPORT_INTERVAL + 1)]
    last = run(script)[-1][2]
    assert last.report is not None
    assert f"{len(kinds) + 1} times since {clock_text(NOW + dt)}" in last.report.text


@settings(max_examples=300)
@given(steps)
def test_persist_on_change_of_kind_else_at_most_every_few_seconds(script) -> None:
    """The last error is written on the first failure, a change of kind and a recovery; else once per PERSIST_EVERY."""
    written_kind, written_at = None, None
    for kind, now, d in run(script):
        if kind is None:
            if d.report is not None:
                assert d.persist
                written_kind, written_at = None, now
            else:
                assert not d.persist
            continue
        if kind != written_kind or written_at is None:
            assert d.persist
        elif now - written_at < PERSIST_EVERY:
            assert not d.persist
        else:
            assert d.persist
        if d.persist:
            written_kind, written_at = kind, now
        assert d.state.last is not None and d.state.last.kind == kind


@given(steps)
def test_decisions_are_pure(script) -> None:
    """The same script gives the same decisions; states are never mutated (frozen, compared equal)."""
    assert [d for _, _, d in run(script)] == [d for _, _, d in run(script)]


def test_hook_kinds_are_not_ended_by_a_delivery() -> None:
    """A hook that fails on every batch is not re-reported after each successful delivery."""
    state = ReportState()
    warnings = 0
    for i in range(20):
        d = on_failure(state, "pre_send_hook", "pre_send_hook raised ValueError", NOW + i)
        warnings += d.report is not None
        d = on_success(d.state, NOW + i)
        assert d.report is None
        state = d.state
    assert warnings == 1
