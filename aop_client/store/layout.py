"""The store directory layout and its safety checks (ownership, symlinks, 0700/0600 modes).

    <store>/                 0700
        index.sqlite3        0600  the state index (WAL: -wal, -shm beside it)
        segments/            0700  per-process append-only segment files (*.seg, 0600)
        quarantine/          0700  copies of damaged byte ranges and set-aside indexes
"""

from __future__ import annotations

import os
import stat

from ..errors import StoreError


def _mkdir_private(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def prepare_directory(directory: str | os.PathLike) -> tuple[str, str, str]:
    """Create (0700) or check the store directory; returns (root, segments dir, quarantine dir).

    Refuses a symlinked directory whose link or target is owned by another user,
    and any path that is not a directory.
    """
    try:
        path = os.path.abspath(os.fspath(directory))
    except TypeError as e:
        raise StoreError(f"store directory must be a path, got {directory!r}") from e
    try:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            _mkdir_private(path)
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            target = os.stat(path)
            me = os.geteuid()
            if st.st_uid != me or target.st_uid != me:
                raise StoreError(
                    f"refusing symlinked store directory {path!r}: link owner uid {st.st_uid}, "
                    f"target owner uid {target.st_uid}, we are uid {me}"
                )
            path = os.path.realpath(path)
            st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"store directory {path!r} is not a directory")
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o700)
        segments = os.path.join(path, "segments")
        quarantine = os.path.join(path, "quarantine")
        _mkdir_private(segments)
        _mkdir_private(quarantine)
    except StoreError:
        raise
    except OSError as e:
        raise StoreError(f"cannot prepare store directory {path!r}: {e}") from e
    return path, segments, quarantine
