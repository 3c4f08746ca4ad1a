"""`aop status`, `aop flush` and `aop dead-letters` end to end: subprocesses over real spools and collectors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from aop_client import AOPClient, ClientConfig
from aop_client.store import DiskStore
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY, wait_until
from test_cli import (  # noqa: F401  (env is a fixture)
    EXIT_BAD_INPUT, EXIT_SERVER, EXIT_UNDELIVERED, assert_error_line, closed_port_url, env, run_aop,
)


def fill_spool(spool: Path, n: int, *, key: str = TEST_ORG_SALT_KEY, base_url: str = "http://127.0.0.1:9",
               api_key: str = TEST_API_KEY) -> dict:
    """Emit ``n`` signed events into ``spool`` through the public API (no flusher); return run_id and ids.

    The spool is bound to (base_url, api_key, key): only a flush with these credentials may send it.
    """
    client = AOPClient(ClientConfig(api_key=api_key, base_url=base_url, org_salt_key=key,
                                    spool_dir=str(spool), agent_id=5))
    builder = client.trace_builder
    ids = []
    for i in range(n):
        event = builder.create_action_request(action="lookup", params={"i": i})
        assert client.emit_event(event)
        ids.append(event["event_id"])
    client.store.close()
    return {"run_id": builder.run_id, "ids": ids}


def status_json(spool: Path, env: dict[str, str]) -> dict:
    """`aop status --json` of ``spool``, parsed."""
    result = run_aop("status", "--spool", str(spool), "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def server_args(collector: Any, spool: Path) -> list[str]:
    """The options that point `aop flush` at ``collector`` for ``spool``."""
    return ["--spool", str(spool), "--base-url", collector.url, "--api-key", collector.api_key,
            "--key", collector.org_salt_key]


def test_status_reports_the_stored_counts(tmp_path: Path, env: dict[str, str]) -> None:
    """status --json shows every pending event, no flusher; the table form shows the same numbers."""
    spool = tmp_path / "spool"
    fill_spool(spool, 7)
    report = status_json(spool, env)
    assert report["pending"] == 7 and report["in_flight"] == 0 and report["dead_letters"] == 0
    assert report["fallback"] == 0 and report["retained"] == 0 and report["flusher"] is None
    assert report["bytes_on_disk"] > 0 and report["oldest_pending_age_s"] >= 0
    table = run_aop("status", "--spool", str(spool), env=env)
    assert table.returncode == 0
    assert any(line.split("│")[1:3] and "pending" in line and " 7 " in line for line in table.stdout.splitlines())


def test_status_uses_aop_spool_dir_from_the_environment(tmp_path: Path) -> None:
    """Without --spool, AOP_SPOOL_DIR picks the spool (ClientConfig.from_env)."""
    from test_cli import aop_env

    spool = tmp_path / "envspool"
    fill_spool(spool, 2)
    result = run_aop("status", "--json", env=aop_env(tmp_path, AOP_SPOOL_DIR=str(spool)))
    assert result.returncode == 0 and json.loads(result.stdout)["pending"] == 2


def test_status_names_the_current_flusher(tmp_path: Path, env: dict[str, str], aop_collector: Any) -> None:
    """While this test process's client is the elected flusher, status reports our pid as alive holder."""
    spool = tmp_path / "spool"
    client = AOPClient(ClientConfig(api_key=aop_collector.api_key, base_url=aop_collector.url,
                                    org_salt_key=aop_collector.org_salt_key, spool_dir=str(spool),
                                    batch_interval=0.05)).start()
    try:
        wait_until(lambda: client.get_stats()["is_flusher"], timeout=10)
        report = status_json(spool, env)
        assert report["flusher"]["pid"] == os.getpid() and report["flusher"]["alive"] is True
    finally:
        client.stop(timeout=5)
    assert status_json(spool, env)["flusher"] is None


def test_status_refuses_a_missing_spool_and_creates_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    """A spool that does not exist: exit 2, one line naming it, and the directory is not created."""
    missing = tmp_path / "nope"
    assert_error_line(run_aop("status", "--spool", str(missing), env=env), EXIT_BAD_INPUT, str(missing))
    assert not missing.exists()


