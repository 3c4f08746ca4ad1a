"""The collector's durable record: received events (deduplicated), every delivery, requests, run completions.

One SQLite database in WAL mode (``synchronous=NORMAL``: a committed batch
survives the collector being killed). WAL checkpoints (which fsync the
database) run in a background thread every ``_CHECKPOINT_EVERY`` seconds, not
inside whichever commit crosses SQLite's auto-checkpoint threshold (that
stalled one commit for 10-25 ms and set the streaming p99): a PASSIVE
checkpoint beside the writers, then a short one under the write lock so the
WAL restarts from the top and stays bounded (only once it holds 256 MiB, and
not while many frames are left). A query handle beside the writing process (``checkpoints=False``, as
``CollectorProcess`` opens one) leaves checkpoints to that process: two
checkpointers on one file made the locked pass copy everything, holding the
write lock for up to a second. Writes are serialised by a lock and
each batch is one ``BEGIN IMMEDIATE`` transaction, so concurrent batches and
several processes on the same file dedupe correctly. Query methods are for
tests and the demo; they may be called from any thread (or process, on the
same file).

Dedupe without a unique index: a B-tree index on random UUIDs dirties about one
4 KiB page per event and commit (about 18 us per event in WAL writes and
checkpoints, growing with the table), more than everything else an event costs.
Instead ``events`` is an append-only rowid table and the storage keeps an
in-memory map ``event_id -> rowid`` (about 150 bytes per event held), loaded at
open and brought up to date inside every write transaction from the rows other
connections or processes appended (``rowid > last seen``, rowids only grow), so
concurrent writers still dedupe exactly. Fresh events get explicit rowids.

Tables: ``events(event_id, run_id, seq, agent_id, type, body, batch_id,
received_at, receipts)`` where ``receipts`` counts every arrival of the event
(first copy and duplicates), ``duplicate_receipts(event_id, batch_id, at)``
(one row per duplicate arrival: which batch re-sent it, and when),
``requests(at, path, status, batch_id, ...)`` and ``completions(run_id,
agent_id, event_count, last_seq, complete, ...)``. Keeping a counter instead of
a row per arrival halves the rows written per batch in the common,
duplicate-free case.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from itertools import chain
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import orjson

from ..errors import StoreError

__all__ = ["CollectorStorage", "IncomingEvent", "RequestRecord", "StorageBusy"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT NOT NULL, run_id TEXT NOT NULL, seq INTEGER NOT NULL, agent_id INTEGER NOT NULL,
    type TEXT NOT NULL, body BLOB NOT NULL, batch_id TEXT NOT NULL, received_at REAL NOT NULL,
    receipts INTEGER NOT NULL DEFAULT 1
);  -- a rowid table: bodies of ~400 bytes make WITHOUT ROWID slower
CREATE INDEX IF NOT EXISTS events_by_run ON events(run_id, seq);
CREATE TABLE IF NOT EXISTS duplicate_receipts (
    id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, batch_id TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, path TEXT NOT NULL, status INTEGER, batch_id TEXT,
    events INTEGER, accepted INTEGER, duplicates INTEGER, rejected INTEGER, fault TEXT, fault_stage TEXT,
    reason TEXT, user_agent TEXT, aop_headers TEXT
);
CREATE TABLE IF NOT EXISTS completions (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, agent_id INTEGER, event_count INTEGER, last_seq INTEGER,
    complete INTEGER NOT NULL, missing_count INTEGER NOT NULL, at REAL NOT NULL
);
"""
_CHECKPOINT_EVERY = 1.0  # seconds between background PASSIVE checkpoints of a file database
_LOCKED_CHECKPOINT_MAX_FRAMES = 512  # the pass under the write lock runs only for this many frames left, or fewer
# ... and only once the WAL holds this many frames (256 MiB of 4 KiB pages): under write load that pass
# takes 100-200 ms here (its fsync), a stall of the event loop's writes; at 32 MiB it came every 2 s.
_RESTART_WAL_FRAMES = 65536
_INLINE_LOCK_WAIT = 0.05  # seconds a wait=False write waits for another thread of this process
_INSERT_EVENTS = "INSERT INTO events(rowid, event_id, run_id, seq, agent_id, type, body, batch_id, received_at) VALUES "
_FIELDS = 6  # an IncomingEvent's fields, bound per row; batch_id, at and the first rowid are bound once (?1-?3)
_ROWS_PER_INSERT = 1000  # one multi-row INSERT per 1000 events: ~25% cheaper than executemany, 6003 parameters
_insert_sql: dict[int, str] = {}  # rows -> multi-row INSERT statement


