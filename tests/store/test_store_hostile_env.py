"""Hostile environments: a full filesystem, an unwritable directory, foreign symlinks, file modes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile

import pytest

from aop_client.errors import StoreError
from aop_client.store import DiskStore

NOBODY = 65534


def _drain(store: DiskStore) -> list[str]:
    epoch = store.begin_epoch()
    out: list[str] = []
    while batch := store.lease(100, 1 << 20):
        store.ack([e.ref for e in batch], epoch=epoch)
        out.extend(e.event_id for e in batch)
    return out


@pytest.fixture
def tiny_fs(mount_tmpfs):
    """A 256 KiB tmpfs mounted for the test (we run as root, here and in CI) and unmounted after."""
    return mount_tmpfs("256k")


def test_disk_full_is_a_counted_drop_and_never_corrupts(tiny_fs) -> None:
    """ENOSPC makes append return disk_full (counted); once space returns, every stored event is intact."""
    store = DiskStore(tiny_fs / "s")
    results = [store.append(f"e{i}", "r", i, b"y" * 1500) for i in range(1, 400)]
    reasons = {r.reason for r in results if not r.stored}
    stored = [f"e{i}" for i, r in enumerate(results, 1) if r.stored]
    assert reasons == {"disk_full"}
    assert 20 < len(stored) < 200
    stats = store.stats()
    assert stats.pending == len(stored)
    assert stats.dropped == {"disk_full": len(results) - len(stored)}
    try:
        store.lease(10, 1 << 20)  # may fail to index on a full disk: then it must say so cleanly
    except StoreError:
        pass
    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_fs)], check=True)
    assert sorted(_drain(store), key=lambda e: int(e[1:])) == stored
    assert store.stats().quarantined == 0
    assert store.append("after", "r", 999, b"z").stored
    store.close()


def _as_nobody(fn) -> dict:
    """Run fn() in a forked child that dropped to uid/gid nobody; returns the dict it produced."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = fn()
        except BaseException as e:  # report, never raise in the child
            out = {"unexpected": repr(e)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.fixture
def shared_base():
    """A directory nobody can traverse into (0711), removed after the test."""
    base = tempfile.mkdtemp(prefix="aop-store-perm-")
    os.chmod(base, 0o711)
    yield base
    subprocess.run(["rm", "-rf", base], check=True)


def test_unwritable_segments_dir_gives_counted_io_error(shared_base) -> None:
    """A writer that may not create segment files gets io_error results, counted, and no exception."""
    directory = os.path.join(shared_base, "s")
    DiskStore(directory).close()
    for root, dirs, files in os.walk(directory):
        for name in [root, *(os.path.join(root, f) for f in files)]:
            os.chown(name, NOBODY, NOBODY)
    os.chmod(os.path.join(directory, "segments"), 0o500)

    def child() -> dict:
        store = DiskStore(directory)
        results = [store.append(f"e{i}", "r", i, b"x") for i in range(3)]
        stats = store.stats()
        store.close()
        return {"results": [[r.stored, r.reason] for r in results], "dropped": stats.dropped, "pending": stats.pending}

    out = _as_nobody(child)
    assert out == {"results": [[False, "io_error"]] * 3, "dropped": {"io_error": 3}, "pending": 0}


def test_foreign_store_directory_is_a_clean_store_error(shared_base) -> None:
    """Opening a store directory we may not enter raises StoreError naming it."""
    directory = os.path.join(shared_base, "root-only")
    DiskStore(directory).close()

    def child() -> dict:
        try:
            DiskStore(directory)
        except StoreError as e:
            return {"error": str(e)}
        return {"error": None}

    out = _as_nobody(child)
    assert out["error"] and directory in out["error"]


def test_symlink_owned_by_someone_else_is_refused(tmp_path) -> None:
    """A symlinked store directory is followed only when link and target are ours."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    ours = tmp_path / "ours"
    ours.symlink_to(real)
    with DiskStore(ours) as store:
        assert store.append("e", "r", 1, b"x").stored
    theirs = tmp_path / "theirs"
    theirs.symlink_to(real)
    os.lchown(theirs, NOBODY, NOBODY)
    with pytest.raises(StoreError, match="symlink"):
        DiskStore(theirs)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, NOBODY, NOBODY)
    to_foreign = tmp_path / "to-foreign"
    to_foreign.symlink_to(foreign)
    with pytest.raises(StoreError, match="symlink"):
        DiskStore(to_foreign)


def test_files_are_0600_and_directories_0700_even_with_umask_0(tmp_path) -> None:
    """Every file the store creates is 0600 and every directory 0700, whatever the umask."""
    old = os.umask(0)
    try:
        store = DiskStore(tmp_path / "s")
        for i in range(1, 20):
            store.append(f"e{i}", "r", i, b"x" * 10)
        seg = next((tmp_path / "s" / "segments").iterdir())
        with open(seg, "r+b") as f:  # damage one record so a quarantine copy is written
            f.seek(20)
            f.write(b"\xff")
        epoch = store.begin_epoch()
        store.ack([e.ref for e in store.lease(5, 1 << 20)], epoch=epoch)
        other = DiskStore(tmp_path / "s")
        store.close()
        _drain(other)
        seen = 0
        for root, dirs, files in os.walk(tmp_path / "s"):
            assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, root
            for name in files:
                mode = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
                assert mode == 0o600, (name, oct(mode))
                seen += 1
        assert seen >= 3
        assert os.listdir(tmp_path / "s" / "quarantine")
        other.close()
    finally:
        os.umask(old)
