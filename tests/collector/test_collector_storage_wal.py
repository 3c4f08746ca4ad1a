"""The collector database's WAL: bounded under continuous writes, checkpointed only by the writing handle."""

from __future__ import annotations

import os
import threading
import uuid

from aop_client.collector import storage as storage_module
from aop_client.collector.storage import CollectorStorage, IncomingEvent

RUN = str(uuid.UUID(int=7))
BODY = b'{"payload":"' + b"x" * 500 + b'"}'


def _batch(size: int) -> list[IncomingEvent]:
    return [IncomingEvent(str(uuid.uuid4()), RUN, 1, 7, "custom", BODY) for _ in range(size)]


def _largest_wal_while_writing(path: str, batches: int) -> tuple[int, int]:
    """(largest WAL file size seen after a commit, bytes of events written) for back-to-back batch writes."""
    storage = CollectorStorage(path)
    largest = written = 0
    try:
        for _ in range(batches):
            storage.insert_batch(str(uuid.uuid4()), _batch(50))
            written += 50 * len(BODY)
            largest = max(largest, os.path.getsize(path + "-wal"))
    finally:
        storage.close()
    return largest, written


def test_the_wal_restarts_from_the_top_under_back_to_back_writes(tmp_path, monkeypatch) -> None:
    """With writes never pausing, the locked checkpoint pass still lets the WAL restart: it stays far below the data."""
    monkeypatch.setattr(storage_module, "_CHECKPOINT_EVERY", 0.01)
    monkeypatch.setattr(storage_module, "_RESTART_WAL_FRAMES", 64)  # 256 KiB
    largest, written = _largest_wal_while_writing(str(tmp_path / "c.sqlite3"), 1200)
    assert written > 25 * 2**20
    # The checkpointer may lose some rounds to the writes (a few MiB at most, seen); never grown with the data.
    assert largest < written / 4, f"WAL grew to {largest} bytes for {written} bytes written"


def test_without_the_locked_pass_the_wal_would_grow_with_the_data(tmp_path, monkeypatch) -> None:
    """Control for the test above: never restarting (threshold out of reach), the WAL holds all that was written."""
    monkeypatch.setattr(storage_module, "_CHECKPOINT_EVERY", 0.01)
    monkeypatch.setattr(storage_module, "_RESTART_WAL_FRAMES", 2**40)
    largest, written = _largest_wal_while_writing(str(tmp_path / "c.sqlite3"), 1200)
    assert largest > written / 2


def test_a_query_handle_never_checkpoints_and_never_takes_the_write_lock(tmp_path) -> None:
    """checkpoints=False (CollectorProcess's handle): no checkpointer thread; the writing handle's data is readable."""
    path = str(tmp_path / "c.sqlite3")
    before = {t.name for t in threading.enumerate()}
    writer = CollectorStorage(path)
    reader = CollectorStorage(path, checkpoints=False)
    try:
        names = [t.name for t in threading.enumerate() if t.name not in before]
        assert names.count("aop-collector-checkpoint") == 1
        events = _batch(3)
        writer.insert_batch("b", events)
        assert reader.event_ids() == {e.event_id for e in events}
    finally:
        reader.close()
        writer.close()
