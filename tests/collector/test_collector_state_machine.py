"""Stateful property test: the collector's record matches a model through batches, faults and restarts."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from aop_client.collector import CollectorConfig, FaultConfig, start_collector
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY
from collector_helpers import make_event, post_batch, post_completion

SOAK = os.environ.get("AOP_SOAK") == "1"
POOL = 12


class CollectorMachine(RuleBasedStateMachine):
    """Model: which event_ids are held and how often each arrived; the collector must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.config = CollectorConfig(api_key=TEST_API_KEY, org_salt_key=TEST_ORG_SALT_KEY, port=0,
                                      db_path=os.path.join(self.tmp.name, "c.sqlite3"))
        self.collector = start_collector(self.config)
        self.run_id = str(uuid.uuid4())
        self.pool = [make_event(self.run_id, seq, TEST_ORG_SALT_KEY) for seq in range(1, POOL + 1)]
        self.held: set[str] = set()
        self.receipts: Counter = Counter()
        self.duplicates = 0

    @rule(picks=st.lists(st.integers(0, POOL - 1), min_size=1, max_size=8), tamper=st.lists(st.booleans(), max_size=8),
          gzip_body=st.booleans())
    def send_batch(self, picks: list[int], tamper: list[bool], gzip_body: bool) -> None:
        """A batch (repeats allowed, some events tampered) is answered with counts the model predicts."""
        events, expected_accepted, expected_dups, expected_rejected = [], 0, 0, 0
        for i, index in enumerate(picks):
            event = self.pool[index]
            if i < len(tamper) and tamper[i]:
                events.append(dict(event, payload={"tampered": True}))
                expected_rejected += 1
                continue
            events.append(event)
            if event["event_id"] in self.held:
                expected_dups += 1
                self.duplicates += 1
            else:
                expected_accepted += 1
                self.held.add(event["event_id"])
            self.receipts[event["event_id"]] += 1
        status, answer, _ = post_batch(self.collector, events, gzip_body=gzip_body)
        assert status == 200
        assert (answer["accepted"], answer["duplicates"], len(answer["rejected"])) == (
            expected_accepted, expected_dups, expected_rejected)

    @rule(index=st.integers(0, POOL - 1), after_store=st.booleans())
    def send_into_a_500(self, index: int, after_store: bool) -> None:
        """A faulted request stores the event only when the fault strikes after storing."""
        self.collector.set_faults(FaultConfig(rate_500=1.0, after_store_probability=1.0 if after_store else 0.0))
        try:
            status, _, _ = post_batch(self.collector, [self.pool[index]])
        finally:
            self.collector.set_faults(FaultConfig())
        assert status == 500
        if after_store:
            event_id = self.pool[index]["event_id"]
            if event_id in self.held:
                self.duplicates += 1
            self.held.add(event_id)
            self.receipts[event_id] += 1

    @rule()
    def restart(self) -> None:
        """Stopping and restarting on the same file loses nothing."""
        self.collector.stop()
        self.collector = start_collector(self.config)

    @rule()
    def completion(self) -> None:
        """Run completion lists exactly the pool seqs the model does not hold."""
        status, answer, _ = post_completion(self.collector, self.run_id, POOL)
        missing = [e["seq"] for e in self.pool if e["event_id"] not in self.held]
        assert status == 200 and answer == {"complete": not missing, "missing": missing}

    @invariant()
    def record_matches_model(self) -> None:
        """Held ids, per-event receipts and the duplicate count equal the model's."""
        assert self.collector.event_ids() == self.held
        for event_id, count in self.receipts.items():
            assert self.collector.delivery_count(event_id) == count
        assert self.collector.duplicate_deliveries() == self.duplicates

    def teardown(self) -> None:
        self.collector.stop()
        self.tmp.cleanup()


CollectorMachine.TestCase.settings = settings(max_examples=60 if SOAK else 6, stateful_step_count=10, deadline=None)
TestCollectorMachine = CollectorMachine.TestCase
