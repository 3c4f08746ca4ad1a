"""StreamingClient against a real loopback server: delivery, order, faults, bounds, auth and the missing extra."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest

import sqlite3

from aop_client.collector.streaming_routes import StreamFaults, StreamServer, faults_of
from aop_client.errors import ConfigError, TransportError
from aop_client.signing import signed_body
from aop_client.streaming import StreamingClient
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY, wait_until

#: Events per fault run: a quick default, a long soak with AOP_SOAK=1.
FAULT_EVENTS = 5000 if os.environ.get("AOP_SOAK") == "1" else 300
FAST = dict(reconnect_base=0.01, reconnect_max=0.1, ack_timeout=2.0, connect_timeout=2.0)


def make_run(count: int, run_id: str | None = None, start: int = 1) -> list[bytes]:
    """Signed envelopes of one run with seq start..start+count-1."""
    run_id = run_id or str(uuid.uuid4())
    return [
        signed_body(
            {
                "event_id": str(uuid.uuid4()),
                "run_id": run_id,
                "agent_id": 7,
                "seq": seq,
                "t": "2025-12-05T10:00:00.000Z",
                "type": "custom",
                "name": "step",
                "payload": {"n": seq, "text": "x" * 40},
            },
            TEST_ORG_SALT_KEY,
        )[1]
        for seq in range(start, start + count)
    ]


def run_of(bodies: list[bytes]) -> str:
    """The run_id of a list of envelopes."""
    return orjson.loads(bodies[0])["run_id"]


class Served:
    """A running reference collector, seen through what these tests need."""

    def __init__(self, collector: object) -> None:
        self.collector = collector
        self.base_url: str = collector.url  # type: ignore[attr-defined]
        self.streaming_url = self.base_url.replace("http://", "ws://", 1) + "/ws/trace/"
        self.faults: StreamFaults = faults_of(collector)

    def arrival_seqs(self, run_id: str) -> list[int]:
        """The seqs of ``run_id`` in the order the collector first stored them."""
        with sqlite3.connect(self.collector.config.db_path) as db:  # type: ignore[attr-defined]
            return [r[0] for r in db.execute("SELECT seq FROM events WHERE run_id=? ORDER BY rowid", (run_id,))]

    def event_ids(self) -> set[str]:
        """Every event_id the collector holds."""
        return self.collector.event_ids()  # type: ignore[attr-defined]

    def duplicates(self) -> int:
        """How many arrivals the collector absorbed as duplicates."""
        return self.collector.duplicate_deliveries()  # type: ignore[attr-defined]


@pytest.fixture
def server(aop_collector: object) -> Served:
    """The reference collector (real aiohttp app, SQLite storage, stream routes) on loopback."""
    return Served(aop_collector)


def client_for(server: Served, mode: str, acks: list[str] | None = None, **options: object) -> StreamingClient:
    """A StreamingClient aimed at ``server`` in ``mode``, recording acks into ``acks``."""
    merged = {**FAST, **options}
    return StreamingClient(
        server.streaming_url,
        api_key=TEST_API_KEY,
        mode=mode,
        base_url=server.base_url,
        on_ack=acks.append if acks is not None else None,
        **merged,  # type: ignore[arg-type]
    )


def assert_run_complete_in_order(server: Served, bodies: list[bytes]) -> None:
    """Every event of the run is held once, and first arrivals are in seq order."""
    run_id = run_of(bodies)
    assert server.arrival_seqs(run_id) == list(range(1, len(bodies) + 1))
    assert {orjson.loads(b)["event_id"] for b in bodies} <= server.event_ids()


@pytest.mark.parametrize("mode", ["websocket", "http"])
def test_streams_a_run_completely_and_in_order(server: Served, mode: str) -> None:
    """All events are acknowledged exactly once and stored once, in seq order."""
    bodies = make_run(400)
    acks: list[str] = []
    client = client_for(server, mode, acks, run_id=run_of(bodies))
    assert client.connect() is True
    assert all(client.send_event(body) for body in bodies)
    assert client.flush(20.0) is True
    assert client.disconnect() == 0
    assert sorted(acks) == sorted(orjson.loads(b)["event_id"] for b in bodies)
    assert_run_complete_in_order(server, bodies)
    assert server.duplicates() == 0


@pytest.mark.parametrize("mode", ["websocket", "http"])
@pytest.mark.parametrize("fault", ["close", "reset", "stall", "slow"])
def test_faults_lose_nothing_and_keep_order(server: Served, mode: str, fault: str) -> None:
    """Server closes, connection resets, stalled and slow acks: 0 lost, duplicates absorbed, order kept."""
    bodies = make_run(FAULT_EVENTS)
    acks: list[str] = []
    client = client_for(server, mode, acks, ack_timeout=0.4, http_window=0.05)
    faults = server.faults
    if fault == "close":
        faults.close_after, faults.budget = 40, 3 if FAULT_EVENTS < 1000 else 10
    elif fault == "reset":
        faults.reset_after, faults.budget = 40, 3 if FAULT_EVENTS < 1000 else 10
    elif fault == "stall":
        faults.stop_acking = True
    else:
        faults.ack_delay = 0.02
    client.connect()
    for body in bodies:
        assert client.send_event(body)
    if fault == "stall":
        wait_until(lambda: client.stats()["reconnects"] >= 1 or client.stats()["last_error"], timeout=20)
        faults.stop_acking = False
    assert client.flush(30.0 if FAULT_EVENTS < 1000 else 300.0) is True, client.stats()
    stats = client.stats()
    client.disconnect()
    assert_run_complete_in_order(server, bodies)
    assert Counter(acks) == Counter(orjson.loads(b)["event_id"] for b in bodies)  # each acked exactly once
    if fault in ("close", "reset", "stall"):
        assert stats["last_error"] is not None
    if fault in ("reset", "stall"):
        assert server.duplicates() >= 1  # re-sent after the failure, absorbed by event_id


def test_reconnects_when_the_server_comes_up_late(aop_collector_factory: Any) -> None:
    """Events sent while the server is down are delivered once it starts."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    bodies = make_run(50)
    client = StreamingClient(f"ws://127.0.0.1:{port}/ws/trace/", api_key=TEST_API_KEY, **FAST)  # type: ignore[arg-type]
    client.connect()
    assert all(client.send_event(b) for b in bodies)
    wait_until(lambda: client.stats()["last_error"], timeout=10)
    assert not client.is_connected()
    late = Served(aop_collector_factory(port=port))
    assert client.flush(20.0) is True
    assert client.is_connected()
    client.disconnect()
    assert_run_complete_in_order(late, bodies)


