"""The trace-file module takes data (run id, metadata, stored events), not the client: replay and fallback files."""

from __future__ import annotations

import os
import stat

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client.errors import ValidationError
from aop_client.store.api import StoredEvent
from aop_client.trace_files import read_trace_file, write_fallback_file, write_replay_file

NOW = 1_764_930_600.123


def stored(run_id: str, seq: int) -> StoredEvent:
    body = orjson.dumps({"event_id": f"e{seq}", "run_id": run_id, "seq": seq, "sig": "x" * 8})
    return StoredEvent(ref=seq, event_id=f"e{seq}", run_id=run_id, seq=seq, body=body)


def test_a_replay_file_is_written_from_an_iterable_of_stored_events(tmp_path):
    events = (stored("run-1", seq) for seq in range(1, 4))  # a generator: read once, like store.iter_run
    path = write_replay_file(tmp_path / "replay", "run-1", events, agent_id=7, seed=42,
                             stats={"emitted": 3}, now=NOW)
    assert path is not None and path.name == "replay_run-1_20251205T103000.123Z.json"
    doc = read_trace_file(path)
    assert doc["run_id"] == "run-1" and doc["event_count"] == 3
    assert doc["metadata"] == {"agent_id": 7, "seed": 42, "stats": {"emitted": 3}}
    assert [e["seq"] for e in doc["events"]] == [1, 2, 3]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "replay").st_mode) == 0o700


def test_no_events_no_replay_file(tmp_path):
    assert write_replay_file(tmp_path, "run-1", iter(()), agent_id=1, seed=None, stats={}, now=NOW) is None
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=30, unique=True))
def test_a_fallback_file_holds_the_events_in_seq_order_as_stored(tmp_path_factory, seqs):
    folder = tmp_path_factory.mktemp("fallback")
    events = [stored("run-2", seq) for seq in seqs]
    path = write_fallback_file(folder, "run-2", events, {"reason": "max_retries"}, now=NOW)
    data = path.read_bytes()
    doc = read_trace_file(path)
    assert doc["event_count"] == len(seqs) and doc["metadata"] == {"reason": "max_retries"}
    assert [e["seq"] for e in doc["events"]] == sorted(seqs)
    for event in events:  # spliced in byte for byte: the signatures stay valid
        assert event.body in data


def test_trace_files_never_overwrite_each_other(tmp_path):
    first = write_fallback_file(tmp_path, "run-3", [stored("run-3", 1)], {}, now=NOW)
    second = write_fallback_file(tmp_path, "run-3", [stored("run-3", 2)], {}, now=NOW)
    assert first != second and second.name.endswith("-1.json")
    assert read_trace_file(first)["events"][0]["seq"] == 1


def test_an_unsafe_run_id_is_refused_before_any_file_is_made(tmp_path):
    with pytest.raises(ValidationError):
        write_fallback_file(tmp_path, "../escape", [stored("../escape", 1)], {}, now=NOW)
    assert [p.name for p in tmp_path.iterdir()] == []
