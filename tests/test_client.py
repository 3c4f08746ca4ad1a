"""AOPClient end to end: passive and active modes, emit errors, hooks, replay files, stats."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest

from aop_client import AOPClient, ClientConfig, ValidationError
from aop_client.collector import FaultConfig
from aop_client.signing import verify_event
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY, wait_until


def make_config(tmp_path: Path, url: str, **extra) -> ClientConfig:
    """A config pointing at one collector, with a private spool under tmp_path."""
    fields = dict(api_key=TEST_API_KEY, org_salt_key=TEST_ORG_SALT_KEY, base_url=url, agent_id=123,
                  spool_dir=str(tmp_path / "spool"), batch_interval=0.05,
                  retry_backoff_base=0.01, retry_backoff_max=0.05)
    fields.update(extra)
    return ClientConfig(**fields)


def closed_port_url() -> str:
    """A loopback URL on which nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def emit_sample_run(client: AOPClient) -> list[dict]:
    """Emit the brief's three passive-mode events and return them as created."""
    b = client.trace_builder
    events = [
        b.create_reasoning(goal="Process customer refund request",
                           steps=[{"step_id": "s1", "description": "Validate order ID",
                                   "decision": "proceed", "confidence": 0.95}],
                           safety_checks=[{"name": "policy_check", "result": "passed"}],
                           uncertainty="low"),
        b.create_action_request(action="create_ticket", params={"order_id": "ORD-123"}),
        b.create_final_output(text="Ticket T-999 created", structured={"ticket_id": "T-999"}),
    ]
    for event in events:
        assert client.emit_event(event)
    return events


def test_passive_mode_delivers_signed_events_and_completes_the_run(tmp_path, aop_collector):
    """Emitted events reach the collector once, with valid signatures, and the run is complete."""
    client = AOPClient(make_config(tmp_path, aop_collector.url)).start()
    events = emit_sample_run(client)
    assert client.finalize(timeout=10) is True
    assert client.stop(timeout=5) is True
    held = aop_collector.events(run_id=client.trace_builder.run_id)
    assert [e["seq"] for e in held] == [1, 2, 3]
    assert {e["event_id"] for e in held} == {e["event_id"] for e in events}
    for event in held:
        verify_event(event, TEST_ORG_SALT_KEY)
    completion = aop_collector.completions(client.trace_builder.run_id)
    assert completion and completion[-1]["last_seq"] == 3
    stats = client.get_stats()
    assert (stats["emitted"], stats["stored"], stats["delivered"], stats["pending"]) == (3, 3, 3, 0)


def test_active_mode_needs_no_server(tmp_path):
    """Builder events are returned by get_trace and get_trace_json without any network."""
    client = AOPClient(make_config(tmp_path, closed_port_url()))
    b = client.trace_builder
    b.create_reasoning(goal="Analyze query", steps=[], safety_checks=[], uncertainty="low")
    b.create_final_output(text="Analysis complete")
    trace = client.get_trace()
    assert [e["seq"] for e in trace] == [1, 2]
    assert [e["type"] for e in trace] == ["reasoning", "final_output"]
    assert json.loads(client.get_trace_json(pretty=True)) == trace
    assert "\n" in client.get_trace_json(pretty=True) and "\n" not in client.get_trace_json()


def test_emit_never_raises_when_the_server_is_down(tmp_path):
    """With nothing listening, emit_event still stores and returns; stop is bounded."""
    client = AOPClient(make_config(tmp_path, closed_port_url())).start()
    emit_sample_run(client)
    assert client.stop(timeout=1.0) is False
    stats = client.get_stats()
    assert stats["pending"] + stats["in_flight"] + stats["fallback"] == 3
    assert stats["delivered"] == 0


def test_invalid_event_raises_a_clear_error_and_stores_nothing(tmp_path):
    """A NaN in the payload raises ValidationError naming the field; the store stays empty."""
    client = AOPClient(make_config(tmp_path, closed_port_url()))
    event = client.trace_builder.create_custom("metric", {"value": 1.0})
    event["payload"]["value"] = math.nan
    with pytest.raises(ValidationError) as info:
        client.emit_event(event)
    assert "value" in str(info.value) and "nan" in str(info.value).lower()
    assert client.get_stats()["pending"] == 0


def test_envelope_errors_name_the_field(tmp_path):
    """A missing or wrong envelope field raises ValidationError naming it."""
    client = AOPClient(make_config(tmp_path, closed_port_url()))
    event = client.trace_builder.create_final_output(text="x")
    bad = dict(event, seq=0)
    with pytest.raises(ValidationError, match="seq"):
        client.emit_event(bad)
    with pytest.raises(ValidationError, match="type"):
        client.emit_event(dict(event, type="telepathy"))


