"""The store directory layout and its safety checks (ownership, symlinks, 0700/0600 modes).

    <store>/                 0700
        index.sqlite3        0600  the state index (WAL: -wal, -shm beside it)
        segments/            0700  per-process append-only segment files (*.seg, 0600)
        quarantine/          0700  copies of damaged byte ranges and set-aside indexes
        flusher.lock         0600  the flusher election (aop_client.election)

The trust rule (docs/security.md): only the uid running the application may
have put anything in the spool. So every directory of the spool must be owned
by that uid and writable by nobody else; missing ones (and missing parents)
are created 0700 one by one; directories are opened ``O_DIRECTORY|O_NOFOLLOW``
and checked on the descriptor, so no symlink is followed inside the tree.
A file inside it that another uid owns is never read (:func:`owned_file`, the
one check every reader of segments uses); index files SQLite would open are
checked before it does (:func:`secure_index_files`).

``read_only=True`` is the inspection view (``sudo aop status`` on a worker's
spool): nothing is created, chmod'ed or written, and "ours" means owned by
the spool directory's owner.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import time

from ..errors import StoreError

INDEX_NAME = "index.sqlite3"
INDEX_SUFFIXES = ("", "-wal", "-shm", "-journal")  # every file SQLite may open for the index
FOREIGN_SUFFIX = ".foreign"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def owned_file(st: os.stat_result, owner: int | None = None) -> bool:
    """True for a regular file of ``owner`` (default: the current euid): the only files the store reads."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == (os.geteuid() if owner is None else owner)


class NotOwnedError(StoreError):
    """The file at a spool path is not a regular file of the expected owner (a FIFO, a device, another uid's)."""

    def __init__(self, path: str, st: os.stat_result, owner: int) -> None:
        super().__init__(f"refusing {describe(path, st)}: only a regular file of uid {owner} is used; "
                         f"remove it (`rm {path}`)")
        self.path, self.owner, self.st_uid, self.st_mode = path, owner, st.st_uid, st.st_mode


_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a planted FIFO never hangs us


