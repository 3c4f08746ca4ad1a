"""Direct leases: the flusher's fenced leases taken past the index cursors (aop_client/store/direct_lease.py)."""

from __future__ import annotations

import os
import sqlite3

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

from aop_client.store import DiskStore

from test_store_state_machine import EXAMPLES, LEASE_TIMEOUT, STEPS, StoreMachine


def _store(path, **kw) -> DiskStore:
    return DiskStore(str(path), **kw)


def _fill(store: DiskStore, n: int, run: str = "run-1") -> list[str]:
    ids = [f"evt-{i}" for i in range(n)]
    for i, event_id in enumerate(ids):
        assert store.append(event_id, run, i + 1, b'{"n":%d}' % i).stored
    return ids


def _index_rows(path) -> int:
    with sqlite3.connect(os.path.join(str(path), "index.sqlite3")) as conn:
        return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def test_fenced_lease_of_unindexed_records_is_direct_and_its_ack_writes_no_rows(tmp_path):
    """Without retention, a fully acked direct lease leaves no index row behind and nothing pending."""
    store = _store(tmp_path, retention_seconds=0)
    ids = _fill(store, 20)
    epoch = store.begin_epoch()
    batch = store.lease(20, 10**9, epoch=epoch)
    assert [e.event_id for e in batch] == ids and all(e.ref < 0 for e in batch)
    assert (store.stats().pending, store.stats().in_flight) == (0, 20)
    store.ack([e.ref for e in batch], epoch=epoch)
    stats = store.stats()
    assert (stats.pending, stats.in_flight, stats.delivered_retained) == (0, 0, 0)
    assert _index_rows(tmp_path) == 0
    assert store.lease(20, 10**9, epoch=epoch) == []


def test_direct_ack_with_retention_keeps_the_events_for_replay(tmp_path):
    """With retention on, acked direct leases are delivered rows that iter_run still returns."""
    store = _store(tmp_path)
    ids = _fill(store, 10)
    epoch = store.begin_epoch()
    batch = store.lease(10, 10**9, epoch=epoch)
    store.ack([e.ref for e in batch], epoch=epoch)
    assert store.stats().delivered_retained == 10
    assert [e.event_id for e in store.iter_run("run-1")] == ids
    assert list(store.iter_run("run-1", include_delivered=False)) == []


def test_prefetched_groups_settle_in_any_order(tmp_path):
    """Two outstanding direct leases: acking the newer first, then the older, delivers both exactly once."""
    store = _store(tmp_path)
    ids = _fill(store, 10)
    epoch = store.begin_epoch()
    first, second = store.lease(4, 10**9, epoch=epoch), store.lease(6, 10**9, epoch=epoch)
    assert [e.event_id for e in first + second] == ids
    store.ack([e.ref for e in second], epoch=epoch)
    assert (store.stats().in_flight, store.stats().delivered_retained) == (4, 6)
    store.ack([e.ref for e in first], epoch=epoch)
    stats = store.stats()
    assert (stats.pending, stats.in_flight, stats.delivered_retained) == (0, 0, 10)
    assert store.lease(10, 10**9, epoch=epoch) == []


def test_partial_outcomes_of_a_direct_lease(tmp_path):
    """Dead letters, a release and an ack within one direct lease land in their own states."""
    store = _store(tmp_path)
    ids = _fill(store, 6)
    epoch = store.begin_epoch()
    batch = store.lease(6, 10**9, epoch=epoch)
    store.dead_letter([batch[0].ref], "schema", epoch=epoch)
    store.release([batch[1].ref, batch[2].ref], epoch=epoch)
    store.ack([e.ref for e in batch[3:]], epoch=epoch)
    stats = store.stats()
    assert (stats.pending, stats.in_flight, stats.dead_letters, stats.delivered_retained) == (2, 0, 1, 3)
    again = store.lease(6, 10**9, epoch=epoch)
    assert [(e.event_id, e.attempts) for e in again] == [(ids[1], 1), (ids[2], 1)]


def test_another_process_indexing_meanwhile_changes_nothing_delivered(tmp_path):
    """A second handle indexes the records of an outstanding direct lease; the ack still settles them once."""
    flusher, other = _store(tmp_path), _store(tmp_path)
    ids = _fill(other, 8)
    epoch = flusher.begin_epoch()
    batch = flusher.lease(8, 10**9, epoch=epoch)
    assert [e.event_id for e in other.iter_run("run-1")] == ids  # indexes them, as pending
    flusher.ack([e.ref for e in batch], epoch=epoch)
    stats = other.stats()
    assert (stats.pending, stats.in_flight, stats.delivered_retained) == (0, 0, 8)
    assert flusher.lease(8, 10**9, epoch=epoch) == []
    assert _index_rows(tmp_path) == 8