def test_redaction_hook_none_drops_and_raising_hook_drops_and_counts(tmp_path):
    """A hook returning None drops the event; a hook that raises drops it and is counted."""
    seen = []

    def hook(event):
        seen.append(event["seq"])
        if event["seq"] == 1:
            return None
        if event["seq"] == 2:
            raise RuntimeError("hook bug")
        return event

    client = AOPClient(make_config(tmp_path, closed_port_url(), redaction_hook=hook))
    b = client.trace_builder
    results = [client.emit_event(b.create_final_output(text=str(i))) for i in range(3)]
    assert [bool(r) for r in results] == [False, False, True]
    assert [r.reason for r in results[:2]] == ["redacted", "redaction_error"]
    stats = client.get_stats()
    assert stats["dropped"]["redacted"] == 1 and stats["dropped"]["redaction_error"] == 1
    # reported by hook name and exception type only: the message may quote the event
    assert stats["last_error"] == "redaction_error: redaction_hook raised RuntimeError"
    assert stats["pending"] == 1 and seen == [1, 2, 3]


def test_redaction_hook_sees_a_copy(tmp_path):
    """Mutations made by the hook never leak back into the caller's event."""
    def hook(event):
        event["payload"]["text"] = "[REDACTED]"
        return event

    client = AOPClient(make_config(tmp_path, closed_port_url(), redaction_hook=hook))
    event = client.trace_builder.create_final_output(text="secret")
    result = client.emit_event(event)
    assert event["payload"]["text"] == "secret"
    assert b"secret" not in result.body and b"[REDACTED]" in result.body


def test_replay_file_has_the_brief_format_and_no_secrets(tmp_path, aop_collector):
    """stop() writes one replay file with run_id, timestamp, event_count, metadata and events."""
    replay = tmp_path / "replays"
    client = AOPClient(make_config(tmp_path, aop_collector.url, enable_local_replay=True,
                                   replay_dir=str(replay), seed=42)).start()
    emit_sample_run(client)
    client.finalize(timeout=10)
    client.stop(timeout=5)
    files = list(replay.iterdir())
    assert len(files) == 1 and files[0].name.startswith(f"replay_{client.trace_builder.run_id}_")
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"
    doc = json.loads(files[0].read_text())
    assert set(doc) == {"run_id", "timestamp", "event_count", "metadata", "events"}
    assert doc["event_count"] == 3 and [e["seq"] for e in doc["events"]] == [1, 2, 3]
    assert doc["metadata"]["agent_id"] == 123 and doc["metadata"]["seed"] == 42
    assert isinstance(doc["metadata"]["stats"], dict)
    text = files[0].read_text()
    assert TEST_API_KEY not in text and TEST_ORG_SALT_KEY not in text
    for event in doc["events"]:
        verify_event(event, TEST_ORG_SALT_KEY)


def test_fallback_file_written_after_retries_are_exhausted(tmp_path, aop_collector):
    """When every attempt fails, events stay pending-in-fallback and a fallback file is written."""
    aop_collector.set_faults(FaultConfig(rate_503=1.0, retry_after=None))
    fallback = tmp_path / "fallback"
    client = AOPClient(make_config(tmp_path, aop_collector.url, max_retries=1,
                                   enable_local_fallback=True, local_fallback_dir=str(fallback)))
    client.start()
    emit_sample_run(client)
    wait_until(lambda: list(fallback.glob("fallback_*.json")), timeout=10)
    doc = json.loads(next(fallback.glob("fallback_*.json")).read_text())
    assert {e["seq"] for e in doc["events"]} <= {1, 2, 3} and doc["run_id"] == client.trace_builder.run_id
    aop_collector.set_faults(FaultConfig())
    assert client.flush(timeout=10) is True
    client.stop(timeout=5)
    assert {e["seq"] for e in aop_collector.events(run_id=client.trace_builder.run_id)} == {1, 2, 3}


def test_events_survive_a_restart_of_every_process(tmp_path, aop_collector):
    """Events stored by a client that never started are delivered by the next client on the spool."""
    first = AOPClient(make_config(tmp_path, aop_collector.url))
    events = emit_sample_run(first)
    first.store.close()
    second = AOPClient(make_config(tmp_path, aop_collector.url))
    assert second.flush(timeout=10) is True
    second.stop(timeout=5)
    assert aop_collector.event_ids() >= {e["event_id"] for e in events}


