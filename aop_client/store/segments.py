"""Per-process append-only segment files: the writer (hot path) and the reader helpers.

Each process (and each store handle in it) appends to its own segment file,
created with O_EXCL|O_APPEND, mode 0600, and held under an exclusive flock for
as long as the writer may append to it. A segment whose flock can be taken is
*sealed*: no live writer will ever add to it again (writers never reopen a
segment), so an incomplete tail in it is a torn write to quarantine, not a
record in progress. One ``os.write`` per record; in fsync mode a group commit
lets one thread's ``fdatasync`` cover every record written before it started.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import sys
import threading
import time

from .. import forking
from .layout import NotOwnedError, open_owned, owned_file

SEGMENT_SUFFIX = ".seg"
_last_ord = 0
_ord_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A fork taken while another thread held the lock must not deadlock the child."""
    global _ord_lock
    _ord_lock = threading.Lock()


forking.register(forking.STORE, sys.modules[__name__])


def next_ord() -> int:
    """A host-wide append order key: wall-clock ns, strictly increasing within this process."""
    global _last_ord
    now = time.time_ns()
    with _ord_lock:
        if now <= _last_ord:
            now = _last_ord + 1
        _last_ord = now
    return now


def fsync_directory(path: str) -> None:
    """fsync a directory so a file created or removed in it survives power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """Appends framed records to this process's own segment; rotates by size; fork-aware."""

    def __init__(self, segment_dir: str, *, fsync: bool, max_segment_bytes: int) -> None:
        self.segment_dir = segment_dir
        self.fsync = fsync
        self.max_segment_bytes = max_segment_bytes
        self._reset()

    def _reset(self) -> None:
        self._fork_gen = forking.generation
        self._lock = threading.Lock()
        self._sync_cond = threading.Condition(threading.Lock())
        self._fd: int | None = None
        self._retired: list[int] = []
        self._size = 0
        self._written = 0
        self._synced = 0
        self._syncing = False
        self.name: str | None = None

    def after_fork_in_child(self) -> None:
        """Drop the parent's segment (close our copy of its fd) and start fresh on next write."""
        for fd in [self._fd, *self._retired]:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._reset()

    def _open_new(self) -> None:
        """Create and lock a fresh segment (caller holds self._lock)."""
        name = f"{next_ord():020d}-{os.getpid()}-{secrets.token_hex(4)}{SEGMENT_SUFFIX}"
        path = os.path.join(self.segment_dir, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.fsync:
                fsync_directory(self.segment_dir)
        except BaseException:
            os.close(fd)
            raise
        if self._fd is not None:
            if self.fsync:
                os.fdatasync(self._fd)
                self._synced = self._written
            self._retired.append(self._fd)  # fsync mode: a group-commit leader may still use it
            while len(self._retired) > (2 if self.fsync else 0):
                os.close(self._retired.pop(0))
        self._fd = fd
        self._size = 0
        self.name = name

    def write(self, record: bytes) -> None:
        """Append one record; raises OSError (e.g. ENOSPC) with nothing partial left behind."""
        if self._fork_gen != forking.generation:
            self.after_fork_in_child()
        with self._lock:
            if self._fd is None or self._size >= self.max_segment_bytes:
                self._open_new()
            fd = self._fd
            try:
                n = os.write(fd, record)
            except OSError:
                self._truncate_to_known_size()
                raise
            if n != len(record):
                self._truncate_to_known_size()
                raise OSError(errno.ENOSPC, f"short write to segment {self.name}: {n} of {len(record)} bytes")
            self._size += n
            self._written += 1
            ticket = self._written
        if self.fsync:
            self._group_commit(ticket)

    def _truncate_to_known_size(self) -> None:
        """Remove a partial record after a failed write (caller holds self._lock)."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            # Cannot repair this segment: abandon it; the reader quarantines its torn tail.
            self._retired.append(self._fd)
            self._fd = None

    def _group_commit(self, ticket: int) -> None:
        """Wait until an fdatasync that started after our write has completed (one per group)."""
        cond = self._sync_cond
        with cond:
            while self._synced < ticket:
                if self._syncing:
                    cond.wait()
                    continue
                self._syncing = True
                target = self._written
                fd = self._fd
                cond.release()
                try:
                    if fd is not None:
                        os.fdatasync(fd)
                finally:
                    cond.acquire()
                    self._syncing = False
                    cond.notify_all()
                self._synced = max(self._synced, target)

    def seal(self) -> None:
        """Close a non-empty current segment so it is sealed (reclaim may unlink it once settled).

        Called when a write met a full disk: a segment held open by its writer
        can never be unlinked, so the space it holds would stay taken after its
        events are delivered. The next write starts a new segment.
        """
        if self._fork_gen != forking.generation:
            return
        with self._lock:
            if self._fd is None or self._size == 0:
                return
            with self._sync_cond:
                while self._syncing:  # a group-commit leader uses the fd outside self._lock
                    self._sync_cond.wait()
                fds, self._fd, self._retired = [*self._retired, self._fd], None, []
                if self.fsync:
                    for fd in fds:
                        try:
                            os.fdatasync(fd)
                        except OSError:
                            pass
                    self._synced = self._written
                    self._sync_cond.notify_all()
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        """Close the segment (which seals it); safe to call twice."""
        if self._fork_gen != forking.generation:
            self.after_fork_in_child()
            return
        with self._lock:
            for fd in [self._fd, *self._retired]:
                if fd is not None:
                    try:
                        if self.fsync:
                            os.fdatasync(fd)
                        os.close(fd)
                    except OSError:
                        pass
            self._fd = None
            self._retired = []


def list_segments(segment_dir: str, *, owner: int | None = None, foreign: list | None = None) -> list[tuple[str, int]]:
    """(name, size) of every segment file of ours, oldest first (names sort by creation time).

    The one gate of every reader of segments (ingest, direct leases, counts,
    the size gauge): an entry that is not a regular file of ``owner`` (default
    the current euid; see layout.owned_file) is left out, and its name is
    appended to ``foreign`` when given. Costs no syscall beyond the listing's lstat.
    """
    out = []
    owner = os.geteuid() if owner is None else owner
    with os.scandir(segment_dir) as it:
        for entry in it:
            if entry.name.endswith(SEGMENT_SUFFIX):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if owned_file(st, owner):
                    out.append((entry.name, st.st_size))
                elif foreign is not None:
                    foreign.append(entry.name)
    out.sort()
    return out


def open_segment(path: str, owner: int | None = None) -> int:
    """Open a segment for reading (layout.open_owned); FileNotFoundError unless it is a regular file of ours.

    The one open of a segment by path (readers, the seal probe, read_at): no link is
    followed, a FIFO swapped in never blocks, a file of another uid is never read.
    """
    try:
        return open_owned(path, owner=owner)
    except NotOwnedError:
        raise FileNotFoundError(errno.ENOENT, "not a segment file of ours (ignored)", path) from None


def is_sealed(path: str, owner: int | None = None) -> bool:
    """True when no writer holds the segment's flock (it will never grow again); True for a missing or foreign one."""
    try:
        fd = open_segment(path, owner)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops our probe lock
    return True


def read_at(path: str, offset: int, length: int) -> bytes:
    """Read up to length bytes of a segment at offset (FileNotFoundError when gone or not ours)."""
    fd = open_segment(path)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
