"""The error boundary of the store: SQLite and OS errors leave public methods as StoreError.

It is also the one place where index damage is repaired: every index call of a
store goes through a :func:`translated` method, so a corruption error from
SQLite (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``: "database disk image is
malformed", "file is not a database"), whenever it happens, makes the store
rebuild its index from the segments (``store._repair_index``, bounded there)
and run the call once more on the new index.
"""

from __future__ import annotations

import errno
import functools
import sqlite3
from typing import Any, Callable

from ..errors import StoreError

DISK_FULL_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EFBIG))
_CORRUPTION_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB (primary codes; extended ones share the low byte)
_CORRUPTION_TEXT = ("malformed", "not a database", "corrupt", "could not decode to utf-8")  # we store only UTF-8


class IndexDamage(sqlite3.DatabaseError):
    """Damage SQLite cannot see: an index row whose values no intact record (or no sane value) agrees with."""


def is_corruption(error: BaseException | None) -> bool:
    """True for SQLite errors that mean the index file is damaged (not busy, locked, full or read-only)."""
    if isinstance(error, (IndexDamage, UnicodeDecodeError)):  # the index holds only UTF-8 we wrote
        return True
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _CORRUPTION_CODES:
        return True
    text = str(error).lower()
    return any(word in text for word in _CORRUPTION_TEXT)


def header_damaged(path: str) -> bool:
    """True when the index file's header is not one SQLite writes (then "readonly" means damage, not a mode)."""
    try:
        with open(path, "rb") as f:  # read only; a link here was refused when the store opened
            head = f.read(100)
    except OSError:
        return False
    return len(head) == 100 and (head[:16] != b"SQLite format 3\x00" or head[18] not in (1, 2) or head[19] not in (1, 2))


def damage_seen(store: Any, error: BaseException) -> bool:
    """A corruption error, or a read-only error caused by a damaged header (its file-format bytes)."""
    if is_corruption(error):
        return True
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == 8 and header_damaged(store._index_path)  # SQLITE_READONLY


def damage_of(error: BaseException) -> BaseException | None:
    """The corruption error behind a StoreError (walking ``__cause__``), or None."""
    seen = 0
    while error is not None and seen < 8:
        if is_corruption(error):
            return error
        error, seen = error.__cause__, seen + 1  # type: ignore[assignment]
    return None


def is_disk_full(error: BaseException | None) -> bool:
    """True when error (or what caused it) is SQLITE_FULL or ENOSPC/EDQUOT/EFBIG."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, sqlite3.Error) and (
                getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                or "database or disk is full" in str(error)):
            return True
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def translated(method: Callable) -> Callable:
    """Turn SQLite/OS errors escaping a store method into StoreError naming the method and directory.

    A corruption error first repairs the index (``self._repair_index(error)``,
    which raises StoreError when a rebuild is not allowed now) and the call
    runs once more; a second failure is translated, never repaired again here.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: object, **kwargs: object) -> object:
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except (sqlite3.Error, OSError, UnicodeDecodeError) as e:
            if not damage_seen(self, e):
                if is_disk_full(e) and hasattr(self, "_index_full"):
                    self._index_full()  # free the space reserve: the next call can commit (see reserve.py)
                raise StoreError(f"{method.__name__} on store {self.directory!r} failed: {e}") from e
            self._repair_index(e)
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except (sqlite3.Error, OSError, UnicodeDecodeError) as e:
            if is_disk_full(e) and hasattr(self, "_index_full"):
                self._index_full()
            raise StoreError(f"{method.__name__} on store {self.directory!r} failed after the index was rebuilt: {e}") from e

    return wrapper