def test_get_stats_reports_every_documented_counter(tmp_path):
    """get_stats has the counters issue #5 lists, with plain JSON values."""
    client = AOPClient(make_config(tmp_path, closed_port_url()))
    emit_sample_run(client)
    stats = client.get_stats()
    for key in ("emitted", "stored", "delivered", "duplicates", "retried", "dead_letters",
                "fallback", "dropped", "pending", "oldest_pending_age", "is_flusher", "last_error"):
        assert key in stats, key
    assert stats["oldest_pending_age"] is not None and stats["oldest_pending_age"] >= 0
    json.dumps(stats)


def test_spool_files_are_private(tmp_path):
    """The spool folder is 0700 and every file in it 0600."""
    client = AOPClient(make_config(tmp_path, closed_port_url()))
    emit_sample_run(client)
    root = tmp_path / "spool"
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_forked_child_emits_its_own_run_without_seq_collisions(tmp_path, aop_collector):
    """A child forked from a started client emits a new run (seq from 1); nothing is sent twice."""
    client = AOPClient(make_config(tmp_path, aop_collector.url)).start()
    builder = client.trace_builder
    parent_events = emit_sample_run(client)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the same client and builder objects, inherited
        os.close(read_end)
        try:
            child_events = [client.emit_event(builder.create_final_output(text=f"child {i}"))
                            for i in range(3)]
            ok = all(child_events) and client.stop(timeout=10)
            os.write(write_end, json.dumps({"ok": bool(ok), "run_id": builder.run_id}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert child["run_id"] != builder.run_id
    assert client.stop(timeout=10) is True
    assert [e["seq"] for e in aop_collector.events(run_id=child["run_id"])] == [1, 2, 3]
    assert [e["seq"] for e in aop_collector.events(run_id=builder.run_id)] == [1, 2, 3]
    assert aop_collector.duplicate_deliveries() == 0
    assert {e["event_id"] for e in parent_events} <= aop_collector.event_ids()


def test_stream_acked_events_are_not_sent_again_by_batch(tmp_path, aop_collector):
    """Events marked delivered (a stream ack) are retained as delivered and skipped by the flusher."""
    client = AOPClient(make_config(tmp_path, aop_collector.url))
    events = emit_sample_run(client)
    acked = [events[0]["event_id"], events[2]["event_id"]]
    assert client.mark_delivered(acked + ["not-an-emitted-id"]) == 2
    assert client.mark_delivered(acked) == 0  # already delivered: nothing moves twice
    stats = client.get_stats()
    assert (stats["pending"], stats["delivered_retained"]) == (1, 2)
    assert client.flush(timeout=10) is True
    client.stop(timeout=5)
    assert aop_collector.event_ids() == {events[1]["event_id"]}
    replayed = [e.seq for e in client.store.iter_run(client.trace_builder.run_id)]
    assert replayed == [1, 2, 3]


def test_a_non_flusher_process_exits_without_waiting(tmp_path, aop_collector):
    """At exit a process that is not the flusher stops at once; the flusher delivers its events."""
    import subprocess
    import sys

    leader = AOPClient(make_config(tmp_path, aop_collector.url, batch_interval=30.0)).start()
    wait_until(lambda: leader.get_stats()["is_flusher"], timeout=10)
    code = (
        "import atexit, sys, time; sys.path.insert(0, %r)\n"
        "atexit.register(lambda: print('exit-done', time.monotonic(), flush=True))  # runs last\n"
        "from aop_client import AOPClient, ClientConfig\n"
        "c = AOPClient(ClientConfig(api_key=%r, org_salt_key=%r, base_url=%r, spool_dir=%r)).start()\n"
        "c.emit_event(c.trace_builder.create_final_output(text='from a worker'))\n"
        "print('emitted', time.monotonic(), flush=True)\n"
    ) % (str(Path(__file__).resolve().parent.parent), TEST_API_KEY, TEST_ORG_SALT_KEY,
         aop_collector.url, str(tmp_path / "spool"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    marks = dict(line.split() for line in proc.stdout.split("\n") if line)
    exit_span = float(marks["exit-done"]) - float(marks["emitted"])
    stats = leader.get_stats()  # the worker left its event on disk, undelivered (the leader may hold it)
    assert stats["pending"] + stats["in_flight"] == 1 and not aop_collector.events()
    assert leader.flush(timeout=10) is True
    leader.stop(timeout=5)
    assert len(aop_collector.events()) == 1
    assert exit_span < 1.0, f"a non-flusher process spent {exit_span:.2f} s in its exit handlers (2 s drain wait?)"
