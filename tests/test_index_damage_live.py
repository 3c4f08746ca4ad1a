"""Index pages damaged under a live flusher: rebuilt once, every event delivered to a real collector, status says so."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from aop_client import AOPClient, ClientConfig
from aop_client.testing import wait_until
from test_cli import env, run_aop  # noqa: F401  (env is a fixture)

sys.path.insert(0, str(Path(__file__).resolve().parent / "store"))
from index_damage import damage_index, integrity_ok  # noqa: E402


def _emit(client: AOPClient, n: int) -> set[str]:
    builder = client.trace_builder
    ids = set()
    for i in range(n):
        event = builder.create_action_request(action="lookup", params={"i": i})
        assert client.emit_event(event)
        ids.add(event["event_id"])
    return ids


def test_pages_damaged_under_a_live_flusher_are_rebuilt_and_every_event_delivered(
        tmp_path: Path, env: dict[str, str], aop_collector: Any, caplog: Any) -> None:  # noqa: F811
    caplog.set_level(logging.WARNING, logger="aop_client")
    spool = tmp_path / "spool"
    client = AOPClient(ClientConfig(api_key=aop_collector.api_key, base_url=aop_collector.url,
                                    org_salt_key=aop_collector.org_salt_key, spool_dir=str(spool),
                                    batch_interval=0.05, batch_size=100)).start()
    try:
        first = _emit(client, 400)
        wait_until(lambda: first <= aop_collector.event_ids(), timeout=60)  # delivered, retained: index pages full
        second = _emit(client, 200)
        damage_index(str(spool))  # while the flusher drains those
        second |= _emit(client, 200)
        wait_until(lambda: first | second <= aop_collector.event_ids(), timeout=60)
    finally:
        assert client.stop(timeout=10)
    assert integrity_ok(str(spool))
    rebuilds = [r for r in caplog.records if "rebuilt from the segments" in r.getMessage()]
    assert len(rebuilds) == 1, [r.getMessage() for r in rebuilds]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 2, warnings  # the rebuild, and at most the flusher's one line about it

    result = run_aop("status", "--spool", str(spool), "--json", env=env)
    assert result.returncode == 0, result.stderr
    damage = json.loads(result.stdout)["index_damage"]
    assert damage["rebuilds"] == 1 and damage["events_recovered"] >= len(second) - 100
    table = run_aop("status", "--spool", str(spool), env=env)
    assert table.returncode == 0, table.stderr
    assert "index rebuilt at" in " ".join(table.stdout.split())


def test_status_of_a_spool_whose_index_was_damaged_while_closed_exits_0_and_reports_it(
        tmp_path: Path, env: dict[str, str]) -> None:  # noqa: F811
    """Today's `aop status` on such a spool exits 2 ("database disk image is malformed")."""
    from aop_client.store import DiskStore

    spool = tmp_path / "spool"
    store = DiskStore(str(spool))
    for i in range(300):
        assert store.append(f"e{i}", "run", i, b"x" * 100).stored
    list(store.iter_run("run"))
    damage_index(str(spool))
    store.close()
    result = run_aop("status", "--spool", str(spool), "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pending"] == 300
    assert report["index_damage"]["rebuilds"] == 1 and report["index_damage"]["events_recovered"] == 300


def test_status_reports_damage_it_may_not_repair_now_instead_of_failing(tmp_path: Path) -> None:
    """Damage met again within the rebuild interval: the status document names it, with null counts."""
    from aop_client.cli.spool import status_report
    from aop_client.store import DiskStore

    spool = tmp_path / "spool"
    store = DiskStore(str(spool))
    for i in range(200):
        assert store.append(f"e{i}", "run", i, b"x" * 100).stored
    list(store.iter_run("run"))
    damage_index(str(spool), seed=1)
    assert status_report(store, None)["index_damage"]["rebuilds"] == 1  # repaired by the read itself
    list(store.iter_run("run"))
    damage_index(str(spool), seed=2)
    report = status_report(store, None)  # this handle rebuilt a moment ago: it may not again for 30 s
    assert report["index_damage"]["error"] and "malformed" in report["index_damage"]["error"]
    assert "pending" not in report
    store.close()
