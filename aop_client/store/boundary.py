"""The error boundary of the store: SQLite and OS errors leave public methods as StoreError."""

from __future__ import annotations

import functools
import sqlite3
from typing import Any, Callable

from ..errors import StoreError
from .state import is_disk_full


def translated(method: Callable) -> Callable:
    """Turn SQLite/OS errors escaping a store method into StoreError naming the method and directory."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: object, **kwargs: object) -> object:
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as e:
            if is_disk_full(e) and hasattr(self, "_index_full"):
                self._index_full()  # free the space reserve: the next call can commit (see reserve.py)
            raise StoreError(f"{method.__name__} on store {self.directory!r} failed: {e}") from e

    return wrapper