def _insert_statement(rows: int) -> str:
    """The multi-row INSERT of ``rows`` fresh events (cached per row count).

    Parameters: ``batch_id, at, first rowid``, then every event's fields in a
    row; row ``j`` gets rowid ``?3 + j``, so the parameters are one flat,
    C-built sequence and nothing is bound twice.
    """
    sql = _insert_sql.get(rows)
    if sql is None:
        marks = []
        for row in range(rows):
            first = 4 + row * _FIELDS
            fields = ",".join(f"?{n}" for n in range(first, first + _FIELDS))
            marks.append(f"(?3+{row},{fields},?1,?2)")
        sql = _insert_sql[rows] = _INSERT_EVENTS + ",".join(marks)
    return sql


_BUSY_TIMEOUT_MS = 30_000  # how long a waiting write lets another connection finish its write
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (named in the sqlite3 module only from Python 3.11)


class StorageBusy(Exception):
    """A write called with ``wait=False`` would have waited for a lock: nothing was written."""


class IncomingEvent(NamedTuple):
    """One accepted-for-storage event of a batch (a tuple: cheap to build and to bind)."""

    event_id: str
    run_id: str
    seq: int
    agent_id: int
    type: str
    body: bytes


@dataclass(frozen=True)
class RequestRecord:
    """One line of the request log."""

    path: str
    status: Optional[int]
    batch_id: Optional[str] = None
    events: Optional[int] = None
    accepted: Optional[int] = None
    duplicates: Optional[int] = None
    rejected: Optional[int] = None
    fault: Optional[str] = None
    fault_stage: Optional[str] = None
    reason: Optional[str] = None
    user_agent: Optional[str] = None
    aop_headers: Optional[dict] = None  # X-AOP-* headers except the signature