def test_status_refuses_a_directory_that_is_no_spool(tmp_path: Path, env: dict[str, str]) -> None:
    """An existing directory without a store in it: exit 2, and nothing is created inside."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"meow")
    for args in (["status"], ["flush", "--timeout", "1"], ["dead-letters", "list"]):
        assert_error_line(run_aop(*args, "--spool", str(folder), env=env), EXIT_BAD_INPUT, "not an aop spool")
    assert sorted(p.name for p in folder.iterdir()) == ["cat.jpg"]


def test_status_refuses_a_file_as_spool(tmp_path: Path, env: dict[str, str]) -> None:
    """A spool path that is a regular file: exit 2, the file untouched."""
    path = tmp_path / "file"
    path.write_text("data")
    assert_error_line(run_aop("status", "--spool", str(path), env=env), EXIT_BAD_INPUT, "not a directory")
    assert path.read_text() == "data"


def test_flush_delivers_everything_and_exits_0(tmp_path: Path, env: dict[str, str], aop_collector: Any) -> None:
    """flush sends every stored event to the server and leaves nothing pending."""
    spool = tmp_path / "spool"
    made = fill_spool(spool, 12, base_url=aop_collector.url)
    result = run_aop("flush", *server_args(aop_collector, spool), "--timeout", "30", env=env)
    assert result.returncode == 0, result.stderr
    assert "12 delivered" in result.stdout
    assert set(made["ids"]) <= aop_collector.event_ids()
    report = status_json(spool, env)
    assert report["pending"] == 0 and report["fallback"] == 0 and report["retained"] == 12


def test_flush_to_an_unreachable_server_exits_3_and_keeps_events(tmp_path: Path, env: dict[str, str]) -> None:
    """No server: exit 3 with the connection error, and every event is still stored."""
    spool = tmp_path / "spool"
    url = closed_port_url()
    fill_spool(spool, 4, base_url=url, api_key="k", key="s")
    result = run_aop("flush", "--spool", str(spool), "--base-url", url, "--api-key", "k", "--key", "s",
                     "--timeout", "1", "--quiet", env=env)
    assert_error_line(result, EXIT_SERVER, "4 events remain undelivered", "refused")
    report = status_json(spool, env)
    assert report["pending"] + report["in_flight"] + report["fallback"] == 4


def test_flush_with_a_wrong_api_key_exits_3_and_keeps_events(tmp_path: Path, env: dict[str, str],
                                                             aop_collector: Any) -> None:
    """The server answers 401: exit 3, nothing delivered, nothing lost."""
    spool = tmp_path / "spool"
    fill_spool(spool, 3, base_url=aop_collector.url, api_key="wrong")
    result = run_aop("flush", "--spool", str(spool), "--base-url", aop_collector.url, "--api-key", "wrong",
                     "--key", aop_collector.org_salt_key, "--timeout", "1", env=env)
    assert_error_line(result, EXIT_SERVER, "3 events remain undelivered", "401")
    assert aop_collector.event_ids() == set()
    report = status_json(spool, env)
    assert report["pending"] + report["in_flight"] + report["fallback"] == 3


def test_flush_of_a_missing_spool_is_bad_input(tmp_path: Path, env: dict[str, str]) -> None:
    """flush on a spool that does not exist: exit 2 and nothing created."""
    missing = tmp_path / "absent"
    assert_error_line(run_aop("flush", "--spool", str(missing), env=env), EXIT_BAD_INPUT, "does not exist")
    assert not missing.exists()


@pytest.fixture
def dead_spool(tmp_path: Path, env: dict[str, str], aop_collector: Any) -> dict:
    """A spool whose 3 events the collector refused (signed with a wrong key): 3 dead letters.

    The events were stored under another salt, so the spool is adopted for the collector's
    credentials on purpose (``--force``) before the flush sends them.
    """
    spool = tmp_path / "spool"
    made = fill_spool(spool, 3, key="not-the-org-key", base_url=aop_collector.url)
    adopted = run_aop("spool", "adopt", *server_args(aop_collector, spool), "--force", env=env)
    assert adopted.returncode == 0, adopted.stderr
    result = run_aop("flush", *server_args(aop_collector, spool), "--timeout", "30", env=env)
    assert_error_line(result, EXIT_UNDELIVERED, "refused 3 events")
    return {**made, "spool": spool}


def test_refused_events_become_dead_letters_listed_with_reasons(dead_spool: dict, env: dict[str, str]) -> None:
    """dead-letters list shows every refused event with the server's reason (text and JSON forms)."""
    spool = str(dead_spool["spool"])
    text = run_aop("dead-letters", "list", "--spool", spool, env=env)
    assert text.returncode == 0 and "3 dead letters" in text.stderr
    for event_id in dead_spool["ids"]:
        assert event_id in text.stdout
    rows = [json.loads(line) for line in run_aop("dead-letters", "list", "--spool", spool, "--json",
                                                 env=env).stdout.splitlines()]
    assert sorted(r["event_id"] for r in rows) == sorted(dead_spool["ids"])
    assert all(r["reason"] and r["run_id"] == dead_spool["run_id"] for r in rows)


