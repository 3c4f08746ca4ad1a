"""One spool, one destination: applications sharing a spool_dir, a salt rotation, the earlier default spool.

Checked at real reference collectors on loopback: every event arrives at the
server of the client that emitted it, with a ``sig`` that verifies under that
client's ``org_salt_key`` (and under no other), and none is lost.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Optional

import pytest

from aop_client import AOPClient, ClientConfig
from aop_client.errors import ConfigError, SignatureError
from aop_client.signing import signed_body, verify_event
from aop_client.spool_identity import IDENTITY_FILE, read_identity
from aop_client.store import DiskStore
from aop_client.testing import wait_until
from aop_client.trace_builder import TraceBuilder
from aop_it_support import free_port

N = 40
FAST = dict(batch_size=10, batch_interval=0.05, retry_backoff_base=0.01, retry_backoff_max=0.2,
            max_retries=50, connect_timeout=1.0, read_timeout=5.0)


def client_of(collector: Any, spool_dir: Optional[Path], **fields: Any) -> AOPClient:
    """A client of ``collector``'s credentials (overridable) on ``spool_dir`` (None: the default spool)."""
    values = dict(api_key=collector.api_key, base_url=collector.url, org_salt_key=collector.org_salt_key,
                  spool_dir=None if spool_dir is None else str(spool_dir), agent_id=11, **FAST)
    values.update(fields)
    return AOPClient(ClientConfig(**values))


def emit(client: AOPClient, n: int = N) -> set[str]:
    """Emit n custom events of one fresh run; every one must be stored. Returns their ids."""
    ids = set()
    for i in range(n):
        result = client.emit_event(client.trace_builder.create_custom(name="bound", data={"i": i}))
        assert result, result.reason
        ids.add(result.event_id)
    return ids


def assert_signed_by(events: list[dict], salt: str, other: str) -> None:
    """Every event's sig verifies under ``salt`` and not under ``other``."""
    for event in events:
        verify_event(event, salt)
        with pytest.raises(SignatureError):
            verify_event(event, other)


def test_two_applications_given_one_spool_dir_each_deliver_to_their_own_server(tmp_path, aop_collector_factory):
    """The second application is refused with a ConfigError naming the fields; with its own spool_dir (as the
    message says) both deliver: every event at its own server, signed with its own salt, 0 lost."""
    col_a = aop_collector_factory(api_key="key-of-a", org_salt_key="salt-of-a")
    col_b = aop_collector_factory(api_key="key-of-b", org_salt_key="salt-of-b")
    shared = tmp_path / "shared-spool"
    app_a = client_of(col_a, shared)
    ids_a = emit(app_a)
    worker_a = client_of(col_a, shared)  # another worker of the same application is welcome
    assert worker_a.store.directory == app_a.store.directory

    app_b = client_of(col_b, shared)
    with pytest.raises(ConfigError) as refused:
        app_b.start()
    message = str(refused.value)
    assert refused.value.fields == ("base_url", "api_key", "org_salt_key") and refused.value.field == "base_url"
    assert col_b.url in message and "spool_dir" in message and "aop spool adopt" in message
    assert "key-of-b" not in message and "salt-of-b" not in message and "key-of-a" not in message
    identity = (shared / IDENTITY_FILE).read_text()
    assert "key-of-a" not in identity and "salt-of-a" not in identity
    with pytest.raises(ConfigError):  # emitting raises the same configuration error (never a transport one)
        app_b.emit_event(app_b.trace_builder.create_custom(name="x", data={}))
    assert "store_error" in app_b.get_stats() and "another destination" in app_b.get_stats()["store_error"]

    app_b = client_of(col_b, tmp_path / "spool-of-b")  # following the message: its own spool_dir
    ids_b = emit(app_b)
    app_a.start()
    app_b.start()
    try:
        wait_until(lambda: col_a.event_ids() >= ids_a and col_b.event_ids() >= ids_b, timeout=30)
    finally:
        stopped = [app_a.stop(timeout=5), app_b.stop(timeout=5)]
    assert stopped == [True, True]
    assert col_a.event_ids() == ids_a and col_b.event_ids() == ids_b  # each at its own server, 0 lost
    assert_signed_by(col_a.events(), "salt-of-a", "salt-of-b")
    assert_signed_by(col_b.events(), "salt-of-b", "salt-of-a")
    assert app_a.get_stats()["dead_letters"] == 0 and app_b.get_stats()["dead_letters"] == 0


