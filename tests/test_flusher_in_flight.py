"""max_in_flight: several batch POSTs on the wire at once, outcomes applied to the store in send order."""

from __future__ import annotations

import itertools
import random
import threading
from pathlib import Path

import pytest
from test_flusher_fakes import DELIVERED, MemoryStore, SoloElection, event_body, ok_response

from aop_client.collector.faults import FaultConfig
from aop_client.core.backoff import RetryPolicy
from aop_client.election import FlusherElection
from aop_client.errors import ConfigError
from aop_client.flusher import Flusher
from aop_client.send_pipeline import InOrder
from aop_client.signing import signed_body
from aop_client.store import DiskStore
from aop_client.testing import TEST_ORG_SALT_KEY, wait_until
from aop_client.trace_builder import TraceBuilder
from aop_client.transport import HttpTransport, PreparedBatch, Response


class HeldFirstTransport:
    """Holds the POST of the first batch (the one carrying event 0) until released; answers every POST with 200."""

    def __init__(self) -> None:
        self.release_first = threading.Event()
        self.second_arrived = threading.Event()
        self.first_event_id = event_body(0)[0]

    def post_batch(self, batch_id: str, body: bytes, *, now: float) -> Response:
        if self.first_event_id.encode() in body:
            assert self.release_first.wait(30), "the test never released the first POST"
        else:
            self.second_arrived.set()
        return ok_response(body)


def test_a_later_batch_answered_first_is_acknowledged_only_after_the_earlier_one():
    """Batch 2 is answered while batch 1 hangs: its ack waits, then both are acked in send order."""
    store = MemoryStore()
    for i in range(20):
        event_id, body = event_body(i)
        store.append(event_id, "run-1", i + 1, body)
    transport = HeldFirstTransport()
    flusher = Flusher(store, transport, SoloElection(), batch_size=10, batch_interval=0.0, max_in_flight=2,
                      retry_policy=RetryPolicy(2, 0.01, 0.05), rng=random.Random(1))
    done = threading.Thread(target=flusher.flush, kwargs={"timeout": 30})
    done.start()
    assert transport.second_arrived.wait(30)
    assert store.acks == []  # batch 2 was answered, but batch 1 is still on the wire
    transport.release_first.set()
    done.join(30)
    assert store.states()[DELIVERED] == 20
    assert store.acks == sorted(store.acks)  # refs acked oldest first: batch 1's, then batch 2's


def test_in_order_tickets_release_waiters_only_when_every_earlier_ticket_is_done():
    """InOrder: ticket 2 waits for 0 and 1, whichever order they finish in."""
    order = InOrder()
    passed = threading.Event()

    def waiter() -> None:
        order.wait_turn(2)
        passed.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    order.done(1)
    assert not passed.wait(0.05)
    order.done(0)
    assert passed.wait(10)
    thread.join()


def test_max_in_flight_must_be_a_positive_number():
    """max_in_flight=0 is refused naming the field."""
    with pytest.raises(ConfigError, match="max_in_flight"):
        Flusher(MemoryStore(), HeldFirstTransport(), SoloElection(), max_in_flight=0)


