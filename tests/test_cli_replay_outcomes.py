"""`aop replay` judges answers as the flusher does (core.outcome.classify, core.flush_machine.next_step).

A real reference collector with injected faults: 429/503 are retried (with
backoff) until the file is delivered, a 400 batch is split down to the event the
server refuses, which is reported as a dead letter, and retries are bounded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson

from aop_client.collector import FaultConfig
from aop_client.collector.runner import faults_from_json, faults_to_json
from aop_client.signing import sign_event
from aop_client.testing import TEST_ORG_SALT_KEY
from test_cli import EXIT_SERVER, EXIT_UNDELIVERED, assert_error_line, env, run_aop  # noqa: F401  (env: fixture)
from test_cli_files import replay_args

RUN_ID = "55555555-5555-4555-8555-555555555555"


def trace_file(tmp_path: Path, n: int, **changes: Any) -> tuple[Path, list[dict]]:
    """A replay file of ``n`` signed custom events of one run (``changes`` maps an index to fields to set)."""
    events = []
    for i in range(n):
        event = {"event_id": f"00000000-0000-4000-8000-{i:012d}", "run_id": RUN_ID, "agent_id": 1, "seq": i + 1,
                 "t": "2025-12-05T10:00:00.000Z", "type": "custom", "name": "n", "payload": {"i": i}}
        event.update(changes.get(f"e{i}", {}))
        events.append(sign_event(event, TEST_ORG_SALT_KEY))
    path = tmp_path / "trace.json"
    path.write_bytes(orjson.dumps({"run_id": RUN_ID, "events": events}))
    return path, events


def batch_requests(collector: Any) -> list[dict]:
    return [r for r in collector.request_log() if r["path"].endswith("/batch")]


def test_429_and_503_are_retried_until_the_file_is_delivered(tmp_path: Path, env: dict[str, str],
                                                             aop_collector_factory: Any) -> None:
    """Half the answers are 429 or 503 (some after the server stored the batch): replay retries each batch
    under its Idempotency-Key with backoff until every event is on the server, and exits 0."""
    collector = aop_collector_factory(faults=FaultConfig(rate_429=0.3, rate_503=0.3, retry_after=0.01, seed=7,
                                                         after_store_probability=0.5, endpoints=frozenset({"batch"})))
    path, events = trace_file(tmp_path, 9)
    started = time.monotonic()
    result = run_aop(*replay_args(collector, path), "--max-retries", "40", "--max-wait", "0.05",
                     env={**env, "AOP_BATCH_SIZE": "3"})
    assert result.returncode == 0, result.stderr
    totals = json.loads(result.stdout)
    assert totals["accepted"] + totals["duplicates"] == 9 and totals["rejected"] == []
    assert collector.event_ids() == {e["event_id"] for e in events}
    statuses = [r["status"] for r in batch_requests(collector)]
    assert {429, 503} <= set(statuses) and statuses.count(200) == 3
    assert time.monotonic() - started < 60


def test_a_400_batch_is_split_down_to_the_refused_event_which_is_reported(tmp_path: Path, env: dict[str, str],
                                                                          aop_collector_factory: Any) -> None:
    """The server answers 400 to any batch holding one event: replay halves 8 -> 4 -> 2 -> 1 (as protocol
    section 2 says), delivers the 7 others and reports that one as rejected (exit 1)."""
    path, events = trace_file(tmp_path, 8)
    poison = events[5]["event_id"]
    collector = aop_collector_factory(faults=FaultConfig(poison_event_ids=frozenset({poison})))
    result = run_aop(*replay_args(collector, path), env=env)
    assert_error_line(result, EXIT_UNDELIVERED, "1 events rejected", poison, "400")
    assert json.loads(result.stdout)["accepted"] == 7
    assert collector.event_ids() == {e["event_id"] for e in events} - {poison}
    requests = batch_requests(collector)
    assert [r["status"] for r in requests].count(400) == 4  # batches of 8, 4, 2 and 1 held the poison
    assert sum(r["events"] for r in requests if r["status"] == 200) == 7


def test_retries_are_bounded_and_giving_up_is_exit_3(tmp_path: Path, env: dict[str, str],
                                                      aop_collector_factory: Any) -> None:
    """A server that answers 503 forever gets --max-retries attempts of the batch, then replay stops: exit 3."""
    collector = aop_collector_factory(faults=FaultConfig(rate_503=1.0, retry_after=None, seed=1))
    path, _events = trace_file(tmp_path, 3)
    result = run_aop(*replay_args(collector, path), "--max-retries", "3", "--max-wait", "0.01", env=env)
    assert_error_line(result, EXIT_SERVER, "did not take a batch of 3 events", "3 attempts", "503")
    requests = batch_requests(collector)
    assert [r["status"] for r in requests] == [503, 503, 503]
    assert collector.event_ids() == set()


def test_events_the_protocol_refuses_are_reported_and_not_sent(tmp_path: Path, env: dict[str, str],
                                                               aop_collector: Any) -> None:
    """An event whose envelope breaks the protocol (seq 0) is reported by the protocol's own check, never sent."""
    path, events = trace_file(tmp_path, 3, e1={"seq": 0})
    result = run_aop(*replay_args(aop_collector, path), env=env)
    assert_error_line(result, EXIT_UNDELIVERED, "1 events rejected", events[1]["event_id"], "not sent: seq")
    assert aop_collector.event_ids() == {events[0]["event_id"], events[2]["event_id"]}
    assert sum(r["events"] for r in batch_requests(aop_collector)) == 2


def test_poison_event_ids_survive_the_fault_control_json() -> None:
    """The fault configuration's JSON form (CLI environment, /api/v1/_faults) keeps the poison ids."""
    faults = FaultConfig(poison_event_ids=frozenset({"a", "b"}), rate_429=0.5)
    assert faults_from_json(faults_to_json(faults)) == faults