def test_dead_letter_retry_returns_the_named_events_to_pending(dead_spool: dict, env: dict[str, str]) -> None:
    """retry --id moves exactly that event back to pending; unknown ids are exit 2."""
    spool = str(dead_spool["spool"])
    first = dead_spool["ids"][0]
    result = run_aop("dead-letters", "retry", "--spool", spool, "--id", first, env=env)
    assert result.returncode == 0 and "1 dead letters returned" in result.stdout
    report = status_json(dead_spool["spool"], env)
    assert report["pending"] == 1 and report["dead_letters"] == 2
    unknown = run_aop("dead-letters", "retry", "--spool", spool, "--id", "00000000-0000-4000-8000-000000000000",
                      env=env)
    assert_error_line(unknown, EXIT_BAD_INPUT, "not dead letters")
    assert status_json(dead_spool["spool"], env)["dead_letters"] == 2


def test_dead_letter_purge_needs_yes_and_deletes_only_when_asked(dead_spool: dict, env: dict[str, str]) -> None:
    """purge without --yes (no terminal) refuses with exit 2 and deletes nothing; with --yes it deletes them."""
    spool = str(dead_spool["spool"])
    refused = run_aop("dead-letters", "purge", "--spool", spool, env=env)
    assert_error_line(refused, EXIT_BAD_INPUT, "without --yes")
    assert status_json(dead_spool["spool"], env)["dead_letters"] == 3
    one = run_aop("dead-letters", "purge", "--spool", spool, "--id", dead_spool["ids"][1], "--yes", env=env)
    assert one.returncode == 0 and "1 dead letters purged" in one.stdout
    everything = run_aop("dead-letters", "purge", "--spool", spool, "--yes", env=env)
    assert everything.returncode == 0 and "2 dead letters purged" in everything.stdout
    with DiskStore(dead_spool["spool"]) as store:
        assert store.dead_letters() == []


def test_dead_letters_of_a_missing_spool_is_bad_input(tmp_path: Path, env: dict[str, str]) -> None:
    """Every dead-letters subcommand refuses a missing spool with exit 2."""
    missing = str(tmp_path / "gone")
    for sub in (["list"], ["retry"], ["purge", "--yes"]):
        assert_error_line(run_aop("dead-letters", *sub, "--spool", missing, env=env), EXIT_BAD_INPUT, "does not exist")


def test_flush_while_another_process_is_the_flusher(tmp_path: Path, env: dict[str, str],
                                                   aop_collector_factory: Any) -> None:
    """Another live process holds the election and cannot deliver (server answers 503): flush says who the
    flusher is, waits its timeout, exits 1, and every event stays stored."""
    from aop_client.collector import FaultConfig

    failing = aop_collector_factory(faults=FaultConfig(rate_503=1.0, retry_after=None, seed=1))
    spool = tmp_path / "spool"
    fill_spool(spool, 3, base_url=failing.url)
    holder = AOPClient(ClientConfig(api_key=failing.api_key, base_url=failing.url, org_salt_key=failing.org_salt_key,
                                    spool_dir=str(spool), batch_interval=0.05, retry_backoff_base=0.05,
                                    retry_backoff_max=0.2)).start()
    try:
        wait_until(lambda: holder.get_stats()["is_flusher"], timeout=10)
        result = run_aop("flush", *server_args(failing, spool), "--timeout", "2", env=env)
        assert f"pid {os.getpid()}" in result.stderr.splitlines()[0]
        assert_error_line(result, EXIT_UNDELIVERED, "3 events remain undelivered", f"pid {os.getpid()}")
    finally:
        holder.stop(timeout=0.5)
    report = status_json(spool, env)
    assert report["pending"] + report["in_flight"] + report["fallback"] == 3