def test_send_event_does_not_block_on_a_stalled_server() -> None:
    """With a server that accepts TCP but never answers, send_event fills the bounded buffer and then drops."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    port = listener.getsockname()[1]
    client = StreamingClient(
        f"ws://127.0.0.1:{port}/ws/trace/", api_key=TEST_API_KEY, max_buffer=100, connect_timeout=30.0, reconnect_base=0.1
    )
    client.connect()
    bodies = make_run(1000)
    results = [client.send_event(bodies[0])]  # the first event names the run: the thread dials
    wait_until(lambda: accepted, timeout=10)  # the I/O thread is now stuck in the handshake
    results += [client.send_event(b) for b in bodies[1:]]
    assert results.count(True) == 100 and results.count(False) == 900
    stats = client.stats()
    assert stats["dropped"] == 900 and stats["pending"] == 100 and not stats["connected"]
    listener.close()
    for conn in accepted:
        conn.close()
    assert client.disconnect(timeout=0.1) == 100  # left unacknowledged: the durable store has them


def test_bad_api_key_is_refused_on_the_handshake(server: Served) -> None:
    """A wrong bearer token makes connect() raise TransportError with status 401."""
    client = StreamingClient(server.streaming_url, api_key="wrong", run_id=str(uuid.uuid4()), **FAST)  # type: ignore[arg-type]
    with pytest.raises(TransportError) as info:
        client.connect()
    assert info.value.status == 401
    client.disconnect(timeout=0.1)


def test_bad_signature_is_nacked(server: Served) -> None:
    """A tampered event is refused with a nack naming the signature; good events still pass."""
    bodies = make_run(3)
    tampered = orjson.loads(bodies[1])
    tampered["payload"]["n"] = 999
    nacks: list[tuple[str, str]] = []
    client = client_for(server, "websocket", on_nack=lambda i, r: nacks.append((i, r)))
    client.connect()
    for body in (bodies[0], orjson.dumps(tampered), bodies[2]):
        client.send_event(body)
    assert client.flush(10.0) is True
    client.disconnect()
    assert [i for i, _ in nacks] == [tampered["event_id"]] and "signature" in nacks[0][1]
    assert server.arrival_seqs(run_of(bodies)) == [1, 3]


def test_a_new_run_opens_a_new_url(server: Served) -> None:
    """Events of a second run go to that run's URL (the server would nack a run mismatch)."""
    first, second = make_run(30), make_run(30)
    nacks: list[str] = []
    client = client_for(server, "websocket", on_nack=lambda i, r: nacks.append(r))
    client.connect()
    for body in first + second:
        client.send_event(body)
    assert client.flush(10.0) is True
    stats = client.stats()
    client.disconnect()
    assert nacks == [] and stats["connects"] == 2 and stats["run_id"] == run_of(second)
    assert_run_complete_in_order(server, first)
    assert_run_complete_in_order(server, second)


