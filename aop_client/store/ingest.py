"""Indexing: read new records from segment files into the SQLite index, quarantining damage.

One pass reads at most ``chunk`` bytes past each segment's cursor, merges the
records of all segments by their append order key (only up to the smallest
key any partially-read segment reached, so a later chunk can never hold an
older record), inserts them as PENDING and advances the cursors, all in one
transaction. Damaged byte ranges are counted in ``meta.quarantined`` and
copied to ``quarantine/``. An incomplete tail is left alone while its writer
holds the segment (a record in progress) and quarantined once it is sealed.
"""

from __future__ import annotations

import heapq
import os
import sqlite3
from operator import itemgetter
from typing import NamedTuple, Sequence
from zlib import crc32 as crc

from . import state
from .records import HEADER, HEADER_SIZE, Record, decode_run
from .segments import is_sealed, list_segments, read_at

DEFAULT_CHUNK = 1 << 20
QUARANTINE_COPY_LIMIT = 1 << 20
_ORDER_KEY = itemgetter(0)  # a scanned record's order key
_INSERT_CHUNK = 900  # rows per multi-row INSERT (<= 12 parameters each, under SQLite's 32766)


class BodyCache:
    """Bodies verified at ingest, kept (bounded, oldest dropped first) for the lease that follows."""

    def __init__(self, max_bytes: int = 16 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._bodies: dict[tuple[int, int], tuple[str, bytes]] = {}
        self._bytes = 0

    def put(self, seg: int, offset: int, event_id: str, body: bytes) -> None:
        """Remember one verified body."""
        self._bodies[(seg, offset)] = (event_id, body)
        self._bytes += len(body)
        while self._bytes > self.max_bytes and self._bodies:
            self._bytes -= len(self._bodies.pop(next(iter(self._bodies)))[1])

    def take(self, seg: int, offset: int, event_id: str) -> bytes | None:
        """The body stored for (seg, offset) if it belongs to event_id (removed either way); else None."""
        entry = self._bodies.pop((seg, offset), None)
        if entry is None:
            return None
        self._bytes -= len(entry[1])
        return entry[1] if entry[0] == event_id else None

    def clear(self) -> None:
        """Forget everything."""
        self._bodies.clear()
        self._bytes = 0


def save_quarantined(quarantine_dir: str, segment: str, offset: int, data: bytes) -> None:
    """Best-effort copy of damaged bytes to ``quarantine/<segment>.<offset>.bad`` (0600, O_EXCL: never
    truncates or writes through anything there; failures ignored).

    The one writer of those copies: damage found by ingest, by a direct lease's
    scan (which leaves it to ingest) and by the re-check of a body at lease.
    """
    try:
        path = os.path.join(quarantine_dir, f"{segment}.{offset}.bad")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data[:QUARANTINE_COPY_LIMIT])
        finally:
            os.close(fd)
    except OSError:
        pass


def _read_chunk(path: str, cursor: int, size: int, chunk: int, max_payload: int):
    """Read and decode from cursor; grows the read once when a single record exceeds chunk."""
    buf = read_at(path, cursor, min(chunk, size - cursor))
    res = decode_run(buf, cursor, max_payload)
    if not res.items and res.incomplete and len(buf) >= HEADER_SIZE and cursor + len(buf) < size:
        length = HEADER.unpack_from(buf, 0)[1]
        if length <= max_payload:
            buf = read_at(path, cursor, min(HEADER_SIZE + length, size - cursor))
            res = decode_run(buf, cursor, max_payload)
    return buf, res


def _created_ord(segment_name: str) -> int:
    """The order key a segment was created at (its name prefix); records in it are newer."""
    try:
        return int(segment_name.split("-", 1)[0])
    except ValueError:
        return 0


class Scan(NamedTuple):
    """What one pass over the segments found past the given positions (nothing written yet)."""

    taken: list  # (ord_ns, segment id, Record, body bytes), in append order, none newer than the watermark
    cursors: list  # (new position, segment id) for every segment the pass moved past
    damage: list  # (segment name, offset, damaged bytes, counts as a new damaged range) to quarantine
    more: bool  # True when data is waiting past this pass


