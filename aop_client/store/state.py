"""The store's index: event states, segment cursors, fencing epoch and counters, in SQLite (WAL).

Segments hold the bytes; this index holds everything that changes after an
append: which records have been read from which segment (``segments.cursor``),
each event's state (pending, in flight, delivered, dead, fallback), attempts,
leases, the fencing epoch and host-wide counters. Every mutation is one
``BEGIN IMMEDIATE`` transaction, so any process may call any method; the
fencing check and the change it guards are in the same transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import zlib
from typing import Iterable, Sequence

from ..errors import FencedError
from .boundary import IndexDamage

PENDING, IN_FLIGHT, DELIVERED, DEAD, FALLBACK = 0, 1, 2, 3, 4
UNDELIVERED = (PENDING, IN_FLIGHT, FALLBACK)
WAL_PAGES = 4096  # WAL pages before an automatic checkpoint: fewer checkpoint fsyncs on the drain path
WAL_PAGES_LOW = 16  # under disk pressure: the WAL restarts from its start instead of growing
PAGE_BYTES = 4096  # SQLite's default page size, which the index uses

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments(
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0, live INTEGER NOT NULL DEFAULT 0,
    indexed_total INTEGER NOT NULL DEFAULT 0);  -- live = rows left, indexed_total = records ever indexed
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY AUTOINCREMENT, ord INTEGER NOT NULL, seg INTEGER NOT NULL,
    off INTEGER NOT NULL, len INTEGER NOT NULL, body_len INTEGER NOT NULL,
    event_id TEXT NOT NULL, run_id TEXT NOT NULL, run_key INTEGER NOT NULL, seq INTEGER NOT NULL,
    appended_at REAL NOT NULL,
    state INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, lease_until REAL,
    done_at REAL, reason TEXT);
CREATE INDEX IF NOT EXISTS events_state_ord ON events(state, ord);
CREATE INDEX IF NOT EXISTS events_run ON events(run_key, seq);
CREATE INDEX IF NOT EXISTS events_delivered ON events(done_at) WHERE state = 2;
CREATE TABLE IF NOT EXISTS counts(state INTEGER PRIMARY KEY, n INTEGER NOT NULL, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dropped(reason TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
"""

EVENT_COLUMNS = "id, seg, off, len, event_id, run_id, seq, attempts, body_len, appended_at, state, done_at, reason"
_IDS = "SELECT value FROM json_each(?)"


def run_key(run_id: str) -> int:
    """A compact index key for a run (CRC-32 of its id; queries also compare run_id itself)."""
    return zlib.crc32(run_id.encode())


def open_index(path: str, *, fsync: bool, wal_pages: int = WAL_PAGES) -> sqlite3.Connection:
    """Open (creating 0600) the index database in WAL mode with the schema in place.

    ``wal_pages``: the WAL's automatic checkpoint threshold (the store bounds it
    by the size of its filesystem, see reserve.py).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    _set_wal(conn)
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute("PRAGMA cache_size=-8000")
    conn.execute(f"PRAGMA wal_autocheckpoint={int(wal_pages)}")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 1 and "indexed_total" not in {r[1] for r in conn.execute("PRAGMA table_info(segments)")}:
        with Txn(conn):  # stores created before the column existed
            conn.execute("ALTER TABLE segments ADD COLUMN indexed_total INTEGER NOT NULL DEFAULT 0")
            conn.execute("UPDATE segments SET indexed_total = (SELECT COUNT(*) FROM events WHERE events.seg = segments.id)")
    if version == 0:
        create_schema(conn)
    return conn


def _set_wal(conn: sqlite3.Connection, patience: float = 30.0) -> None:
    """PRAGMA journal_mode=WAL, waiting (like busy_timeout) while another process holds the database.

    SQLite answers "database is locked" at once, without its busy handler, when another
    process opens the index as this one does, or checkpoints it on closing its last
    connection (a worker exiting while another starts): retried, with a short growing pause.
    """
    deadline = time.monotonic() + patience
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(pause)  # a retry pause of the open itself, not a synchronisation
        pause = min(pause * 2, 0.05)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables of an empty index (idempotent: another process may have just done it)."""
    with Txn(conn):
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', 0), ('quarantined', 0)")
            conn.executemany(
                "INSERT OR IGNORE INTO counts VALUES (?, 0, 0)",
                [(s,) for s in (PENDING, IN_FLIGHT, DELIVERED, DEAD, FALLBACK)],
            )
            conn.execute("PRAGMA user_version=1")


