"""Failures are visible: a wrong key, a bad salt, an unreachable server each log one WARNING saying what to check.

Real reference collectors on loopback; the flusher is driven with flush(timeout)
(many failed attempts in each), then the server is fixed (a collector that accepts
the client's credentials starts on the same port) and the flusher logs "recovered".
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from aop_client import AOPClient, ClientConfig
from aop_client.delivery_report import LAST_ERROR_FILE
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY, wait_until
from test_cli import closed_port_url, env, run_aop  # noqa: F401  (env is a fixture)

WRONG_KEY = "aop-wrong-api-key"
WRONG_SALT = "aop-wrong-salt"


def client_for(tmp_path: Path, url: str, **extra: Any) -> AOPClient:
    fields = dict(api_key=TEST_API_KEY, org_salt_key=TEST_ORG_SALT_KEY, base_url=url, agent_id=3,
                  spool_dir=str(tmp_path / "spool"), batch_interval=0.01, retry_backoff_base=0.005,
                  retry_backoff_max=0.02, max_retries=2)
    fields.update(extra)
    return AOPClient(ClientConfig(**fields))


def emit(client: AOPClient, n: int) -> list[str]:
    ids = []
    for i in range(n):
        event = client.trace_builder.create_action_request(action="lookup", params={"i": i})
        assert client.emit_event(event)
        ids.append(event["event_id"])
    return ids


def our_records(caplog: Any, level: int) -> list[logging.LogRecord]:
    """Records of the client library itself (not of the collector running in the test process)."""
    return [r for r in caplog.records if r.name.startswith("aop_client") and not r.name.startswith(
        "aop_client.collector") and r.levelno == level]


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


CASES = {
    # name: (collector fields while failing, client fields, hint fragment, kind)
    "wrong_key": (dict(), dict(api_key=WRONG_KEY), "check api_key", "auth"),
    "bad_salt": (dict(), dict(org_salt_key=WRONG_SALT), "check that org_salt_key", "signature"),
    "refused": (None, dict(), "nothing accepts connections at base_url", "refused"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_failure_logs_one_warning_with_its_hint_then_recovers(case: str, tmp_path: Path, caplog: Any,
                                                                   aop_collector_factory: Any,
                                                                   env: dict[str, str]) -> None:  # noqa: F811
    """Many failed attempts: exactly one WARNING (with the hint of its kind); get_stats() and `aop status`
    show the error and since when; a fixed server gets one 'recovered' INFO and every event."""
    caplog.set_level(logging.INFO)
    collector_fields, client_fields, hint, kind = CASES[case]
    failing = aop_collector_factory(**collector_fields) if collector_fields is not None else None
    url = failing.url if failing is not None else closed_port_url()
    client = client_for(tmp_path, url, **client_fields)
    ids = emit(client, 5)
    try:
        # many failed attempts (each flush retries what max_retries parked), polled with a deadline, not timed:
        # the log must still say it once
        wait_until(lambda: client.flush(timeout=0.05) is False and client._flusher.stats()["batches_sent"] >= 5,
                   timeout=20)
        warnings = our_records(caplog, logging.WARNING)
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        message = warnings[0].getMessage()
        assert hint in message and f"({kind})" in message, message
        stats = client.get_stats()
        assert stats["last_error"] and stats["delivered"] == 0, stats
        status = json.loads(run_aop("status", "--spool", str(tmp_path / "spool"), "--json", env=env).stdout)
        last = status["last_error"]
        # written on the first failure of a kind, then at most every PERSIST_EVERY seconds
        assert last["kind"] == kind and last["count"] >= 1 and last["recovered_at"] is None
        assert last["first_seen"] <= last["last_seen"] and hint in last["hint"]
        table = run_aop("status", "--spool", str(tmp_path / "spool"), env=env).stdout
        assert "last error" in table and f"{kind}:" in table and "since" in table, table

        # fix the server side: a collector that accepts the client's credentials, on the same port
        if failing is not None:
            failing.stop()
        c = client.config
        fixed = aop_collector_factory(api_key=c.api_key, org_salt_key=c.org_salt_key, port=port_of(url))
        assert client.flush(timeout=20) is True
        wait_until(lambda: set(ids) <= set(fixed.event_ids()), timeout=10)
        recovered = [r.getMessage() for r in our_records(caplog, logging.INFO) if "recovered" in r.getMessage()]
        # (while the collector is swapped, the port may refuse a few attempts: that kind ends too)
        assert len(recovered) == 1 and kind in recovered[0], recovered
        last = json.loads((tmp_path / "spool" / LAST_ERROR_FILE).read_text())
        assert last["kind"] in (kind, "refused") and last["recovered_at"] is not None
    finally:
        client.stop(timeout=2, flush=False)


def test_last_error_file_is_private_and_never_followed(tmp_path: Path, caplog: Any) -> None:
    """last_error.json is 0600 and replaces a planted symlink instead of writing through it."""
    spool = tmp_path / "spool"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    client = client_for(tmp_path, closed_port_url())
    emit(client, 1)
    (spool / LAST_ERROR_FILE).symlink_to(victim)
    try:
        assert client.flush(timeout=0.5) is False
        path = spool / LAST_ERROR_FILE
        wait_until(lambda: not path.is_symlink(), timeout=5)
        assert victim.read_text() == "precious"
        assert (path.stat().st_mode & 0o777) == 0o600
        assert json.loads(path.read_text())["kind"] == "refused"
    finally:
        client.stop(timeout=2, flush=False)


def test_aop_debug_logs_every_batch_outcome(tmp_path: Path, caplog: Any, aop_collector: Any) -> None:
    """AOP_DEBUG=1: one INFO line per batch with status, counts and latency; no event content."""
    caplog.set_level(logging.INFO)
    config = ClientConfig.from_env({"AOP_DEBUG": "1"}, api_key=TEST_API_KEY, org_salt_key=TEST_ORG_SALT_KEY,
                                   base_url=aop_collector.url, spool_dir=str(tmp_path / "spool"), batch_size=4,
                                   batch_interval=0.01)
    assert config.debug is True
    client = AOPClient(config)
    for i in range(10):
        assert client.emit_event(client.trace_builder.create_final_output(text=f"secret-text-{i}"))
    try:
        assert client.flush(timeout=20) is True
        batches = client._flusher.stats()["batches_sent"]
        lines = [r.getMessage() for r in our_records(caplog, logging.INFO) if " batch " in r.getMessage()]
        assert batches >= 3 and len(lines) == batches, lines
        assert sum(int(line.split("acknowledged ")[1].split(",")[0]) for line in lines) == 10
        assert all("HTTP 200" in line and "duplicates 0" in line and "rejected 0" in line and " ms" in line
                   for line in lines)
        assert "secret-text" not in caplog.text
    finally:
        client.stop(timeout=2)


def test_without_debug_batch_outcomes_are_not_at_info(tmp_path: Path, caplog: Any, aop_collector: Any) -> None:
    """debug=False (the default): batch outcomes only at DEBUG."""
    caplog.set_level(logging.INFO)
    client = client_for(tmp_path, aop_collector.url)
    emit(client, 3)
    try:
        assert client.flush(timeout=20) is True
        assert not [r for r in our_records(caplog, logging.INFO) if " batch " in r.getMessage()]
    finally:
        client.stop(timeout=2)


def test_get_stats_has_the_same_keys_when_the_store_fails(tmp_path: Path, aop_collector: Any) -> None:
    """A store that cannot be opened: same key set as a working client, None figures and store_error set."""
    good = client_for(tmp_path, aop_collector.url)
    (tmp_path / "not_a_dir").write_text("x")
    bad = client_for(tmp_path, aop_collector.url, spool_dir=str(tmp_path / "not_a_dir"))
    ok, failed = good.get_stats(), bad.get_stats()
    assert set(ok) == set(failed)
    assert ok["store_error"] is None and failed["store_error"]
    assert failed["pending"] is None and failed["bytes_on_disk"] is None and failed["dead_letters"] == 0
    good.store.close()


def test_a_failing_store_is_reported_once_not_on_every_attempt(caplog: Any) -> None:
    """begin_epoch failing again and again (e.g. a full disk): one WARNING with the spool hint, not one per try."""
    from aop_client.errors import StoreError
    from aop_client.flusher import Flusher
    from test_flusher_fakes import MemoryStore, ScriptedTransport, SoloElection, event_body

    class FullStore(MemoryStore):
        tries = 0

        def begin_epoch(self) -> int:
            FullStore.tries += 1
            raise StoreError("database or disk is full")

    caplog.set_level(logging.DEBUG)
    store = FullStore()
    event_id, body = event_body(1)
    store.append(event_id, "run-1", 1, body)  # something pending: the one-shot drain keeps trying
    flusher = Flusher(store, ScriptedTransport(), SoloElection(), election_poll=0.01)
    assert flusher.flush(timeout=2.0) is False
    assert FullStore.tries >= 3  # retried (with backoff: 0.1 s doubling), reported once
    warnings = our_records(caplog, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "store failing: could not start epoch: StoreError" in warnings[0].getMessage()
    assert "check spool_dir" in warnings[0].getMessage()
