"""Index damage found after opening: quarantined, rebuilt from the segments (bounded, logged once), then on.

Every test damages the pages of a live store's index (the events table and its
indexes, checked with ``PRAGMA integrity_check``) while a handle holds it open.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aop_client.errors import FencedError, StoreError
from aop_client.store import DiskStore
from aop_client.store.records import Record, decode_run
from index_damage import damage_index, flip_bytes, index_pages, integrity_ok, make_visible

NOBODY = 65534
EXAMPLES = int(os.environ.get("AOP_STORE_EXAMPLES", "200" if os.environ.get("AOP_SOAK") else "25"))


def _append(store: DiskStore, n: int, start: int = 0, run: str = "run-1") -> list[str]:
    ids = [f"evt-{i}" for i in range(start, start + n)]
    for i, eid in enumerate(ids, start):
        assert store.append(eid, run, i, b"body-%d-" % i + b"x" * 200).stored
    return ids


def _index_everything(store: DiskStore, run: str = "run-1") -> None:
    list(store.iter_run(run))  # ingests every record as an index row


def _indexed_store(tmp_path, n: int, **options: object) -> tuple[str, DiskStore, list[str]]:
    """A store holding n appended events, every one indexed as a row."""
    directory = str(tmp_path / "s")
    store = DiskStore(directory, **options)
    ids = _append(store, n)
    _index_everything(store)
    return directory, store, ids


def _drain(store: DiskStore, max_batches: int = 200) -> list[str]:
    """Lease and ack until nothing is left; fails when that does not end (the same events leased again and again)."""
    epoch = store.begin_epoch()
    out: list[str] = []
    for _ in range(max_batches):
        batch = store.lease(64, 1 << 20, epoch=epoch)
        if not batch:
            return out
        store.ack([e.ref for e in batch], epoch=epoch)
        out.extend(e.event_id for e in batch)
    raise AssertionError(f"the drain does not end: {len(out)} leased, e.g. {out[-3:]}, stats {store.stats()}")


def _rebuild_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and "rebuilt from the segments" in r.getMessage()]


def _set_aside(directory: str) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, "quarantine", "index.sqlite3*.bad")))


def test_damage_under_a_lease_is_repaired_and_in_flight_events_become_pending(tmp_path, caplog) -> None:
    """Pages damaged while a batch is leased: the ack is fenced, nothing is lost, one WARNING, copies set aside."""
    caplog.set_level(logging.WARNING, logger="aop_client")
    directory, store, ids = _indexed_store(tmp_path, 600)
    old_epoch = store.begin_epoch()
    delivered = store.lease(100, 1 << 20, epoch=old_epoch)
    store.ack([e.ref for e in delivered], epoch=old_epoch)
    dead = store.lease(10, 1 << 20, epoch=old_epoch)
    store.dead_letter([e.ref for e in dead], "refused", epoch=old_epoch)
    in_flight = store.lease(100, 1 << 20, epoch=old_epoch)
    assert all(e.ref > 0 for e in in_flight), "the lease must come from index rows"
    damage_index(directory)

    with pytest.raises(FencedError):  # the ack hits the damage, the index is rebuilt, the old epoch is stale there
        store.ack([e.ref for e in in_flight], epoch=old_epoch)

    assert integrity_ok(directory)
    damage = store.index_damage()
    assert damage is not None and damage["rebuilds"] == 1 and damage["events_recovered"] == 600
    assert len(_rebuild_warnings(caplog)) == 1
    assert "malformed" in _rebuild_warnings(caplog)[0].getMessage()  # the cause is named
    aside = _set_aside(directory)
    assert any(n.startswith("index.sqlite3.") for n in aside) and any(n.startswith("index.sqlite3-wal.") for n in aside)
    stats = store.stats()
    assert (stats.pending, stats.in_flight, stats.delivered_retained) == (600, 0, 0)
    again = _drain(store)
    assert sorted(again) == sorted(ids)  # in flight, delivered and dead letters alike are sent again (deduped)
    assert len(_rebuild_warnings(caplog)) == 1
    store.close()


def test_a_rebuilt_index_fences_every_old_epoch_and_names_no_old_ref(tmp_path) -> None:
    """Epochs and row ids of the rebuilt index start above the damaged one's: old refs and epochs act on nothing."""
    directory, store, _ids = _indexed_store(tmp_path, 200)
    old_epoch = store.begin_epoch()
    held = store.lease(50, 1 << 20, epoch=old_epoch)
    other = DiskStore(directory)  # another process's handle, open on the same index
    damage_index(directory)
    new_epoch = other.begin_epoch()  # hits the damage: `other` rebuilds, then starts its epoch on the new index
    assert new_epoch > old_epoch
    fresh = other.lease(50, 1 << 20, epoch=new_epoch)
    assert {e.event_id for e in fresh} == {e.event_id for e in held}  # what was in flight is pending again, first
    assert not {e.ref for e in held} & {e.ref for e in fresh}
    with pytest.raises(FencedError):
        store.ack([e.ref for e in held], epoch=old_epoch)
    assert other.stats().in_flight == 50
    other.ack([e.ref for e in fresh], epoch=new_epoch)
    assert store.index_damage()["rebuilds"] == 1  # the first handle followed the rebuild; it did not rebuild again
    store.close()
    other.close()


