"""Inspection and maintenance of a DiskStore: replay by run, dead letters, reclaim, host-wide stats."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Iterable, Iterator, Sequence

from ..errors import StoreError
from . import state
from .api import DeadLetter, StoredEvent, StoreStats
from .boundary import translated
from .ingest import count_unindexed
from .maintenance import reclaim_space

FOREIGN_INDEX_COUNTER = "foreign_index"  # meta: index files of another uid set aside (layout.secure_index_files)
ITER_RUN_PAGE = 1000  # events iter_run reads per page


class InspectionMixin:
    """The read-mostly half of DiskStore (any process may call these), plus stream-ack settling."""

    owner_uid: int | None = None  # whose files are the store's (None: the current euid; see layout.py)

    @translated
    def mark_delivered(self, events: Iterable[tuple[str, str, int]]) -> int:
        """Record events the server acknowledged outside the batch path (a stream ack) as delivered.

        ``events`` are (event_id, run_id, seq) triples, looked up through the run index; a
        seq of None looks the event up by id among its run's rows (one scan of the run).
        Pending and fallback events move to DELIVERED (retained for replay like any other);
        an event the flusher has leased meanwhile is left to it, and the server dedupes the
        second copy. Not fenced: a server's ack is proof of delivery, whoever received it.
        Returns how many events moved.
        """
        self._check_pid()
        items = [(str(e), str(r), None if q is None else int(q)) for e, r, q in events]
        if not items:
            return 0
        by_id: dict[str, list[str]] = {}  # run_id -> event ids without a seq
        for event_id, run_id, seq in items:
            if seq is None:
                by_id.setdefault(run_id, []).append(event_id)
        conn = self._db()
        with self._lock:
            self._ingest_everything(conn)
            with state.Txn(conn):
                ids = [row[0] for event_id, run_id, seq in items if seq is not None for row in conn.execute(
                    "SELECT id FROM events WHERE run_key = ? AND run_id = ? AND seq = ? AND event_id = ?",
                    (state.run_key(run_id), run_id, seq, event_id))]
                for run_id, event_ids in by_id.items():
                    ids += [row[0] for row in conn.execute(
                        "SELECT id FROM events WHERE run_key = ? AND run_id = ?"
                        " AND event_id IN (SELECT value FROM json_each(?))",
                        (state.run_key(run_id), run_id, json.dumps(event_ids)))]
                return state.move(conn, ids, (state.PENDING, state.FALLBACK), state.DELIVERED,
                                  ", done_at = ?, lease_until = NULL", (self._clock(),))

    @translated
    def iter_run(self, run_id: str, *, include_delivered: bool = True) -> Iterator[StoredEvent]:
        """Every stored event of one run in seq order (pending, in flight, fallback, delivered).

        Read lazily, ITER_RUN_PAGE events at a time (each page one short hold of the lock),
        so a run of any length is never in memory at once; the segments are indexed first.
        """
        self._check_pid()
        conn = self._db()
        wanted = (*state.UNDELIVERED, state.DELIVERED) if include_delivered else state.UNDELIVERED
        with self._lock:
            self._ingest_everything(conn)
            rows, events = self._run_page(conn, run_id, wanted, (0, -1))
        return self._run_pages(run_id, wanted, rows, events)

    def _run_page(self, conn: sqlite3.Connection, run_id: str, wanted: tuple, after: tuple) -> tuple[list, list]:
        rows = conn.execute(
            f"SELECT {state.EVENT_COLUMNS}, ord FROM events WHERE run_key = ? AND run_id = ?"
            f" AND state IN ({','.join('?' * len(wanted))}) AND (seq, ord) > (?, ?) ORDER BY seq, ord LIMIT ?",
            (state.run_key(run_id), run_id, *wanted, *after, ITER_RUN_PAGE),
        ).fetchall()
        return rows, self._materialize(conn, rows)

    def _run_pages(self, run_id: str, wanted: tuple, rows: list, events: list) -> Iterator[StoredEvent]:
        while True:
            yield from events
            if len(rows) < ITER_RUN_PAGE:
                return
            after = (rows[-1][6], rows[-1][-1])
            try:
                self._check_pid()
                conn = self._db()
                with self._lock:
                    rows, events = self._run_page(conn, run_id, wanted, after)
            except (sqlite3.Error, OSError) as e:
                raise StoreError(f"iter_run on store {self.directory!r} failed: {e}") from e

    @translated
    def sample_undelivered(self, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` undelivered events, the oldest and the newest half, read without leasing.

        For checks over a backlog, such as which key signed it (the spool identity); no state changes.
        """
        self._check_pid()
        conn = self._db()
        half = max(1, int(limit) // 2)
        where = f"state IN ({','.join(str(s) for s in state.UNDELIVERED)})"
        with self._lock:
            self._ingest_everything(conn)
            rows = {r[0]: r for order in ("ASC", "DESC") for r in conn.execute(
                f"SELECT {state.EVENT_COLUMNS} FROM events WHERE {where} ORDER BY ord {order} LIMIT ?",
                (half,))}
            return self._materialize(conn, [rows[k] for k in sorted(rows)])

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

    def _reclaim_locked(self, now: float, *, pressure: bool, checkpoint: bool | None = None) -> int:
        self._last_reclaim = time.monotonic()
        conn = self._db()
        with self._lock:
            self._bodies.close()
            return reclaim_space(
                conn, self.segment_dir, now=now, retention_seconds=self.retention_seconds,
                retention_bytes=0 if pressure else self.retention_bytes,
                checkpoint=pressure if checkpoint is None else checkpoint,
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
            foreign: list = []
            unindexed, _, unindexed_oldest = count_unindexed(conn, self.segment_dir, self._unindexed_memo,
                                                             owner=self.owner_uid, foreign=foreign)
            row = conn.execute("SELECT appended_at FROM events WHERE state = 0 ORDER BY ord LIMIT 1").fetchone()
            dropped = state.dropped(conn)
            quarantined = state.meta_value(conn, "quarantined")
            foreign_index = state.meta_value(conn, FOREIGN_INDEX_COUNTER)
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
            foreign_files=len(foreign) + foreign_index,
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
