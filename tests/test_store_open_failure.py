"""A spool that cannot be opened (full disk, read-only filesystem, I/O error): emit drops, counted, at no cost.

Every OSError on the way (the identity file written or read, the directory made) is
a StoreError, never a raw OSError out of emit_event/start/flush; emit_event drops
with ``reason='store_error'``; and the whole open (directory checks, index, binding)
is retried at most once a second, not on every emit. A spool bound to other
credentials is still a ConfigError, raised every time.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from aop_client import AOPClient, ClientConfig, client as client_module, forking, spool_identity
from aop_client.errors import AOPError, ConfigError, StoreError
from aop_client.spool_identity import read_identity


def _failing_open(monkeypatch: pytest.MonkeyPatch, name: str, code: int) -> None:
    real = os.open

    def fake(path, flags, *a, **k):
        if name in os.fspath(path):
            raise OSError(code, os.strerror(code), path)
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", fake)


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list:
    calls: list = []
    real = spool_identity.open_bound

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(spool_identity, "open_bound", counted)
    return calls


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_spool_whose_identity_cannot_be_written_drops_events_and_backs_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opens: list, code: int) -> None:
    clock = [1000.0]
    monkeypatch.setattr(client_module.time, "monotonic", lambda: clock[0])
    client = AOPClient(ClientConfig(base_url="http://127.0.0.1:9", api_key="k", spool_dir=str(tmp_path / "s")))
    event = client.trace_builder.create_custom("x", {"a": 1})
    with monkeypatch.context() as disk_full:
        _failing_open(disk_full, f".{spool_identity.IDENTITY_FILE}.", code)
        results = [client.emit_event(event) for _ in range(50)]
        assert [r.reason for r in results] == ["store_error"] * 50
        assert len(opens) == 1, "the open must not be retried on every emit"
        stats = client.get_stats()
        assert stats["dropped"]["store_error"] == 50
        assert os.strerror(code) in stats["store_error"] and stats["store_error"].startswith("StoreError")
        with pytest.raises(StoreError):
            client.start()
        assert len(opens) == 1
        clock[0] += 1.5  # a second later it is tried again
        assert client.emit_event(event).reason == "store_error" and len(opens) == 2
    clock[0] += 1.5  # once the disk has room, the next attempt opens it
    assert client.emit_event(client.trace_builder.create_custom("x", {"a": 2}))
    assert len(opens) == 3 and read_identity(tmp_path / "s") is not None
    client.store.close()


def test_an_unreadable_identity_is_a_store_error_not_an_oserror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = tmp_path / "s"
    cfg = ClientConfig(base_url="http://127.0.0.1:9", api_key="k", spool_dir=str(spool))
    AOPClient(cfg).store.close()
    _failing_open(monkeypatch, spool_identity.IDENTITY_FILE, errno.EIO)
    with pytest.raises(StoreError, match="Input/output error"):
        read_identity(spool)
    result = AOPClient(cfg).emit_event(AOPClient(cfg).trace_builder.create_custom("x", {}))
    assert result.reason == "store_error"


def test_a_spool_of_other_credentials_is_still_a_config_error_every_time(tmp_path: Path) -> None:
    spool = str(tmp_path / "s")
    AOPClient(ClientConfig(base_url="http://127.0.0.1:9", api_key="k", spool_dir=spool)).store.close()
    other = AOPClient(ClientConfig(base_url="http://127.0.0.1:9", api_key="other", spool_dir=spool))
    event = other.trace_builder.create_custom("x", {})
    for _ in range(2):
        with pytest.raises(ConfigError, match="api_key differs"):
            other.emit_event(event)


def test_no_raw_oserror_escapes_emit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the open hits (here: the spool directory itself cannot be made), emit returns a drop."""
    _failing_open(monkeypatch, str(tmp_path / "s"), errno.ENOSPC)
    client = AOPClient(ClientConfig(base_url="http://127.0.0.1:9", api_key="k", spool_dir=str(tmp_path / "s" / "x")))
    try:
        result = client.emit_event(client.trace_builder.create_custom("x", {}))
    except AOPError as e:  # pragma: no cover - the failure this test is for
        pytest.fail(f"emit_event raised {e!r}")
    assert result.reason == "store_error"


def test_a_raw_oserror_from_the_election_does_not_kill_the_flusher(tmp_path: Path, aop_collector) -> None:
    from aop_client.testing import wait_until

    client = AOPClient(ClientConfig(base_url=aop_collector.url, api_key=aop_collector.api_key,
                                    org_salt_key=aop_collector.org_salt_key, spool_dir=str(tmp_path / "s"),
                                    batch_interval=0.01))
    ids = {client.emit_event(client.trace_builder.create_custom("x", {"i": i})).event_id for i in range(3)}
    flusher = client._make_flusher()
    real, failures = flusher.election.try_acquire, []

    def try_acquire() -> bool:
        if len(failures) < 3:
            failures.append(1)
            raise OSError(errno.EIO, "Input/output error")
        return real()

    flusher.election.try_acquire = try_acquire
    client._flusher, client._flusher_gen, client._started = flusher, forking.generation, True
    flusher.start()
    try:
        wait_until(lambda: aop_collector.event_ids() == ids, timeout=10)
        assert len(failures) == 3
    finally:
        client.stop(timeout=2)
