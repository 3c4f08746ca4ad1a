"""A spool's backlog and writers, looked at without indexing: the checks made before a spool is bound, adopted or moved.

* :func:`sample_bodies` / :func:`foreign_signatures`: a sample of event bodies read
  straight from the oldest and newest segment files (``store.records`` decoding, no
  index, no ingest), and how many of them do not verify under a salt;
* :func:`live_writers` / :func:`hold_quiet`: whether another process still writes
  to the spool (a segment not sealed) or is its flusher, taken as the flusher lock.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import orjson

from .election import FlusherElection
from .errors import SignatureError
from .signing import verify_event
from .store.records import Record, decode_run
from .store.segments import is_sealed, list_segments, read_at

__all__ = ["SAMPLE", "sample_bodies", "foreign_signatures", "live_writers", "hold_quiet"]

SAMPLE = 64  # events whose signatures are checked before binding or adopting
_SAMPLE_READ = 4 << 20  # bytes read from the start of a segment to sample its records


def sample_bodies(segment_dir: str, limit: int = SAMPLE) -> list[bytes]:
    """Up to ``limit`` event bodies read straight from the oldest and the newest segments (nothing indexed).

    The first records of the oldest segments and the last ones of the newest segments
    (of each, its first ``_SAMPLE_READ`` bytes): a cheap look at a backlog, made before
    a spool is bound, adopted or moved. Delivered events still kept for retention count too.
    """
    try:
        segments = list_segments(segment_dir)
    except FileNotFoundError:
        return []
    half = max(1, limit // 2)

    def records(name: str, size: int) -> list[bytes]:
        try:
            buf = read_at(os.path.join(segment_dir, name), 0, min(size, _SAMPLE_READ))
        except FileNotFoundError:
            return []
        return [buf[r.body_offset:r.body_offset + r.body_len]
                for r in decode_run(buf).items if type(r) is Record]

    oldest: list[bytes] = []
    used = 0
    while used < len(segments) and len(oldest) < half:  # the oldest segments, forward
        oldest += records(*segments[used])
        used += 1
    newest: list[bytes] = []
    last = len(segments)
    while last > used and len(newest) < half:  # the newest ones not read yet, backward
        last -= 1
        newest = records(*segments[last]) + newest
    if last == used:  # everything was read: the first and the last records of it all
        both = oldest + newest
        return both if len(both) <= 2 * half else both[:half] + both[-half:]
    return oldest[:half] + newest[-half:]


def foreign_signatures(segment_dir: str, org_salt_key: Optional[str], limit: int = SAMPLE) -> tuple[int, int]:
    """(sampled, not ours): how many sampled events of the spool do not verify under ``org_salt_key``.

    Without a salt an event is ours when unsigned; with one, when its ``sig`` verifies.
    """
    bodies = sample_bodies(segment_dir, limit)
    foreign = 0
    for body in bodies:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            foreign += 1
            continue
        if org_salt_key is None:
            foreign += isinstance(value, dict) and "sig" in value
            continue
        try:
            verify_event(value, org_salt_key)
        except SignatureError:
            foreign += 1
    return len(bodies), foreign


def live_writers(segment_dir: str) -> int:
    """How many segments of the spool a running process still holds open for writing (not sealed)."""
    try:
        segments = list_segments(segment_dir)
    except FileNotFoundError:
        return 0
    return sum(not is_sealed(os.path.join(segment_dir, name)) for name, _size in segments)


def hold_quiet(directory: str, *, create: bool = True) -> tuple[Optional[Any], Optional[str]]:
    """(the spool's flusher election, won, or None; why not): exclusive while nobody else sends or writes.

    Taken before a spool is moved or rebound: the flusher lock (no flusher sends
    meanwhile, none starts) and no live writer (a process still appending to its
    segment). The caller closes the election when done.
    """
    election = FlusherElection(directory, create=create)
    try:
        if not election.try_acquire():
            holder = election.holder() or {}
            election.close()
            if holder.get("pid") is None:
                return None, "another process holds its flusher lock"
            return None, f"process {holder.get('pid')} on {holder.get('host')} is its flusher"
    except OSError as e:  # StoreError too: a planted lock file, a spool renamed away meanwhile
        election.close()
        return None, f"its flusher lock cannot be taken ({e})"
    writers = live_writers(os.path.join(directory, "segments"))
    if writers:
        election.close()
        return None, f"{writers} of its segments are still open for writing by running processes"
    return election, None