def scan_pass(
    conn: sqlite3.Connection,
    segment_dir: str,
    *,
    positions: dict[int, int] | None = None,
    chunk: int = DEFAULT_CHUNK,
    max_payload: int,
) -> Scan:
    """Read one chunk past each segment's position and merge the records by append order (call in a txn).

    A segment's position is its index cursor, or ``positions[segment id]`` when
    that is further. Registers segments the index has not seen yet. Only
    records up to the smallest order key any partially read segment reached
    are taken, so a later pass can never find an older record.
    """
    positions = positions or {}
    known = {name: (sid, cursor) for sid, name, cursor in conn.execute("SELECT id, name, cursor FROM segments")}
    reads = []
    partial_ords: list[int] = []  # the last order key read from each partially read segment
    bound: int | None = None  # smallest last-read order key among partially read segments
    for name, size in list_segments(segment_dir):
        if name not in known:
            sid = conn.execute("INSERT INTO segments(name) VALUES (?)", (name,)).lastrowid
            known[name] = (sid, 0)
        sid, cursor = known[name]
        cursor = max(cursor, positions.get(sid, 0))
        if size <= cursor:
            continue
        if bound is not None and _created_ord(name) > bound:
            continue  # every record in it is newer than what this pass may take
        path = os.path.join(segment_dir, name)
        try:
            buf, res = _read_chunk(path, cursor, size, chunk, max_payload)
        except FileNotFoundError:
            continue
        at_eof = cursor + len(buf) >= size
        reads.append((sid, name, path, cursor, size, buf, res, at_eof))
        if not at_eof:
            # a segment's order keys increase with the offset: its last record has the largest
            last = next((i.ord_ns for i in reversed(res.items) if type(i) is Record), None)
            if last is not None:
                partial_ords.append(last)
                if bound is None or last < bound:
                    bound = last
    watermark = min(partial_ords) if partial_ords else None
    per_segment: list[list] = []  # each segment's records in file order
    damage: list = []
    cursors = []
    more = False
    for sid, name, path, cursor, size, buf, res, at_eof in reads:
        taken: list = []
        per_segment.append(taken)
        new_cursor = cursor
        stopped = False
        damage_end = -1  # end of the last damaged range (a torn tail right after it is the same damage)
        for item in res.items:
            if type(item) is Record:
                if watermark is not None and item.ord_ns > watermark:
                    stopped = True
                    break
                rel = item.body_offset - cursor
                taken.append((item.ord_ns, sid, item, buf[rel : rel + item.body_len]))
                new_cursor = item.offset + item.length
            else:
                damage.append((name, item.offset, buf[item.offset - cursor : item.end - cursor], True))
                new_cursor = damage_end = item.end
        if not stopped and at_eof and res.incomplete and new_cursor < size and is_sealed(path):
            tail = read_at(path, new_cursor, size - new_cursor)
            damage.append((name, new_cursor, tail, new_cursor != damage_end))  # a tail right after damage is the same damage
            new_cursor = size
        if stopped or not at_eof:
            more = True
        if new_cursor != cursor:
            cursors.append((new_cursor, sid))
    runs = [run for run in per_segment if run]
    if len(runs) > 1:
        # Merge by order key, never reordering one segment's records: threads of one process take
        # their keys before they take the segment's lock, so keys may step back within a file.
        taken = list(heapq.merge(*runs, key=_ORDER_KEY))
    else:
        taken = runs[0] if runs else []
    return Scan(taken, cursors, damage, more and bool(cursors))


def index_rows(taken: Sequence, state_code: int, extra: tuple = ()) -> list:
    """INSERT parameters for scanned records (``extra``: values of columns after ``state``)."""
    return [
        (r.ord_ns, sid, r.offset, r.length, r.body_len, r.event_id, r.run_id, crc(r.run_id.encode()), r.seq,
         r.appended_at, state_code, *extra)
        for _, sid, r, _body in taken
    ]


def insert_rows(conn: sqlite3.Connection, rows: Sequence[tuple], extra_columns: str = "") -> None:
    """Insert index rows built by :func:`index_rows` (multi-row statements: half the cost of executemany)."""
    if not rows:
        return
    width = len(rows[0])
    marks = "(" + ",".join("?" * width) + ")"
    for start in range(0, len(rows), _INSERT_CHUNK):
        part = rows[start : start + _INSERT_CHUNK]
        conn.execute(
            "INSERT INTO events(ord, seg, off, len, body_len, event_id, run_id, run_key, seq, appended_at, state"
            f"{extra_columns}) VALUES " + ",".join([marks] * len(part)),
            [v for row in part for v in row],
        )


