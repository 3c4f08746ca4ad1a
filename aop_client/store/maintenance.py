"""Space reclamation: forget delivered events past retention and delete fully-dead segments."""

from __future__ import annotations

import os
import sqlite3

from . import state
from .segments import is_sealed


def reclaim_space(
    conn: sqlite3.Connection,
    segment_dir: str,
    *,
    now: float,
    retention_seconds: float,
    retention_bytes: int,
) -> int:
    """Drop delivered events older than retention or beyond retention_bytes; unlink dead segments."""
    with state.Txn(conn):
        rows = conn.execute(
            "SELECT id, seg, state, body_len FROM events INDEXED BY events_delivered WHERE state = 2 AND done_at < ?",
            (now - retention_seconds,),
        ).fetchall()
        reclaimed = state.delete_events(conn, rows)
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
    return reclaimed
