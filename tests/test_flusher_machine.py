"""Stateful property test of one batch's life (core.flush_machine) against a model, under random answers.

The machine holds several batches in flight; each rule gives one of them a
random server answer (any status, Retry-After, rejections, broken bodies,
timeouts) and checks the step the real code takes against the protocol:
no ack without a readable 2xx, nothing lost or duplicated across
ack/dead/fallback/split/retry, every delay within [0, cap] and not below
Retry-After, the same batch id on every retry.
"""

from __future__ import annotations

import itertools
import os

import orjson
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aop_client.core.backoff import RetryPolicy
from aop_client.core.flush_machine import BatchAttempt, next_step
from aop_client.core.outcome import classify

NOW = 1_700_000_000.0
statuses = st.one_of(st.none(), st.sampled_from([200, 201, 204, 301, 400, 401, 403, 404, 408, 409, 413, 422, 425,
                                                 429, 500, 502, 503, 504, 599]), st.integers(100, 599))
bodies = st.sampled_from(["ok", "garbage", "empty", "wrong_shape"])


class FlushMachine(RuleBasedStateMachine):
    """Batches under random answers; the model tracks where every event id must be."""

    @initialize(max_retries=st.integers(0, 5), base=st.floats(0, 5), extra=st.floats(0, 100))
    def setup(self, max_retries: int, base: float, extra: float) -> None:
        self.policy = RetryPolicy(max_retries=max_retries, base=base, cap=base + extra)
        self.ids = (f"e{i}" for i in itertools.count())
        self.batch_ids = (f"b{i}" for i in itertools.count())
        self.active: list[BatchAttempt] = []
        self.created: set[str] = set()
        self.acked: set[str] = set()
        self.dead: set[str] = set()
        self.parked: set[str] = set()
        self.acked_with_2xx: set[str] = set()  # model: ids a readable 2xx named as not rejected

    @rule(n=st.integers(1, 12))
    def new_batch(self, n: int) -> None:
        """A new batch of n fresh events."""
        ids = tuple(next(self.ids) for _ in range(n))
        self.created.update(ids)
        self.active.append(BatchAttempt(batch_id=next(self.batch_ids), event_ids=ids))

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data(), status=statuses, body_kind=bodies, u=st.floats(0, 1, exclude_max=True),
          retry_after=st.one_of(st.none(), st.integers(0, 500)))
    def answer(self, data, status, body_kind, u, retry_after) -> None:
        """One batch gets one answer; the step must follow the protocol and keep every event."""
        index = data.draw(st.integers(0, len(self.active) - 1))
        attempt = self.active.pop(index)
        rejected = data.draw(st.lists(st.sampled_from(attempt.event_ids), unique=True))
        good_doc = {"accepted": len(attempt.event_ids) - len(rejected), "duplicates": 0,
                    "rejected": [{"event_id": r, "reason": "bad"} for r in rejected]}
        body = {"ok": orjson.dumps(good_doc), "garbage": b"\xff<html", "empty": b"",
                "wrong_shape": b'{"accepted": "all"}'}[body_kind]
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        outcome = classify(status, headers, body, batch_event_ids=attempt.event_ids, now=NOW)
        step = next_step(attempt, outcome, self.policy, u)

        readable_2xx = status is not None and 200 <= status <= 299 and body_kind == "ok"
        assert bool(step.ack) <= readable_2xx, "ack without a readable 2xx"
        if readable_2xx:
            assert set(step.ack) == set(attempt.event_ids) - set(rejected)
            assert {i for i, _ in step.dead} == set(rejected)
            self.acked_with_2xx.update(step.ack)
        parts = [set(step.ack), {i for i, _ in step.dead}, set(step.fallback), *map(set, step.halves)]
        if step.retry is not None:
            parts.append(set(step.retry.event_ids))
            assert step.retry.batch_id == attempt.batch_id, "a retry must keep the Idempotency-Key"
            assert 0.0 <= step.delay <= self.policy.cap
            retryable = status is not None and (status in (408, 425, 429) or status >= 500)
            if retry_after is not None and retryable:
                assert step.delay >= min(retry_after, self.policy.cap), "Retry-After is a floor"
        assert sum(map(len, parts)) == len(attempt.event_ids), "an event landed twice"
        assert set().union(*parts) == set(attempt.event_ids), "an event was lost"
        if step.fallback:
            assert self.policy.exhausted(attempt.failures + 1)
        self.acked.update(step.ack)
        self.dead.update(i for i, _ in step.dead)
        self.parked.update(step.fallback)
        self.active.extend(BatchAttempt(batch_id=next(self.batch_ids), event_ids=h) for h in step.halves)
        if step.retry is not None:
            self.active.append(step.retry)

    @invariant()
    def every_event_is_in_exactly_one_place(self) -> None:
        """Created = acked + dead + parked + still active, with no overlap (nothing lost, nothing doubled)."""
        active = [i for a in getattr(self, "active", []) for i in a.event_ids]
        places = [getattr(self, "acked", set()), getattr(self, "dead", set()), getattr(self, "parked", set()), set(active)]
        assert len(active) == len(set(active))
        assert sum(map(len, places)) == len(getattr(self, "created", set()))
        assert set().union(*places) == getattr(self, "created", set())

    @invariant()
    def acks_only_from_readable_2xx(self) -> None:
        """Every acknowledged event was named delivered by a readable 2xx."""
        assert getattr(self, "acked", set()) <= getattr(self, "acked_with_2xx", set())


FlushMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("AOP_HYPOTHESIS_EXAMPLES", "60")), stateful_step_count=30, deadline=None
)
TestFlushMachine = FlushMachine.TestCase
