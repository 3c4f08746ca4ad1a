"""Index repair: set a damaged index aside in quarantine/ and rebuild it from the segments.

The segments are the record of every event; the index only says what became
of them. A rebuilt index is an empty one, seeded so that every epoch and row
id it hands out is above those of the damaged one (an old flusher is fenced,
an old ref or segment id names nothing), into which the segments are indexed
again as PENDING by the next lease (see docs/design.md, "Damage is contained").

The new image is built in memory and written over the damaged index with
SQLite's backup API when SQLite can still open the file (late page damage):
every process's connection sees the new index at once, and the damaged file
and its -wal/-shm are first *copied* to ``quarantine/``. When the file cannot
even be opened ("file is not a database"), the image is written to a fresh
file that atomically replaces it, and the damaged files are *moved* there.
Rebuilds of one spool are serialized by an flock on ``quarantine/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from typing import Iterator, NamedTuple

from ..errors import StoreError
from . import state
from .ingest import count_unindexed
from .layout import INDEX_SUFFIXES

log = logging.getLogger("aop_client.store")

_SUFFIXES = INDEX_SUFFIXES  # the index and its side files (-wal, -shm, -journal): layout owns the list
_COPY_CHUNK = 1 << 20


class Image(NamedTuple):
    """A seeded empty index in memory, and what it records."""

    conn: sqlite3.Connection
    rebuilds: int
    recovered: int


def file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at path (not following a link), or None when absent."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def exclusive(quarantine_dir: str) -> Iterator[None]:
    """Hold the spool's rebuild lock (an flock on the quarantine directory) for the block."""
    fd = os.open(quarantine_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def generation(conn: sqlite3.Connection | None) -> int | None:
    """How many times the index behind conn was rebuilt, or None when it cannot be read."""
    if conn is None:
        return None
    try:
        return state.meta_value(conn, "rebuilds")
    except (sqlite3.Error, ValueError):  # ValueError: UnicodeDecodeError of a damaged schema
        return None


def _salvage(conn: sqlite3.Connection | None, sql: str) -> int:
    """One integer read from the damaged index, 0 when it cannot be read."""
    if conn is None:
        return 0
    try:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row and row[0] is not None else 0
    except (sqlite3.Error, TypeError, ValueError):
        return 0


def fresh_image(damaged: sqlite3.Connection | None, segment_dir: str, *, now: float) -> Image:
    """An empty index seeded above everything the damaged one issued, with the rebuild recorded."""
    page_size = _salvage(damaged, "PRAGMA page_size") or 4096
    mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    mem.execute(f"PRAGMA page_size={int(page_size)}")
    state.create_schema(mem)
    recovered = count_unindexed(mem, segment_dir)[0]
    base = max(time.time_ns() // 1000,  # microseconds: above any id or epoch issued since an earlier rebuild
               _salvage(damaged, "SELECT value FROM meta WHERE key = 'epoch'") + 1,
               _salvage(damaged, "SELECT MAX(seq) FROM sqlite_sequence") + 1)
    rebuilds = _salvage(damaged, "SELECT value FROM meta WHERE key = 'rebuilds'") + 1
    state.seed_rebuilt(mem, base=base, rebuilds=rebuilds, at_ms=int(now * 1000), recovered=recovered)
    return Image(mem, rebuilds, recovered)


def _copy_file(src: str, dst: str) -> bool:
    """Copy src to a new 0600 file dst without following links; False (and no dst) on failure."""
    try:
        fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        os.close(fin)
        return False
    try:
        while chunk := os.read(fin, _COPY_CHUNK):
            os.write(fout, chunk)
        return True
    except OSError:  # e.g. a full disk: the forensic copy is best effort, the rebuild is not
        with contextlib.suppress(OSError):
            os.unlink(dst)
        return False
    finally:
        os.close(fin)
        os.close(fout)


def _owned_like(path: str, model: str) -> None:
    """As root (e.g. `sudo aop status` on a worker's spool), give a file we created the owner of ``model``."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        st = os.stat(model, follow_symlinks=False)
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def _aside_name(quarantine_dir: str, suffix: str, stamp: str) -> str:
    return os.path.join(quarantine_dir, f"index.sqlite3{suffix}.{stamp}.bad")


def rebuild_in_place(damaged: sqlite3.Connection, image: Image, index_path: str, quarantine_dir: str,
                     stamp: str) -> list[str]:
    """Copy the damaged files to quarantine/, then write the image over the index; returns the copies.

    Raises sqlite3.Error when SQLite cannot write over this file (then use :func:`rebuild_by_replacing`).
    """
    if damaged.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            damaged.execute("ROLLBACK")
    copies = [dst for suffix in _SUFFIXES
              if _copy_file(index_path + suffix, dst := _aside_name(quarantine_dir, suffix, stamp))]
    try:
        image.conn.backup(damaged)
    except sqlite3.Error:
        for copy in copies:  # the replacing path moves the originals there instead
            with contextlib.suppress(OSError):
                os.unlink(copy)
        raise
    damaged.execute("PRAGMA journal_mode=WAL")
    return copies


def rebuild_by_replacing(image: Image, index_path: str, quarantine_dir: str, stamp: str) -> list[str]:
    """Write the image to a new file that replaces the index atomically; the damaged files move to quarantine/."""
    temp = f"{index_path}.rebuild-{stamp}"
    os.close(os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
    _owned_like(temp, index_path)  # the spool's owner must still be able to open its index
    try:
        target = sqlite3.connect(temp)
        try:
            image.conn.backup(target)
        finally:
            target.close()
        moved = []
        for suffix in _SUFFIXES[1:]:  # the main file stays in place until the new one replaces it
            with contextlib.suppress(FileNotFoundError):
                os.replace(index_path + suffix, dst := _aside_name(quarantine_dir, suffix, stamp))
                moved.append(dst)
        aside = _aside_name(quarantine_dir, "", stamp)
        with contextlib.suppress(FileNotFoundError):
            os.link(index_path, aside, follow_symlinks=False)
            moved.insert(0, aside)
        os.replace(temp, index_path)
        return moved
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


class IndexRepair:
    """DiskStore's half that repairs its index (state: ``_conn``, ``_index_id``, ``_index_gen``, ``_rebuilt_at``)."""

    rebuild_interval = 30.0  # seconds: at most one index rebuild per handle in this long (a disk that keeps corrupting)

    def _repair_index(self, cause: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Index damage seen (see boundary.translated): follow another process's rebuild, or rebuild it here.

        A handle rebuilds at most once per ``rebuild_interval`` seconds; damage
        seen again sooner is a StoreError naming the cause. Logged once per rebuild.
        """
        with self._lock:
            with exclusive(self.quarantine_dir):
                conn = self._conn
                if file_id(self._index_path) == self._index_id:
                    gen = generation(conn)
                    if gen is None or gen == self._index_gen:  # still the damaged index we saw: rebuild it
                        waited = time.monotonic() - self._rebuilt_at
                        if waited < self.rebuild_interval:
                            raise StoreError(
                                f"store index {self._index_path!r} is damaged again {waited:.0f} s after this process "
                                f"rebuilt it; not rebuilding again for {self.rebuild_interval - waited:.0f} s: {cause}"
                            ) from cause
                        self._rebuilt_at = time.monotonic()
                        return self._rebuild_index(cause, conn)
                    self._forget_index(keep=conn)  # another process rebuilt it in place: same file, new content
                    self._index_gen = gen
                    return conn  # type: ignore[return-value]
                self._forget_index()  # another process replaced the file: open the new one
            return self._open_db()

    def _rebuild_index(self, cause: Exception, conn: sqlite3.Connection | None) -> sqlite3.Connection:
        """Set the damaged index aside in quarantine/ and rebuild it from the segments (caller holds both locks)."""
        stamp = f"{time.time_ns()}"
        image = fresh_image(conn, self.segment_dir, now=self._clock())
        try:
            try:
                if conn is None:
                    raise sqlite3.DatabaseError("the index cannot be opened")
                aside = rebuild_in_place(conn, image, self._index_path, self.quarantine_dir, stamp)
            except sqlite3.Error:
                self._forget_index()
                aside = rebuild_by_replacing(image, self._index_path, self.quarantine_dir, stamp)
                conn = state.open_index(self._index_path, fsync=self._fsync, wal_pages=self._reserve.wal_pages)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot rebuild store index {self._index_path!r} after {cause}: {e}") from e
        finally:
            image.conn.close()
        self._forget_index(keep=conn)
        self._index_id, self._index_gen = file_id(self._index_path), image.rebuilds
        log.warning(
            "aop_client store %s: the index was damaged (%s); set aside as %s and rebuilt from the segments: "
            "%d events recovered as pending (delivered and dead-lettered ones are sent again; the server dedupes)",
            self.directory, cause, ", ".join(os.path.basename(p) for p in aside) or "(no copy: could not write one)",
            image.recovered)
        return conn

    def _forget_index(self, keep: sqlite3.Connection | None = None) -> None:
        """Drop this handle's connection (unless it is ``keep``) and everything it cached from the old index."""
        if self._conn is not None and self._conn is not keep:
            try:
                self._conn.close()  # SQLite neither checkpoints nor deletes the WAL of a moved file
            except sqlite3.Error:
                pass
        self._conn = keep
        self._direct.reset()  # positions and leases were keyed by the old index's segment ids
        self._body_cache.clear()
        self._bodies.close()
        self._unindexed_memo.clear()
