"""Dedupe by event_id in the collector's storage: several connections and processes on one file, reopening, kills."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import uuid
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from aop_client.collector.storage import CollectorStorage, IncomingEvent

SOAK = os.environ.get("AOP_SOAK") == "1"
POOL = [str(uuid.UUID(int=i + 1)) for i in range(10)]
RUN = str(uuid.UUID(int=999))


def incoming(event_id: str, seq: int = 1) -> IncomingEvent:
    """A stored-event tuple whose body names its id."""
    return IncomingEvent(event_id, RUN, seq, 7, "custom", b'{"event_id":"%s"}' % event_id.encode())


class SharedFileMachine(RuleBasedStateMachine):
    """Two storages (two connections, as two processes would have) on one file, reopened at will, against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.tmp.name, "c.sqlite3")
        self.storages = [CollectorStorage(self.path), CollectorStorage(self.path)]
        self.receipts: Counter = Counter()
        self.duplicates = 0

    @rule(which=st.integers(0, 1), picks=st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=6))
    def insert(self, which: int, picks: list[int]) -> None:
        """Each event's flag says whether the file held it before (or earlier in the batch), whoever wrote it."""
        ids = [POOL[i] for i in picks]
        flags = self.storages[which].insert_batch(str(uuid.uuid4()), [incoming(i) for i in ids])
        expected = []
        for event_id in ids:
            expected.append(self.receipts[event_id] > 0)
            self.duplicates += self.receipts[event_id] > 0
            self.receipts[event_id] += 1
        assert flags == expected

    @rule(which=st.integers(0, 1))
    def reopen(self, which: int) -> None:
        """A storage closed and opened again knows every event held (the map is rebuilt from the file)."""
        self.storages[which].close()
        self.storages[which] = CollectorStorage(self.path)

    @invariant()
    def file_matches_model(self) -> None:
        """Held ids, receipts and duplicate count agree with the model from either connection."""
        for storage in self.storages:
            assert storage.event_ids() == set(self.receipts)
            assert storage.event_count() == len(self.receipts)
            assert storage.duplicate_deliveries() == self.duplicates
        for event_id, count in self.receipts.items():
            assert [s.delivery_count(event_id) for s in self.storages] == [count, count]

    def teardown(self) -> None:
        for storage in self.storages:
            storage.close()
        self.tmp.cleanup()


SharedFileMachine.TestCase.settings = settings(max_examples=80 if SOAK else 15, stateful_step_count=12, deadline=None)
TestSharedFileMachine = SharedFileMachine.TestCase


def _writer(path: str, ids: list[str], start, results) -> None:
    """Child process: insert ids in batches of 7 once started; report (event_id, duplicate) pairs."""
    storage = CollectorStorage(path)
    start.wait(30)
    out = []
    for k in range(0, len(ids), 7):
        chunk = ids[k:k + 7]
        out.extend(zip(chunk, storage.insert_batch(str(uuid.uuid4()), [incoming(i) for i in chunk])))
    storage.close()
    results.put(out)


def test_concurrent_processes_on_one_file_store_each_event_once() -> None:
    """Three processes insert overlapping ids at once: each id is stored once and flagged fresh exactly once."""
    ctx = multiprocessing.get_context("spawn")
    ids = [str(uuid.uuid4()) for _ in range(300)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.sqlite3")
        CollectorStorage(path).close()
        start, results = ctx.Event(), ctx.Queue()
        orders = [ids, list(reversed(ids)), ids[150:] + ids[:150]]
        workers = [ctx.Process(target=_writer, args=(path, order, start, results)) for order in orders]
        for worker in workers:
            worker.start()
        start.set()
        reports = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(30)
            assert worker.exitcode == 0
        fresh = Counter(event_id for report in reports for event_id, duplicate in report if not duplicate)
        assert fresh == Counter(ids)  # every id fresh exactly once across all processes
        storage = CollectorStorage(path)
        try:
            assert storage.event_count() == len(ids) and storage.event_ids() == set(ids)
            assert storage.duplicate_deliveries() == 2 * len(ids)
            assert all(storage.delivery_count(event_id) == 3 for event_id in ids[:20])
        finally:
            storage.close()


def test_duplicates_within_one_batch_and_failed_batches_leave_the_map_consistent() -> None:
    """A repeated id in one batch is a duplicate; a batch that fails to commit leaves nothing behind."""
    with tempfile.TemporaryDirectory() as tmp:
        storage = CollectorStorage(os.path.join(tmp, "c.sqlite3"))
        try:
            a, b = str(uuid.uuid4()), str(uuid.uuid4())
            assert storage.insert_batch("b1", [incoming(a), incoming(a), incoming(b)]) == [False, True, False]
            bad = [incoming(str(uuid.uuid4())), IncomingEvent(str(uuid.uuid4()), None, 1, 7, "custom", b"{}")]
            try:
                storage.insert_batch("b2", bad)  # run_id NOT NULL: the whole batch rolls back
            except Exception as e:  # noqa: BLE001 - sqlite3.IntegrityError
                assert "NOT NULL" in str(e)
            else:
                raise AssertionError("a NULL run_id was stored")
            assert storage.event_ids() == {a, b}
            assert storage.insert_batch("b3", [bad[0]]) == [False]  # not remembered from the failed batch
            assert storage.delivery_count(a) == 2 and storage.events(RUN)[0]["event_id"] in (a, b)
        finally:
            storage.close()


def test_a_write_that_must_not_wait_raises_storage_busy_and_writes_nothing() -> None:
    """wait=False: a write lock held by another connection or thread gives StorageBusy; nothing is stored."""
    import sqlite3
    import threading

    from aop_client.collector.storage import RequestRecord, StorageBusy

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.sqlite3")
        storage = CollectorStorage(path)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            first, second = str(uuid.uuid4()), str(uuid.uuid4())
            other.execute("BEGIN IMMEDIATE")  # another process's write in progress
            for attempt in (lambda: storage.insert_batch("b1", [incoming(first)], wait=False),
                            lambda: storage.log_request(RequestRecord(path="/x", status=200), wait=False)):
                try:
                    attempt()
                except StorageBusy:
                    pass
                else:
                    raise AssertionError("a write went through while another connection held the lock")
            other.execute("COMMIT")
            assert storage.event_ids() == set() and storage.request_log() == []
            assert storage.insert_batch("b1", [incoming(first)], wait=False) == [False]  # free again: no wait needed
            taken, release = threading.Event(), threading.Event()

            def hold_the_lock() -> None:
                with storage._lock:
                    taken.set()
                    release.wait(30)

            holder = threading.Thread(target=hold_the_lock)
            holder.start()
            taken.wait(30)
            try:
                storage.insert_batch("b2", [incoming(second)], wait=False)
            except StorageBusy:
                pass
            else:
                raise AssertionError("a write went through while another thread held the storage lock")
            finally:
                release.set()
                holder.join()
            assert storage.insert_batch("b2", [incoming(second), incoming(first)]) == [False, True]
            assert storage.event_ids() == {first, second} and storage.delivery_count(first) == 2
            storage.log_request(RequestRecord(path="/y", status=201), wait=False)
            assert [(r["path"], r["status"]) for r in storage.request_log()] == [("/y", 201)]
        finally:
            other.close()
            storage.close()
