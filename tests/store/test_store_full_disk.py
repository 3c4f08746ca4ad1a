"""A full disk on a real small filesystem: the drain goes on, drops are counted durably, space comes back.

Each test mounts its own 4 MiB tmpfs (root only; CI runs as root) and
unmounts it afterwards. The collector keeps its database outside the tmpfs.
"""

from __future__ import annotations

import logging
import os
import stat
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aop_client import AOPClient, ClientConfig
from aop_client.errors import StoreError
from aop_client.store import DiskStore, state
from aop_client.store.reserve import RESERVE_NAME
from aop_client.testing import wait_until
from test_cli import aop_env, run_aop
from test_store_hostile_env import _drain

PAD = "p" * 1000


@pytest.fixture
def small_fs(mount_tmpfs) -> Path:
    """A 4 MiB tmpfs mounted for the test, unmounted after it (skipped unless root; CI is root)."""
    return mount_tmpfs("4m")


def free_bytes(path: Path) -> int:
    vfs = os.statvfs(path)
    return vfs.f_bavail * vfs.f_frsize


def make_client(collector, spool: Path) -> AOPClient:
    return AOPClient(ClientConfig(api_key=collector.api_key, org_salt_key=collector.org_salt_key,
                                  base_url=collector.url, agent_id=3, spool_dir=str(spool), batch_interval=0.05,
                                  retry_backoff_base=0.01, retry_backoff_max=0.2))


def emit_until_disk_full(client: AOPClient, label: str, drops: int = 20) -> list[str]:
    """Emit padded events until ``drops`` of them came back disk_full; returns the ids reported stored."""
    builder = client.trace_builder
    stored, refused = [], 0
    while refused < drops:
        result = client.emit_event(builder.create_custom(name=label, data={"pad": PAD}))
        if result:
            stored.append(result.event_id)
        else:
            assert result.reason == "disk_full", result.reason
            refused += 1
    return stored


def test_full_disk_drains_every_stored_event_with_no_manual_step(small_fs, aop_collector, caplog, tmp_path) -> None:
    """Disk filled by other files and our events: every stored event is delivered, drops show, few WARNINGs."""
    spool = small_fs / "spool"
    client = make_client(aop_collector, spool)
    client.store  # opens the spool, and with it the reserve
    assert (spool / RESERVE_NAME).stat().st_size > 0
    with open(small_fs / "filler", "wb") as f:  # someone else's data takes most of the disk
        f.write(b"\0" * (free_bytes(small_fs) - 1_500_000))
    stored = emit_until_disk_full(client, "fill")
    assert len(stored) > 300
    caplog.set_level(logging.INFO, logger="aop_client")
    client.start()
    try:
        wait_until(lambda: aop_collector.event_ids() >= set(stored), timeout=60, interval=0.05)
    finally:
        assert client.stop(timeout=10)
    assert aop_collector.event_ids() == set(stored)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 2, [r.getMessage() for r in warnings]
    client.store.close()
    env = aop_env(tmp_path)
    report = run_aop("status", "--spool", str(spool), "--json", env=env)
    assert report.returncode == 0, report.stderr
    assert '"disk_full": 20' in report.stdout and '"pending": 0' in report.stdout
    table = run_aop("status", "--spool", str(spool), env=env)
    assert table.returncode == 0, table.stderr
    assert "20 (disk_full 20)" in table.stdout


def test_retained_delivered_events_are_reclaimed_under_pressure(small_fs, aop_collector) -> None:
    """Delivered events kept for retention give their space back once the disk fills; emits succeed again."""
    spool = small_fs / "spool"
    client = make_client(aop_collector, spool)  # default retention: a day, 256 MiB
    builder = client.trace_builder
    first = [client.emit_event(builder.create_custom(name="early", data={"pad": PAD})).event_id for _ in range(800)]
    client.start()
    try:
        wait_until(lambda: aop_collector.event_ids() >= set(first), timeout=60, interval=0.05)
        # kept for replay while there is room (the last ack may land just after the collector stored the batch)
        wait_until(lambda: client.get_stats()["delivered_retained"] == len(first), timeout=10, interval=0.05)
        later = emit_until_disk_full(client, "later")
        wait_until(lambda: aop_collector.event_ids() >= set(later), timeout=60, interval=0.05)

        def stored_again() -> bool:
            return bool(client.emit_event(builder.create_custom(name="probe", data={})))

        wait_until(stored_again, timeout=15, interval=0.1)
        again = [client.emit_event(builder.create_custom(name="again", data={"pad": PAD})) for _ in range(1000)]
        assert all(again), {r.reason for r in again if not r}
        wait_until(lambda: aop_collector.event_ids() >= {r.event_id for r in again}, timeout=60, interval=0.05)
        retained = {e.event_id for e in client.store.iter_run(client.get_stats()["run_id"])}
        assert retained.isdisjoint(first)  # the early events' space was given back (the later ones may be kept)
    finally:
        client.stop(timeout=10)
    assert set(first) | set(later) <= aop_collector.event_ids()
    client.store.close()


def test_drop_counts_survive_a_process_exit_on_a_full_disk(small_fs) -> None:
    """A process that hits a full disk and exits without close() leaves its exact disk_full count in the index."""
    spool = small_fs / "spool"
    child = textwrap.dedent(f"""
        from aop_client.store import DiskStore
        store = DiskStore({str(spool)!r})
        drops = 0
        i = 0
        while drops < 37:
            i += 1
            if not store.append(f"e{{i}}", "r", i, b"x" * 1500).stored:
                drops += 1
        print(i - drops)
    """)  # no close(): the counts must reach the index at interpreter exit
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    with DiskStore(spool) as store:
        stats = store.stats()
    assert stats.dropped == {"disk_full": 37}
    assert stats.pending == int(out.stdout)