def test_a_rolling_salt_rotation_with_the_default_spool_drains_both_deployments(tmp_path, monkeypatch,
                                                                                aop_collector_factory):
    """Same URL and key, salts s1 and s2, default spools: two spools. The server first verifies s1 (deployment 2
    is refused with 401, and its stats say so), then s2: each deployment's events arrive signed with its own
    salt, none lost, none a dead letter."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    port = free_port()
    old = aop_collector_factory(api_key="shared-key", org_salt_key="salt-one", port=port,
                                db_path=str(tmp_path / "old.sqlite3"))
    one = client_of(old, None, org_salt_key="salt-one")
    two = client_of(old, None, org_salt_key="salt-two")
    ids_one, ids_two = emit(one), emit(two)
    one.start()
    two.start()
    try:
        wait_until(lambda: old.event_ids() >= ids_one, timeout=30)
        wait_until(lambda: "401" in (two.get_stats()["last_error"] or ""), timeout=30)  # visible, not silent
        assert not ids_two & old.event_ids()
        old.stop()  # the server switches to the new salt on the same URL
        new = aop_collector_factory(api_key="shared-key", org_salt_key="salt-two", port=port,
                                    db_path=str(tmp_path / "new.sqlite3"))
        assert new.url == old.url
        wait_until(lambda: new.event_ids() >= ids_two, timeout=30)
    finally:
        stopped = [one.stop(timeout=5), two.stop(timeout=5)]
    assert stopped == [True, True]
    assert old.event_ids() == ids_one and new.event_ids() == ids_two
    assert_signed_by(old.events(), "salt-one", "salt-two")
    assert_signed_by(new.events(), "salt-two", "salt-one")
    assert one.get_stats()["dead_letters"] == 0 and two.get_stats()["dead_letters"] == 0
    assert one.config.spool_path != two.config.spool_path


def legacy_spool(root: Path, base_url: str, api_key: str, salt: Optional[str], n: int = N) -> tuple[Path, set[str]]:
    """A spool at the default path of earlier releases (tag over base_url and api_key), no identity file,
    holding n pending events signed with ``salt``, as an earlier client left it."""
    path = root / "aop_client" / "spool" / hashlib.sha256(f"{base_url}\n{api_key}".encode()).hexdigest()[:16]
    builder, ids = TraceBuilder(11), set()
    with DiskStore(path) as store:
        for i in range(n):
            event = builder.create_custom(name="legacy", data={"i": i})
            assert store.append(event["event_id"], event["run_id"], event["seq"], signed_body(event, salt)[1])
            ids.add(event["event_id"])
    assert not (path / IDENTITY_FILE).exists()
    return path, ids


def test_the_earlier_default_spool_is_picked_up_by_an_upgraded_client(tmp_path, monkeypatch, aop_collector):
    """Events pending at the earlier default path are moved to the new default spool and delivered, 0 lost."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    legacy, ids = legacy_spool(tmp_path / "state", aop_collector.url, aop_collector.api_key,
                               aop_collector.org_salt_key)
    client = client_of(aop_collector, None)
    assert client.config.spool_path != legacy
    client.start()
    try:
        assert client.flush(timeout=30)
    finally:
        stopped = client.stop(timeout=5)
    assert stopped
    assert aop_collector.event_ids() == ids
    assert not legacy.exists() and read_identity(client.config.spool_path) is not None


def test_the_earlier_default_spool_stays_for_a_deployment_with_another_salt(tmp_path, monkeypatch, caplog,
                                                                           aop_collector_factory):
    """A client whose salt does not verify the earlier spool's events leaves them there (one warning naming
    `aop flush --spool`), sends none of them, and delivers its own; the right deployment then picks them up."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    rotated = aop_collector_factory(api_key="k", org_salt_key="salt-new")
    legacy, old_ids = legacy_spool(tmp_path / "state", rotated.url, "k", "salt-old")
    fresh = client_of(rotated, None)
    with caplog.at_level(logging.WARNING, logger="aop_client"):
        mine = emit(fresh)
        fresh.start()
        try:
            assert fresh.flush(timeout=30)
        finally:
            stopped = fresh.stop(timeout=5)
    assert stopped
    assert rotated.event_ids() == mine  # none of the other salt's events was sent under salt-new
    assert legacy.is_dir() and any(f"aop flush --spool {legacy}" in r.getMessage() for r in caplog.records)
    with DiskStore(legacy) as store:
        assert store.stats().pending == len(old_ids)

    stale = client_of(rotated, None, org_salt_key="salt-old")  # the deployment that stored them
    assert stale.store.directory == str(stale.config.spool_path) and not legacy.exists()
    assert stale.store.stats().pending == len(old_ids)


def test_the_earlier_default_spool_held_by_a_running_flusher_stays_and_aop_flush_drains_it(
        tmp_path, monkeypatch, caplog, aop_collector):
    """A flusher of an earlier release still runs on the earlier default spool: the upgraded client leaves it
    (one warning naming it), starts its own spool; `aop flush --spool OLD` then delivers the old events."""
    from aop_client.election import FlusherElection
    from test_cli import aop_env, run_aop

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    legacy, old_ids = legacy_spool(tmp_path / "state", aop_collector.url, aop_collector.api_key,
                                   aop_collector.org_salt_key)
    running = FlusherElection(legacy)
    assert running.try_acquire()
    try:
        with caplog.at_level(logging.WARNING, logger="aop_client"):
            client = client_of(aop_collector, None)
            mine = emit(client)
        assert any("is its flusher" in r.getMessage() and str(legacy) in r.getMessage() for r in caplog.records)
        assert legacy.is_dir() and client.store.directory == str(client.config.spool_path)
    finally:
        running.close()
    assert client.flush(timeout=30) and client.stop(timeout=5)
    assert aop_collector.event_ids() == mine
    result = run_aop("flush", "--spool", str(legacy), "--base-url", aop_collector.url, "--api-key",
                     aop_collector.api_key, "--key", aop_collector.org_salt_key, "--timeout", "30",
                     env=aop_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert aop_collector.event_ids() == mine | old_ids and aop_collector.duplicate_deliveries() == 0