def test_another_handle_follows_a_rebuild_without_rebuilding_again(tmp_path, caplog) -> None:
    """Two handles see the same damage: one rebuilds, the other just goes on with the new index."""
    caplog.set_level(logging.WARNING, logger="aop_client")
    directory = str(tmp_path / "s")
    first, second = DiskStore(directory), DiskStore(directory)
    ids = _append(first, 300)
    _index_everything(first)
    damage_index(directory)
    assert first.stats().pending == 300
    assert second.stats().pending == 300
    assert sorted(_drain(second)) == sorted(ids)
    assert len(_rebuild_warnings(caplog)) == 1
    assert first.index_damage()["rebuilds"] == 1
    first.close()
    second.close()


def test_damage_again_within_the_interval_is_an_error_not_a_loop(tmp_path, caplog) -> None:
    """A disk that keeps corrupting: at most one rebuild per interval, a StoreError naming the cause in between."""
    caplog.set_level(logging.WARNING, logger="aop_client")
    directory, store, ids = _indexed_store(tmp_path, 300)
    damage_index(directory, seed=1)
    assert store.stats().pending == 300
    _index_everything(store)
    damage_index(directory, seed=2)
    with pytest.raises(StoreError, match="damaged again .* malformed"):
        store.stats()
    assert len(_rebuild_warnings(caplog)) == 1
    store.rebuild_interval = 0.0  # the interval has passed
    assert sorted(_drain(store)) == sorted(ids)
    assert store.index_damage()["rebuilds"] == 2
    assert len(_rebuild_warnings(caplog)) == 2
    store.close()


def test_appends_go_on_while_the_index_is_damaged(tmp_path) -> None:
    """The emit path never touches a damaged page; events appended during the damage are delivered after it."""
    directory, store, ids = _indexed_store(tmp_path, 200)
    damage_index(directory)
    ids += _append(store, 200, start=200)
    assert sorted(_drain(store)) == sorted(ids)
    store.close()


def test_an_append_that_must_evict_repairs_the_index_and_stores(tmp_path) -> None:
    """drop_oldest on a full store evicts through the index: damage there is repaired, the new event is stored."""
    directory, store, ids = _indexed_store(tmp_path, 100, max_events=100, full_policy="drop_oldest")
    damage_index(directory)
    result = store.append("late", "run-1", 100, b"late")
    assert result.stored, result.reason
    assert store.index_damage()["rebuilds"] == 1
    assert sorted(_drain(store)) == sorted(ids[1:] + ["late"])  # the rebuilt index evicted the oldest, once
    store.close()


def _segment_records(directory: str) -> list[tuple[str, Record]]:
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "segments", "*.seg"))):
        with open(path, "rb") as f:
            out += [(path, r) for r in decode_run(f.read()).items if type(r) is Record]
    return out


def _flip_body(path: str, record: Record) -> None:
    with open(path, "r+b") as f:
        f.seek(record.body_offset + 2)
        byte = f.read(1)
        f.seek(record.body_offset + 2)
        f.write(bytes([byte[0] ^ 0x5A]))


def test_damage_found_at_lease_of_an_index_row_writes_its_bad_copy(tmp_path) -> None:
    """A record that rots after it was indexed is left out of the batch, counted and copied to quarantine/."""
    directory = str(tmp_path / "s")
    writer = DiskStore(directory)
    ids = _append(writer, 5)
    _index_everything(writer)  # indexed while intact
    path, victim = _segment_records(directory)[2]
    _flip_body(path, victim)
    reader = DiskStore(directory)  # no cached bodies: the lease reads the segment again
    assert _drain(reader) == ids[:2] + ids[3:]
    assert reader.stats().quarantined == 1
    copy = os.path.join(directory, "quarantine", f"{os.path.basename(path)}.{victim.offset}.bad")
    with open(path, "rb") as f:
        f.seek(victim.offset)
        assert open(copy, "rb").read() == f.read(victim.length)
    assert oct(os.stat(copy).st_mode & 0o777) == oct(0o600)
    writer.close()
    reader.close()


