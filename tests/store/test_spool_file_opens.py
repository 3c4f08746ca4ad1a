"""The one open of a spool file (layout.open_owned / read_owned_file / write_private_file) and the index's file list.

Every file of the spool that is read or locked by path goes through one function:
no link followed, a FIFO swapped in never blocks (root's ``aop status`` must not
hang), and the descriptor must be a regular file of the expected uid. The index's
files (``index.sqlite3`` and its ``-wal``, ``-shm``, ``-journal``) are listed in one
place, used both to set aside foreign files and to set aside a damaged index.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from aop_client.errors import StoreError
from aop_client.store import DiskStore
from aop_client.store import layout
from aop_client.store.segments import SEGMENT_SUFFIX, is_sealed, read_at
from test_store_hostile_env import NOBODY, _drain


def _returns_promptly(fifo: Path, call: Callable[[], Any]) -> Any:
    """call()'s result (or exception); fails if it blocks (then unblocks it by opening the FIFO's other end)."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # a reader is waiting: this frees it
        os.close(fd)
        thread.join(10)
        pytest.fail(f"{call} blocked on a FIFO")
    if "error" in out:
        raise out["error"]
    return out["value"]


def _segment_path(tmp_path: Path) -> Path:
    store = DiskStore(tmp_path / "spool")
    store.close()
    return tmp_path / "spool" / "segments" / f"00000000000000000001-1-abcd{SEGMENT_SUFFIX}"


def test_a_fifo_swapped_in_for_a_segment_never_blocks_the_seal_probe_or_a_read(tmp_path: Path) -> None:
    fifo = _segment_path(tmp_path)
    os.mkfifo(fifo, 0o600)
    assert _returns_promptly(fifo, lambda: is_sealed(str(fifo))) is True  # not a segment of ours: no writer of ours
    with pytest.raises(FileNotFoundError):
        _returns_promptly(fifo, lambda: read_at(str(fifo), 0, 10))
    with pytest.raises(layout.NotOwnedError):
        _returns_promptly(fifo, lambda: layout.read_owned_file(str(fifo)))


def test_a_segment_of_another_uid_is_never_read_by_path(tmp_path: Path) -> None:
    path = _segment_path(tmp_path)
    path.write_bytes(b"forged")
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(FileNotFoundError):
        read_at(str(path), 0, 6)
    assert is_sealed(str(path)) is True


def test_read_owned_file_refuses_links_and_other_owners_and_reads_to_the_limit(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"0123456789")
    assert layout.read_owned_file(str(target)) == b"0123456789"
    assert layout.read_owned_file(str(target), limit=4) == b"0123"
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OSError) as e:
        layout.read_owned_file(str(tmp_path / "link"))
    assert e.value.errno == errno.ELOOP
    os.chown(target, NOBODY, NOBODY)
    with pytest.raises(layout.NotOwnedError, match="uid 65534"):
        layout.read_owned_file(str(target))
    assert layout.read_owned_file(str(target), owner=NOBODY) == b"0123456789"


def test_write_private_file_replaces_a_planted_link_and_creates_exclusively(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    (spool / "f.json").symlink_to(victim)
    assert layout.write_private_file(str(spool), "f.json", b"new", fsync=True) is True
    assert victim.read_bytes() == b"precious"
    assert not (spool / "f.json").is_symlink() and (spool / "f.json").read_bytes() == b"new"
    assert (spool / "f.json").stat().st_mode & 0o777 == 0o600
    assert layout.write_private_file(str(spool), "f.json", b"other", exclusive=True) is False
    assert (spool / "f.json").read_bytes() == b"new"
    assert sorted(os.listdir(spool)) == ["f.json"]  # no temporary file left behind


def test_a_foreign_wal_alone_leaves_our_intact_index_in_place(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with DiskStore(spool) as store:
        for i in range(5):
            assert store.append(f"e{i}", "r", i + 1, b"{}").stored
        store.stats()  # ingested: the index knows them
    index = spool / layout.INDEX_NAME
    inode = index.stat().st_ino
    for suffix in ("-wal", "-shm"):
        (spool / (layout.INDEX_NAME + suffix)).unlink(missing_ok=True)
    wal = spool / (layout.INDEX_NAME + "-wal")
    wal.write_bytes(b"planted")
    os.chown(wal, NOBODY, NOBODY)
    with DiskStore(spool) as store:
        assert sorted(_drain(store)) == [f"e{i}" for i in range(5)]
    assert index.stat().st_ino == inode, "our own index must not be set aside for a foreign -wal"
    aside = sorted(p.name for p in (spool / "quarantine").iterdir())
    assert len(aside) == 1 and aside[0].startswith("index.sqlite3-wal.") and aside[0].endswith(".foreign")


def test_a_damaged_index_is_set_aside_with_every_file_of_it(tmp_path: Path) -> None:
    """The rebuild moves -journal too: left in place, SQLite would roll it into the new, empty index."""
    spool = tmp_path / "spool"
    with DiskStore(spool) as store:
        assert store.append("e1", "r", 1, b"{}").stored
    store = DiskStore(spool)  # index not opened yet
    for suffix in layout.INDEX_SUFFIXES:
        (spool / (layout.INDEX_NAME + suffix)).write_bytes(b"damaged" + suffix.encode())
    try:
        store._conn = store._rebuild_index(RuntimeError("database disk image is malformed"), None)
        aside = {p.name.split(".")[1] for p in (spool / "quarantine").iterdir() if p.name.endswith(".bad")}
        # -wal and -shm may be consumed by SQLite when the damaged handle closes; the journal must move
        assert {"sqlite3", "sqlite3-journal"} <= aside
        assert not (spool / (layout.INDEX_NAME + "-journal")).exists()
        assert _drain(store) == ["e1"]
    finally:
        store.close()
