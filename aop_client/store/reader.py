"""Reading event bodies back from segments for the flusher, verifying every checksum again."""

from __future__ import annotations

import os
import sqlite3

from .boundary import IndexDamage
from .ingest import BodyCache
from .records import OVERHEAD, Record, body_if_intact, decode_run
from .segments import open_segment

MAX_OPEN = 64
MAX_SPAN = 4 << 20  # bytes read at once when records are adjacent


def sane(row: tuple, max_record: int) -> bool:
    """True when an index row's values can be those of a record (types and ranges), as ingest wrote them."""
    _id, seg, off, length, event_id, run_id, seq, attempts = row[:8]
    return (type(seg) is int and type(off) is int and type(length) is int and type(event_id) is str
            and type(run_id) is str and type(seq) is int and type(attempts) is int
            and off >= 0 and OVERHEAD <= length <= max_record)


class BodyReader:
    """Reads and re-verifies the record behind an index row; caches segment fds per process."""

    def __init__(self, segment_dir: str, max_record: int = 1 << 31) -> None:
        self.segment_dir = segment_dir
        self.max_record = max_record  # no sane row is longer (bounds what a damaged row can make us read)
        self._fds: dict[int, int] = {}

    def _fd(self, conn: sqlite3.Connection, seg: int) -> int | None:
        fd = self._fds.get(seg)
        if fd is None:
            row = conn.execute("SELECT name FROM segments WHERE id = ?", (seg,)).fetchone()
            if row is None:
                return None
            try:
                fd = open_segment(os.path.join(self.segment_dir, row[0]))
            except FileNotFoundError:  # gone, or not ours (an index of an older version may name one): never read
                return None
            if len(self._fds) >= MAX_OPEN:
                self.close()
            self._fds[seg] = fd
        return fd

    def read_many(self, conn: sqlite3.Connection, rows: list, cache: BodyCache | None = None) -> list[bytes | None]:
        """Bodies for many rows (from the ingest cache, else one pread per run of adjacent records)."""
        out: list[bytes | None] = [None] * len(rows)
        missing = [i for i, row in enumerate(rows) if sane(row, self.max_record)]  # an insane row stays None: see recheck()
        if cache is not None:
            for i in missing:
                row = rows[i]
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

    def recheck(self, conn: sqlite3.Connection, row: tuple, memo: dict | None = None) -> tuple[str, bytes] | None:
        """Tell segment damage from index damage for a row whose body failed its check.

        Returns (segment name, the row's bytes as they are now) to quarantine
        when the record itself is damaged or gone (None when its file is gone).
        Raises :class:`IndexDamage` when the row is what is wrong: values no
        record can have, a segment id the index does not know, an intact record
        at its offset that is another event, or this event's record intact
        elsewhere in its segment. Only for the rare damaged row: it reads the
        segment (once per ``memo``, a dict the caller keeps for one batch).
        """
        if not sane(row, self.max_record):
            raise IndexDamage(f"index row {row[0]!r} holds impossible values: database disk image is malformed")
        name = conn.execute("SELECT name FROM segments WHERE id = ?", (row[1],)).fetchone()
        if name is None:
            raise IndexDamage(f"index row {row[0]} names unknown segment {row[1]}: database disk image is malformed")
        fd = self._fd(conn, row[1])
        if fd is None:
            return None
        memo = {} if memo is None else memo
        records = memo.get(row[1])
        if records is None:
            records = memo[row[1]] = [r for r in decode_run(os.pread(fd, os.fstat(fd).st_size, 0), 0, self.max_record).items
                                      if type(r) is Record]
        wanted = (row[4], row[5], row[6])
        for record in records:
            if record.offset == row[2] and (record.event_id, record.run_id, record.seq) != wanted:
                raise IndexDamage(f"index row {row[0]} disagrees with the intact record at {name[0]}:{row[2]}: "
                                  "database disk image is malformed")
            if (record.event_id, record.run_id, record.seq) == wanted and (record.offset, record.length) != row[2:4]:
                raise IndexDamage(f"index row {row[0]} misplaces {row[4]!r}, intact at {name[0]}:{record.offset}: "
                                  "database disk image is malformed")
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
