"""Fork safety for SQLite: no fork() happens while a thread of ours is inside an SQLite call.

SQLite's process-wide mutexes are copied into a forked child in whatever state
they are; a child forked while another thread was inside SQLite would block
forever on its first SQLite call. Every SQLite call of a DiskStore holds the
store's lock, so holding all of them across fork() makes the fork happen
between calls.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

_LIVE_STORES: "weakref.WeakSet[Any]" = weakref.WeakSet()
_HELD_AT_FORK: list = []


def _quiesce_before_fork() -> None:
    """Hold every live store's lock across fork(), so no thread of ours is inside SQLite.

    SQLite's process-wide mutexes are copied into a forked child in whatever state
    they are; a child forked while another thread was inside SQLite would block
    forever on its first SQLite call. Every SQLite call of the store holds the
    store's lock, so holding all of them makes the fork happen between calls.
    """
    pid = os.getpid()
    for store in list(_LIVE_STORES):
        if getattr(store, "_pid", None) == pid and not getattr(store, "_closed", False):
            store._lock.acquire()
            _HELD_AT_FORK.append(store._lock)


def _resume_after_fork_in_parent() -> None:
    while _HELD_AT_FORK:
        _HELD_AT_FORK.pop().release()


def _forget_after_fork_in_child() -> None:
    _HELD_AT_FORK.clear()  # the child's stores replace their locks in _check_pid


os.register_at_fork(before=_quiesce_before_fork, after_in_parent=_resume_after_fork_in_parent,
                    after_in_child=_forget_after_fork_in_child)


def live_stores() -> list:
    """The stores registered in this process (and not yet garbage)."""
    return list(_LIVE_STORES)


def register(store: Any) -> None:
    """Hold this store's lock across every future fork of this process."""
    _LIVE_STORES.add(store)