def test_damage_found_by_a_direct_lease_writes_its_bad_copy(tmp_path) -> None:
    """A record damaged before any ingest, met by the elected flusher's direct lease, is copied to quarantine/."""
    directory = str(tmp_path / "s")
    store = DiskStore(directory)
    ids = _append(store, 5)
    path, victim = _segment_records(directory)[1]
    _flip_body(path, victim)
    epoch = store.begin_epoch()
    got: list[str] = []
    while batch := store.lease(64, 1 << 20, epoch=epoch):
        store.ack([e.ref for e in batch], epoch=epoch)
        got += [e.event_id for e in batch]
    assert got == ids[:1] + ids[2:]
    assert os.path.exists(os.path.join(directory, "quarantine", f"{os.path.basename(path)}.{victim.offset}.bad"))
    store.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[str, set[str], set[str]]:
    """A closed spool: 300 events, 80 delivered and retained, 10 dead letters, 40 left in flight."""
    directory = str(tmp_path_factory.mktemp("template") / "s")
    store = DiskStore(directory)
    ids = set(_append(store, 300))
    _index_everything(store)
    epoch = store.begin_epoch()
    delivered = store.lease(80, 1 << 20, epoch=epoch)
    store.ack([e.ref for e in delivered], epoch=epoch)
    dead = store.lease(10, 1 << 20, epoch=epoch)
    store.dead_letter([e.ref for e in dead], "refused", epoch=epoch)
    store.lease(40, 1 << 20, epoch=epoch)
    store.close()
    return directory, ids, {e.event_id for e in delivered + dead}


def _claimed_done(index_copy: str, event_id: str) -> bool:
    """True when the damaged index (a copy taken before any repair) holds a readable row saying event_id is done.

    SQLite keeps no checksum of its pages: a flip that rewrites an event's
    state to delivered or dead inside an otherwise well-formed row is damage
    no reader can see (docs/design.md, "Damage is contained").
    """
    conn = sqlite3.connect(index_copy)
    try:
        rows = conn.execute("SELECT state FROM events WHERE event_id = ?", (event_id,)).fetchall()
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()
    return bool(rows) and all(r[0] in (2, 3) for r in rows)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_byte_flips_in_index_pages_never_lose_an_event(template, tmp_path_factory, data) -> None:
    """Whatever bytes of the index flip under an open handle, no event is lost to damage that can be seen.

    After the drain, delivered before + delivered after covers every appended
    event, except one whose own row the flips rewrote, well-formed, to say it
    was delivered or dead-lettered (see :func:`_claimed_done`).
    """
    source, ids, done_before = template
    directory = str(tmp_path_factory.mktemp("flip") / "s")
    shutil.copytree(source, directory)
    store = DiskStore(directory)
    store.stats()  # the handle is open and has read the index before the damage
    size, pages = index_pages(directory, ("events", "events_state_ord"))
    file_size = os.path.getsize(os.path.join(directory, "index.sqlite3"))
    in_event_pages = st.builds(lambda page, at: (page - 1) * size + at, st.sampled_from(pages), st.integers(0, size - 1))
    offsets = st.one_of(in_event_pages, st.integers(0, file_size - 1))  # mostly where the events are, or anywhere
    spots = data.draw(st.lists(st.tuples(offsets, st.integers(1, 255)), min_size=1, max_size=12))
    flip_bytes(directory, spots)
    index_copy = os.path.join(directory, "damaged-copy.sqlite3")
    shutil.copyfile(os.path.join(directory, "index.sqlite3"), index_copy)
    try:
        make_visible(directory)
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        pass  # the nudge itself met the damage; the drain below will too
    store.rebuild_interval = 0.0
    got: set[str] = set()
    for _attempt in range(3):  # a drain that meets damage rebuilds; a fenced epoch starts again
        try:
            got |= set(_drain(store))
            break
        except FencedError:
            continue
    lost = ids - done_before - got
    assert all(_claimed_done(index_copy, e) for e in lost), f"lost to visible damage: {sorted(lost)[:5]}"
    store.close()
    shutil.rmtree(directory)


@pytest.mark.parametrize("opened_first", [False, True], ids=["at-open", "while-open"])
@pytest.mark.parametrize("offset, value", [(18, 3), (19, 3), (16, 0x33)], ids=["write-version", "read-version", "page-size"])
def test_a_damaged_header_is_rebuilt_at_open_and_while_open(tmp_path, offset: int, value: int, opened_first: bool) -> None:
    """Header bytes that make SQLite refuse the index (or refuse to write it) are damage, whenever they are met."""
    directory = str(tmp_path / "s")
    writer = DiskStore(directory)
    ids = _append(writer, 20)
    _index_everything(writer)
    writer.close()
    store = DiskStore(directory) if opened_first else None
    make_visible(directory)
    with open(os.path.join(directory, "index.sqlite3"), "r+b") as f:
        f.seek(offset)
        f.write(bytes([value]))
    store = store or DiskStore(directory)
    got: list[str] = []
    for _attempt in range(2):
        try:
            got = _drain(store)
            break
        except FencedError:
            continue
    assert sorted(got) == sorted(ids)
    if opened_first:
        # The open connection keeps its cached header and may write it back whole (a checkpoint of page 1):
        # the next handle finds the index healed by SQLite, or damaged and rebuilds it; either way it works.
        store.close()
        store = DiskStore(directory)
        stats = store.stats()
        rebuilt = store.index_damage() is not None
        assert integrity_ok(directory) and stats.pending == (len(ids) if rebuilt else 0)
    else:
        assert store.index_damage()["rebuilds"] == 1
    store.close()
