"""Test helpers: make real damage inside the pages of a live store's SQLite index."""

from __future__ import annotations

import os
import random
import sqlite3
import time

INDEX = "index.sqlite3"
TABLES = ("events", "events_state_ord", "events_run", "events_delivered")


def index_pages(directory: str, tables: tuple[str, ...] = TABLES) -> tuple[int, list[int]]:
    """(page size, page numbers of the given tables and indexes), after checkpointing the WAL into the file."""
    conn = sqlite3.connect(os.path.join(directory, INDEX), timeout=30)
    try:
        # Every page must be in the file, not shadowed by a WAL frame that a live reader would read instead.
        deadline = time.monotonic() + 30
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() != (0, 0, 0):
            assert time.monotonic() < deadline, "the WAL could not be checkpointed (a reader never let go)"
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        marks = ",".join("?" * len(tables))
        pages = [r[0] for r in conn.execute(f"SELECT pageno FROM dbstat WHERE name IN ({marks}) ORDER BY pageno", tables)]
    finally:
        conn.close()
    return size, pages


def integrity_ok(directory: str) -> bool:
    """PRAGMA integrity_check of the index, on a fresh connection."""
    conn = sqlite3.connect(os.path.join(directory, INDEX))
    try:
        return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def flip_bytes(directory: str, spots: list[tuple[int, int]]) -> None:
    """XOR each (file offset, mask) into the index file."""
    with open(os.path.join(directory, INDEX), "r+b") as f:
        for offset, mask in spots:
            f.seek(offset)
            old = f.read(1)
            if not old:
                continue
            f.seek(offset)
            f.write(bytes([old[0] ^ mask]))


def make_visible(directory: str) -> None:
    """Commit one write through another connection so every open connection drops its page cache."""
    conn = sqlite3.connect(os.path.join(directory, INDEX), isolation_level=None)
    try:
        conn.execute("UPDATE meta SET value = value WHERE key = 'quarantined'")
    finally:
        conn.close()


def damage_index(directory: str, *, seed: int = 12) -> list[int]:
    """Overwrite the middle of every page of the events table and its indexes; returns the pages hit.

    Done while holding the index's write lock with the WAL empty, so no live
    writer can put a good copy of a page back in between. The damage is
    checked to be real (``PRAGMA integrity_check`` fails) and made visible to
    connections that are already open (the commit that ends it changes the WAL).
    """
    path = os.path.join(directory, INDEX)
    rng = random.Random(seed)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        deadline = time.monotonic() + 30
        while True:
            size, pages = index_pages(directory)
            conn.execute("BEGIN IMMEDIATE")  # no other writer from here to the COMMIT
            if os.path.getsize(path + "-wal") == 0 if os.path.exists(path + "-wal") else True:
                break
            conn.execute("ROLLBACK")  # a writer got in after the checkpoint: again
            assert time.monotonic() < deadline, "could not catch the index with an empty WAL"
        assert pages, "the index holds no event pages to damage"
        with open(path, "r+b") as f:
            for page in pages:
                f.seek((page - 1) * size + (8 if page > 1 else 100))
                f.write(bytes(rng.randrange(256) for _ in range(size // 2)))
        assert not integrity_ok(directory), "the damage is not visible to SQLite"
        conn.execute("UPDATE meta SET value = value WHERE key = 'quarantined'")
        conn.execute("COMMIT")
    finally:
        conn.close()
    return pages
