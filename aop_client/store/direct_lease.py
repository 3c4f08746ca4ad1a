"""Direct leases: the elected flusher takes records straight from the segments, past the index cursors.

The index-row life of an event (insert as PENDING, update to IN_FLIGHT, update
to DELIVERED, delete) costs about 25 us of SQLite per event, more than the whole
drain budget. So when no indexed event is pending, a fenced lease reads the
records past each segment's index cursor (:func:`ingest.scan_pass`, from this
handle's own read positions) and hands them out as a *group* whose refs are
negative ints, kept in this process's memory only.

* When the flusher acks exactly the oldest outstanding group(s) (the common,
  all-accepted batch), one transaction advances the segment cursors past them,
  inserting them as DELIVERED rows only when delivered events are retained.
* Anything else (a partial settle, a release, dead letters, this process
  needing the index for ingest, or another process having indexed past a
  cursor meanwhile) first *materializes* every outstanding group: rows are
  inserted IN_FLIGHT (or, for records another process indexed meanwhile, looked
  up), the cursors advance, and the ordinary row-based path then applies.

Crash safety is the index's: a cursor moves only in the transaction that
records the outcome, so a killed flusher's direct leases are simply records
past the cursor again, pending for the next flusher. A cursor only ever moves
over a contiguous run of records starting at it, so nothing can be skipped.
"""

from __future__ import annotations

import sqlite3
from typing import Sequence
from zlib import crc32

from . import state
from .api import StoredEvent
from .ingest import DEFAULT_CHUNK, index_rows, insert_rows, scan_pass


class _Group:
    """One direct lease: its records (oldest first) and the refs -lo .. -(lo + n - 1)."""

    __slots__ = ("lo", "taken", "until", "first", "ends", "contiguous")

    def __init__(self, lo: int, taken: list, until: float) -> None:
        self.lo = lo
        self.until = until  # the lease expires then, as an indexed lease would
        self.taken = taken  # (ord_ns, segment id, Record, body)
        self.first: dict[int, int] = {}  # segment id -> offset of the group's first record there
        self.ends: dict[int, int] = {}  # segment id -> end of the group's last record there
        self.contiguous = True  # in every segment, each record starts where the one before it ended
        first, ends = self.first, self.ends
        for _, sid, record, _body in taken:
            end = ends.get(sid)
            if end is None:
                first[sid] = record.offset
            elif record.offset != end:
                self.contiguous = False
            ends[sid] = record.offset + record.length