def seed_rebuilt(conn: sqlite3.Connection, *, base: int, rebuilds: int, at_ms: int, recovered: int) -> None:
    """Prepare an empty index that replaces a damaged one (see repair.py).

    Epochs and row ids start above ``base``, above every epoch and id the
    damaged index handed out, so an old epoch is fenced and an old ref or
    segment id never names a row of the new index. The rebuild is recorded
    in meta (``rebuilds``, ``rebuilt_at_ms``, ``rebuilt_events``) for ``aop status``.
    """
    with Txn(conn):
        conn.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (base,))
        conn.execute("DELETE FROM sqlite_sequence WHERE name IN ('events', 'segments')")
        conn.executemany("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", [("events", base), ("segments", base)])
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [("rebuilds", rebuilds), ("rebuilt_at_ms", at_ms), ("rebuilt_events", recovered)],
        )


def rebuild_record(conn: sqlite3.Connection) -> dict | None:
    """The last rebuild of this index ({rebuilds, rebuilt_at, events_recovered}), or None if never rebuilt."""
    values = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('rebuilds', 'rebuilt_at_ms', 'rebuilt_events')"))
    if not values.get("rebuilds"):
        return None
    return {"rebuilds": int(values["rebuilds"]), "rebuilt_at": values.get("rebuilt_at_ms", 0) / 1000.0,
            "events_recovered": int(values.get("rebuilt_events", 0))}