def test_a_failed_commit_leaves_no_transaction_open(tmp_path) -> None:
    """A COMMIT that fails (as SQLITE_FULL can) is rolled back: the write lock is free for the next writer."""
    path = str(tmp_path / "t.sqlite3")
    first = state.open_index(path, fsync=False)
    other = state.open_index(path, fsync=False)
    other.execute("PRAGMA busy_timeout=0")
    first.execute("PRAGMA foreign_keys=ON")
    first.execute("CREATE TABLE parent(id INTEGER PRIMARY KEY)")
    first.execute("CREATE TABLE child(p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError):
        with state.Txn(first):
            first.execute("INSERT INTO child VALUES (42)")  # refused only at COMMIT
    assert not first.in_transaction
    with state.Txn(other):  # would be "database is locked" if the failed COMMIT had kept the transaction
        other.execute("INSERT INTO parent VALUES (1)")
    assert first.execute("SELECT COUNT(*) FROM child").fetchone()[0] == 0


def test_indexed_drain_in_fsync_mode_frees_the_disk_by_the_last_ack(small_fs) -> None:
    """Unfenced (indexed) leases and acks on a full disk: all delivered, and room for new appends at once."""
    store = DiskStore(small_fs / "s", durability="fsync")
    results = [store.append(f"e{i}", "r", i, b"x" * 1500) for i in range(1, 4000)]
    stored = [f"e{i}" for i, r in enumerate(results, 1) if r.stored]
    assert {r.reason for r in results if not r.stored} == {"disk_full"} and len(stored) > 1000
    assert _drain(store) == stored  # begin_epoch, then unfenced lease/ack until nothing is left
    assert store.append("after", "r", 9999, b"y" * 1500).stored  # the drained segment is gone already
    stats = store.stats()
    assert stats.pending == 1 and stats.dropped == {"disk_full": len(results) - len(stored)}
    store.close()


def test_the_reserve_is_private_never_follows_a_link_and_comes_back(tmp_path, monkeypatch) -> None:
    """index.reserve is 0600 and preallocated; release frees it, ensure refills it; a planted link is left alone."""
    store = DiskStore(tmp_path / "s")
    reserve = store._reserve
    st = os.lstat(reserve.path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == reserve.size and st.st_blocks * 512 >= reserve.size
    assert reserve.release() and os.lstat(reserve.path).st_size == 0
    assert not reserve.release()  # nothing left to give
    monkeypatch.delattr(os, "posix_fallocate")  # where there is none (macOS), zeros are written
    assert reserve.ensure() and os.lstat(reserve.path).st_blocks * 512 >= reserve.size
    store.close()
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    os.unlink(reserve.path)
    os.symlink(target, reserve.path)
    with DiskStore(tmp_path / "s") as again:
        assert not again._reserve.ensure() and not again._reserve.release()
    assert target.read_bytes() == b"keep me" and os.path.islink(reserve.path)


def test_a_disk_filled_by_someone_else_gives_back_the_retained_space(small_fs) -> None:
    """Retained delivered events, then another writer takes every free block: the drain goes on, space comes back.

    The index's write-ahead log never holds more than the reserve can absorb, so
    the checkpoint the pressure reclaim starts with fits in the reserve's blocks
    even with nothing else free. Failed calls are retried as the flusher would
    (a new epoch each time); a few may fail, but not for good.
    """
    store = DiskStore(small_fs / "s")
    ids = [f"e{i}" for i in range(1, 2001)]
    assert all(store.append(eid, "r", i, b"x" * 600).stored for i, eid in enumerate(ids, 1))
    assert _drain_fenced(store) == ids and store.stats().delivered_retained == len(ids)  # room: all kept
    assert os.lstat(small_fs / "s" / "index.sqlite3-wal").st_size <= store._reserve.size  # a checkpoint fits
    with open(small_fs / "filler", "wb", buffering=0) as f:  # someone else's data takes every block left
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    assert free_bytes(small_fs) < 4096
    late = []
    while store.append(f"late{len(late)}", "r", 5000 + len(late), b"y" * 600).stored:  # until one is refused
        late.append(f"late{len(late)}")
        assert len(late) < 20  # only what the last blocks held; the refusal sealed our segment
    delivered: list[str] = []
    for _attempt in range(10):
        try:
            delivered += _drain_fenced(store)
            break
        except StoreError:
            continue  # the flusher backs off and starts a new epoch
    assert delivered == late
    assert store.stats().delivered_retained == 0  # retention given up under pressure
    assert free_bytes(small_fs) > 1_000_000  # the delivered events' segment is gone
    assert store.append("after", "r", 10000, b"y" * 600).stored
    store.close()


def _drain_fenced(store: DiskStore) -> list[str]:
    """Drain as the flusher does: a new epoch, fenced (direct) leases and acks until nothing is left."""
    epoch = store.begin_epoch()
    out: list[str] = []
    while batch := store.lease(100, 1 << 20, epoch=epoch):
        store.ack([e.ref for e in batch], epoch=epoch)
        out.extend(e.event_id for e in batch)
    return out