class DirectLeases:
    """This handle's direct leases (see the module docstring); every method runs inside the caller's txn."""

    def __init__(self, segment_dir: str, *, chunk: int = DEFAULT_CHUNK) -> None:
        self.segment_dir = segment_dir
        self.chunk = chunk
        self._next_ref = 1
        self.ref_rows: dict[int, int] = {}  # direct ref -> index row id, after materialization
        self.epoch: int | None = None
        self._clear()

    def _clear(self) -> None:
        self._groups: list[_Group] = []
        self._ahead: list = []  # scanned records not leased yet, in append order
        self._ahead_at = 0
        self._read_pos: dict[int, int] = {}  # segment id -> where the next scan starts
        self._durable: dict[int, int] = {}  # segment id -> the index cursor this handle last saw or wrote

    def reset(self, epoch: int | None = None) -> None:
        """Forget everything (a new epoch, or the index changed under us): nothing held here was persisted."""
        self._clear()
        self.ref_rows.clear()
        self.epoch = epoch

    def outstanding(self, conn: sqlite3.Connection, epoch: int) -> int:
        """Events leased directly under ``epoch`` (the store's current one), unsettled and still unindexed."""
        if epoch != self.epoch or not self._groups:
            return 0
        cursors = self._cursors(conn)
        if any(cursors[sid] != at for sid, at in self._durable.items() if sid in cursors):
            return 0  # another process indexed past us: its rows count them
        return sum(len(g.taken) for g in self._groups)

    def refs_outstanding(self) -> set[int]:
        """The refs of every unsettled direct lease (for tests and diagnostics)."""
        return {-(g.lo + i) for g in self._groups for i in range(len(g.taken))}

    @property
    def active(self) -> bool:
        """True while groups are outstanding or scanned records are buffered."""
        return bool(self._groups) or self._ahead_at < len(self._ahead)

    def _cursors(self, conn: sqlite3.Connection) -> dict[int, int]:
        return dict(conn.execute("SELECT id, cursor FROM segments"))

    def lease(self, conn: sqlite3.Connection, epoch: int, max_events: int, max_bytes: int, *,
              max_payload: int, now: float, until: float) -> list[StoredEvent] | None:
        """Lease up to max_events/max_bytes records past the cursors; None when the indexed path must be used.

        Call only when the index holds no pending event, after the epoch check.
        None means: the oldest group's lease expired, another process indexed
        past a cursor while groups are outstanding, or a scan met damage (the
        ingest path quarantines it).
        """
        if epoch != self.epoch:
            self.reset(epoch)
        if self._groups and self._groups[0].until < now:
            return None
        cursors = self._cursors(conn)
        for sid in [sid for sid in self._durable if sid not in cursors]:
            del self._durable[sid]  # reclaimed: fully settled and unlinked, nothing more to read there
        if any(cursors[sid] != at for sid, at in self._durable.items()):
            if self._groups:
                return None
            self._clear()  # only buffered reads are stale: start again from the cursors
        ahead = self._ahead
        while len(ahead) - self._ahead_at < max_events:
            scan = scan_pass(conn, self.segment_dir, positions=self._read_pos, chunk=self.chunk,
                             max_payload=max_payload)
            if scan.damage:
                return None
            for position, sid in scan.cursors:
                self._durable.setdefault(sid, cursors.get(sid, 0))
                self._read_pos[sid] = position
            ahead.extend(scan.taken)
            if not scan.more:
                break
        picked: list = []
        total = 0
        at = self._ahead_at
        while at < len(ahead) and len(picked) < max_events:
            item = ahead[at]
            size = item[2].body_len
            if picked and total + size > max_bytes:
                break
            picked.append(item)
            total += size
            at += 1
        if at == len(ahead):  # all consumed: hold no record (nor its body) beyond its group
            ahead.clear()
            at = 0
        elif at > 4096 and at * 2 > len(ahead):
            del ahead[:at]
            at = 0
        self._ahead_at = at
        if not picked:
            return []
        lo = self._next_ref
        self._next_ref += len(picked)
        self._groups.append(_Group(lo, picked, until))
        new = tuple.__new__  # a StoredEvent without the Python-level NamedTuple __new__
        return [new(StoredEvent, (-(lo + i), r.event_id, r.run_id, r.seq, body, 0))
                for i, (_, _, r, body) in enumerate(picked)]

    def try_ack(self, conn: sqlite3.Connection, refs: Sequence[int], *, done_at: float, retain: bool) -> bool:
        """Settle refs as delivered when they are exactly the oldest outstanding group(s); False otherwise."""
        groups = self._groups
        if not groups or not refs:
            return False
        n = len(refs)
        lo = groups[0].lo
        k = covered = 0
        while k < len(groups) and covered < n:
            covered += len(groups[k].taken)
            k += 1
        if covered != n or -max(refs) != lo or -min(refs) != lo + n - 1 or len(set(refs)) != n:
            return False
        if not all(group.contiguous for group in groups[:k]):
            return False  # a cursor may only move over a gapless run of records
        cursors = self._cursors(conn)
        durable = dict(self._durable)
        for group in groups[:k]:
            for sid, first in group.first.items():
                if cursors.get(sid, 0) != self._durable.get(sid) or durable[sid] != first:
                    return False  # another process indexed past us, or a gap: the row path decides
                durable[sid] = group.ends[sid]
        taken = [item for group in groups[:k] for item in group.taken]
        per_seg: dict[int, int] = {}
        for _, sid, _r, _body in taken:
            per_seg[sid] = per_seg.get(sid, 0) + 1
        live = 1 if retain else 0
        conn.executemany(
            "UPDATE segments SET cursor = ?, indexed_total = indexed_total + ?, live = live + ? WHERE id = ?",
            [(durable[sid], count, live * count, sid) for sid, count in per_seg.items()],
        )
        if retain:
            insert_rows(conn, index_rows(taken, state.DELIVERED, (done_at,)), ", done_at")
            state.bump_counts(conn, {state.DELIVERED: (len(taken), sum(t[2].body_len for t in taken))})
        self._durable = durable
        del groups[:k]
        return True

    def materialize(self, conn: sqlite3.Connection) -> None:
        """Give every outstanding group index rows (IN_FLIGHT until its lease ends), map refs, start over."""
        cursors = self._cursors(conn)
        per_seg: dict[int, list] = {}
        for group in self._groups:
            for i, item in enumerate(group.taken):
                per_seg.setdefault(item[1], []).append((-(group.lo + i), item, group.until))
        inserts: list = []
        for sid, items in per_seg.items():
            if sid not in cursors:
                continue  # the segment was settled and reclaimed by others: nothing of it is left to move
            cursor = end = cursors[sid]
            fresh = []
            for ref, item, until in sorted(items, key=lambda entry: entry[1][2].offset):
                record = item[2]
                if record.offset < cursor:  # indexed by another process meanwhile: find its row
                    row = conn.execute(
                        "SELECT id FROM events WHERE run_key = ? AND seq = ? AND seg = ? AND off = ?",
                        (crc32(record.run_id.encode()), record.seq, sid, record.offset),
                    ).fetchone()
                    if row is not None:
                        self.ref_rows[ref] = row[0]
                elif record.offset == end:  # the gapless run from the cursor: safe to move it over
                    fresh.append((ref, item, until))
                    end = record.offset + record.length
                # else: a gap before it (a record not leased yet): it stays past the cursor, pending for ingest
            if fresh:
                inserts.extend(fresh)
                conn.execute(
                    "UPDATE segments SET cursor = ?, live = live + ?, indexed_total = indexed_total + ? WHERE id = ?",
                    (end, len(fresh), len(fresh), sid),
                )
        if inserts:
            before = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            rows = [row for _, item, until in inserts for row in index_rows([item], state.IN_FLIGHT, (until,))]
            insert_rows(conn, rows, ", lease_until")
            row_ids = {(seg, off): rid for rid, seg, off in conn.execute(
                "SELECT id, seg, off FROM events WHERE id > ?", (before,))}
            for ref, item, _until in inserts:
                self.ref_rows[ref] = row_ids[(item[1], item[2].offset)]
            state.bump_counts(conn, {state.IN_FLIGHT: (len(inserts), sum(item[2].body_len for _, item, _u in inserts))})
        self._clear()

    def take_rows(self, refs: Sequence[int]) -> list[int]:
        """Row ids for refs (direct refs through their materialized rows; unknown ones dropped)."""
        out = []
        for ref in refs:
            if ref >= 0:
                out.append(ref)
            else:
                row = self.ref_rows.pop(ref, None)
                if row is not None:
                    out.append(row)
        return out