class CollectorStorage:
    """The collector's SQLite database (thread-safe; several processes may open the same file)."""

    def __init__(self, db_path: Optional[str], *, checkpoints: bool = True) -> None:
        """Open (creating) the database; ``checkpoints=False`` for a query handle beside the writing process."""
        self.db_path = db_path
        target = db_path if db_path is not None else ":memory:"
        try:
            if db_path is not None:
                parent = os.path.dirname(os.path.abspath(db_path))
                os.makedirs(parent, mode=0o700, exist_ok=True)
                fd = os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600)
                os.close(fd)
            self._conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            self._conn.executescript(_SCHEMA)
            if db_path is not None:
                self._conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open collector database {target!r}: {e}") from e
        self._lock = threading.Lock()
        self._closed = False
        self._rowids: dict[str, int] = {}  # event_id -> rowid of every event held
        self._last_rowid = 0  # the highest rowid already in _rowids
        try:
            self._catch_up()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read collector database {target!r}: {e}") from e
        self._stop_checkpoints = threading.Event()
        self._checkpointer: Optional[threading.Thread] = None
        if db_path is not None and checkpoints:
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, args=(db_path,),
                                                  name="aop-collector-checkpoint", daemon=True)
            self._checkpointer.start()

    def _checkpoint_loop(self, db_path: str) -> None:
        """Copy committed WAL frames into the database off the commit path (PASSIVE: never blocks writers)."""
        try:
            conn = sqlite3.connect(db_path, isolation_level=None, timeout=30.0)
        except sqlite3.Error:
            return
        try:
            while not self._stop_checkpoints.wait(_CHECKPOINT_EVERY):
                try:
                    # The bulk of the copy and its fsync run beside the writers. Once the WAL is long, a second
                    # pass holding the write lock copies the few frames committed meanwhile, so that the next
                    # commit restarts the WAL from the top (under steady writes it never would by itself). That
                    # pass (and its fsync) is skipped while many frames are left; a later round catches up.
                    busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if busy or log < _RESTART_WAL_FRAMES or log - done > _LOCKED_CHECKPOINT_MAX_FRAMES:
                        continue
                    with self._lock:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    pass  # busy or locked: the next round catches up
        finally:
            conn.close()

    # -- writes --

    def _catch_up(self) -> None:
        """Add to the event_id map the rows appended since it was last brought up to date (by anyone)."""
        rowids = self._rowids
        last = self._last_rowid
        for rowid, event_id in self._conn.execute(
                "SELECT rowid, event_id FROM events WHERE rowid > ? ORDER BY rowid", (last,)):
            rowids.setdefault(event_id, rowid)
            last = rowid
        self._last_rowid = last

    def _lock_for_write(self, wait: bool) -> None:
        """Take the storage lock; with ``wait=False`` StorageBusy when another thread holds it beyond 50 ms."""
        if not (self._lock.acquire() if wait else self._lock.acquire(timeout=_INLINE_LOCK_WAIT)):
            raise StorageBusy("another thread is writing")

    def _begin_immediate(self, wait: bool) -> None:
        """BEGIN IMMEDIATE (holding the lock); with ``wait=False`` StorageBusy if another connection writes."""
        conn = self._conn
        if wait:
            conn.execute("BEGIN IMMEDIATE")
            return
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            # sqlite_errorcode is the extended code (SQLITE_BUSY_RECOVERY is 261); 3.10 has none: treat as busy
            if getattr(e, "sqlite_errorcode", _BUSY_CODES[0]) & 0xFF in _BUSY_CODES:
                raise StorageBusy("another connection is writing") from None
            raise
        finally:
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")

    def insert_batch(self, batch_id: str, events: Sequence[IncomingEvent], *, now: Optional[float] = None,
                     wait: bool = True) -> list[bool]:
        """Store the events not yet held; record every receipt; returns per event whether it was a duplicate.

        ``events`` are IncomingEvents or plain tuples in the same field order.
        With ``wait=False`` it raises StorageBusy, having written nothing,
        instead of waiting for another process's write or more than 50 ms
        for another thread's.
        """
        at = time.time() if now is None else now
        if not events:
            return []
        self._lock_for_write(wait)
        try:
            conn = self._conn
            self._begin_immediate(wait)
            try:
                self._catch_up()  # other processes on the same file may have appended
                held = self._rowids
                first_rowid = self._last_rowid + 1
                ids = [event[0] for event in events]
                if held.keys().isdisjoint(ids) and len(set(ids)) == len(ids):  # the common case: all fresh
                    fresh_events = events
                    duplicate_flags = [False] * len(events)
                    duplicate_rowids: list[int] = []
                else:
                    fresh_events, duplicate_flags, duplicate_rowids = self._split_duplicates(events, first_rowid)
                fresh = dict(zip([event[0] for event in fresh_events], range(first_rowid, first_rowid + len(fresh_events))))
                for start in range(0, len(fresh_events), _ROWS_PER_INSERT):
                    chunk = fresh_events[start:start + _ROWS_PER_INSERT]
                    conn.execute(_insert_statement(len(chunk)),
                                 [batch_id, at, first_rowid + start, *chain.from_iterable(chunk)])
                if duplicate_rowids:
                    conn.executemany("UPDATE events SET receipts = receipts + 1 WHERE rowid = ?",
                                     [(rowid,) for rowid in duplicate_rowids])
                    conn.executemany("INSERT INTO duplicate_receipts(event_id, batch_id, at) VALUES (?,?,?)",
                                     [(e[0], batch_id, at) for e, d in zip(events, duplicate_flags) if d])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back by itself (disk full, I/O error)
                    conn.execute("ROLLBACK")
                raise
            held.update(fresh)
            self._last_rowid = first_rowid + len(fresh_events) - 1
        finally:
            self._lock.release()
        return duplicate_flags

    def _split_duplicates(self, events: Sequence[IncomingEvent], first_rowid: int) -> tuple[list[IncomingEvent], list[bool], list[int]]:
        """(fresh events, duplicate flag per event, rowid of every duplicate arrival) for a batch with repeats."""
        held = self._rowids
        fresh: dict[str, int] = {}
        fresh_events: list[IncomingEvent] = []
        flags: list[bool] = []
        duplicate_rowids: list[int] = []
        for event in events:
            event_id = event[0]
            rowid = held.get(event_id) or fresh.get(event_id)
            if rowid is None:
                fresh[event_id] = first_rowid + len(fresh_events)
                fresh_events.append(event)
                flags.append(False)
            else:  # held already, or an earlier copy in this batch
                duplicate_rowids.append(rowid)
                flags.append(True)
        return fresh_events, flags, duplicate_rowids

    def log_request(self, record: RequestRecord, *, now: Optional[float] = None, wait: bool = True) -> None:
        """Append one line to the request log (``wait=False``: StorageBusy rather than wait for a lock)."""
        at = time.time() if now is None else now
        headers = json.dumps(record.aop_headers) if record.aop_headers else None
        self._lock_for_write(wait)
        try:
            self._begin_immediate(wait)
            try:
                self._conn.execute(
                    "INSERT INTO requests(at, path, status, batch_id, events, accepted, duplicates, rejected, fault,"
                    " fault_stage, reason, user_agent, aop_headers) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (at, record.path, record.status, record.batch_id, record.events, record.accepted,
                     record.duplicates, record.rejected, record.fault, record.fault_stage, record.reason,
                     record.user_agent, headers),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite may have rolled back by itself (disk full, I/O error)
                    self._conn.execute("ROLLBACK")
                raise
        finally:
            self._lock.release()

    def record_completion(self, run_id: str, agent_id: int, event_count: int, last_seq: int,
                          missing_count: int, *, now: Optional[float] = None) -> None:
        """Remember one run-completion check and its verdict."""
        at = time.time() if now is None else now
        with self._lock:
            self._conn.execute(
                "INSERT INTO completions(run_id, agent_id, event_count, last_seq, complete, missing_count, at)"
                " VALUES (?,?,?,?,?,?,?)",
                (run_id, agent_id, event_count, last_seq, int(missing_count == 0), missing_count, at),
            )

    # -- queries --

    def _select(self, sql: str, args: Iterable[Any] = ()) -> tuple[list[str], list[tuple]]:
        # After close() a file database stays queryable (tests read it after stopping the server).
        with self._lock:
            if not self._closed:
                cursor = self._conn.execute(sql, tuple(args))
                return [d[0] for d in cursor.description], cursor.fetchall()
        if self.db_path is None:
            raise StoreError("the in-memory collector database is closed; its data is gone")
        conn = sqlite3.connect(self.db_path, timeout=30.0)
        try:
            cursor = conn.execute(sql, tuple(args))
            return [d[0] for d in cursor.description], cursor.fetchall()
        finally:
            conn.close()

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        return self._select(sql, args)[1]

    def run_seqs(self, run_id: str, last_seq: Optional[int] = None) -> list[int]:
        """The seqs held for ``run_id`` (up to ``last_seq``), ascending."""
        if last_seq is None:
            return [r[0] for r in self._query("SELECT seq FROM events WHERE run_id=? ORDER BY seq", (run_id,))]
        return [r[0] for r in self._query(
            "SELECT seq FROM events WHERE run_id=? AND seq BETWEEN 1 AND ? ORDER BY seq", (run_id, last_seq))]

    def event_ids(self) -> set[str]:
        """Every event_id held."""
        return {r[0] for r in self._query("SELECT event_id FROM events")}

    def event_count(self) -> int:
        """How many distinct events are held."""
        return self._query("SELECT count(*) FROM events")[0][0]

    def events(self, run_id: Optional[str] = None) -> list[dict]:
        """The stored envelopes (parsed), by run then seq; only ``run_id``'s when given."""
        if run_id is None:
            rows = self._query("SELECT body FROM events ORDER BY run_id, seq")
        else:
            rows = self._query("SELECT body FROM events WHERE run_id=? ORDER BY seq", (run_id,))
        return [orjson.loads(r[0]) for r in rows]

    def delivery_count(self, event_id: str) -> int:
        """How many times ``event_id`` was received (first copy and duplicates)."""
        rowid = self._rowids.get(event_id)
        if rowid is not None:
            rows = self._query("SELECT receipts FROM events WHERE rowid=?", (rowid,))
        else:  # not written through this connection: search (events has no index on event_id)
            rows = self._query("SELECT receipts FROM events WHERE event_id=?", (event_id,))
        return rows[0][0] if rows else 0

    def duplicate_deliveries(self) -> int:
        """How many receipts were duplicates of an event already held."""
        return self._query("SELECT count(*) FROM duplicate_receipts")[0][0]

    def request_log(self) -> list[dict]:
        """Every logged request, oldest first, as dicts (column name -> value)."""
        names, rows = self._select("SELECT * FROM requests ORDER BY id")
        out = []
        for row in rows:
            item = dict(zip(names, row))
            item["aop_headers"] = json.loads(item["aop_headers"]) if item["aop_headers"] else {}
            out.append(item)
        return out

    def completions(self, run_id: Optional[str] = None) -> list[dict]:
        """Every run-completion check, oldest first."""
        sql = "SELECT run_id, agent_id, event_count, last_seq, complete, missing_count, at FROM completions"
        rows = self._query(sql + (" WHERE run_id=? ORDER BY id" if run_id else " ORDER BY id"),
                           (run_id,) if run_id else ())
        keys = ("run_id", "agent_id", "event_count", "last_seq", "complete", "missing_count", "at")
        return [dict(zip(keys, r), complete=bool(r[4])) for r in rows]

    def stats(self) -> dict:
        """Counters for GET /api/v1/stats."""
        events = self.event_count()
        deliveries = (self._query("SELECT coalesce(sum(receipts), 0) FROM events")[0][0], self.duplicate_deliveries())
        by_status = dict(self._query("SELECT coalesce(status, 0), count(*) FROM requests GROUP BY status"))
        runs = self._query("SELECT count(DISTINCT run_id) FROM events")[0][0]
        return {"events": events, "runs": runs, "deliveries": deliveries[0], "duplicates": deliveries[1],
                "requests_by_status": {str(k): v for k, v in by_status.items()}}

    def close(self) -> None:
        """Close the database; safe to call twice."""
        self._stop_checkpoints.set()
        if self._checkpointer is not None and self._checkpointer is not threading.current_thread():
            self._checkpointer.join()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
