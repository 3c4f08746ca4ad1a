"""DiskStore: the durable multi-process event store (segments for bytes, SQLite index for state).

Emitters append checksummed records to their own segment file (one write
syscall, no shared lock); the flusher side indexes those records into SQLite
and moves them through PENDING -> IN_FLIGHT -> DELIVERED/DEAD/FALLBACK with
epoch fencing. See docs/design.md for the format and the guarantees.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Callable, Iterable

from ..errors import StoreError, ValidationError
from ..protocol import MAX_SEQ
from . import state
from .api import AppendResult, Durability, FullPolicy, StoredEvent
from . import fork_guard
from . import repair
from .repair import IndexRepair
from .boundary import DISK_FULL_ERRNOS, IndexDamage, damage_seen, translated
from .direct_lease import DirectLeases
from .bounds import UsageGauge
from .inspection import FOREIGN_INDEX_COUNTER, InspectionMixin
from .layout import prepare_directory, secure_index_files
from .ingest import BodyCache, ingest, save_quarantined
from .reader import BodyReader
from .records import OVERHEAD, encode_record
from .pressure import SpacePressureMixin
from .reserve import SpaceReserve
from .segments import SegmentWriter, next_ord

_STORED = AppendResult(True)
_DISK_FULL_ERRNOS = DISK_FULL_ERRNOS
_ABANDONED_CONNECTIONS: list[sqlite3.Connection] = []  # inherited across fork: never closed in the child
INDEX_LOW_WATER = 4_000
DIRECT_CHUNK = 256 * 1024  # bytes a direct lease decodes per segment read: no long decode bursts
RECLAIM_INTERVAL = 5.0
DROP_FLUSH_INTERVAL = 0.5


class DiskStore(SpacePressureMixin, IndexRepair, InspectionMixin):
    """The durable store of aop_client; implements aop_client.store.api.Store."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        durability: Durability | str = "process",
        max_events: int = 1_000_000,
        max_bytes: int = 512 * 2**20,
        full_policy: FullPolicy | str = "drop_newest",
        block_timeout: float = 1.0,
        retention_seconds: float = 86400.0,
        retention_bytes: int = 256 * 2**20,
        max_event_bytes: int = 1_000_000,
        lease_timeout: float = 60.0,
        clock: Callable[[], float] = time.time,
        segment_bytes: int = 8 * 2**20,
    ) -> None:
        try:
            self.durability = Durability(durability)
        except ValueError as e:
            raise ValidationError(f"durability must be 'process' or 'fsync', got {durability!r}", field="durability", value=durability) from e
        try:
            self.full_policy = FullPolicy(full_policy)
        except ValueError as e:
            raise ValidationError(f"full_policy must be one of drop_newest/drop_oldest/block, got {full_policy!r}", field="full_policy", value=full_policy) from e
        for name, value in (("max_events", max_events), ("max_bytes", max_bytes), ("max_event_bytes", max_event_bytes), ("segment_bytes", segment_bytes)):
            if not isinstance(value, int) or value < 1:
                raise ValidationError(f"{name} must be a positive int, got {value!r}", field=name, value=value)
        for name, value in (("block_timeout", block_timeout), ("retention_seconds", retention_seconds), ("retention_bytes", retention_bytes), ("lease_timeout", lease_timeout)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValidationError(f"{name} must be >= 0, got {value!r}", field=name, value=value)
        self.directory, self.segment_dir, self.quarantine_dir = prepare_directory(directory)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.block_timeout = float(block_timeout)
        self.retention_seconds = float(retention_seconds)
        self.retention_bytes = int(retention_bytes)
        self.max_event_bytes = max_event_bytes
        self.lease_timeout = float(lease_timeout)
        self._clock = clock
        self._retains_delivered = self.retention_seconds > 0 and self.retention_bytes > 0
        self._fsync = self.durability is Durability.FSYNC
        self._index_path = os.path.join(self.directory, "index.sqlite3")
        self._writer = SegmentWriter(self.segment_dir, fsync=self._fsync, max_segment_bytes=segment_bytes)
        self._reserve = SpaceReserve(self.directory)
        self._closed = False
        self._init_process_state()
        self._db()  # fail early (StoreError) when the index cannot be opened
        self._reserve.ensure()

    def __repr__(self) -> str:
        return f"DiskStore({self.directory!r}, durability={self.durability.value!r})"

    # -- per-process state ---------------------------------------------------------------
    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._drops: dict[str, int] = {}
        self._drops_flushed_at = 0.0
        self._last_reclaim = time.monotonic()
        self._pressure_reclaim_at = 0.0
        self._db_failed_at = float("-inf")
        self._pressure = False  # the disk is low: delivered events are not retained, reclaim runs early
        self._space_checked_at = float("-inf")
        self._rebuilt_at = float("-inf")  # monotonic time of this handle's last index rebuild
        self._index_id: tuple[int, int] | None = None  # the index file our connection opened
        self._index_gen: int | None = None  # its rebuild count when we last looked
        self._gauge = UsageGauge(self.segment_dir, self.max_events, self.max_bytes, self._lock,
                                 reserve=self._reserve)
        fork_guard.register(self)
        self._bodies = BodyReader(self.segment_dir, max_record=self._max_payload + OVERHEAD)
        self._unindexed_memo: dict = {}
        self._body_cache = BodyCache()  # bodies verified by this handle's ingest, for its next lease
        self._direct = DirectLeases(self.segment_dir, chunk=DIRECT_CHUNK)  # fenced leases taken past the index cursors

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            self._writer.after_fork_in_child()
            if self._conn is not None:
                _ABANDONED_CONNECTIONS.append(self._conn)
            self._bodies.abandon()
            self._init_process_state()

    def _db(self) -> sqlite3.Connection:
        """This process's index connection (opened lazily; StoreError when impossible)."""
        if self._closed:
            raise StoreError(f"store {self.directory!r} is closed")
        conn = self._conn
        if conn is None:
            with self._lock:
                return self._open_db()
        return conn

    def _open_db(self) -> sqlite3.Connection:
        """Open the index connection once per process (caller holds self._lock)."""
        conn = self._conn
        if conn is None:
            seen, conn = repair.file_id(self._index_path), None
            try:
                foreign = secure_index_files(self.directory, self.quarantine_dir)  # before SQLite opens them
                conn = state.open_index(self._index_path, fsync=self._fsync, wal_pages=self._reserve.wal_pages)
                self._index_gen = state.meta_value(conn, "rebuilds")
                if foreign:
                    with state.Txn(conn):
                        state.add_counter(conn, FOREIGN_INDEX_COUNTER, foreign)
            except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
                if not damage_seen(self, e):
                    raise StoreError(f"cannot open store index {self._index_path!r}: {e}") from e
                self._conn, self._index_id = conn, seen
                return self._repair_index(e)
            except (sqlite3.Error, OSError) as e:
                raise StoreError(f"cannot open store index {self._index_path!r}: {e}") from e
            self._conn, self._index_id = conn, repair.file_id(self._index_path)
        return conn

    # -- emitting side --------------------------------------------------------------------
    def append(self, event_id: str, run_id: str, seq: int, body: bytes) -> AppendResult:
        """Durably append one serialized event; never raises for full/disk-full (see result)."""
        if self._pid != os.getpid():
            self._check_pid()
        if self._closed:
            raise StoreError(f"append to closed store {self.directory!r}")
        if type(body) is not bytes:
            if not isinstance(body, (bytearray, memoryview)):
                raise ValidationError(f"body must be bytes, got {type(body).__name__}", field="body", value=type(body).__name__)
            body = bytes(body)
        try:
            eid = event_id.encode()
            rid = run_id.encode()
        except AttributeError as e:
            raise ValidationError(f"event_id and run_id must be str, got {event_id!r} / {run_id!r}", field="event_id", value=event_id) from e
        if not eid or len(eid) > 1024:
            raise ValidationError(f"event_id must be 1..1024 bytes, got {event_id!r}", field="event_id", value=event_id)
        if len(rid) > 1024:
            raise ValidationError(f"run_id longer than 1024 bytes: {run_id[:64]!r}...", field="run_id", value=run_id)
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:  # the protocol's bound (0: store-only records)
            raise ValidationError(f"seq must be an int in 0..{MAX_SEQ}, got {seq!r}", field="seq", value=seq)
        if len(body) > self.max_event_bytes:
            return self._drop("too_large")
        record = encode_record(eid, rid, seq, body, next_ord(), self._clock())
        if not self._gauge.has_room(len(record), self._conn_or_none()):
            result = self._when_full(len(record))
            if result is not None:
                return result
        if self._gauge.disk_low:
            self._gauge.check_disk()  # only while low: writes resume as soon as the room is back
            if self._gauge.disk_low:
                return self._disk_full()
        try:
            self._writer.write(record)
        except OSError as e:
            return self._disk_full() if e.errno in _DISK_FULL_ERRNOS else self._drop("io_error")
        self._gauge.added(len(record))
        return _STORED

    def _conn_or_none(self) -> sqlite3.Connection | None:
        """The index connection for the append path, or None (retried at most once a second)."""
        if self._conn is not None:
            return self._conn
        if time.monotonic() - self._db_failed_at < 1.0:
            return None
        try:
            return self._db()
        except StoreError:
            self._db_failed_at = time.monotonic()
            return None

    def _when_full(self, record_len: int) -> AppendResult | None:
        """Apply the full policy; None means there is room now (go ahead and write)."""
        conn = self._conn_or_none()
        if self._gauge.has_room(record_len, conn, force=True):
            return None  # the cached numbers were stale
        try:
            if self._gauge.over_bytes(record_len):
                if conn is not None and time.monotonic() - self._pressure_reclaim_at > 1.0:
                    self._pressure_reclaim_at = time.monotonic()
                    self._reclaim_locked(self._clock(), pressure=True)
                    if self._gauge.has_room(record_len, conn, force=True):
                        return None
            elif self.full_policy is FullPolicy.DROP_OLDEST and conn is not None:
                if self._evict_oldest():
                    self._gauge.removed(1)
                    return None
            if self.full_policy is FullPolicy.BLOCK:
                deadline = time.monotonic() + self.block_timeout
                while time.monotonic() < deadline:
                    time.sleep(0.005)
                    if self._gauge.has_room(record_len, self._conn_or_none(), force=True):
                        return None
        except (StoreError, sqlite3.Error, OSError):
            pass  # cannot make room (e.g. disk full): fall through to a counted drop
        return self._drop("full")

    @translated
    def _evict_oldest(self) -> bool:
        """Delete the oldest pending event to make room; counted under dropped['evicted']."""
        conn = self._db()
        with self._lock:
            self._index_direct_leases(conn)
            ingest(conn, self.segment_dir, self.quarantine_dir, max_payload=self._max_payload, target_pending=1)
            with state.Txn(conn):
                row = conn.execute(
                    "SELECT id, seg, state, body_len FROM events WHERE state = 0 ORDER BY ord LIMIT 1"
                ).fetchone()
                if row is None:
                    return False
                state.delete_events(conn, [row])
                state.add_dropped(conn, {"evicted": 1})
        return True

    def _drop(self, reason: str) -> AppendResult:
        """Count a refused event (flushed to the shared index at most every 0.5 s)."""
        self._drops[reason] = self._drops.get(reason, 0) + 1
        if time.monotonic() - self._drops_flushed_at > DROP_FLUSH_INTERVAL:
            self._flush_drops()
        return AppendResult(False, reason)

    @property
    def _max_payload(self) -> int:
        return self.max_event_bytes + OVERHEAD + 2048

    # -- flusher side ---------------------------------------------------------------------
    @translated
    def begin_epoch(self) -> int:
        """Start a new fencing epoch (call after winning the election); returns it."""
        self._check_pid()
        conn = self._db()
        self._check_space()

        def start() -> int:
            with self._lock, state.Txn(conn):
                epoch = state.meta_value(conn, "epoch") + 1
                conn.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (epoch,))
                self._direct.reset(epoch)
                ids = [r[0] for r in conn.execute("SELECT id FROM events WHERE state = 1")]
                state.move(conn, ids, (state.IN_FLIGHT,), state.PENDING, ", lease_until = NULL", selected=True)
            return epoch

        return self._with_room(start)  # type: ignore[return-value]

    @translated
    def lease(self, max_events: int, max_bytes: int, *, epoch: int | None = None) -> list[StoredEvent]:
        """Take up to max_events/max_bytes pending events, oldest first, seq order within a run.

        A fenced lease (``epoch`` given) with no indexed event pending reads the
        records past the index cursors directly (see direct_lease.py); their
        refs are negative and the index learns of them when they are settled.
        """
        self._check_pid()
        if max_events < 1:
            return []
        conn = self._db()
        self._check_space()
        now = self._clock()
        low_water = 2 * max_events if self._pressure else max(INDEX_LOW_WATER, 2 * max_events)  # few rows when low
        with self._lock:
            if epoch is not None:
                with state.Txn(conn):
                    state.check_epoch(conn, epoch, "lease")
                    self._expire_leases(conn, now)
                    if state.counts(conn)[state.PENDING][0] == 0:
                        direct = self._direct.lease(conn, epoch, max_events, max_bytes, max_payload=self._max_payload,
                                                    now=now, until=now + self.lease_timeout)
                        if direct is not None:
                            return direct
            self._index_direct_leases(conn)
            if state.counts(conn)[state.PENDING][0] < low_water:
                ingest(conn, self.segment_dir, self.quarantine_dir, max_payload=self._max_payload, body_cache=self._body_cache,
                       target_pending=low_water)
            with state.Txn(conn):
                if epoch is not None:
                    state.check_epoch(conn, epoch, "lease")
                self._expire_leases(conn, now)
                rows = conn.execute(
                    f"SELECT {state.EVENT_COLUMNS}, ord FROM events WHERE state = 0 ORDER BY ord, id LIMIT ?", (max_events,)
                ).fetchall()
                if len(rows) < min(max_events, state.counts(conn)[state.PENDING][0]):
                    raise IndexDamage(f"index inconsistent: the state index finds {len(rows)} pending events, "
                                      f"the counts say {state.counts(conn)[state.PENDING][0]}")
                picked, total = [], 0
                for row in rows:
                    if type(row[8]) is not int:
                        raise IndexDamage(f"index row {row[0]!r} has body_len {row[8]!r}: database disk image is malformed")
                    if picked and total + row[8] > max_bytes:
                        break
                    picked.append(row)
                    total += row[8]
                if picked:
                    state.check_pending(conn, [r[0] for r in picked])
                    state.lease_prefix(conn, picked[-1][-1], picked[-1][0], len(picked), total, now + self.lease_timeout)
            return self._materialize(conn, picked)

    def _expire_leases(self, conn: sqlite3.Connection, now: float) -> None:
        expired = [r[0] for r in conn.execute("SELECT id FROM events WHERE state = 1 AND lease_until < ?", (now,))]
        state.move(conn, expired, (state.IN_FLIGHT,), state.PENDING, ", lease_until = NULL", selected=True)

    def _index_direct_leases(self, conn: sqlite3.Connection) -> None:
        """Before this process indexes anything: outstanding direct leases get their rows (or are dropped when deposed)."""
        if not self._direct.active:
            return
        with state.Txn(conn):
            if self._direct.epoch == state.meta_value(conn, "epoch"):
                self._direct.materialize(conn)
            else:
                self._direct.reset()

    def _ingest_everything(self, conn: sqlite3.Connection) -> None:
        """Index every record in the segments (caller holds self._lock)."""
        self._index_direct_leases(conn)
        ingest(conn, self.segment_dir, self.quarantine_dir, max_payload=self._max_payload)

    def _materialize(self, conn: sqlite3.Connection, rows: list) -> list[StoredEvent]:
        """Read and verify bodies; damaged records are quarantined and left out."""
        out, damaged, segments = [], [], {}
        for row, body in zip(rows, self._bodies.read_many(conn, rows, self._body_cache)):
            if body is None:
                damaged.append(row[0])
                found = self._bodies.recheck(conn, row, segments)  # IndexDamage when the row, not the segment, is wrong
                if found is not None:
                    save_quarantined(self.quarantine_dir, found[0], row[2], found[1])
            else:
                out.append(StoredEvent(row[0], row[4], row[5], row[6], body, row[7]))
        if damaged:
            with state.Txn(conn):  # re-read the rows: their state may have moved since they were selected
                rows_now = conn.execute(
                    "SELECT id, seg, state, body_len FROM events WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(damaged),),
                ).fetchall()
                state.delete_events(conn, rows_now)
                state.add_counter(conn, "quarantined", len(rows_now))
        return out

    def _fenced_move(self, refs: Iterable[object], epoch: int, action: str, from_states: tuple, to_state: int, extra: str = "", params: tuple = ()) -> int:
        self._check_pid()
        try:
            ids = [int(r) for r in refs]  # type: ignore[call-overload]
        except (TypeError, ValueError) as e:
            raise ValidationError(f"{action}: refs must be the refs lease() returned: {e}", field="refs") from e
        conn = self._db()
        with self._lock, state.Txn(conn):
            state.check_epoch(conn, epoch, action)
            if ids and min(ids) < 0:  # direct leases
                retain = self._retains_delivered and not self._pressure  # a low disk keeps no delivered rows
                if action == "ack" and self._direct.try_ack(conn, ids, done_at=params[0], retain=retain):
                    return len(ids)
                if self._direct.active:
                    self._direct.materialize(conn)
                ids = self._direct.take_rows(ids)
            return state.move(conn, ids, from_states, to_state, extra, params)

    @translated
    def ack(self, refs: Iterable[object], *, epoch: int) -> None:
        """Mark leased events delivered (2xx seen); they are retained for replay, then reclaimed."""
        self._fenced_move(refs, epoch, "ack", (state.IN_FLIGHT, state.PENDING), state.DELIVERED, ", done_at = ?, lease_until = NULL", (self._clock(),))
        if self._pressure:  # a low disk: forget them now and unlink what that settles (no WAL truncation here)
            self._reclaim_locked(self._clock(), pressure=True, checkpoint=False)
        elif time.monotonic() - self._last_reclaim > RECLAIM_INTERVAL:
            self.reclaim()

    @translated
    def release(self, refs: Iterable[object], *, epoch: int, attempted: bool = True) -> None:
        """Give leased events back to pending (a failed attempt, counted when attempted)."""
        self._fenced_move(refs, epoch, "release", (state.IN_FLIGHT,), state.PENDING, ", lease_until = NULL, attempts = attempts + ?", (1 if attempted else 0,))

    @translated
    def dead_letter(self, refs: Iterable[object], reason: str, *, epoch: int) -> None:
        """Move leased events to dead letters with a reason."""
        self._fenced_move(refs, epoch, "dead_letter", (state.IN_FLIGHT, state.PENDING, state.FALLBACK), state.DEAD, ", lease_until = NULL, reason = ?, done_at = ?", (str(reason), self._clock()))

    @translated
    def fallback(self, refs: Iterable[object], *, epoch: int) -> None:
        """Park leased events that exhausted max_retries; they are retried by retry_fallback()."""
        self._fenced_move(refs, epoch, "fallback", (state.IN_FLIGHT,), state.FALLBACK, ", lease_until = NULL")

    @translated
    def retry_fallback(self) -> int:
        """Return every fallback event to pending; returns how many."""
        self._check_pid()
        conn = self._db()
        with self._lock, state.Txn(conn):
            ids = [r[0] for r in conn.execute("SELECT id FROM events WHERE state = 4")]
            return state.move(conn, ids, (state.FALLBACK,), state.PENDING, selected=True)

    def close(self) -> None:
        """Release file handles; safe to call twice."""
        if self._closed:
            return
        if self._pid == os.getpid():
            self._flush_drops()
            self._writer.close()
            self._bodies.close()
            if self._conn is not None:
                self._conn.close()
        self._conn = None
        self._closed = True

    def __enter__(self) -> "DiskStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

