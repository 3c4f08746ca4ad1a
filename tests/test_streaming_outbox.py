"""Tests of the stream's bounded send buffer: a hypothesis state machine against a list model."""

from __future__ import annotations

import os
import threading

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aop_client.streaming.frames import OutgoingEvent
from aop_client.streaming.outbox import Outbox

RUNS = ["run-a", "run-b"]


class OutboxMachine(RuleBasedStateMachine):
    """Outbox vs. a model: pending is FIFO, in-flight keeps send order, the total never exceeds the bound."""

    def __init__(self) -> None:
        super().__init__()
        self.box = Outbox(max_events=6)
        self.pending: list[OutgoingEvent] = []
        self.inflight: list[OutgoingEvent] = []
        self.next_id = 0
        self.dropped = 0
        self.acked = 0

    def teardown(self) -> None:
        """Release the outbox's wake-up pipe."""
        self.box.close()

    @rule(run=st.sampled_from(RUNS))
    def offer(self, run: str) -> None:
        """A new event is queued unless the buffer is full."""
        self.next_id += 1
        event = OutgoingEvent(f"e{self.next_id}", run, b"{}")
        accepted = self.box.offer(event)
        room = len(self.pending) + len(self.inflight) < self.box.max_events
        assert accepted == room
        if accepted:
            self.pending.append(event)
        else:
            self.dropped += 1

    @rule(limit=st.integers(1, 4))
    def take(self, limit: int) -> None:
        """take() hands out the leading events of the head run, in order."""
        run = self.box.head_run()
        expected_run = self.pending[0].run_id if self.pending else None
        assert run == expected_run
        if run is None:
            return
        taken = self.box.take(run, limit, now=0.0)
        expected = []
        for event in self.pending:
            if event.run_id != run or len(expected) == limit:
                break
            expected.append(event)
        assert taken == expected
        del self.pending[: len(expected)]
        self.inflight.extend(expected)

    @precondition(lambda self: self.inflight)
    @rule(data=st.data())
    def ack_some(self, data: st.DataObject) -> None:
        """Acks settle exactly the in-flight events they name; unknown ids are ignored."""
        chosen = data.draw(st.lists(st.sampled_from(self.inflight), unique=True))
        settled = self.box.ack([e.event_id for e in chosen] + ["unknown"])
        assert sorted(settled) == sorted(e.event_id for e in chosen)
        self.inflight = [e for e in self.inflight if e not in chosen]
        self.acked += len(chosen)

    @rule()
    def reconnect(self) -> None:
        """After a reconnect, unacknowledged events come first again, in their original order."""
        moved = self.box.requeue_inflight()
        assert moved == len(self.inflight)
        self.pending = self.inflight + self.pending
        self.inflight = []

    @rule()
    def switch_run(self) -> None:
        """Abandoning in-flight events forgets them and counts them."""
        before = self.box.abandoned
        assert self.box.abandon_inflight() == len(self.inflight)
        assert self.box.abandoned == before + len(self.inflight)
        self.inflight = []

    @invariant()
    def counts_match_model(self) -> None:
        """Counts equal the model's and stay within the bound."""
        assert self.box.counts() == (len(self.pending), len(self.inflight))
        assert len(self.pending) + len(self.inflight) <= self.box.max_events
        assert self.box.dropped == self.dropped and self.box.acked == self.acked


TestOutboxMachine = OutboxMachine.TestCase
TestOutboxMachine.settings = settings(max_examples=int(os.environ.get("AOP_STREAM_EXAMPLES", "60")), stateful_step_count=30, deadline=None)


def test_offer_after_close_is_refused() -> None:
    """A closed outbox refuses events and counts them as dropped."""
    box = Outbox(3)
    box.close()
    assert box.offer(OutgoingEvent("e", "r", b"{}")) is False and box.dropped == 1


def test_wait_returns_when_a_producer_offers() -> None:
    """A sleeping I/O thread wakes up when an event is offered from another thread."""
    box = Outbox(10)
    woke = threading.Event()

    def sleeper() -> None:
        """Sleep in wait() until woken."""
        box.wait(30.0, ignore_pending=True)
        woke.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    offered = False
    while not woke.is_set():  # offer until the sleeper is actually asleep and gets woken
        offered = box.offer(OutgoingEvent(f"e{box.offered}", "r", b"{}")) or offered
        woke.wait(0.05)
    thread.join(5)
    assert offered and woke.is_set() and not thread.is_alive()
    box.close()


def test_wait_empty_reports_settlement() -> None:
    """wait_empty is False while events are unsettled and True once they are acknowledged."""
    box = Outbox(10)
    box.offer(OutgoingEvent("e1", "r", b"{}"))
    assert box.wait_empty(0.0) is False
    box.take("r", 10, now=0.0)
    threading.Timer(0.01, box.ack, args=(["e1"],)).start()
    assert box.wait_empty(5.0) is True
    box.close()