class ConcurrencyProbe(HttpTransport):
    """The real transport, counting how many POSTs are on the wire at once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self.now_in_flight = self.most_in_flight = 0

    def _send(self, path, headers, wire):
        with self._lock:
            self.now_in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.now_in_flight)
        try:
            return super()._send(path, headers, wire)
        finally:
            with self._lock:
                self.now_in_flight -= 1


def test_two_batches_on_the_wire_against_a_slow_collector_deliver_everything_once(tmp_path, aop_collector_factory):
    """Slow answers (0.2 s): two POSTs overlap, never three, and the collector holds each event once."""
    collector = aop_collector_factory(faults=FaultConfig(rate_slow=1.0, slow_delay=0.2))
    store = DiskStore(str(tmp_path / "spool"))
    builder = TraceBuilder(agent_id=9)
    ids = []
    for _ in range(60):
        event = builder.create_reasoning(goal="g", steps=[], safety_checks=[], uncertainty="low")
        assert store.append(event["event_id"], event["run_id"], event["seq"], signed_body(event, TEST_ORG_SALT_KEY)[1]).stored
        ids.append(event["event_id"])
    transport = ConcurrencyProbe(collector.url, collector.api_key, TEST_ORG_SALT_KEY)
    flusher = Flusher(store, transport, FlusherElection(store.directory), batch_size=10, batch_interval=0.0,
                      max_in_flight=2, retry_policy=RetryPolicy(3, 0.01, 0.05))
    assert flusher.flush(timeout=30)
    assert transport.most_in_flight == 2
    assert sorted(e["event_id"] for e in collector.events()) == sorted(ids)
    assert collector.stats()["duplicates"] == 0
    assert wait_until(lambda: store.stats().pending == 0 and store.stats().in_flight == 0, timeout=5)
    store.close()


_EXIT_SCRIPT = r'''
import random, sys, threading
sys.path.insert(0, sys.argv[1])
from test_flusher_fakes import MemoryStore, SoloElection, event_body
from aop_client.core.backoff import RetryPolicy
from aop_client.flusher import Flusher
from aop_client.transport import Response

posted = threading.Event()

class Down:
    def post_batch(self, batch_id, body, *, now):
        posted.set()
        return Response(status=503, headers={}, body=b"")

store = MemoryStore()
for i in range(5):
    event_id, body = event_body(i)
    store.append(event_id, "run-1", i + 1, body)
Flusher(store, Down(), SoloElection(), batch_size=10, batch_interval=0.0, max_in_flight=2,
        retry_policy=RetryPolicy(100, 20.0, 20.0), rng=random.Random(1)).start()
assert posted.wait(30)
print("main thread returns", flush=True)
'''


def test_a_process_whose_send_is_backing_off_exits_when_its_main_thread_returns(tmp_path):
    """Send threads are daemons: a send sleeping through a 20 s backoff does not keep the process alive."""
    import subprocess
    import sys

    script = tmp_path / "exit_while_backing_off.py"
    script.write_text(_EXIT_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "main thread returns" in done.stdout


class PreparingTransport:
    """A pure fake with the prepared-request interface: records which path each POST took."""

    def __init__(self) -> None:
        self.prepared_posts: list[str] = []
        self.fresh_posts: list[str] = []

    def prepare_batch(self, batch_id: str, body: bytes, *, now: float) -> PreparedBatch:
        return PreparedBatch(batch_id, {"Idempotency-Key": batch_id}, body, now)

    def post_prepared(self, prepared: PreparedBatch) -> Response:
        self.prepared_posts.append(prepared.batch_id)
        return ok_response(prepared.wire)

    def post_batch(self, batch_id: str, body: bytes, *, now: float) -> Response:
        self.fresh_posts.append(batch_id)
        return ok_response(body)


@pytest.mark.parametrize("seconds_per_tick, stale", [(0.001, False), (61.0, True)])
def test_a_prepared_batch_older_than_a_minute_is_signed_afresh(seconds_per_tick, stale):
    """A batch that waited over 60 s for its send slot is posted with a fresh signature, never the stale one."""
    store = MemoryStore()
    for i in range(30):
        event_id, body = event_body(i)
        store.append(event_id, "run-1", i + 1, body)
    ticks = itertools.count()
    transport = PreparingTransport()
    flusher = Flusher(store, transport, SoloElection(), batch_size=10, batch_interval=0.0,
                      clock=lambda: 1_000_000.0 + next(ticks) * seconds_per_tick)
    assert flusher.flush(timeout=30)
    assert store.states()[DELIVERED] == 30
    assert len(transport.prepared_posts + transport.fresh_posts) == 3
    assert (transport.prepared_posts == []) is stale