def test_a_dead_flushers_direct_leases_go_to_the_next_one(tmp_path):
    """Direct leases live in the flusher's memory only: when it dies unsettled, the next epoch leases them again."""
    first = _store(tmp_path)
    ids = _fill(first, 5)
    batch = first.lease(5, 10**9, epoch=first.begin_epoch())
    assert len(batch) == 5  # then the process dies: nothing was written for them
    successor = _store(tmp_path)
    epoch = successor.begin_epoch()
    assert [e.event_id for e in successor.lease(5, 10**9, epoch=epoch)] == ids


def test_expired_direct_lease_is_leased_again(tmp_path):
    """A direct lease past lease_timeout returns to pending like an indexed one."""
    now = [1000.0]
    store = _store(tmp_path, clock=lambda: now[0], lease_timeout=10)
    ids = _fill(store, 3)
    epoch = store.begin_epoch()
    store.lease(3, 10**9, epoch=epoch)
    assert store.lease(3, 10**9, epoch=epoch) == []
    now[0] += 11
    assert [e.event_id for e in store.lease(3, 10**9, epoch=epoch)] == ids


class DirectLeaseMachine(StoreMachine):
    """The store model test with every lease fenced on handle 0, so most leases are direct."""

    @rule(n=st.integers(1, 6))
    def lease(self, n: int) -> None:  # type: ignore[override]
        """A fenced lease by the flusher handle returns exactly the oldest pending events."""
        for e in self._in("in_flight"):
            if e.lease_until < self.now[0]:
                e.state = "pending"
        expected = self._in("pending")[:n]
        batch = self.handles[0].lease(n, 10**9, epoch=self.epoch)
        assert [b.event_id for b in batch] == [e.event_id for e in expected]
        for b, e in zip(batch, expected):
            assert (b.run_id, b.seq, b.body, b.attempts) == (e.run_id, e.seq, e.body, e.attempts)
            e.state, e.ref, e.lease_until = "in_flight", b.ref, self.now[0] + LEASE_TIMEOUT


DirectLeaseMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, print_blob=True
)
TestDirectLeaseMachine = DirectLeaseMachine.TestCase


def _keys_stepping_back(monkeypatch, path) -> None:
    """One segment holding A, B, C in file order with order keys 100, 300, 200, and X (150) in another.

    Threads of one process take their order keys before the segment lock, so a
    key can step back within one file; a second process writes its own segment.
    """
    from aop_client.store import disk_store

    keys = iter([100, 300, 200, 150])
    monkeypatch.setattr(disk_store, "next_ord", lambda: next(keys))
    first, second = _store(path, retention_seconds=0), _store(path, retention_seconds=0)
    for event_id, seq in (("A", 1), ("B", 2), ("C", 3)):
        assert first.append(event_id, "run-1", seq, b"{}").stored
    assert second.append("X", "run-2", 1, b"{}").stored
    first.close()
    second.close()


def test_an_acked_direct_lease_never_moves_a_cursor_over_a_record_it_skipped(tmp_path, monkeypatch):
    """A lease of [A, X, B] (C's key is lower than B's) acked, then the flusher dies: C is still pending."""
    _keys_stepping_back(monkeypatch, tmp_path)
    flusher = _store(tmp_path, retention_seconds=0)
    epoch = flusher.begin_epoch()
    batch = flusher.lease(3, 10**9, epoch=epoch)
    assert [e.event_id for e in batch] == ["A", "X", "B"]  # one segment's records stay in file order
    flusher.ack([e.ref for e in batch], epoch=epoch)
    successor = _store(tmp_path, retention_seconds=0)
    epoch = successor.begin_epoch()
    assert [e.event_id for e in successor.lease(10, 10**9, epoch=epoch)] == ["C"]


def test_a_released_direct_lease_leaves_every_record_deliverable(tmp_path, monkeypatch):
    """The same lease released (a failed POST): draining on delivers all four events, none left pending."""
    _keys_stepping_back(monkeypatch, tmp_path)
    flusher = _store(tmp_path, retention_seconds=0)
    epoch = flusher.begin_epoch()
    flusher.release([e.ref for e in flusher.lease(3, 10**9, epoch=epoch)], epoch=epoch)
    delivered = []
    while batch := flusher.lease(10, 10**9, epoch=epoch):
        delivered += [e.event_id for e in batch]
        flusher.ack([e.ref for e in batch], epoch=epoch)
    assert sorted(delivered) == ["A", "B", "C", "X"]
    assert (flusher.stats().pending, flusher.stats().in_flight) == (0, 0)
