"""Reading event bodies back from segments for the flusher, verifying every checksum again."""

from __future__ import annotations

import os
import sqlite3

from .ingest import BodyCache
from .records import body_if_intact

MAX_OPEN = 64
MAX_SPAN = 4 << 20  # bytes read at once when records are adjacent


class BodyReader:
    """Reads and re-verifies the record behind an index row; caches segment fds per process."""

    def __init__(self, segment_dir: str) -> None:
        self.segment_dir = segment_dir
        self._fds: dict[int, int] = {}

    def _fd(self, conn: sqlite3.Connection, seg: int) -> int | None:
        fd = self._fds.get(seg)
        if fd is None:
            row = conn.execute("SELECT name FROM segments WHERE id = ?", (seg,)).fetchone()
            if row is None:
                return None
            try:
                fd = os.open(os.path.join(self.segment_dir, row[0]), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                return None
            if len(self._fds) >= MAX_OPEN:
                self.close()
            self._fds[seg] = fd
        return fd

    def read_many(self, conn: sqlite3.Connection, rows: list, cache: BodyCache | None = None) -> list[bytes | None]:
        """Bodies for many rows (from the ingest cache, else one pread per run of adjacent records)."""
        out: list[bytes | None] = [None] * len(rows)
        missing = range(len(rows))
        if cache is not None:
            for i, row in enumerate(rows):
                out[i] = cache.take(row[1], row[2], row[4])
            missing = [i for i in missing if out[i] is None]
        order = sorted(missing, key=lambda i: (rows[i][1], rows[i][2]))
        k = 0
        while k < len(order):
            first = rows[order[k]]
            seg, start = first[1], first[2]
            end = start + first[3]
            j = k + 1
            while j < len(order) and rows[order[j]][1] == seg and rows[order[j]][2] == end and end - start < MAX_SPAN:
                end += rows[order[j]][3]
                j += 1
            fd = self._fd(conn, seg)
            if fd is not None:
                span = os.pread(fd, end - start, start)
                for i in order[k:j]:
                    row = rows[i]
                    rel = row[2] - start
                    out[i] = body_if_intact(span[rel : rel + row[3]], row[4].encode())
            k = j
        return out

    def raw_record(self, conn: sqlite3.Connection, row: tuple) -> tuple[str, bytes] | None:
        """(segment name, the record's bytes as they are now) for an index row, or None when its file is gone."""
        name = conn.execute("SELECT name FROM segments WHERE id = ?", (row[1],)).fetchone()
        fd = self._fd(conn, row[1]) if name else None
        if fd is None:
            return None
        return name[0], os.pread(fd, row[3], row[2])

    def close(self) -> None:
        """Close every cached fd."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

    def abandon(self) -> None:
        """After fork in the child: close our copies of the parent's fds."""
        self.close()
