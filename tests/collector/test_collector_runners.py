"""The collector's runners, CLI, auxiliary routes and streaming wiring, with real processes and sockets."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from aop_client.collector import CollectorConfig, FaultConfig, start_collector
from aop_client.collector.cli import build_parser, config_from_args, main
from aop_client.collector.runner import READY_PREFIX, faults_from_json, faults_to_json
from aop_client.errors import ConfigError, TransportError
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY
from collector_helpers import make_run, post_batch

REPO_ROOT = Path(__file__).resolve().parents[2]


def _get(collector, path: str, api_key: str | None) -> tuple[int, dict]:
    parts = urlsplit(collector.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        conn.request("GET", path, headers=headers)
        answer = conn.getresponse()
        return answer.status, orjson.loads(answer.read())
    finally:
        conn.close()


def test_fixture_serves_on_a_free_loopback_port_with_test_keys(aop_collector) -> None:
    """The aop_collector fixture listens on 127.0.0.1, a kernel-chosen port, with the TEST_* keys."""
    parts = urlsplit(aop_collector.url)
    assert parts.hostname == "127.0.0.1" and parts.port not in (None, 0, 8000)
    assert (aop_collector.api_key, aop_collector.org_salt_key) == (TEST_API_KEY, TEST_ORG_SALT_KEY)
    assert _get(aop_collector, "/api/v1/health", None) == (200, {"status": "ok"})


def test_events_and_stats_routes_need_the_key(aop_collector) -> None:
    """GET events/stats answer 401 without the key and the stored data with it."""
    run_id, events = make_run(2, aop_collector.org_salt_key)
    post_batch(aop_collector, events)
    post_batch(aop_collector, events[:1])
    assert _get(aop_collector, f"/api/v1/events?run_id={run_id}", None)[0] == 401
    assert _get(aop_collector, "/api/v1/stats", "wrong")[0] == 401
    assert _get(aop_collector, f"/api/v1/events?run_id={run_id}", TEST_API_KEY) == (200, {"events": events})
    status, stats = _get(aop_collector, "/api/v1/stats", TEST_API_KEY)
    assert status == 200
    assert (stats["events"], stats["runs"], stats["deliveries"], stats["duplicates"]) == (2, 1, 3, 1)
    assert stats["requests_by_status"]["200"] == 2


def test_second_collector_on_a_taken_port_raises_transport_error(aop_collector) -> None:
    """Binding a port already in use raises TransportError naming host and port."""
    port = urlsplit(aop_collector.url).port
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
        start_collector(CollectorConfig(api_key="k", port=port))


def test_child_process_collector_survives_sigkill_with_its_data(aop_collector_factory, tmp_path) -> None:
    """A collector process killed with SIGKILL keeps committed events; a restart on the file dedupes them."""
    db = str(tmp_path / "child.sqlite3")
    child = aop_collector_factory(db_path=db, process=True)
    assert child.process.poll() is None and child.url.startswith("http://127.0.0.1:")
    run_id, events = make_run(5, child.org_salt_key)
    assert post_batch(child, events)[1]["accepted"] == 5
    child.kill()
    assert child.process.returncode == -9
    again = aop_collector_factory(db_path=db, process=True)
    assert again.events(run_id) == events
    assert post_batch(again, events)[1]["duplicates"] == 5


def test_child_process_faults_can_be_changed_at_run_time(aop_collector_factory) -> None:
    """set_faults on a child collector reaches it over the fault-control route."""
    child = aop_collector_factory(process=True, faults=FaultConfig(rate_503=1.0))
    _run_id, events = make_run(1, child.org_salt_key)
    assert post_batch(child, events)[0] == 503
    child.set_faults(FaultConfig())
    assert post_batch(child, events)[0] == 200


def test_fault_control_route_is_absent_unless_enabled(aop_collector) -> None:
    """The in-process fixture does not expose POST /api/v1/_faults (404)."""
    parts = urlsplit(aop_collector.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("POST", "/api/v1/_faults", body=b"{}", headers={"Authorization": f"Bearer {TEST_API_KEY}"})
    assert conn.getresponse().status == 404
    conn.close()


def test_cli_prints_url_and_serves_until_sigterm(tmp_path) -> None:
    """`python -m aop_client.collector --port 0` prints its URL, serves, and exits 0 on SIGTERM."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), AOP_COLLECTOR_API_KEY="cli-key")
    proc = subprocess.Popen([sys.executable, "-m", "aop_client.collector", "--port", "0", "--db",
                             str(tmp_path / "cli.sqlite3"), "--fault-rate-429", "1", "--retry-after", "3"],
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(READY_PREFIX)
        url = line[len(READY_PREFIX):].strip()
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("POST", "/api/v1/traces/batch", body=b"{}", headers={"Authorization": "Bearer cli-key"})
        answer = conn.getresponse()
        assert (answer.status, answer.getheader("Retry-After")) == (429, "3")
        conn.close()
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_cli_config_reads_secrets_from_environment_and_flags_override_faults() -> None:
    """Keys come from AOP_COLLECTOR_* variables; --fault-* flags override AOP_COLLECTOR_FAULTS fields."""
    env = {"AOP_COLLECTOR_API_KEY": "env-key", "AOP_COLLECTOR_ORG_SALT_KEY": "env-salt",
           "AOP_COLLECTOR_FAULTS": faults_to_json(FaultConfig(rate_500=0.2, seed=9))}
    args = build_parser().parse_args(["--port", "0", "--fault-rate-503", "0.1", "--fault-seed", "3"])
    config = config_from_args(args, env)
    assert (config.api_key, config.org_salt_key, config.port) == ("env-key", "env-salt", 0)
    assert (config.faults.rate_500, config.faults.rate_503, config.faults.seed) == (0.2, 0.1, 3)
    assert "env-key" not in repr(config) and "env-salt" not in repr(config)


def test_cli_without_api_key_exits_2(capsys, monkeypatch) -> None:
    """No --api-key and no AOP_COLLECTOR_API_KEY: exit status 2 and an error naming the option."""
    monkeypatch.delenv("AOP_COLLECTOR_API_KEY", raising=False)
    assert main(["--port", "0"]) == 2
    assert "--api-key" in capsys.readouterr().err


def test_fault_config_json_round_trip() -> None:
    """faults_to_json/faults_from_json preserve every field."""
    faults = FaultConfig(rate_413=0.3, retry_after=None, endpoints=frozenset({"batch"}), seed=5,
                         after_store_probability=0.5)
    assert faults_from_json(faults_to_json(faults)) == faults


def test_collector_config_validation_names_fields() -> None:
    """Bad CollectorConfig fields raise ConfigError naming them; repr hides both keys."""
    for kwargs, field in (({"api_key": ""}, "api_key"), ({"api_key": "k", "port": 70000}, "port"),
                          ({"api_key": "k", "max_body_bytes": 0}, "max_body_bytes"),
                          ({"api_key": "k", "signature_tolerance": -1}, "signature_tolerance"),
                          ({"api_key": "k", "org_salt_key": ""}, "org_salt_key")):
        with pytest.raises(ConfigError) as info:
            CollectorConfig(**kwargs)
        assert info.value.field == field
    assert "s3cret" not in repr(CollectorConfig(api_key="s3cret", org_salt_key="s3cret"))


def test_database_file_is_private(aop_collector) -> None:
    """The SQLite file is created with mode 0600."""
    assert os.stat(aop_collector.config.db_path).st_mode & 0o777 == 0o600


def test_websocket_stream_events_land_in_the_same_database(aop_collector) -> None:
    """Events streamed over /ws/trace/<run_id> are acknowledged and stored beside batch events."""
    import websocket  # the streaming extra (websocket-client), part of the dev install
    run_id, events = make_run(2, aop_collector.org_salt_key)
    ws = websocket.create_connection(aop_collector.url.replace("http", "ws") + f"/ws/trace/{run_id}",
                                     header=[f"Authorization: Bearer {TEST_API_KEY}"], timeout=10)
    try:
        acks = []
        for event in events:
            ws.send(json.dumps(event))
            acks.append(json.loads(ws.recv()))
    finally:
        ws.close()
    assert acks == [{"ack": e["event_id"]} for e in events]
    assert aop_collector.events(run_id) == events
    assert post_batch(aop_collector, events)[1]["duplicates"] == 2


def test_queries_still_answer_after_stop(aop_collector_factory) -> None:
    """A stopped collector's record stays readable from its handle (the SQLite file outlives the server)."""
    collector = aop_collector_factory()
    run_id, events = make_run(2, collector.org_salt_key)
    post_batch(collector, events)
    collector.stop()
    assert collector.events(run_id) == events
    assert [r["status"] for r in collector.request_log()] == [200]


def test_wait_until_returns_the_truthy_value_or_times_out() -> None:
    """wait_until hands back the predicate's first truthy value, or raises TimeoutError naming it."""
    from aop_client.testing import wait_until

    calls = iter([0, [], "ready"])
    assert wait_until(lambda: next(calls), timeout=5, interval=0.001) == "ready"

    def never() -> bool:
        return False

    with pytest.raises(TimeoutError, match="never"):
        wait_until(never, timeout=0.05, interval=0.01)