def open_owned(path: str, flags: int = os.O_RDONLY, *, owner: int | None = None, mode: int = 0o600) -> int:
    """Open a spool file (never following a link, never blocking on a FIFO) and check it on the descriptor.

    The one open of every spool file that is read or locked: raises what ``os.open``
    raises (FileNotFoundError when missing, ELOOP for a symlink) and
    :class:`NotOwnedError` unless the descriptor is a regular file of ``owner``
    (default: the current euid).
    """
    fd = os.open(path, flags | _OPEN_FLAGS, mode)
    try:
        st = os.fstat(fd)
        expected = os.geteuid() if owner is None else owner
        if not owned_file(st, expected):
            raise NotOwnedError(path, st, expected)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_owned_file(path: str, *, owner: int | None = None, limit: int | None = None) -> bytes:
    """The bytes of a regular file of ``owner`` (to EOF, even if it grows meanwhile, or up to ``limit``).

    Raises as :func:`open_owned` does; callers decide what a missing or foreign file means.
    """
    fd = open_owned(path, owner=owner)
    try:
        parts, got = [], 0
        while limit is None or got < limit:
            part = os.pread(fd, (1 << 20) if limit is None else limit - got, got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def write_private_file(directory: str, name: str, data: bytes, *, fsync: bool = False,
                       exclusive: bool = False) -> bool:
    """Put ``data`` at ``directory/name`` atomically: a fresh 0600 temporary file (O_EXCL, O_NOFOLLOW) renamed in.

    The rename replaces a planted link, never writes through it. With ``exclusive`` the
    file is only created (a hard link of the temporary file): False when it exists
    already. With ``fsync`` the data and the directory entry reach the disk first.
    """
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        target = os.path.join(directory, name)
        if not exclusive:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    if fsync:
        dfd = os.open(directory, _DIR_FLAGS)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return True


def describe(path: str, st: os.stat_result) -> str:
    """``'path' (owner uid N, mode 0NNN)`` for error messages."""
    kind = "symlink" if stat.S_ISLNK(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode) else "file"
    return f"{kind} {path!r} (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"


def _check_dir(fd: int, path: str, read_only: bool) -> None:
    """Refuse a spool directory of another uid or writable by group/others; tighten read bits (0700)."""
    st = os.fstat(fd)
    if read_only:
        return
    me = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != me:
        if me == 0:
            what = (f"run the command as its owner (`sudo -u '#{st.st_uid}' ...`): files root creates in it "
                    f"would lock that user out; `aop status` inspects it read-only")
        else:
            what = (f"use a spool_dir of your own (or, if this one is trusted, `chown -R {me} {path}` "
                    f"and `chmod 700 {path}`)")
        raise StoreError(
            f"refusing store {describe(path, st)}: it belongs to another user, and we are uid {me}; "
            f"files planted in it could be read as our events. To go on, {what}"
        )
    if mode & 0o022:
        raise StoreError(
            f"refusing store {describe(path, st)}: group or others may write into it, so files in it "
            f"may have been planted. Check its contents, then run `chmod 700 {path}` (or use a new spool_dir)"
        )
    if mode & 0o077:
        os.fchmod(fd, 0o700)  # readable by others but never writable: safe to make private


def _open_dir(name: str, path: str, dir_fd: int | None = None) -> int:
    """Open a directory without following a symlink at its last component (StoreError when not a directory)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        st = os.lstat(name, dir_fd=dir_fd)
        if dir_fd is None:  # the spool path itself: perhaps just a wrong path, never advise removing it
            raise StoreError(f"store directory {path!r} is not a directory ({describe(path, st)})") from None
        raise StoreError(f"refusing {describe(path, st)} in the spool: a directory was expected; "
                         f"remove it (`rm {path}`) and open the store again") from None


def _make_parents_private(path: str) -> None:
    """Create every missing directory down to path, each with mode 0700 (os.makedirs applies mode to the leaf only)."""
    missing = []
    head = path
    while not os.path.lexists(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass


def _check_ancestors(path: str) -> None:
    """Refuse a spool under a directory anyone may rename entries of (world-writable, not sticky)."""
    head = os.path.dirname(path)
    while True:
        st = os.stat(head)
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            raise StoreError(f"refusing store directory {path!r}: its parent {describe(head, st)} is writable "
                             f"by everyone without the sticky bit, so anyone may replace the spool; "
                             f"run `chmod o-w {head}` (or `chmod +t`) or choose another spool_dir")
        parent = os.path.dirname(head)
        if parent == head:
            return
        head = parent


def _subdir(root_fd: int, root: str, name: str, read_only: bool, create: bool = True) -> str:
    path = os.path.join(root, name)
    if create and not read_only:
        try:
            os.mkdir(name, 0o700, dir_fd=root_fd)
        except FileExistsError:
            pass
    try:
        fd = _open_dir(name, path, root_fd)
    except FileNotFoundError:
        if read_only or not create:
            return path  # inspection of a spool without it: nothing to read there
        raise
    try:
        _check_dir(fd, path, read_only)
    finally:
        os.close(fd)
    return path


def _open_root(directory: str | os.PathLike, read_only: bool, create: bool = True) -> tuple[str, int]:
    """(absolute path, checked O_NOFOLLOW descriptor) of a spool root, created 0700 with its parents when missing."""
    try:
        path = os.path.abspath(os.fspath(directory))
    except TypeError as e:
        raise StoreError(f"store directory must be a path, got {directory!r}") from e
    try:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if read_only or not create:
                raise StoreError(f"store directory {path!r} does not exist") from None
            _make_parents_private(path)
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            target = os.stat(path)
            me = os.geteuid()
            if not read_only and (st.st_uid != me or target.st_uid != me):
                raise StoreError(
                    f"refusing symlinked store directory {path!r}: link owner uid {st.st_uid}, "
                    f"target owner uid {target.st_uid}, we are uid {me}"
                )
            path = os.path.realpath(path)
        if not read_only:
            _check_ancestors(os.path.realpath(path))
        root_fd = _open_dir(path, path)
        try:
            _check_dir(root_fd, path, read_only)
        except BaseException:
            os.close(root_fd)
            raise
    except StoreError:
        raise
    except OSError as e:
        raise StoreError(f"cannot prepare store directory {path!r}: {e}") from e
    return path, root_fd


def ensure_private_directory(directory: str | os.PathLike) -> str:
    """Create (0700, parents too) or check one private directory of ours; returns its absolute path."""
    path, fd = _open_root(directory, False)
    os.close(fd)
    return path


def prepare_directory(directory: str | os.PathLike, *, read_only: bool = False,
                      must_exist: bool = False) -> tuple[str, str, str]:
    """Create (0700) or check the store directory; returns (root, segments dir, quarantine dir).

    Refuses (StoreError naming the path, owner, mode and what to do) any
    directory of the spool that another uid owns or that group/others may
    write, a symlinked directory whose link or target is another user's, and
    any path that is not a directory. With ``read_only`` nothing is created or
    changed and any owner is accepted (root's inspection of a worker's spool). With
    ``must_exist`` every check is made but nothing is created: a missing spool is a
    StoreError, missing subdirectories stay missing (a spool another process may be
    renaming away must not be re-created behind it).
    """
    path, root_fd = _open_root(directory, read_only, not must_exist)
    try:
        segments = _subdir(root_fd, path, "segments", read_only, not must_exist)
        quarantine = _subdir(root_fd, path, "quarantine", read_only, not must_exist)
    except StoreError:
        raise
    except OSError as e:
        raise StoreError(f"cannot prepare store directory {path!r}: {e}") from e
    finally:
        os.close(root_fd)
    return path, segments, quarantine


def index_files(directory: str, suffixes: tuple[str, ...] = INDEX_SUFFIXES) -> list[tuple[str, str, os.stat_result]]:
    """(suffix, path, lstat) of each file of the index present in ``directory`` (the one list of them)."""
    found = []
    for suffix in suffixes:
        path = os.path.join(directory, INDEX_NAME + suffix)
        try:
            found.append((suffix, path, os.lstat(path)))
        except FileNotFoundError:
            continue
    return found


def set_aside_index_files(directory: str, quarantine_dir: str, tag: str,
                          suffixes: tuple[str, ...] = INDEX_SUFFIXES) -> list[str]:
    """Move the index files with these suffixes to ``quarantine/index.sqlite3<suffix>.<ns><tag>``; their suffixes."""
    stamp = time.time_ns()
    moved = []
    for suffix, path, _st in index_files(directory, suffixes):
        try:
            os.replace(path, os.path.join(quarantine_dir, f"{INDEX_NAME}{suffix}.{stamp}{tag}"))
        except FileNotFoundError:
            continue
        moved.append(suffix)
    return moved


def secure_index_files(directory: str, quarantine_dir: str) -> int:
    """Check the files SQLite will open for the index before it opens them; returns how many were set aside.

    A symlink (or anything not a regular file) at any of their names is refused
    with StoreError: SQLite would read and write through it. Files that belong to
    another uid are moved to ``quarantine/`` (named ``*.foreign``, never read):
    only those (and ``-shm``, which describes the ``-wal``) when the main index
    is ours, all of them when the main index is someone else's (it is then
    rebuilt from our own segments).
    """
    me = os.geteuid()
    foreign = set()
    for suffix, path, st in index_files(directory):
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"refusing index {describe(path, st)}: SQLite would follow it; "
                             f"remove it (`rm {path}`) and open the store again")
        if st.st_uid != me:
            foreign.add(suffix)
    if not foreign:
        return 0
    if "" in foreign:
        set_aside_index_files(directory, quarantine_dir, FOREIGN_SUFFIX)
    else:
        set_aside_index_files(directory, quarantine_dir, FOREIGN_SUFFIX,
                              tuple(s for s in INDEX_SUFFIXES if s in foreign or s == "-shm"))
    return len(foreign)