def test_keepalive_detects_a_silent_server(server: Served) -> None:
    """When the server stops answering pings, the client drops the connection and reconnects."""
    client = client_for(server, "websocket", ping_interval=0.05, ack_timeout=0.2, run_id=str(uuid.uuid4()))
    client.connect()
    server.faults.freeze = True
    wait_until(lambda: client.stats()["last_error"], timeout=20)
    assert "no frame from the server" in client.stats()["last_error"]
    server.faults.freeze = False
    wait_until(lambda: client.is_connected() and client.stats()["reconnects"] >= 1, timeout=20)
    client.disconnect()


def test_send_after_disconnect_is_refused(server: Served) -> None:
    """A disconnected client refuses events (returns False) instead of queueing them forever."""
    client = client_for(server, "http")
    client.connect()
    client.disconnect()
    assert client.send_event(make_run(1)[0]) is False and client.stats()["dropped"] == 1


def test_bad_options_are_refused() -> None:
    """An unknown mode or a non-positive bound raises ConfigError naming the field."""
    with pytest.raises(ConfigError) as info:
        StreamingClient("ws://h/ws/trace/", api_key="k", mode="carrier-pigeon")
    assert info.value.field == "mode"
    with pytest.raises(ConfigError) as info:
        StreamingClient("ws://h/ws/trace/", api_key="k", max_buffer=0)
    assert info.value.field == "max_buffer"


def test_websocket_mode_without_the_extra_names_it() -> None:
    """Without websocket-client, websocket mode raises StreamingUnavailableError naming the extra; http mode works."""
    code = (
        "import sys; sys.modules['websocket'] = None\n"
        "from aop_client.errors import StreamingUnavailableError\n"
        "from aop_client.streaming import StreamingClient\n"
        "StreamingClient('http://h:1', api_key='k', mode='http')\n"
        "try:\n"
        "    StreamingClient('ws://h/ws/trace/', api_key='k')\n"
        "except StreamingUnavailableError as e:\n"
        "    assert isinstance(e, ImportError)\n"
        "    print('REFUSED:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "REFUSED:" in out.stdout and "aop-client[streaming]" in out.stdout


def test_in_memory_stream_server_serves_the_same_routes() -> None:
    """StreamServer (stream routes over in-memory storage, used by the benchmark) stores and dedupes like the collector."""
    bodies = make_run(20)
    with StreamServer(api_key=TEST_API_KEY, org_salt_key=TEST_ORG_SALT_KEY) as srv:
        client = StreamingClient(srv.streaming_url, api_key=TEST_API_KEY, **FAST)  # type: ignore[arg-type]
        client.connect()
        for body in bodies + bodies[:5]:
            client.send_event(body)
        assert client.flush(10.0) is True
        client.disconnect()
        assert srv.events.run_seqs(run_of(bodies)) == list(range(1, 21))


def test_repr_and_stats_never_show_the_api_key(server: Served) -> None:
    """The api key appears neither in repr() nor in stats()."""
    client = StreamingClient(server.streaming_url, api_key="super-secret-key-123")
    assert "super-secret" not in repr(client) and "super-secret" not in repr(client.stats())


@pytest.mark.parametrize("mode", ["websocket", "http"])
def test_refused_handshakes_are_retried_until_the_server_recovers(server: Served, mode: str) -> None:
    """While the server answers 503 to every handshake nothing is lost; after it recovers all events arrive in order."""
    bodies = make_run(40)
    server.faults.refuse_handshake = 503
    client = client_for(server, mode, run_id=run_of(bodies))
    if mode == "websocket":
        with pytest.raises(TransportError) as info:
            client.connect()
        assert info.value.status == 503
    else:
        client.connect()
    for body in bodies:
        assert client.send_event(body)
    wait_until(lambda: "503" in (client.stats()["last_error"] or ""), timeout=20)
    assert server.arrival_seqs(run_of(bodies)) == []
    server.faults.refuse_handshake = None
    assert client.flush(20.0) is True
    client.disconnect()
    assert_run_complete_in_order(server, bodies)
