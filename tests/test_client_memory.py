"""Bounded memory in a long-lived worker: emitted events live in the store, not in the client.

The recipe's worker (one client, one run, an emit per request) must run flat:
``get_trace()`` reads emitted events back from the store, the builder holds only
events created and not emitted (bounded, oldest dropped and counted), stream
acks are settled by (event_id, run_id, seq), replay files are streamed.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_client import closed_port_url, make_config  # noqa: E402

from aop_client import AOPClient  # noqa: E402
from aop_client.trace_files import read_trace_file, write_replay_file  # noqa: E402
from aop_client.signing import verify_event  # noqa: E402
from aop_client.streaming import HybridClient  # noqa: E402
from aop_client.testing import TEST_ORG_SALT_KEY, wait_until  # noqa: E402
from aop_client.trace_builder import TraceBuilder  # noqa: E402

MB = 2**20


def emit_requests(client: AOPClient, n: int) -> None:
    """What a worker does per request: create one event and emit it (same run)."""
    builder = client.trace_builder
    for i in range(n):
        assert client.emit_event(builder.create_reasoning(
            goal="Process customer refund request",
            steps=[{"step_id": "s1", "description": f"request {i}", "decision": "proceed", "confidence": 0.95}],
            safety_checks=[{"name": "policy_check", "result": "passed"}], uncertainty="low"))


def traced_growth(client: AOPClient, n: int, settle=lambda: None) -> int:
    """Bytes of Python memory allocated by aop_client code and still held after n more emits."""
    only_ours = [tracemalloc.Filter(True, str(Path(__file__).resolve().parent.parent / "aop_client" / "*"))]
    tracemalloc.start()
    try:
        settle()
        gc.collect()
        before = tracemalloc.take_snapshot().filter_traces(only_ours)
        emit_requests(client, n)
        settle()
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(only_ours)
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def test_emitting_20000_events_in_one_run_holds_no_memory(tmp_path):
    """After a warm-up, 20,000 more emitted events of one run grow traced memory by < 2 MB (was ~60 MB)."""
    client = AOPClient(make_config(tmp_path, closed_port_url()))
    emit_requests(client, 2_000)
    growth = traced_growth(client, 20_000)
    assert growth < 2 * MB, f"{growth / MB:.1f} MB held after 20,000 events"
    assert client.trace_builder.next_seq == 22_001
    assert client.trace_builder.held_events() == []


def test_a_started_flusher_delivering_to_a_collector_holds_no_memory(tmp_path, aop_collector_factory):
    """The same with the flusher started and delivering into the reference collector (another process)."""
    collector = aop_collector_factory(process=True)
    client = AOPClient(make_config(tmp_path, collector.url, batch_size=500)).start()
    try:
        emit_requests(client, 2_000)
        growth = traced_growth(client, 20_000, settle=lambda: client.flush(timeout=60))
        assert growth < 2 * MB, f"{growth / MB:.1f} MB held after 20,000 delivered events"
        assert client.get_stats()["pending"] == 0
    finally:
        client.stop(timeout=10)


def test_get_trace_reads_emitted_events_from_the_store_and_holds_only_unemitted_ones(tmp_path):
    """Emitted events come back as stored (signed); the one never emitted is the only one the builder holds."""
    client = AOPClient(make_config(tmp_path, closed_port_url()))
    b = client.trace_builder
    first, second, kept = b.create_custom("a", {"n": 1}), b.create_custom("b", {"n": 2}), b.create_custom("c")
    client.emit_event(first)
    client.emit_event(second)
    assert [e["event_id"] for e in b.held_events()] == [kept["event_id"]]
    trace = client.get_trace()
    assert [e["seq"] for e in trace] == [1, 2, 3]
    for event in trace[:2]:
        verify_event(event, TEST_ORG_SALT_KEY)  # as stored: redacted and signed
    assert "sig" not in trace[2]
    assert b.get_events() == trace == json.loads(client.get_trace_json())


def test_active_mode_without_emit_opens_no_store(tmp_path):
    """get_trace in Active Mode never touches (or creates) the spool directory."""
    client = AOPClient(make_config(tmp_path, closed_port_url()))
    client.trace_builder.create_final_output(text="done")
    assert [e["type"] for e in client.get_trace()] == ["final_output"]
    assert not (tmp_path / "spool").exists()


def test_an_event_dropped_by_the_redaction_hook_is_not_in_the_trace(tmp_path):
    """An event the hook drops (None) is gone: get_trace does not keep its unredacted copy."""
    hook = lambda event: None if event.get("name") == "secret" else event  # noqa: E731
    client = AOPClient(make_config(tmp_path, closed_port_url(), redaction_hook=hook))
    b = client.trace_builder
    client.emit_event(b.create_custom("public"))
    assert not client.emit_event(b.create_custom("secret", {"email": "alice@example.com"}))
    assert "alice@example.com" not in client.get_trace_json()
    assert [e["seq"] for e in client.get_trace()] == [1]


def test_events_reclaimed_past_retention_leave_the_trace(tmp_path, aop_collector):
    """Delivered events are in get_trace within retention; once reclaimed, they are no longer returned."""
    client = AOPClient(make_config(tmp_path, aop_collector.url)).start()
    try:
        emit_requests(client, 3)
        assert client.flush(timeout=10)
        assert [e["seq"] for e in client.get_trace()] == [1, 2, 3]
        kept = client.trace_builder.create_final_output(text="not emitted")
        assert client.store.reclaim(now=time.time() + client.config.retention_seconds + 60) == 3
        assert [e["event_id"] for e in client.get_trace()] == [kept["event_id"]]
    finally:
        client.stop(timeout=5)


def test_held_events_are_capped_oldest_dropped_and_counted(caplog):
    """Beyond max_held_events, the oldest unemitted event is dropped, counted and logged once."""
    builder = TraceBuilder(1, max_held_events=3)
    with caplog.at_level(logging.WARNING, logger="aop_client"):
        for n in range(7):
            builder.create_custom("step", {"n": n})
    assert [e["seq"] for e in builder.get_events()] == [5, 6, 7]
    assert builder.dropped_unemitted == 4 and builder.next_seq == 8
    assert len([r for r in caplog.records if "never emitted" in r.getMessage()]) == 1
    builder.new_run()
    assert builder.dropped_unemitted == 0 and builder.get_events() == []


def test_max_held_events_must_be_positive():
    """A bad cap is refused with a ValidationError naming it."""
    from aop_client.errors import ValidationError

    with pytest.raises(ValidationError) as info:
        TraceBuilder(1, max_held_events=0)
    assert info.value.field == "max_held_events"


def test_replay_file_is_streamed_from_the_store(tmp_path):
    """A 20,000-event run's replay file is complete and valid, and writing it peaks far below its size."""
    client = AOPClient(make_config(tmp_path, closed_port_url(), replay_dir=str(tmp_path / "replay")))
    emit_requests(client, 20_000)
    run_id = client.trace_builder.run_id
    list(client.store.iter_run(run_id))  # index the segments first: the peak below is the writer's own
    tracemalloc.start()
    try:
        events = client.store.iter_run(run_id, include_delivered=True)
        path = write_replay_file(client.config.replay_dir, run_id, events, agent_id=1, seed=None, stats={})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = os.path.getsize(path)
    assert size > 8 * MB and peak < 4 * MB, f"peak {peak / MB:.1f} MB writing a {size / MB:.1f} MB file"
    doc = read_trace_file(path)
    assert doc["event_count"] == len(doc["events"]) == 20_000
    assert [e["seq"] for e in doc["events"]] == list(range(1, 20_001))
    assert json.loads(Path(path).read_bytes()) == doc


