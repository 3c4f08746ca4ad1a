"""Damage containment: torn tails, flipped bits and lost metadata cost only the damaged records."""

from __future__ import annotations

import glob
import os
import shutil

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aop_client.store import DiskStore
from aop_client.store.records import Record, decode_run

EXAMPLES = int(os.environ.get("AOP_STORE_EXAMPLES", "200" if os.environ.get("AOP_SOAK") else "30"))


def _fill(directory: str, n: int, body_size: int = 60) -> list[str]:
    """Append n events of one run through a handle that is then closed; returns their ids."""
    store = DiskStore(directory)
    ids = [f"evt-{i}" for i in range(1, n + 1)]
    for i, eid in enumerate(ids, 1):
        assert store.append(eid, "run-1", i, bytes([i % 251]) * body_size).stored
    store.close()
    return ids


def _segment(directory: str) -> str:
    (path,) = glob.glob(os.path.join(directory, "segments", "*.seg"))
    return path


def _records(path: str) -> list[Record]:
    with open(path, "rb") as f:
        return [r for r in decode_run(f.read()).items if type(r) is Record]


def _drain_ids(store: DiskStore) -> list[str]:
    epoch = store.begin_epoch()
    out: list[str] = []
    while batch := store.lease(50, 1 << 20):
        store.ack([e.ref for e in batch], epoch=epoch)
        out.extend(e.event_id for e in batch)
    return out


def _drop_index(directory: str) -> None:
    for path in glob.glob(os.path.join(directory, "index.sqlite3*")):
        os.unlink(path)


def test_truncated_last_record_at_every_offset(tmp_path) -> None:
    """Cutting the newest segment anywhere inside its last record loses that record only, counted once."""
    template = str(tmp_path / "template")
    ids = _fill(template, 5)
    seg = _segment(template)
    last = _records(seg)[-1]
    for cut in range(last.offset, last.offset + last.length):
        work = str(tmp_path / f"cut-{cut}")
        shutil.copytree(template, work)
        _drop_index(work)
        with open(_segment(work), "r+b") as f:
            f.truncate(cut)
        store = DiskStore(work)
        assert _drain_ids(store) == ids[:-1], f"cut at {cut}"
        assert store.stats().quarantined == (0 if cut == last.offset else 1), f"cut at {cut}"
        store.close()
        shutil.rmtree(work)


def test_truncation_after_indexing_is_quarantined_on_read(tmp_path) -> None:
    """A record indexed before its bytes were cut off is quarantined when leased; the rest flow."""
    directory = str(tmp_path / "s")
    ids = _fill(directory, 6)
    store = DiskStore(directory)
    assert store.stats().pending == 6
    list(store.iter_run("run-1"))  # indexes every record
    last = _records(_segment(directory))[-1]
    with open(_segment(directory), "r+b") as f:
        f.truncate(last.offset + last.length // 2)
    assert _drain_ids(store) == ids[:-1]
    stats = store.stats()
    assert (stats.quarantined, stats.pending, stats.in_flight, stats.delivered_retained) == (1, 0, 0, 5)
    store.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), indexed_first=st.booleans())
def test_flipped_bits_lose_only_damaged_records(tmp_path_factory, data, indexed_first: bool) -> None:
    """Flipping up to 3 bits loses exactly the records holding them; quarantine counts them."""
    directory = str(tmp_path_factory.mktemp("flip") / "s")
    n = data.draw(st.integers(3, 12))
    ids = _fill(directory, n, body_size=data.draw(st.integers(0, 120)))
    seg = _segment(directory)
    records = _records(seg)
    size = os.path.getsize(seg)
    flips = data.draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 7)), min_size=1, max_size=3, unique_by=lambda t: t[0]))
    store = DiskStore(directory)
    if indexed_first:
        list(store.iter_run("run-1"))
    with open(seg, "r+b") as f:
        for pos, bit in flips:
            f.seek(pos)
            byte = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([byte ^ (1 << bit)]))
    damaged = {i for i, r in enumerate(records) for pos, _ in flips if r.offset <= pos < r.offset + r.length}
    # The store keeps working: a later append still comes through.
    assert store.append("after", "run-2", 1, b"later").stored
    got = _drain_ids(store)
    assert got == [eid for i, eid in enumerate(ids) if i not in damaged] + ["after"]
    runs_of_damage = sum(1 for i in damaged if i - 1 not in damaged)
    stats = store.stats()
    assert runs_of_damage <= stats.quarantined <= len(damaged)
    assert (stats.pending, stats.in_flight, stats.delivered_retained) == (0, 0, len(got))
    store.close()
    shutil.rmtree(directory)


def test_missing_index_rebuilds_from_segments(tmp_path) -> None:
    """Deleting the index loses no event: every record comes back pending (redelivery is deduped)."""
    directory = str(tmp_path / "s")
    ids = _fill(directory, 8)
    store = DiskStore(directory)
    epoch = store.begin_epoch()
    batch = store.lease(3, 1 << 20)
    store.ack([e.ref for e in batch], epoch=epoch)
    store.dead_letter([e.ref for e in store.lease(1, 1 << 20)], "bad", epoch=epoch)
    store.close()
    _drop_index(directory)
    reopened = DiskStore(directory)
    assert reopened.stats().pending == 8
    assert sorted(_drain_ids(reopened)) == sorted(ids)
    reopened.close()


def test_corrupt_index_is_set_aside_and_rebuilt(tmp_path) -> None:
    """A garbage index file is moved to quarantine/ and rebuilt; no event is lost."""
    directory = str(tmp_path / "s")
    ids = _fill(directory, 4)
    _drop_index(directory)
    with open(os.path.join(directory, "index.sqlite3"), "wb") as f:
        f.write(b"this is not a database" * 300)
    store = DiskStore(directory)
    assert _drain_ids(store) == ids
    assert glob.glob(os.path.join(directory, "quarantine", "index.sqlite3.*.bad"))
    store.close()


def test_damage_in_live_segment_does_not_block_later_events(tmp_path) -> None:
    """Garbage in the middle of a segment still being written is skipped; later appends are delivered."""
    directory = str(tmp_path / "s")
    store = DiskStore(directory)
    for i in range(1, 4):
        assert store.append(f"a{i}", "r", i, b"x" * 50).stored
    seg = _segment(directory)
    middle = _records(seg)[1]
    with open(seg, "r+b") as f:
        f.seek(middle.offset + 3)
        f.write(b"\x00\xff\x00")
    for i in range(4, 7):
        assert store.append(f"a{i}", "r", i, b"x" * 50).stored
    assert _drain_ids(store) == ["a1", "a3", "a4", "a5", "a6"]
    assert store.stats().quarantined == 1
    store.close()
