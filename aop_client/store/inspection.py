"""Inspection and maintenance of a DiskStore: replay by run, dead letters, reclaim, host-wide stats."""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Iterable, Iterator, Sequence

from . import state
from .api import DeadLetter, StoredEvent, StoreStats
from .boundary import translated
from .ingest import count_unindexed
from .maintenance import reclaim_space


class InspectionMixin:
    """The read-mostly half of DiskStore (any process may call these), plus stream-ack settling."""

    @translated
    def mark_delivered(self, events: Iterable[tuple[str, str, int]]) -> int:
        """Record events the server acknowledged outside the batch path (a stream ack) as delivered.

        ``events`` are (event_id, run_id, seq) triples, looked up through the run index.
        Pending and fallback events move to DELIVERED (retained for replay like any other);
        an event the flusher has leased meanwhile is left to it, and the server dedupes the
        second copy. Not fenced: a server's ack is proof of delivery, whoever received it.
        Returns how many events moved.
        """
        self._check_pid()
        items = [(str(e), str(r), int(q)) for e, r, q in events]
        if not items:
            return 0
        conn = self._db()
        with self._lock:
            self._ingest_everything(conn)
            with state.Txn(conn):
                ids = [row[0] for event_id, run_id, seq in items for row in conn.execute(
                    "SELECT id FROM events WHERE run_key = ? AND run_id = ? AND seq = ? AND event_id = ?",
                    (state.run_key(run_id), run_id, seq, event_id))]
                return state.move(conn, ids, (state.PENDING, state.FALLBACK), state.DELIVERED,
                                  ", done_at = ?, lease_until = NULL", (self._clock(),))

    @translated
    def iter_run(self, run_id: str, *, include_delivered: bool = True) -> Iterator[StoredEvent]:
        """Every stored event of one run in seq order (pending, in flight, fallback, delivered)."""
        self._check_pid()
        conn = self._db()
        wanted = (*state.UNDELIVERED, state.DELIVERED) if include_delivered else state.UNDELIVERED
        with self._lock:
            self._ingest_everything(conn)
            rows = conn.execute(
                f"SELECT {state.EVENT_COLUMNS} FROM events WHERE run_key = ? AND run_id = ? AND state IN ({','.join('?' * len(wanted))})"
                " ORDER BY seq, ord",
                (state.run_key(run_id), run_id, *wanted),
            ).fetchall()
            events = self._materialize(conn, rows)
        return iter(events)

    @translated
    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter currently kept."""
        self._check_pid()
        conn = self._db()
        with self._lock:
            rows = conn.execute(f"SELECT {state.EVENT_COLUMNS} FROM events WHERE state = 3 ORDER BY ord").fetchall()
            by_id = {r[0]: r for r in rows}
            return [
                DeadLetter(e.ref, e.event_id, e.run_id, e.seq, e.body, by_id[e.ref][12] or "", by_id[e.ref][11] or 0.0)
                for e in self._materialize(conn, rows)
            ]

    def _dead_rows(self, conn: sqlite3.Connection, event_ids: Sequence[str] | None) -> list:
        rows = conn.execute("SELECT id, seg, state, body_len, event_id FROM events WHERE state = 3").fetchall()
        if event_ids is not None:
            keep = set(event_ids)
            rows = [r for r in rows if r[4] in keep]
        return rows

    @translated
    def retry_dead_letters(self, event_ids: Sequence[str] | None = None) -> int:
        """Return dead letters (all, or the named ones) to pending; returns how many."""
        self._check_pid()
        conn = self._db()
        with self._lock, state.Txn(conn):
            ids = [r[0] for r in self._dead_rows(conn, event_ids)]
            return state.move(conn, ids, (state.DEAD,), state.PENDING, ", reason = NULL, done_at = NULL", selected=True)

    @translated
    def purge_dead_letters(self, event_ids: Sequence[str] | None = None) -> int:
        """Delete dead letters for good (all, or the named ones); returns how many."""
        self._check_pid()
        conn = self._db()
        with self._lock, state.Txn(conn):
            return state.delete_events(conn, [r[:4] for r in self._dead_rows(conn, event_ids)])

    @translated
    def reclaim(self, now: float | None = None) -> int:
        """Drop delivered events past retention and free space; returns events reclaimed."""
        self._check_pid()
        return self._reclaim_locked(self._clock() if now is None else now, pressure=False)

    def _reclaim_locked(self, now: float, *, pressure: bool) -> int:
        self._last_reclaim = time.monotonic()
        conn = self._db()
        with self._lock:
            self._bodies.close()
            return reclaim_space(
                conn, self.segment_dir, now=now, retention_seconds=self.retention_seconds,
                retention_bytes=0 if pressure else self.retention_bytes,
            )

    @translated
    def index_damage(self) -> dict | None:
        """The index's last rebuild after damage ({rebuilds, rebuilt_at, events_recovered}), or None if never."""
        self._check_pid()
        conn = self._db()
        with self._lock:
            return state.rebuild_record(conn)

    @translated
    def stats(self, now: float | None = None) -> StoreStats:
        """Host-wide counters; see StoreStats."""
        self._check_pid()
        now = self._clock() if now is None else now
        self._flush_drops()
        conn = self._db()
        with self._lock:
            counts = state.counts(conn)
            unindexed, _, unindexed_oldest = count_unindexed(conn, self.segment_dir, self._unindexed_memo)
            row = conn.execute("SELECT appended_at FROM events WHERE state = 0 ORDER BY ord LIMIT 1").fetchone()
            dropped = state.dropped(conn)
            quarantined = state.meta_value(conn, "quarantined")
            direct = self._direct.outstanding(conn, state.meta_value(conn, "epoch"))  # past the cursors, but in flight
        for reason, n in self._drops.items():
            dropped[reason] = dropped.get(reason, 0) + n
        oldest = [t for t in (row[0] if row else None, unindexed_oldest) if t is not None]
        return StoreStats(
            pending=max(0, counts[state.PENDING][0] + unindexed - direct),
            in_flight=counts[state.IN_FLIGHT][0] + direct,
            delivered_retained=counts[state.DELIVERED][0],
            dead_letters=counts[state.DEAD][0],
            fallback=counts[state.FALLBACK][0],
            dropped=dropped,
            quarantined=quarantined,
            bytes_on_disk=_tree_bytes(self.directory),
            oldest_pending_age=max(0.0, now - min(oldest)) if oldest else None,
        )


def _tree_bytes(directory: str) -> int:
    """Total size of regular files under the store directory."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total
