"""How a DiskStore lives through a full disk: the floor, the reserve, early reclaim, durable drop counts.

The mechanism is described in docs/design.md (section 8a) and reserve.py. This
mixin holds the DiskStore methods for it: ``_disk_full`` (an append met ENOSPC
or the floor), ``_check_space`` (the flusher side's look at the free space, on each
lease, that reclaims delivered events early under pressure and puts the
reserve back),
``_with_room`` and ``_index_full`` (free the reserve when the index cannot
write), and the drop counts' flush (also at interpreter exit).
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import time
from typing import Any, Callable

from ..errors import StoreError
from . import fork_guard, state
from .api import AppendResult
from .boundary import is_disk_full

SPACE_CHECK_INTERVAL = 1.0  # the flusher side looks at free space (statvfs) at most this often


class SpacePressureMixin:
    """The full-disk half of DiskStore (see the module docstring); uses the store's attributes."""

    _gauge: Any
    _writer: Any
    _reserve: Any
    _drops: dict
    _lock: Any
    _conn: Any
    _pressure: bool

    def _disk_full(self) -> AppendResult:
        """ENOSPC, or less free than the floor: seal our segment (reclaimable once delivered), count the drop.

        While the disk is low each append looks at the free space again; writes resume once
        the floor is free.
        """
        self._gauge.disk_low = True
        try:
            self._writer.seal()
        except OSError:
            pass
        return self._drop("disk_full")

    def _flush_drops(self) -> None:
        """Add this handle's drop counts to the index (with the reserve's room when the disk is full)."""
        self._drops_flushed_at = time.monotonic()
        if not self._drops:
            return
        counts, self._drops = self._drops, {}

        def write() -> None:
            conn = self._db()
            with self._lock, state.Txn(conn):
                state.add_dropped(conn, counts)

        try:
            self._with_room(write)
        except (StoreError, sqlite3.Error, OSError):
            for reason, n in counts.items():  # disk full with the reserve spent, or read-only: keep them
                self._drops[reason] = self._drops.get(reason, 0) + n

    def _with_room(self, fn: Callable[[], object]) -> object:
        """Run one index transaction; if the disk is full, free the reserve for the index and run it once more."""
        try:
            return fn()
        except (StoreError, sqlite3.Error, OSError) as e:
            if not is_disk_full(e) or not self._reserve.release():
                raise
            self._set_pressure(True)
            return fn()

    def _index_full(self) -> None:
        """A store call failed with a full disk (boundary.translated): free the reserve, check space next call."""
        self._set_pressure(True)
        self._space_checked_at = float("-inf")
        self._reserve.release()

    def _set_pressure(self, low: bool) -> None:
        """Enter or leave disk pressure; under it the WAL is checkpointed every few pages, so it stays small."""
        if low != self._pressure and self._conn is not None:
            with self._lock:
                self._conn.execute(f"PRAGMA wal_autocheckpoint={state.WAL_PAGES_LOW if low else self._reserve.wal_pages}")
        self._pressure = low

    def _check_space(self) -> None:
        """Flusher side, on each call (two syscalls a batch, never per append): enter or leave disk
        pressure. On entering it, and at most once a second while it lasts, reclaim delivered events
        at once (pending ones are never touched) and truncate the WAL; put the reserve back when room
        returns.

        Looked at on every call, not once a second: between two looks the drain keeps writing the
        index (retained rows), and the space it takes must not be gone before pressure is noticed.
        """
        now = time.monotonic()
        was_low = self._pressure
        self._set_pressure(self._reserve.low())
        if now - self._space_checked_at < SPACE_CHECK_INTERVAL and (was_low or not self._pressure):
            return
        self._space_checked_at = now
        if self._pressure:
            self._with_room(lambda: self._reclaim_locked(self._clock(), pressure=True))
        self._reserve.ensure()


@atexit.register
def _flush_drops_at_exit() -> None:
    """Drop counts of stores never closed reach the index at interpreter exit (not after SIGKILL)."""
    for store in fork_guard.live_stores():
        if isinstance(store, SpacePressureMixin) and store._pid == os.getpid() and not store._closed and store._drops:
            if store._lock.acquire(timeout=1.0):  # a daemon thread stuck inside the store must not hang the exit
                try:
                    store._flush_drops()
                finally:
                    store._lock.release()
