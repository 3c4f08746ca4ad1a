"""What happens at fork: aop_client's one ``os.register_at_fork``, its participants and their order.

A forked child inherits every object of its parent but only the thread that
called ``fork``: locks another thread held stay held forever, the parent's
SQLite connections, segment and lock descriptors and pooled sockets are
shared with the parent, and the flusher thread is gone. This module is the
only one that registers with ``os.register_at_fork``; every object with
per-process state registers itself here as a *participant* of one kind, held
by a weak reference (registration never keeps an object alive, and a
collected participant is never called).

Order. Before ``fork`` (in the parent), in the order below, each participant's
optional ``_before_fork()`` runs; ``_after_fork_in_parent()`` runs in the
reverse order. In the child, :data:`generation` is bumped first, then each
participant's ``_after_fork_in_child()`` runs, kind by kind, in this order
(within a kind, in registration order):

1. ``STORE``: before fork, each live store holds its lock, so the fork falls
   between two SQLite calls (SQLite's process-wide mutexes are copied in
   whatever state they are). In the child, stores abandon the inherited SQLite
   connection (never closed there: closing could checkpoint the parent's WAL),
   close their copies of segment and reader descriptors and take fresh locks;
   ``store.segments`` replaces its module lock.
2. ``ELECTION``: close the inherited flock descriptor *without* unlocking (the
   parent keeps its lock) and take a fresh mutex: the child is not leader.
3. ``FLUSHER``: forget the parent's thread, epoch and counters; fresh locks,
   events and jitter.
4. ``TRANSPORT``: drop the pooled sockets (shared with the parent); fresh lock.
5. ``BUILDER``: a trace builder starts its own run (new run id, seqs from 1).
6. ``CLIENT``: fresh locks. Last, so that everything a client holds is reset
   when it next runs; it reopens its store and starts its own flusher lazily,
   on its next use (see the idiom below).

Lower layers go first: no participant's reset may meet a part of a lower layer
still in its inherited state.

The one fork-check idiom. An object stamps per-process state with
``forking.generation`` and compares the stamp before use::

    if self._fork_gen != forking.generation:   # forked since: redo per-process state
        ...

An int compare, no syscall: the emit path makes it several times per event.
``os.getpid()`` is not used for this anywhere else. A fork that bypasses
CPython's hooks (a C extension calling ``fork()`` and running Python in the
child without ``PyOS_AfterFork_Child``) is outside CPython's contract (the
stdlib's own locks are not reset in it either); cold paths that act on kernel
state shared with the parent (the election's flock, the store's leases) call
:func:`notice_fork` first, which compares the pid once and, on a mismatch,
runs the child hooks above as if the fork had been announced.
"""

from __future__ import annotations

import itertools
import os
import weakref
from typing import Any

__all__ = ["STORE", "ELECTION", "FLUSHER", "TRANSPORT", "BUILDER", "CLIENT", "ORDER",
           "generation", "register", "live", "notice_fork"]

STORE, ELECTION, FLUSHER, TRANSPORT, BUILDER, CLIENT = "store", "election", "flusher", "transport", "builder", "client"
#: The order in which kinds are reset in a forked child (and quiesced before fork).
ORDER = (STORE, ELECTION, FLUSHER, TRANSPORT, BUILDER, CLIENT)

#: How many forks separate this process from the one that imported aop_client (bumped first in a child).
generation = 0

_pid = os.getpid()
_keys = itertools.count()
_participants: dict[str, dict[int, "weakref.ref[Any]"]] = {kind: {} for kind in ORDER}


def register(kind: str, participant: Any) -> None:
    """Call ``participant._after_fork_in_child()`` in every forked child while it lives (see the order).

    ``_before_fork()`` and ``_after_fork_in_parent()`` are called too when the
    participant defines them. Only a weak reference is kept. A module can take
    part (its module-level functions are the hooks).
    """
    if not hasattr(participant, "_after_fork_in_child"):
        raise TypeError(f"{participant!r} has no _after_fork_in_child()")
    group = _participants[kind]  # KeyError: not one of ORDER
    key = next(_keys)

    def forget(_ref: "weakref.ref[Any]") -> None:
        group.pop(key, None)

    group[key] = weakref.ref(participant, forget)


def live(kind: str) -> list[Any]:
    """The participants of ``kind`` still alive, in registration order."""
    return [obj for obj in (ref() for ref in list(_participants[kind].values())) if obj is not None]


def _in_order() -> list[Any]:
    return [obj for kind in ORDER for obj in live(kind)]


def _before() -> None:
    for obj in _in_order():
        hook = getattr(obj, "_before_fork", None)
        if hook is not None:
            hook()


def _after_in_parent() -> None:
    for obj in reversed(_in_order()):
        hook = getattr(obj, "_after_fork_in_parent", None)
        if hook is not None:
            hook()


def _after_in_child() -> None:
    global generation, _pid
    generation += 1
    _pid = os.getpid()
    failed: BaseException | None = None
    for obj in _in_order():
        try:
            obj._after_fork_in_child()
        except Exception as exc:  # one participant's failure must not leave the others in the parent's state
            failed = failed or exc
    if failed is not None:
        raise failed  # CPython prints it (an unraisable exception in a fork hook); the child goes on


def notice_fork() -> None:
    """On a cold path: run the child hooks now if this process forked without CPython's hooks (one getpid)."""
    if os.getpid() != _pid:
        _after_in_child()


os.register_at_fork(before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child)