def test_iter_run_pages_through_a_long_run_in_seq_order(tmp_path):
    """iter_run yields every event of a run longer than a page, in seq order, and stops cleanly."""
    from aop_client.store.inspection import ITER_RUN_PAGE

    client = AOPClient(make_config(tmp_path, closed_port_url()))
    emit_requests(client, ITER_RUN_PAGE * 2 + 7)
    seqs = [e.seq for e in client.store.iter_run(client.trace_builder.run_id)]
    assert seqs == list(range(1, ITER_RUN_PAGE * 2 + 8))


def test_real_hybrid_settles_stream_acks_by_run_and_seq(aop_collector, tmp_path):
    """Stream acks reach the real store as (event_id, run_id, seq): every streamed event is delivered there.

    No flusher is started (it could lease the events first), so only the stream's acks settle them.
    """
    config = make_config(tmp_path, aop_collector.url, enable_streaming=True,
                         streaming_url=aop_collector.url.replace("http://", "ws://") + "/ws/trace/")
    base = AOPClient(config)
    hybrid = HybridClient(base, streaming_mode="websocket", reconnect_base=0.05, reconnect_max=0.2)
    assert hybrid.stream.connect(timeout=10)
    try:
        for n in range(50):
            assert hybrid.emit_event(base.trace_builder.create_custom("step", {"n": n}))
        wait_until(lambda: hybrid.stats()["marked_delivered"] == 50, timeout=20)
        stats = base.get_stats()
        assert (stats["pending"], stats["in_flight"], stats["delivered_retained"]) == (0, 0, 50)
        assert hybrid.stats()["mark_failures"] == 0
    finally:
        hybrid.stream.disconnect(timeout=2)
    assert len(aop_collector.events(run_id=base.trace_builder.run_id)) == 50


def test_the_stream_keeps_run_and_seq_of_what_it_sent_until_acked():
    """encode_event keeps the seq; the outbox hands back acked events with run and seq, then forgets them."""
    from aop_client.streaming.frames import encode_event
    from aop_client.streaming.outbox import Outbox

    builder = TraceBuilder(1)
    events = [encode_event(builder.create_custom("step", {"n": n})) for n in range(3)]
    assert [e.seq for e in events] == [1, 2, 3]
    box = Outbox(10)
    try:
        for event in events:
            assert box.offer(event)
        assert box.take(builder.run_id, 10, now=0.0) == events
        acked = box.ack_events([events[2].event_id, events[0].event_id, "unknown"])
        assert [(e.event_id, e.run_id, e.seq) for e in acked] == [
            (events[2].event_id, builder.run_id, 3), (events[0].event_id, builder.run_id, 1)]
        assert box.counts() == (0, 1)  # only the unacked one is remembered
    finally:
        box.close()
