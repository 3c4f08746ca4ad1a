"""The spool's space reserve: a preallocated file that keeps room for the index on a full disk.

On a full filesystem the segments have taken every block, and SQLite cannot
commit even the few pages that record a delivery, so nothing drains and no
space is ever freed. ``<store>/index.reserve`` (0600, opened ``O_NOFOLLOW``,
never through a link) holds ``size`` bytes for the index:

* ``release()`` truncates it when SQLite (or a drop-count flush) reports
  ``SQLITE_FULL``/``ENOSPC``: the freed blocks let the index commit the
  deliveries, the pressure reclaim and the drop counts;
* ``ensure()`` puts it back once ``2 * size`` bytes are free (so ``size`` stay
  free after it), at open and whenever the store checks its space;
* ``floor()`` is what emitters leave free: ``size`` plus the size of the
  index's write-ahead log (a checkpoint may need that much room in the main
  file before the log's blocks can be given back). Emitters stop writing
  segments below it (bounds.py looks at ``statvfs``, never per append), so
  our own appends leave the index its room beside the reserve;
* ``low()`` is the disk-pressure test: less than ``size + floor()`` free. The
  flusher side then keeps no delivered event and reclaims at once (see
  maintenance.py).

The size is 1 MiB, or 1/16 of a smaller filesystem. ``wal_pages`` bounds the
index's write-ahead log (its automatic checkpoint threshold) by 1/64 of the
filesystem, between WAL_PAGES_LOW and WAL_PAGES pages. The reclaim that gives
space back starts with a checkpoint, which may need as much room in the main
file as the WAL holds: with the bound that is at most a quarter of the reserve
on a filesystem of up to 16 MiB (the rest covers the transaction that crosses
the threshold), at most the reserve up to 64 MiB, so it fits even when another
writer has taken every other block; on larger filesystems the floor, which
counts the WAL, leaves it that room. (With the WAL bounded only by WAL_PAGES,
16 MiB, a 4 MiB filesystem's WAL grew to 1.4 MiB that no checkpoint could
copy out once the disk was full: the drain stopped for good.)

Everything here is best effort: a read-only spool, another owner or an
unsupported filesystem leaves the store working as it would without a reserve.
"""

from __future__ import annotations

import os
import stat

from .state import PAGE_BYTES, WAL_PAGES, WAL_PAGES_LOW

RESERVE_NAME = "index.reserve"
MAX_RESERVE = 1 << 20
MIN_RESERVE = 16 * 1024


class SpaceReserve:
    """The reserve file of one store directory (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, RESERVE_NAME)
        self.wal_path = os.path.join(directory, "index.sqlite3-wal")
        try:
            vfs = os.statvfs(directory)
            fs_size = vfs.f_blocks * vfs.f_frsize
        except OSError:
            fs_size = MAX_RESERVE * 16
        self.size = max(MIN_RESERVE, min(MAX_RESERVE, fs_size // 16)) // 4096 * 4096
        self.wal_pages = max(WAL_PAGES_LOW, min(WAL_PAGES, fs_size // 64 // PAGE_BYTES))

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still allocate on the spool's filesystem."""
        try:
            vfs = os.statvfs(self.directory)
        except OSError:
            return 1 << 62  # cannot tell: behave as if there were room
        return vfs.f_bavail * vfs.f_frsize

    def floor(self) -> int:
        """Bytes appends must leave free: the reserve's size plus the index's write-ahead log."""
        try:
            wal = os.lstat(self.wal_path).st_size
        except OSError:
            wal = 0
        return self.size + wal

    def low(self) -> bool:
        """True under disk pressure: less than size + floor() bytes are free."""
        return self.free_bytes() < self.size + self.floor()

    def present(self) -> bool:
        """True when the reserve file holds its full size."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return st.st_size >= self.size

    def _open(self) -> int | None:
        try:
            if os.stat(self.directory).st_uid != os.geteuid():
                return None  # someone else's spool (root inspecting it): never create files there
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError:
            return None  # a link planted at the path (ELOOP), a read-only spool: no reserve
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
            os.close(fd)  # planted by someone else: never write to it
            return None
        return fd

    def ensure(self) -> bool:
        """Create (or refill) the reserve when 2 * size bytes are free; True when it is in place."""
        if self.present():
            return True
        if self.free_bytes() < 2 * self.size:
            return False
        fd = self._open()
        if fd is None:
            return False
        try:
            _allocate(fd, self.size)
            return True
        except OSError:
            try:
                os.ftruncate(fd, 0)  # never leave a partial reserve holding blocks
            except OSError:
                pass
            return False
        finally:
            os.close(fd)

    def release(self) -> bool:
        """Give the reserve's blocks back to the filesystem; True when that freed anything."""
        try:
            if os.lstat(self.path).st_size == 0:
                return False
        except OSError:
            return False
        fd = self._open()
        if fd is None:
            return False
        try:
            os.ftruncate(fd, 0)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)


def _allocate(fd: int, size: int) -> None:
    """Give the file ``size`` bytes of real blocks (posix_fallocate, or zeros where it is missing)."""
    fallocate = getattr(os, "posix_fallocate", None)  # not on macOS
    if fallocate is not None:
        fallocate(fd, 0, size)
        return
    zeros = bytes(65536)
    written = 0
    while written < size:
        written += os.pwrite(fd, zeros[: size - written], written)
