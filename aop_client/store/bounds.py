"""The store's size gauge: how many undelivered events and segment bytes exist, refreshed cheaply.

``append`` must not query shared state on every call, so each handle keeps an
estimate refreshed at most every REFRESH_SECONDS (plus its own appends in
between). Undelivered = pending + in flight + fallback in the index, plus the
records not yet indexed (counted exactly when few, else estimated from bytes).
The filesystem's free space is read (``statvfs``) by each refresh and after
this handle has written an eighth of what was free above the reserve's floor
at the last look (at least a quarter of the reserve): rarely while the disk is
roomy, often near the floor, never per append. ``disk_low`` is True while less
than the floor is free; appends then drop as disk_full, so the index keeps
room to record deliveries (see reserve.py).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

from . import state
from .ingest import count_unindexed
from .segments import list_segments

REFRESH_SECONDS = 0.05
EXACT_COUNT_BYTES = 256 * 1024


class UsageGauge:
    """Cached (undelivered events, segment bytes) used for the max_events / max_bytes bounds."""

    def __init__(self, segment_dir: str, max_events: int, max_bytes: int, lock: Any = None, *,
                 reserve: Any = None) -> None:
        self.segment_dir = segment_dir
        self.reserve = reserve  # a SpaceReserve: what appends leave free; None: no free-space check
        self.disk_low = False  # less than disk_floor bytes free at the last look (or an append met ENOSPC)
        self._until_disk_check = 0  # bytes this handle may write before it looks at the free space again
        self.lock = lock if lock is not None else threading.RLock()  # the store's: SQLite use under it
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.events = 0
        self.bytes = 0
        self._at = float("-inf")
        self._avg_record = 400.0
        self._memo: dict = {}

    def has_room(self, record_len: int, conn: sqlite3.Connection | None, *, force: bool = False) -> bool:
        """True when one more record of record_len bytes fits both bounds."""
        if force or time.monotonic() - self._at > REFRESH_SECONDS:
            self.refresh(conn, wait=force)
        return self.events < self.max_events and self.bytes + record_len <= self.max_bytes

    def over_bytes(self, record_len: int) -> bool:
        """True when the byte bound (not the event bound) is what is exceeded."""
        return self.bytes + record_len > self.max_bytes

    def added(self, record_len: int) -> None:
        """Account for one record this handle just wrote."""
        self.events += 1
        self.bytes += record_len
        self._avg_record += (record_len - self._avg_record) * 0.01
        self._until_disk_check -= record_len
        if self._until_disk_check <= 0 and self.reserve is not None:
            self.check_disk()

    def check_disk(self) -> None:
        """Look at the free space now (sets disk_low and when to look next)."""
        free, floor = self.reserve.free_bytes(), self.reserve.floor()
        self.disk_low = free < floor
        self._until_disk_check = max(self.reserve.size // 4, (free - floor) // 8)

    def removed(self, events: int) -> None:
        """Account for events this handle evicted."""
        self.events -= events

    def refresh(self, conn: sqlite3.Connection | None, *, wait: bool = True) -> None:
        """Re-read the shared numbers (segment sizes, index counts, unindexed records).

        Without ``wait``, a store lock held by another thread (an ingest for a
        lease, say) skips the index part: the emit path keeps its cached counts
        rather than stall behind the flusher.
        """
        self._at = time.monotonic()
        try:
            segments = list_segments(self.segment_dir)
        except OSError:
            return
        self.bytes = sum(size for _, size in segments)
        if self.reserve is not None:
            self.check_disk()
        if conn is None:
            return
        if not self.lock.acquire(blocking=wait):
            return
        try:
            with self.lock:  # every SQLite call of the store holds its lock (see fork safety)
                cursors = dict(conn.execute("SELECT name, cursor FROM segments"))
                counts = state.counts(conn)
                unindexed_bytes = sum(max(0, size - cursors.get(name, 0)) for name, size in segments)
                if unindexed_bytes <= EXACT_COUNT_BYTES:
                    unindexed = count_unindexed(conn, self.segment_dir, self._memo)[0]
                else:
                    unindexed = int(unindexed_bytes / self._avg_record)
        except (sqlite3.Error, OSError):
            return
        finally:
            self.lock.release()
        self.events = sum(counts[s][0] for s in state.UNDELIVERED) + unindexed
