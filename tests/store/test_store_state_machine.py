"""Stateful property test: two DiskStore handles on one directory against an in-memory model.

Handle 0 plays the elected flusher: its fenced leases may be direct leases
(negative refs, records taken past the index cursors, known to handle 0 only;
see aop_client/store/direct_lease.py). The model follows what other handles
can see of them: when handle 1 indexes the segments (its lease, iter_run,
mark_delivered) or handle 0 dies, handle 0's unsettled direct leases are
pending again and their refs are gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aop_client.errors import FencedError
from aop_client.store import DiskStore
from aop_client.store.records import encode_record

EXAMPLES = int(os.environ.get("AOP_STORE_EXAMPLES", "60" if os.environ.get("AOP_SOAK") else "25"))
STEPS = 60 if os.environ.get("AOP_SOAK") else 35
RETENTION = 100.0
LEASE_TIMEOUT = 50.0
RUNS = ["run-a", "run-b", "run-c"]


class ModelEvent:
    """What the model knows about one appended event."""

    def __init__(self, event_id: str, run_id: str, seq: int, body: bytes, order: int) -> None:
        self.event_id, self.run_id, self.seq, self.body, self.order = event_id, run_id, seq, body, order
        self.state = "pending"
        self.ref: object = None
        self.lease_until = 0.0
        self.done_at = 0.0
        self.reason = ""
        self.attempts = 0


class StoreMachine(RuleBasedStateMachine):
    """Real store (handles 0 and 1 share a directory) vs. a dict-of-events model."""

    @initialize()
    def setup(self) -> None:
        """Two handles on a fresh directory, a fake clock and an empty model; the flusher epoch starts."""
        self.tmp = tempfile.mkdtemp(prefix="aop-sm-")
        self.dir = os.path.join(self.tmp, "store")
        self.now = [1_000_000.0]
        self.handles = [self._open(), self._open()]
        self.events: dict[str, ModelEvent] = {}
        self.next_seq = {r: 1 for r in RUNS}
        self.counter = 0
        self.epoch = self.handles[0].begin_epoch()
        self.stale_epochs: list[int] = []
        self.torn = 0

    def teardown(self) -> None:
        """Close every handle and remove the directory."""
        for h in getattr(self, "handles", []):
            h.close()
        shutil.rmtree(getattr(self, "tmp", ""), ignore_errors=True)

    def _open(self) -> DiskStore:
        return DiskStore(self.dir, clock=lambda: self.now[0], retention_seconds=RETENTION, lease_timeout=LEASE_TIMEOUT)

    def _in(self, state: str) -> list[ModelEvent]:
        return sorted((e for e in self.events.values() if e.state == state), key=lambda e: e.order)

    def _subset(self, data, state: str) -> list[ModelEvent]:
        pool = self._in(state)
        return data.draw(st.lists(st.sampled_from(pool), unique_by=lambda e: e.event_id, min_size=1, max_size=len(pool)))

    @rule(h=st.integers(0, 1), run=st.sampled_from(RUNS), body=st.binary(max_size=40))
    def append(self, h: int, run: str, body: bytes) -> None:
        """An append that returns is stored and counted pending."""
        self.counter += 1
        eid = f"evt-{self.counter}"
        seq = self.next_seq[run]
        result = self.handles[h].append(eid, run, seq, body)
        assert result.stored, result
        self.next_seq[run] += 1
        self.events[eid] = ModelEvent(eid, run, seq, body, self.counter)

    def _direct_leases_seen_by_others(self, h: int) -> None:
        """Handle h is about to index the segments: handle 0's unsettled direct leases become pending rows."""
        if h == 0:
            return  # handle 0 gives its own direct leases in-flight rows first
        outstanding = self.handles[0]._direct.refs_outstanding()
        for e in self._in("in_flight"):
            if e.ref in outstanding:
                e.state, e.ref = "pending", None

    def _handle_for(self, chosen: list, h: int) -> DiskStore:
        """Direct-lease refs are only known to handle 0 (the flusher); row refs work on any handle."""
        return self.handles[0] if any(isinstance(e.ref, int) and e.ref < 0 for e in chosen) else self.handles[h]

    def _settleable(self, data, state: str) -> list[ModelEvent]:
        pool = [e for e in self._in(state) if e.ref is not None]
        return data.draw(st.lists(st.sampled_from(pool), unique_by=lambda e: e.event_id, min_size=1, max_size=len(pool)))

    @rule(h=st.integers(0, 1), n=st.integers(1, 6), fenced=st.booleans())
    def lease(self, h: int, n: int, fenced: bool) -> None:
        """A lease returns exactly the oldest pending events (expired leases first returned)."""
        fenced = fenced and h == 0
        if not fenced:
            self._direct_leases_seen_by_others(h)
        for e in self._in("in_flight"):
            if e.lease_until < self.now[0]:
                e.state = "pending"
        expected = self._in("pending")[:n]
        batch = self.handles[h].lease(n, 10**9, epoch=self.epoch) if fenced else self.handles[h].lease(n, 10**9)
        assert [b.event_id for b in batch] == [e.event_id for e in expected]
        for b, e in zip(batch, expected):
            assert (b.run_id, b.seq, b.body, b.attempts) == (e.run_id, e.seq, e.body, e.attempts)
            e.state, e.ref, e.lease_until = "in_flight", b.ref, self.now[0] + LEASE_TIMEOUT

    @precondition(lambda self: any(e.ref is not None for e in self._in("in_flight")))
    @rule(h=st.integers(0, 1), data=st.data())
    def ack(self, h: int, data) -> None:
        """Acked events become delivered-retained, and nothing else changes."""
        chosen = self._settleable(data, "in_flight")
        self._handle_for(chosen, h).ack([e.ref for e in chosen], epoch=self.epoch)
        for e in chosen:
            e.state, e.done_at = "delivered", self.now[0]

    @precondition(lambda self: any(e.ref is not None for e in self._in("in_flight")))
    @rule(h=st.integers(0, 1), data=st.data(), attempted=st.booleans())
    def release(self, h: int, data, attempted: bool) -> None:
        """Released events return to pending with their attempt counted."""
        chosen = self._settleable(data, "in_flight")
        self._handle_for(chosen, h).release([e.ref for e in chosen], epoch=self.epoch, attempted=attempted)
        for e in chosen:
            e.state = "pending"
            e.attempts += int(attempted)

    @precondition(lambda self: any(e.ref is not None for e in self._in("in_flight")))
    @rule(h=st.integers(0, 1), data=st.data(), reason=st.sampled_from(["schema", "too old"]))
    def dead_letter(self, h: int, data, reason: str) -> None:
        """Dead-lettered events are listed with their reason."""
        chosen = self._settleable(data, "in_flight")
        self._handle_for(chosen, h).dead_letter([e.ref for e in chosen], reason, epoch=self.epoch)
        for e in chosen:
            e.state, e.reason = "dead", reason

    @precondition(lambda self: any(e.ref is not None for e in self._in("in_flight")))
    @rule(h=st.integers(0, 1), data=st.data())
    def fallback(self, h: int, data) -> None:
        """Fallback events are parked until retry_fallback."""
        chosen = self._settleable(data, "in_flight")
        self._handle_for(chosen, h).fallback([e.ref for e in chosen], epoch=self.epoch)
        for e in chosen:
            e.state = "fallback"

    @rule(h=st.integers(0, 1), data=st.data())
    def mark_delivered(self, h: int, data) -> None:
        """Stream-acked events move to delivered when pending or fallback; leased ones stay with the flusher."""
        pool = sorted(self.events.values(), key=lambda e: e.order)
        chosen = data.draw(st.lists(st.sampled_from(pool), unique_by=lambda e: e.event_id, max_size=4)) if pool else []
        if chosen:  # an empty call returns at once, without indexing
            self._direct_leases_seen_by_others(h)
        movable = [e for e in chosen if e.state in ("pending", "fallback")]
        moved = self.handles[h].mark_delivered([(e.event_id, e.run_id, e.seq) for e in chosen])
        assert moved == len(movable)
        for e in movable:
            e.state, e.done_at = "delivered", self.now[0]

    @rule(h=st.integers(0, 1))
    def retry_fallback(self, h: int) -> None:
        """retry_fallback returns every fallback event to pending and says how many."""
        parked = self._in("fallback")
        assert self.handles[h].retry_fallback() == len(parked)
        for e in parked:
            e.state = "pending"

    @rule(h=st.integers(0, 1), data=st.data(), everything=st.booleans())
    def retry_dead(self, h: int, data, everything: bool) -> None:
        """retry_dead_letters moves exactly the named (or all) dead letters to pending."""
        dead = self._in("dead")
        chosen = dead if everything or not dead else self._subset(data, "dead")
        ids = None if everything else [e.event_id for e in chosen]
        assert self.handles[h].retry_dead_letters(ids) == len(chosen)
        for e in chosen:
            e.state = "pending"

    @precondition(lambda self: self._in("dead"))
    @rule(h=st.integers(0, 1), data=st.data())
    def purge_dead(self, h: int, data) -> None:
        """purge_dead_letters deletes exactly the named dead letters."""
        chosen = self._subset(data, "dead")
        assert self.handles[h].purge_dead_letters([e.event_id for e in chosen]) == len(chosen)
        for e in chosen:
            del self.events[e.event_id]

    @rule(h=st.integers(0, 1))
    def new_epoch(self, h: int) -> None:
        """A new flusher epoch returns every in-flight event to pending and fences the old one."""
        self.stale_epochs.append(self.epoch)
        self.epoch = self.handles[h].begin_epoch()
        assert self.epoch > self.stale_epochs[-1]
        for e in self._in("in_flight"):
            e.state = "pending"

    @precondition(lambda self: self.stale_epochs and self._in("in_flight"))
    @rule(h=st.integers(0, 1), data=st.data(), op=st.sampled_from(["ack", "dead_letter", "fallback", "release"]))
    def stale_flusher(self, h: int, data, op: str) -> None:
        """A deposed flusher's mutation raises FencedError and changes nothing."""
        chosen = self._subset(data, "in_flight")
        refs = [e.ref if e.ref is not None else 1 for e in chosen]
        epoch = data.draw(st.sampled_from(self.stale_epochs))
        store = self._handle_for(chosen, h)
        calls = {
            "ack": lambda: store.ack(refs, epoch=epoch),
            "dead_letter": lambda: store.dead_letter(refs, "x", epoch=epoch),
            "fallback": lambda: store.fallback(refs, epoch=epoch),
            "release": lambda: store.release(refs, epoch=epoch),
        }
        try:
            calls[op]()
        except FencedError:
            pass
        else:
            raise AssertionError(f"stale epoch {epoch} {op} was not fenced")

    @rule(h=st.integers(0, 1))
    def reopen(self, h: int) -> None:
        """Closing and reopening a handle loses nothing (handle 0's unsettled direct leases are pending again)."""
        self._forget_refs_of(h)
        self.handles[h].close()
        self.handles[h] = self._open()

    @rule(h=st.integers(0, 1), torn=st.booleans(), cut=st.floats(0.05, 0.95))
    def crash(self, h: int, torn: bool, cut: float) -> None:
        """A handle dies without closing (its fds vanish, maybe mid-append); a new one takes over."""
        self._forget_refs_of(h)
        victim = self.handles[h]
        writer = victim._writer
        if torn:
            record = encode_record(b"torn-event", b"run-a", 999, b"never returned" * 3, 1, self.now[0])
            with writer._lock:
                if writer._fd is None:
                    writer._open_new()
                os.write(writer._fd, record[: max(1, int(len(record) * cut))])
            self.torn += 1
        for fd in [writer._fd, *writer._retired]:
            if fd is not None:
                os.close(fd)
        writer._fd, writer._retired = None, []
        victim._bodies.close()
        victim._conn.close()
        victim._conn = None
        victim._closed = True
        self.handles[h] = self._open()

    def _forget_refs_of(self, h: int) -> None:
        """Handle h goes away: its direct leases are pending again, its materialized ones orphaned in flight."""
        if h != 0:
            return
        outstanding = self.handles[0]._direct.refs_outstanding()
        for e in self._in("in_flight"):
            if isinstance(e.ref, int) and e.ref < 0:
                if e.ref in outstanding:
                    e.state = "pending"
                e.ref = None  # a materialized one stays in flight until its lease expires

    @rule(dt=st.floats(0, 120))
    def advance_clock(self, dt: float) -> None:
        """Time passes (leases may expire, retention may end)."""
        self.now[0] += dt

    @rule(h=st.integers(0, 1))
    def reclaim(self, h: int) -> None:
        """reclaim forgets exactly the delivered events older than retention."""
        cutoff = self.now[0] - RETENTION
        gone = [e for e in self._in("delivered") if e.done_at < cutoff]
        assert self.handles[h].reclaim() == len(gone)
        for e in gone:
            del self.events[e.event_id]

    @rule(h=st.integers(0, 1), run=st.sampled_from(RUNS), include=st.booleans())
    def check_run(self, h: int, run: str, include: bool) -> None:
        """iter_run yields the run's stored events in seq order; torn appends are quarantined."""
        self._direct_leases_seen_by_others(h)
        states = {"pending", "in_flight", "fallback"} | ({"delivered"} if include else set())
        expected = sorted((e for e in self.events.values() if e.run_id == run and e.state in states), key=lambda e: e.seq)
        got = list(self.handles[h].iter_run(run, include_delivered=include))
        assert [(g.event_id, g.seq, g.body) for g in got] == [(e.event_id, e.seq, e.body) for e in expected]
        assert self.handles[h].stats().quarantined == self.torn

    @rule(h=st.integers(0, 1))
    def check_dead_letters(self, h: int) -> None:
        """dead_letters lists exactly the dead events with their reasons."""
        got = sorted((d.event_id, d.reason, d.body) for d in self.handles[h].dead_letters())
        assert got == sorted((e.event_id, e.reason, e.body) for e in self._in("dead"))

    @invariant()
    def counters_match(self) -> None:
        """Host-wide stats equal the model's state counts."""
        if not hasattr(self, "handles"):
            return
        s = self.handles[0].stats()
        assert (s.pending, s.in_flight, s.delivered_retained, s.dead_letters, s.fallback) == (
            len(self._in("pending")),
            len(self._in("in_flight")),
            len(self._in("delivered")),
            len(self._in("dead")),
            len(self._in("fallback")),
        )
        assert s.dropped == {}
        assert s.quarantined <= self.torn


StoreMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, print_blob=True
)
TestStoreStateMachine = StoreMachine.TestCase