def ingest_pass(
    conn: sqlite3.Connection,
    segment_dir: str,
    quarantine_dir: str,
    *,
    chunk: int = DEFAULT_CHUNK,
    max_payload: int,
    body_cache: "BodyCache | None" = None,
) -> tuple[int, bool]:
    """Index one chunk of every segment as PENDING; returns (records added, whether more data is waiting).

    With a body_cache, the bodies just verified are kept for the lease that follows.
    """
    with state.Txn(conn):
        scan = scan_pass(conn, segment_dir, chunk=chunk, max_payload=max_payload)
        for name, offset, data, _counted in scan.damage:
            save_quarantined(quarantine_dir, name, offset, data)
        taken = scan.taken
        if taken:
            if body_cache is not None:
                for _, sid, r, body in taken:
                    body_cache.put(sid, r.offset, r.event_id, body)
            insert_rows(conn, index_rows(taken, state.PENDING))
            per_seg: dict[int, int] = {}
            for _, sid, _r, _body in taken:
                per_seg[sid] = per_seg.get(sid, 0) + 1
            conn.executemany(
                "UPDATE segments SET live = live + ?, indexed_total = indexed_total + ? WHERE id = ?",
                [(n, n, s) for s, n in per_seg.items()],
            )
            state.bump_counts(conn, {state.PENDING: (len(taken), sum(t[2].body_len for t in taken))})
        if scan.cursors:
            conn.executemany("UPDATE segments SET cursor = ? WHERE id = ?", scan.cursors)
        quarantined = sum(1 for d in scan.damage if d[3])
        if quarantined:
            state.add_counter(conn, "quarantined", quarantined)
        return len(taken), scan.more


def ingest(
    conn: sqlite3.Connection,
    segment_dir: str,
    quarantine_dir: str,
    *,
    max_payload: int,
    target_pending: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    body_cache: "BodyCache | None" = None,
) -> int:
    """Index new records until the index holds target_pending pending events (None: everything)."""
    total = 0
    while True:
        added, more = ingest_pass(
            conn, segment_dir, quarantine_dir, chunk=chunk, max_payload=max_payload, body_cache=body_cache
        )
        total += added
        if not more:
            return total
        if target_pending is not None and state.counts(conn)[state.PENDING][0] >= target_pending:
            return total


def count_unindexed(
    conn: sqlite3.Connection, segment_dir: str, memo: dict | None = None, *,
    owner: int | None = None, foreign: list | None = None,
) -> tuple[int, int, float | None]:
    """(records, bytes, oldest appended_at) not yet indexed; read-only.

    Only segments of ``owner`` count (see segments.list_segments; the names
    of others go to ``foreign``). Counts the valid records of each segment from its start (remembered in
    ``memo`` between calls, so a later call only reads what was appended since)
    and subtracts the records the index took from it.
    """
    memo = {} if memo is None else memo
    known = {name: (cursor, indexed) for name, cursor, indexed in conn.execute("SELECT name, cursor, indexed_total FROM segments")}
    records = 0
    nbytes = 0
    oldest: float | None = None
    present = set()
    for name, size in list_segments(segment_dir, owner=owner, foreign=foreign):
        present.add(name)
        cursor, indexed = known.get(name, (0, 0))
        if size <= cursor:
            continue
        nbytes += size - cursor
        path = os.path.join(segment_dir, name)
        walked_to, valid = memo.get(name, (0, 0))
        if walked_to > size:  # the file shrank (truncated): start over
            walked_to, valid = 0, 0
        try:
            while walked_to < size:
                buf = read_at(path, walked_to, min(DEFAULT_CHUNK, size - walked_to))
                res = decode_run(buf, walked_to)
                valid += sum(1 for item in res.items if type(item) is Record)
                if res.consumed == 0:
                    break
                walked_to += res.consumed
            head = decode_run(read_at(path, cursor, min(64 * 1024, size - cursor)), cursor).items
        except FileNotFoundError:
            continue
        memo[name] = (walked_to, valid)
        records += max(0, valid - indexed)
        first = next((i for i in head if type(i) is Record), None)
        if first is not None and (oldest is None or first.appended_at < oldest):
            oldest = first.appended_at
    for name in list(memo):
        if name not in present:
            del memo[name]
    return records, nbytes, oldest
