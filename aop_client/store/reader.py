"""Reading event bodies back from segments for the flusher, verifying every checksum again."""

from __future__ import annotations

import os
import sqlite3

from .records import body_if_intact

MAX_OPEN = 64


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

    def read(self, conn: sqlite3.Connection, row: tuple) -> bytes | None:
        """Body of the event in row (id, seg, off, len, event_id, ...); None when damaged or gone."""
        fd = self._fd(conn, row[1])
        if fd is None:
            return None
        return body_if_intact(os.pread(fd, row[3], row[2]), row[4].encode())

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
