"""Protocol v1 section 3 (run completion) conformance and the sans-I/O missing-seq computation."""

from __future__ import annotations

import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client.collector.protocol import missing_seqs
from collector_helpers import make_run, post_batch, post_completion


def test_complete_run_reports_nothing_missing(aop_collector) -> None:
    """A run whose seqs 1..last_seq are all held is complete with an empty missing list."""
    run_id, events = make_run(6, aop_collector.org_salt_key)
    post_batch(aop_collector, events)
    status, answer, _ = post_completion(aop_collector, run_id, 6)
    assert status == 200 and answer == {"complete": True, "missing": []}
    (record,) = aop_collector.completions(run_id)
    assert record["complete"] is True and record["last_seq"] == 6 and record["missing_count"] == 0


def test_gaps_and_tail_are_listed_as_missing(aop_collector) -> None:
    """Seqs never delivered (in the middle and after the last held one) are listed, ascending."""
    run_id, events = make_run(8, aop_collector.org_salt_key)
    held = [e for e in events if e["seq"] not in (2, 5, 6)]
    post_batch(aop_collector, held[:-1])  # seq 8 is not sent either
    status, answer, _ = post_completion(aop_collector, run_id, 8, event_count=8)
    assert status == 200 and answer == {"complete": False, "missing": [2, 5, 6, 8]}


def test_unknown_run_is_all_missing_and_other_runs_do_not_count(aop_collector) -> None:
    """A run with no events held misses every seq, even when other runs hold those seqs."""
    _other_run, events = make_run(3, aop_collector.org_salt_key)
    post_batch(aop_collector, events)
    status, answer, _ = post_completion(aop_collector, str(uuid.uuid4()), 3)
    assert answer == {"complete": False, "missing": [1, 2, 3]}


def test_gzip_completion_is_accepted(aop_collector) -> None:
    """Run completion honours Content-Encoding gzip like the batch route."""
    run_id, events = make_run(2, aop_collector.org_salt_key)
    post_batch(aop_collector, events)
    status, answer, _ = post_completion(aop_collector, run_id, 2, gzip_body=True)
    assert status == 200 and answer["complete"] is True


@pytest.mark.parametrize(
    "kwargs",
    [{"body_run_id": str(uuid.uuid4())}, {"event_count": -1}, {"agent_id": "x"}],
)
def test_malformed_completion_is_400(aop_collector, kwargs: dict) -> None:
    """A body whose run_id differs from the URL's, or with a bad count/agent, is 400."""
    run_id = str(uuid.uuid4())
    status, answer, _ = post_completion(aop_collector, run_id, 3, **kwargs)
    assert status == 400 and answer["error"]


def test_completion_requires_key_and_fresh_signature(aop_collector) -> None:
    """Run completion uses the same auth (401) and signature tolerance (401) as batches."""
    run_id = str(uuid.uuid4())
    assert post_completion(aop_collector, run_id, 1, api_key="nope")[0] == 401
    assert post_completion(aop_collector, run_id, 1, sig_now=time.time() - 400)[0] == 401
    assert aop_collector.completions() == []


def test_huge_last_seq_is_answered_with_a_bounded_list(aop_collector) -> None:
    """last_seq of a billion answers quickly with the first missing seqs and their total count."""
    run_id = str(uuid.uuid4())
    status, answer, _ = post_completion(aop_collector, run_id, 10**9)
    assert status == 200 and answer["complete"] is False
    assert answer["missing"][:3] == [1, 2, 3] and answer["missing_count"] == 10**9
    assert len(answer["missing"]) < answer["missing_count"]


@settings(max_examples=200, deadline=None)
@given(present=st.sets(st.integers(-5, 60), max_size=40), last_seq=st.integers(0, 50), limit=st.integers(1, 60))
def test_missing_seqs_matches_the_definition(present: set, last_seq: int, limit: int) -> None:
    """Property: missing_seqs lists the first `limit` of sorted(1..last_seq minus present) and counts all."""
    expected = [s for s in range(1, last_seq + 1) if s not in present]
    listed, count = missing_seqs(present, last_seq, limit=limit)
    assert listed == expected[:limit]
    assert count == len(expected)
