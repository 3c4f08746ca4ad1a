"""Bounds and full policies: drop newest, drop oldest, block; oversized events; fork safety."""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aop_client.errors import ValidationError
from aop_client.store import AppendResult, DiskStore

EXAMPLES = int(os.environ.get("AOP_STORE_EXAMPLES", "100" if os.environ.get("AOP_SOAK") else "20"))


def _drain(store: DiskStore) -> list[str]:
    epoch = store.begin_epoch()
    out: list[str] = []
    while batch := store.lease(100, 1 << 20):
        store.ack([e.ref for e in batch], epoch=epoch)
        out.extend(e.event_id for e in batch)
    return out


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 20), attempts=st.integers(0, 40))
def test_drop_newest_keeps_the_first_max_events(tmp_path_factory, limit: int, attempts: int) -> None:
    """With drop_newest, exactly the first max_events appends are stored and the rest counted as 'full'."""
    store = DiskStore(tmp_path_factory.mktemp("dn") / "s", max_events=limit)
    results = [store.append(f"e{i}", "r", i, b"{}") for i in range(1, attempts + 1)]
    kept = min(limit, attempts)
    assert results == [AppendResult(True)] * kept + [AppendResult(False, "full")] * (attempts - kept)
    assert store.stats().dropped == ({"full": attempts - kept} if attempts > kept else {})
    assert _drain(store) == [f"e{i}" for i in range(1, kept + 1)]
    assert store.append("again", "r", attempts + 1, b"{}").stored, "room must come back once delivered"
    store.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 10), attempts=st.integers(0, 30))
def test_drop_oldest_keeps_the_newest_max_events(tmp_path_factory, limit: int, attempts: int) -> None:
    """With drop_oldest, the newest max_events survive and each eviction is counted as 'evicted'."""
    store = DiskStore(tmp_path_factory.mktemp("do") / "s", max_events=limit, full_policy="drop_oldest")
    assert all(store.append(f"e{i}", "r", i, b"{}").stored for i in range(1, attempts + 1))
    evicted = max(0, attempts - limit)
    assert store.stats().dropped == ({"evicted": evicted} if evicted else {})
    assert _drain(store) == [f"e{i}" for i in range(evicted + 1, attempts + 1)]
    store.close()


def test_block_times_out_then_drops_newest(tmp_path) -> None:
    """With block and no flusher, append waits block_timeout and then drops the event as 'full'."""
    store = DiskStore(tmp_path / "s", max_events=2, full_policy="block", block_timeout=0.3)
    assert store.append("a", "r", 1, b"1").stored and store.append("b", "r", 2, b"2").stored
    started = time.monotonic()
    assert store.append("c", "r", 3, b"3") == AppendResult(False, "full")
    assert time.monotonic() - started >= 0.3
    assert store.stats().dropped == {"full": 1}
    store.close()


def test_block_succeeds_when_the_flusher_makes_room(tmp_path) -> None:
    """With block, an append waiting for room is stored as soon as another handle delivers events."""
    emitter = DiskStore(tmp_path / "s", max_events=2, full_policy="block", block_timeout=30)
    flusher = DiskStore(tmp_path / "s")
    assert emitter.append("a", "r", 1, b"1").stored and emitter.append("b", "r", 2, b"2").stored
    go = threading.Event()
    delivered: list[str] = []

    def drain() -> None:
        go.wait(30)
        delivered.extend(_drain(flusher))

    t = threading.Thread(target=drain)
    t.start()
    go.set()
    assert emitter.append("c", "r", 3, b"3").stored
    t.join(30)
    assert delivered[:2] == ["a", "b"]
    assert (delivered + _drain(flusher)) [-1] == "c"
    emitter.close()
    flusher.close()


def test_oversized_event_is_refused_and_counted(tmp_path) -> None:
    """An event over max_event_bytes is refused as 'too_large'; its neighbours are stored."""
    store = DiskStore(tmp_path / "s", max_event_bytes=1000)
    assert store.append("small1", "r", 1, b"x" * 1000).stored
    assert store.append("big", "r", 2, b"x" * 1001) == AppendResult(False, "too_large")
    assert store.append("small2", "r", 3, b"x" * 10).stored
    assert store.stats().dropped == {"too_large": 1}
    assert _drain(store) == ["small1", "small2"]
    store.close()


def test_byte_bound_refuses_when_segments_fill_it(tmp_path) -> None:
    """max_bytes bounds the segment bytes on disk: appends past it are dropped as 'full'."""
    store = DiskStore(tmp_path / "s", max_bytes=4000)
    results = [store.append(f"e{i}", "r", i, b"x" * 300) for i in range(1, 30)]
    stored = [r.stored for r in results]
    assert stored == sorted(stored, reverse=True), "once full, stays full until space is freed"
    assert 5 <= stored.count(True) <= 12
    assert store.stats().dropped == {"full": stored.count(False)}
    store.close()


@pytest.mark.parametrize("bad", [("", "r", 1, b"x"), ("e", "r", -1, b"x"), ("e", "r", 1, "text"), (7, "r", 1, b"x")])
def test_malformed_append_arguments_raise_validation_error(tmp_path, bad) -> None:
    """Programming errors (empty id, negative seq, str body, non-str id) raise ValidationError."""
    store = DiskStore(tmp_path / "s")
    with pytest.raises(ValidationError):
        store.append(*bad)
    assert store.stats().pending == 0
    store.close()


def test_handle_created_before_fork_works_in_child_without_duplicates(tmp_path) -> None:
    """A store handle inherited through fork appends to its own segment; nothing appears twice."""
    store = DiskStore(tmp_path / "s")
    for i in range(1, 51):
        assert store.append(f"p{i}", "parent", i, b"p").stored
    pid = os.fork()
    if pid == 0:
        ok = all(store.append(f"c{i}", "child", i, b"c").stored for i in range(1, 51))
        store.close()
        os._exit(0 if ok else 1)
    for i in range(51, 101):
        assert store.append(f"p{i}", "parent", i, b"p").stored
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    got = _drain(store)
    assert len(got) == len(set(got)) == 150
    assert [e for e in got if e.startswith("c")] == [f"c{i}" for i in range(1, 51)]
    assert [e for e in got if e.startswith("p")] == [f"p{i}" for i in range(1, 101)]
    assert len(os.listdir(tmp_path / "s" / "segments")) == 2
    store.close()


def test_pending_is_exact_while_a_backlog_is_partly_indexed(tmp_path) -> None:
    """stats().pending counts indexed and not-yet-indexed events exactly, across handles and segments."""
    a = DiskStore(tmp_path / "s", segment_bytes=1024 * 1024)
    b = DiskStore(tmp_path / "s")
    for i in range(1, 6001):
        assert a.append(f"a{i}", "ra", i, b"x" * 400).stored
    epoch = b.begin_epoch()
    leased = b.lease(10, 1 << 20)
    assert [e.event_id for e in leased] == [f"a{i}" for i in range(1, 11)]
    indexed = b._db().execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert 10 < indexed < 6000, "the point is a partly indexed backlog"
    s = b.stats()
    assert (s.pending, s.in_flight) == (5990, 10)
    for i in range(1, 101):
        assert b.append(f"b{i}", "rb", i, b"y").stored
    b.ack([e.ref for e in leased], epoch=epoch)
    fresh = DiskStore(tmp_path / "s")
    assert fresh.stats().pending == b.stats().pending == 6090
    assert fresh.stats().delivered_retained == 10
    for store in (a, b, fresh):
        store.close()
