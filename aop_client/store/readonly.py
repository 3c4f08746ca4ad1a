"""The read-only inspection open of a spool: what ``sudo aop status`` uses on another user's spool.

Root may inspect a worker's spool but must not write in it: a file root
created there (an index, a ``-wal``, a lock, a segment) would belong to root,
and the worker could no longer use its own spool. :class:`ReadOnlyStore`
therefore creates, chmods, locks and writes nothing under the directory:

* :func:`layout.prepare_directory` runs with ``read_only=True`` (checks, no mkdir/chmod);
* SQLite never opens the spool's index: :func:`snapshot_index` reads
  ``index.sqlite3`` and its ``-wal`` (``O_NOFOLLOW``, regular files of the
  spool's owner only) into a private temporary directory and opens that copy,
  ``query_only``. The ``-wal`` header is read before and after the database
  file, so a checkpoint that restarted the log in between is seen and the read
  retried; a torn last frame is ignored by SQLite's own WAL checksums;
* segment files count only when the spool's owner owns them (``owner_uid``);
* every public method of DiskStore but ``stats()``, ``index_damage()`` and ``close()`` raises
  :class:`StoreError`; damage met in the private copy is reported, never repaired.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
import threading
import time

from ..errors import StoreError
from . import state
from .direct_lease import DirectLeases
from .disk_store import DiskStore
from .inspection import FOREIGN_INDEX_COUNTER, InspectionMixin
from .layout import INDEX_NAME, NotOwnedError, describe, prepare_directory, read_owned_file

_WAL_HEADER = 32
_ATTEMPTS = 20
_FOREIGN = object()


def _read_file(path: str, owner: int, limit: int | None = None) -> bytes | object | None:
    """The bytes of a regular file of ``owner`` (None when missing, _FOREIGN when someone else's)."""
    try:
        return read_owned_file(path, owner=owner, limit=limit)
    except FileNotFoundError:
        return None
    except NotOwnedError:
        return _FOREIGN
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError(f"refusing index {describe(path, os.lstat(path))}: not followed") from None
        raise


def snapshot_index(index_path: str, into: str, owner: int) -> sqlite3.Connection:
    """A query-only connection to a consistent private copy of the index (``into`` must be a private directory)."""
    wal_path = index_path + "-wal"
    for _ in range(_ATTEMPTS):
        head = _read_file(wal_path, owner, _WAL_HEADER)
        db = _read_file(index_path, owner)
        wal = _read_file(wal_path, owner)
        if isinstance(wal, bytes) and isinstance(head, bytes) and wal[:_WAL_HEADER] == head or wal is head:
            break
        time.sleep(0.01)  # a checkpoint restarted the log meanwhile: read again
    else:
        raise StoreError(f"the index {index_path!r} kept changing while it was read; try again")
    foreign = sum(1 for data in (db, wal) if data is _FOREIGN)
    copy = os.path.join(into, INDEX_NAME)
    if isinstance(db, bytes):
        for path, data in ((copy, db), (copy + "-wal", wal if isinstance(wal, bytes) else b"")):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
    conn = state.open_index(copy, fsync=False)
    if foreign:
        with state.Txn(conn):
            state.add_counter(conn, FOREIGN_INDEX_COUNTER, foreign)
    conn.execute("PRAGMA query_only=1")
    return conn


def _refuses(name: str):
    def method(self: "ReadOnlyStore", *args: object, **kwargs: object) -> None:
        raise StoreError(f"{name} refused: store {self.directory!r} is open read-only (inspection)")

    method.__name__ = name
    method.__doc__ = f"Refused: a read-only store does not {name}."
    return method


class ReadOnlyStore(InspectionMixin):
    """A spool opened for inspection only: ``stats()`` works; nothing under the directory is ever written."""

    read_only = True

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory, self.segment_dir, self.quarantine_dir = prepare_directory(directory, read_only=True)
        try:
            self.owner_uid = os.stat(self.directory).st_uid
        except OSError as e:
            raise StoreError(f"cannot inspect store {self.directory!r}: {e}") from e
        self._clock = time.time
        self._lock = threading.RLock()
        self._drops: dict[str, int] = {}
        self._unindexed_memo: dict = {}
        self._direct = DirectLeases(self.segment_dir)
        self._private = tempfile.mkdtemp(prefix="aop-inspect-")
        try:
            self._conn: sqlite3.Connection | None = snapshot_index(
                os.path.join(self.directory, INDEX_NAME), self._private, self.owner_uid)
        except (sqlite3.Error, OSError) as e:
            shutil.rmtree(self._private, ignore_errors=True)
            raise StoreError(f"cannot read the index of store {self.directory!r}: {e}") from e
        except BaseException:
            shutil.rmtree(self._private, ignore_errors=True)
            raise

    def __repr__(self) -> str:
        return f"ReadOnlyStore({self.directory!r})"

    def _check_pid(self) -> None:
        pass

    def _flush_drops(self) -> None:
        pass  # never drops anything: nothing to write

    def _repair_index(self, cause: BaseException) -> sqlite3.Connection:
        """Damage in the private copy is reported, never repaired: a repair would write into the spool."""
        raise StoreError(f"store {self.directory!r}: the index is damaged ({cause}); read-only inspection "
                         "does not repair it (the spool's owner repairs it on its next open)") from cause

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self.directory!r} is closed")
        return self._conn

    def close(self) -> None:
        """Forget the private copy of the index; safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            shutil.rmtree(self._private, ignore_errors=True)

    def __enter__(self) -> "ReadOnlyStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: What the inspection view does; every other public method of DiskStore (all of which write, ingest or
#: read bodies through the index's repair path) is refused, including any added later.
READ_ONLY_METHODS = frozenset({"stats", "index_damage", "close"})
for _name in dir(DiskStore):
    if not _name.startswith("_") and _name not in READ_ONLY_METHODS and callable(getattr(DiskStore, _name)):
        setattr(ReadOnlyStore, _name, _refuses(_name))
del _name