class Txn:
    """A BEGIN IMMEDIATE ... COMMIT block (rolled back on error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                self._rollback()  # a failed COMMIT (SQLITE_FULL) must not leave the write lock held
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        """Roll back if SQLite has not already (it may, after SQLITE_FULL); the original error wins."""
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass


def check_epoch(conn: sqlite3.Connection, epoch: int, action: str) -> None:
    """Raise FencedError unless epoch is the current one (call inside the transaction)."""
    current = conn.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0]
    if epoch != current:
        raise FencedError(f"{action} refused: flusher epoch {epoch} is stale (store epoch is {current})")


def bump_counts(conn: sqlite3.Connection, deltas: dict[int, tuple[int, int]]) -> None:
    """Apply (count, bytes) deltas per state to the counts table."""
    rows = [(n, b, s) for s, (n, b) in deltas.items() if n or b]
    if rows:
        conn.executemany("UPDATE counts SET n = n + ?, bytes = bytes + ? WHERE state = ?", rows)


def counts(conn: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """state -> (events, body bytes)."""
    return {s: (n, b) for s, n, b in conn.execute("SELECT state, n, bytes FROM counts")}


def move(
    conn: sqlite3.Connection,
    ids: Sequence[int],
    from_states: Iterable[int],
    to_state: int,
    extra: str = "",
    params: tuple = (),
    *,
    selected: bool = False,
) -> int:
    """Move the given events that are in from_states to to_state; returns how many moved.

    ``selected``: the ids were just selected by state in this transaction, so
    every one must move; one that does not means the table and its state
    index disagree (damage SQLite does not see): :class:`IndexDamage`.
    """
    if not ids:
        return 0
    ids = list(ids)
    ids_json = json.dumps(ids)
    wanted = len(set(ids))
    deltas: dict[int, tuple[int, int]] = {}
    moved_n = moved_b = 0
    for from_state in from_states:
        if moved_n >= wanted:
            break  # every event already moved: skip the lookups for the other source states
        # "+state": look rows up by id, not through the (state, ord) index.
        lens = conn.execute(
            f"UPDATE events SET state = ?{extra} WHERE id IN ({_IDS}) AND +state = ? RETURNING body_len",
            (to_state, *params, ids_json, from_state),
        ).fetchall()
        if lens:
            nbytes = sum(r[0] for r in lens)
            deltas[from_state] = (-len(lens), -nbytes)
            moved_n += len(lens)
            moved_b += nbytes
    if selected and moved_n != wanted:
        raise IndexDamage(f"index inconsistent: {wanted - moved_n} of {wanted} events selected by state did not move")
    if moved_n:
        n0, b0 = deltas.get(to_state, (0, 0))
        deltas[to_state] = (n0 + moved_n, b0 + moved_b)
        bump_counts(conn, deltas)
    return moved_n


def check_pending(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """IndexDamage unless the table agrees with the state index that these rows (found through it) are pending."""
    if not ids:
        return
    wrong = conn.execute(f"SELECT COUNT(*) FROM events WHERE id IN ({_IDS}) AND +state <> 0", (json.dumps(list(ids)),)).fetchone()[0]
    if wrong:
        raise IndexDamage(f"index inconsistent: {wrong} of {len(ids)} events the state index calls pending are not")


def lease_prefix(conn: sqlite3.Connection, last_ord: int, last_id: int, n: int, nbytes: int, until: float) -> None:
    """Mark the pending events up to (last_ord, last_id) in (ord, id) order in flight (one range update)."""
    moved = conn.execute(
        "UPDATE events SET state = 1, lease_until = ? WHERE state = 0 AND ord <= ? AND (ord < ? OR id <= ?)",
        (until, last_ord, last_ord, last_id),
    ).rowcount
    if moved != n:  # cannot happen inside one transaction; refuse (rolls back) rather than miscount
        raise IndexDamage(f"index inconsistent: lease matched {moved} pending events, expected {n}")
    bump_counts(conn, {PENDING: (-n, -nbytes), IN_FLIGHT: (n, nbytes)})


def delete_events(conn: sqlite3.Connection, rows: Sequence[tuple[int, int, int, int]]) -> int:
    """Delete events given as (id, seg, state, body_len); keeps counts and segment live totals."""
    if not rows:
        return 0
    conn.execute(f"DELETE FROM events WHERE id IN ({_IDS})", (json.dumps([r[0] for r in rows]),))
    per_seg: dict[int, int] = {}
    deltas: dict[int, list[int]] = {}
    for _id, seg, state, body_len in rows:
        per_seg[seg] = per_seg.get(seg, 0) + 1
        d = deltas.setdefault(state, [0, 0])
        d[0] -= 1
        d[1] -= body_len
    conn.executemany("UPDATE segments SET live = live - ? WHERE id = ?", [(n, s) for s, n in per_seg.items()])
    bump_counts(conn, {s: (n, b) for s, (n, b) in deltas.items()})
    return len(rows)


def add_counter(conn: sqlite3.Connection, key: str, n: int) -> None:
    """Add n to a meta counter (e.g. 'quarantined')."""
    conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?", (key, n, n))


def add_dropped(conn: sqlite3.Connection, by_reason: dict[str, int]) -> None:
    """Add per-reason drop counts."""
    conn.executemany(
        "INSERT INTO dropped VALUES (?, ?) ON CONFLICT(reason) DO UPDATE SET n = n + excluded.n",
        list(by_reason.items()),
    )


def meta_value(conn: sqlite3.Connection, key: str) -> int:
    """Read a meta counter (0 when absent)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def dropped(conn: sqlite3.Connection) -> dict[str, int]:
    """reason -> events dropped, host-wide."""
    return dict(conn.execute("SELECT reason, n FROM dropped"))
