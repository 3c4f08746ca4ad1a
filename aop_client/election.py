"""The flusher election: which single process of a host drains one store directory.

This module owns the kernel half of the election, an ``flock`` on
``<directory>/flusher.lock``; the fencing epoch that makes a deposed flusher
harmless lives in the store (``Store.begin_epoch()``), and the winner must call
it right after winning.

Why flock and not a pid file: the kernel drops an flock when the last file
descriptor of its open file description is closed, which includes the death
of the holder by SIGKILL, OOM kill or host restart. No stale state can block
the next flusher, and no pid is ever reused by mistake.

Fork safety: an flock belongs to the *open file description*, which a forked
child shares with its parent. Were the child to call ``flock(LOCK_UN)`` it would
release the parent's lock, and the host would end up with two flushers. After
``fork`` every election object therefore drops its inherited descriptor in the
child with a plain ``close`` (which never unlocks while the parent still holds
its copy) and reports ``is_leader`` False; the child may then try to win on its
own (``aop_client.forking`` runs that reset, elections right after stores). The lock file is opened with ``O_CLOEXEC`` so exec'd programs never inherit
it.

Hostile spools: the directory must pass the spool's checks (ours, not writable
by group/others; aop_client.store.layout), and the lock file is opened with
``O_NOFOLLOW`` and used only when it is a regular file of ours: a symlink planted
at ``flusher.lock`` is refused (StoreError), never locked, written or truncated.

Takeover latency: :meth:`FlusherElection.wait_for_leadership` polls with a
non-blocking ``flock`` every ``poll`` seconds (default 0.1 s, at most 0.2 s).
A blocking ``flock`` in a helper thread would react faster but cannot be
interrupted cleanly: the thread stays parked in the kernel holding a
descriptor, and closing that descriptor from another thread to wake it races
with descriptor reuse. Polling keeps takeover under 1 s with margin and stops
within one poll interval.

The holder writes ``{"pid", "host", "since"}`` into the lock file for
``aop status``; :meth:`FlusherElection.holder` reads it back and tells whether
that holder is alive by probing the lock itself, never by trusting the pid.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import threading
import time
from typing import Any, Optional

from . import forking
from .errors import StoreError
from .store.layout import NotOwnedError, ensure_private_directory, open_owned, prepare_directory

__all__ = ["FlusherElection", "LOCK_FILE_NAME", "MAX_POLL_INTERVAL"]

LOCK_FILE_NAME = "flusher.lock"
MAX_POLL_INTERVAL = 0.2

_FILE_MODE = 0o600
_MAX_INFO_BYTES = 4096


def _ensure_private_directory(directory: str, create: bool = True) -> None:
    # The spool's rules (aop_client.store.layout): ours, not writable by group/others, parents 0700.
    if create:
        ensure_private_directory(directory)
    else:
        prepare_directory(directory, must_exist=True)  # StoreError when it is gone: never re-created


def _open_lock_file(path: str, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """Open the lock file without following a symlink; refuse anything but a regular file of ours."""
    owner = None if flags & os.O_CREAT else os.stat(os.path.dirname(path) or ".").st_uid
    try:
        fd = open_owned(path, flags, owner=owner, mode=_FILE_MODE)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise  # holder(): no lock file, no holder
        raise StoreError(f"cannot open flusher lock file {path!r}: its directory is gone") from None
    except NotOwnedError as e:
        raise StoreError(f"flusher lock: {e}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError(f"refusing flusher lock file {path!r}: it is a symlink (never followed, never "
                             f"written through); remove it (`rm {path}`)") from None
        raise StoreError(f"cannot open flusher lock file {path!r}: {e.strerror}") from e
    if flags & os.O_CREAT and stat.S_IMODE(os.fstat(fd).st_mode) != _FILE_MODE:
        try:
            os.fchmod(fd, _FILE_MODE)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _parse_holder_info(raw: bytes) -> Optional[dict[str, Any]]:
    text = raw.decode("utf-8", errors="replace").strip("\x00 \n")
    if not text:
        return None
    try:
        info, _end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    return {"pid": info.get("pid"), "host": info.get("host"), "since": info.get("since")}


class FlusherElection:
    """Exactly one leader per directory across all processes of a host, via a kernel flock."""

    def __init__(self, directory: "str | os.PathLike[str]", *, create: bool = True) -> None:
        self.directory = os.fspath(directory)
        self._create = create  # False: campaign only in an existing spool (StoreError when it is gone)
        self.lock_path = os.path.join(self.directory, LOCK_FILE_NAME)
        self._mutex = threading.Lock()
        self._fd: Optional[int] = None
        self._owner_gen: Optional[int] = None  # the fork generation that took the lock
        self._since: Optional[float] = None
        self._closed = False
        forking.register(forking.ELECTION, self)

    def __repr__(self) -> str:
        return f"FlusherElection(directory={self.directory!r}, is_leader={self.is_leader})"

    @property
    def is_leader(self) -> bool:
        """True while this object, in this very process, holds the flusher lock."""
        forking.notice_fork()
        return self._fd is not None and self._owner_gen == forking.generation

    @property
    def leader_since(self) -> Optional[float]:
        """Unix time at which this object won the lock, or None when not leader."""
        return self._since if self.is_leader else None

    def try_acquire(self) -> bool:
        """Take the lock without blocking; True when this object is (now) the leader."""
        forking.notice_fork()
        with self._mutex:
            if self._closed:
                raise StoreError(f"FlusherElection for {self.directory!r} is closed")
            if self._fd is not None:
                return True
            _ensure_private_directory(self.directory, self._create)
            fd = _open_lock_file(self.lock_path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise StoreError(f"cannot lock {self.lock_path!r}: {e.strerror}") from e
            self._fd = fd
            self._owner_gen = forking.generation
            self._since = time.time()
            self._write_holder_info(fd)
            return True

    def release(self) -> None:
        """Give up leadership (no-op when not leader); never releases a parent's lock after fork."""
        forking.notice_fork()
        with self._mutex:
            fd, self._fd = self._fd, None
            self._owner_gen = None
            self._since = None
            if fd is None:
                return
            try:
                os.ftruncate(fd, 0)  # no stale holder info once the lock is free
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                pass  # closing below drops the lock anyway
            finally:
                os.close(fd)

    def close(self) -> None:
        """Release leadership and refuse further use; safe to call twice."""
        self.release()
        with self._mutex:
            self._closed = True

    def __del__(self) -> None:
        # An unreachable leader must not keep the host's flusher lock until the process exits.
        fd = getattr(self, "_fd", None)
        if fd is not None and getattr(self, "_owner_gen", None) == forking.generation:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "FlusherElection":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_for_leadership(
        self,
        stop_event: threading.Event,
        poll: float = 0.1,
        timeout: Optional[float] = None,
    ) -> bool:
        """Poll try_acquire every ``poll`` s (<= 0.2) until leader (True) or stop/timeout (False)."""
        if not 0 < poll <= MAX_POLL_INTERVAL:
            raise ValueError(f"poll={poll!r} must be in (0, {MAX_POLL_INTERVAL}] to keep takeover under 1 s")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not stop_event.is_set():
            if self.try_acquire():
                return True
            wait = poll
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = min(poll, remaining)
            stop_event.wait(wait)
        return False

    def holder(self) -> Optional[dict[str, Any]]:
        """The recorded holder {pid, host, since, alive}, or None when no holder is recorded.

        ``alive`` comes from probing the lock (a momentary shared flock on a new
        descriptor), not from the pid. The probe can make one concurrent
        ``try_acquire`` of another process fail; its next poll succeeds.
        """
        if self.is_leader:
            return {"pid": os.getpid(), "host": socket.gethostname(), "since": self._since, "alive": True}
        try:
            fd = _open_lock_file(self.lock_path, os.O_RDONLY)  # read-only: also root's inspection of a worker's spool
        except FileNotFoundError:
            return None
        try:
            raw = os.pread(fd, _MAX_INFO_BYTES, 0)
            alive = self._lock_is_held(fd)
        finally:
            os.close(fd)
        info = _parse_holder_info(raw)
        if info is None:
            if not alive:
                return None
            info = {"pid": None, "host": None, "since": None}  # the winner is writing its info
        info["alive"] = alive
        return info

    # -- internals --

    @staticmethod
    def _lock_is_held(fd: int) -> bool:
        # A shared probe on a fresh open file description conflicts with any LOCK_EX holder.
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return True
            raise StoreError(f"cannot probe flusher lock {fd}: {e.strerror}") from e
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False

    def _write_holder_info(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": self._since}
        data = json.dumps(info).encode()
        try:
            # Write first, then cut: a concurrent reader sees old-or-new JSON, never an empty file.
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        except OSError:
            pass  # the info is advisory (for ``aop status``); leadership is the lock

    def _forget_fd_without_unlocking(self) -> None:
        fd, self._fd = self._fd, None
        self._owner_gen = None
        self._since = None
        if fd is not None:
            try:
                os.close(fd)  # the parent's copy keeps the open file description, and the lock, alive
            except OSError:
                pass

    def _after_fork_in_child(self) -> None:
        """In a forked child (aop_client.forking): not leader, the parent's lock untouched."""
        self._mutex = threading.Lock()  # another thread may have held it at fork time
        self._forget_fd_without_unlocking()
