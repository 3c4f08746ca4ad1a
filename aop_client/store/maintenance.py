"""Space reclamation: forget delivered events past retention and delete fully-dead segments.

Under disk pressure (see reserve.py) the store calls this with
``retention_bytes=0`` and ``checkpoint=True``: every delivered (retained) event
is forgotten at once, before anything pending could be touched (pending events
never are), the segments that leaves without a live record are unlinked, and
the index's write-ahead log is checkpointed and truncated so its blocks return
to the filesystem too.
"""

from __future__ import annotations

import os
import sqlite3

from . import state
from .segments import is_sealed

PRESSURE_CHUNK = 200  # delivered rows deleted per transaction under disk pressure


def reclaim_space(
    conn: sqlite3.Connection,
    segment_dir: str,
    *,
    now: float,
    retention_seconds: float,
    retention_bytes: int,
    checkpoint: bool = False,
) -> int:
    """Drop delivered events older than retention or beyond retention_bytes; unlink dead segments.

    With ``checkpoint``, also checkpoint and truncate the index's WAL (best effort: a
    reader holding an old snapshot lets it finish later).
    """
    reclaimed = 0
    if checkpoint:  # first give the WAL's blocks back: the deletes below need room to be written
        truncate_wal(conn)
    while checkpoint:  # pressure: every delivered row goes, in small transactions, so the WAL reuses its blocks
        with state.Txn(conn):
            rows = conn.execute(
                "SELECT id, seg, state, body_len FROM events INDEXED BY events_delivered WHERE state = 2 LIMIT ?",
                (PRESSURE_CHUNK,),
            ).fetchall()
            reclaimed += state.delete_events(conn, rows)
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        if len(rows) < PRESSURE_CHUNK:
            break
    with state.Txn(conn):
        rows = conn.execute(
            "SELECT id, seg, state, body_len FROM events INDEXED BY events_delivered WHERE state = 2 AND done_at < ?",
            (now - retention_seconds,),
        ).fetchall()
        reclaimed += state.delete_events(conn, rows)
        excess = state.counts(conn)[state.DELIVERED][1] - retention_bytes
        if excess > 0:
            victims, freed = [], 0
            for row in conn.execute(
                "SELECT id, seg, state, body_len FROM events INDEXED BY events_delivered WHERE state = 2 ORDER BY done_at"
            ):
                if freed >= excess:
                    break
                victims.append(row)
                freed += row[3]
            reclaimed += state.delete_events(conn, victims)
        for sid, name, cursor in conn.execute("SELECT id, name, cursor FROM segments WHERE live <= 0").fetchall():
            path = os.path.join(segment_dir, name)
            try:
                size = os.stat(path, follow_symlinks=False).st_size
            except FileNotFoundError:
                conn.execute("DELETE FROM segments WHERE id = ?", (sid,))
                continue
            if size == cursor and is_sealed(path):
                os.unlink(path)
                conn.execute("DELETE FROM segments WHERE id = ?", (sid,))
    if checkpoint:
        truncate_wal(conn)
    return reclaimed


def truncate_wal(conn: sqlite3.Connection) -> None:
    """Checkpoint the whole WAL and truncate it to zero bytes, waiting at most 0.1 s for other connections."""
    timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute("PRAGMA busy_timeout=100")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # busy: finished by a later call
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(timeout)}")
