"""Moving the earlier release's default spool: never while someone still writes to it, never raising, never re-creating.

A process of the earlier release keeps its open segment across the rename and opens
its next one by the old path, which fails once the directory moved: so the spool is
moved only while the mover holds its flusher lock and no segment in it is still open
for writing. Another upgraded worker may move (or have moved) it at any moment: that
is "not moved", never an exception, and nothing is created at the old path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aop_client import AOPClient, ClientConfig
from aop_client import spool_identity as si
from aop_client.election import FlusherElection
from aop_client.signing import signed_body
from aop_client.store import DiskStore
from aop_client.trace_builder import TraceBuilder

SALT = "salt-1"

WRITER = textwrap.dedent("""
    import sys
    from aop_client.signing import signed_body
    from aop_client.store import DiskStore
    from aop_client.trace_builder import TraceBuilder
    store, builder = DiskStore(sys.argv[1], segment_bytes=4096), TraceBuilder(3)  # as an earlier release
    def emit(n):
        stored = 0
        for i in range(n):
            event = builder.create_custom(name="old", data={"i": i, "pad": "p" * 500})
            stored += store.append(event["event_id"], event["run_id"], event["seq"], signed_body(event, sys.argv[2])[1]).stored
        return stored
    print(emit(5), flush=True)
    sys.stdin.readline()
    print(emit(500), flush=True)
    store.close()
""")


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ClientConfig:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(si, "_checked_legacy", set())
    return ClientConfig(base_url="http://127.0.0.1:9", api_key="k", org_salt_key=SALT)


def _legacy(cfg: ClientConfig, n: int = 3) -> Path:
    old = si.legacy_default_path(cfg)
    builder = TraceBuilder(3)
    with DiskStore(old) as store:
        for i in range(n):
            event = builder.create_custom(name="old", data={"i": i})
            assert store.append(event["event_id"], event["run_id"], event["seq"], signed_body(event, SALT)[1])
    return old


def test_a_spool_an_earlier_release_still_writes_to_is_not_moved_and_loses_nothing(cfg: ClientConfig) -> None:
    old = si.legacy_default_path(cfg)
    old.parent.mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(old), SALT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert writer.stdout.readline().strip() == "5"
        assert si.migrate_legacy_default(cfg) is False
        assert old.is_dir() and not Path(cfg.spool_path).exists()
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "500"
    finally:
        writer.stdin.close()
        assert writer.wait(30) == 0
    with DiskStore(old) as store:
        assert store.stats().pending == 505
    # once it stopped (every segment sealed), the next process moves it
    si._checked_legacy.clear()
    assert si.migrate_legacy_default(cfg) is True
    with DiskStore(cfg.spool_path) as store:
        assert store.stats().pending == 505


def test_the_flusher_lock_is_held_from_the_check_to_the_rename(cfg: ClientConfig, monkeypatch) -> None:
    """No flusher of the earlier spool can start between the checks and the rename."""
    old = _legacy(cfg)
    attempts = []
    real = os.rename

    def rename(src, dst, *a, **k):
        if Path(src) == old:
            with FlusherElection(old) as other:
                attempts.append(other.try_acquire())
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", rename)
    assert si.migrate_legacy_default(cfg) is True
    assert attempts == [False]
    with FlusherElection(cfg.spool_path) as after:  # the lock moved with the spool and was released
        assert after.try_acquire()


def test_a_spool_another_worker_moves_meanwhile_is_not_moved_not_recreated_and_nothing_raises(
        cfg: ClientConfig, monkeypatch) -> None:
    old = _legacy(cfg)
    new = Path(cfg.spool_path)
    real = os.lstat

    def lstat(path, *a, **k):
        if os.fspath(path) == os.fspath(old) and not os.path.lexists(new):
            os.rename(old, new)  # the other upgraded worker wins right now
        return real(path, *a, **k)

    monkeypatch.setattr(os, "lstat", lstat)
    assert si.migrate_legacy_default(cfg) is False
    monkeypatch.setattr(os, "lstat", real)
    assert not old.exists(), "the earlier default spool must not be re-created"
    client = AOPClient(cfg)
    try:
        assert client.store.directory == str(new) and client.store.stats().pending == 3
    finally:
        client.store.close()


def test_a_spool_moved_after_its_checks_is_not_recreated(cfg: ClientConfig, monkeypatch) -> None:
    """The rename happens between the first look and the lock: the lock is not taken in a re-created directory."""
    old = _legacy(cfg)
    new = Path(cfg.spool_path)
    real = si.hold_quiet

    def hold_quiet(directory, **kw):
        os.rename(old, new)
        return real(directory, **kw)

    monkeypatch.setattr(si, "hold_quiet", hold_quiet)
    assert si.migrate_legacy_default(cfg) is False
    assert not old.exists() and new.is_dir()


def test_the_legacy_check_runs_once_per_process_and_never_opens_the_store(cfg: ClientConfig, monkeypatch) -> None:
    old = _legacy(cfg)
    Path(cfg.spool_path).mkdir(mode=0o700)  # blocked: the new default exists already
    opened = []
    monkeypatch.setattr(DiskStore, "stats", lambda self: opened.append(self) or pytest.fail("stats() called"))
    assert si.migrate_legacy_default(cfg) is False
    assert si.migrate_legacy_default(cfg) is False
    assert opened == [] and old.is_dir() and len(si._checked_legacy) == 1


def _backlog(spool: Path, n: int, salt_of=lambda i: SALT) -> None:
    """n signed events of an earlier release over many small segments."""
    builder = TraceBuilder(3)
    with DiskStore(spool, segment_bytes=4096) as store:
        for i in range(n):
            event = builder.create_custom(name="old", data={"i": i, "pad": "p" * 200})
            assert store.append(event["event_id"], event["run_id"], event["seq"], signed_body(event, salt_of(i))[1])


def test_binding_an_earlier_spool_samples_its_segments_without_indexing_them(tmp_path: Path) -> None:
    """The first emit on a spool of an earlier release must not ingest its whole backlog to check a sample."""
    import sqlite3

    spool = tmp_path / "s"
    _backlog(spool, 200)
    client = AOPClient(ClientConfig(base_url="http://127.0.0.1:9", api_key="k", org_salt_key=SALT,
                                    spool_dir=str(spool)))
    try:
        assert client.emit_event(client.trace_builder.create_custom("x", {}))
        indexed = sqlite3.connect(spool / "index.sqlite3").execute("SELECT count(*) FROM events").fetchone()[0]
        assert indexed == 0
    finally:
        client.store.close()


def test_the_sample_takes_the_oldest_and_the_newest_segments(tmp_path: Path) -> None:
    """Events of another salt only at the end of the backlog are still found."""
    spool = tmp_path / "s"
    _backlog(spool, 300, lambda i: SALT if i < 290 else "another-salt")
    assert len(os.listdir(spool / "segments")) > 10
    sampled, foreign = si.foreign_signatures(str(spool / "segments"), SALT)
    assert sampled == 64 and foreign == 10
    with pytest.raises(si.ConfigError, match="10 of 64 sampled"):
        AOPClient(ClientConfig(base_url="http://127.0.0.1:9", api_key="k", org_salt_key=SALT,
                               spool_dir=str(spool))).store
