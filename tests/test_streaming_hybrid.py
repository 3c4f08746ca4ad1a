"""HybridClient against a real loopback server: stream acks settle the store, the batch path covers the rest."""

from __future__ import annotations

import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Iterable

import orjson
import pytest
import urllib3

import sqlite3

from aop_client.collector.streaming_routes import StreamFaults, faults_of
from aop_client.config import ClientConfig
from aop_client.signing import signed_body
from aop_client.streaming import HybridClient
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY, wait_until
from aop_client.trace_builder import TraceBuilder

FAST = dict(reconnect_base=0.01, reconnect_max=0.1, ack_timeout=1.0, connect_timeout=1.0)


@dataclass(frozen=True)
class StandInResult:
    """The fields of the lead's EmitResult that HybridClient uses."""

    stored: bool
    event_id: str
    run_id: str
    body: bytes
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.stored


class StandInBaseClient:
    """A minimal AOPClient stand-in: a signed in-memory 'store' and a batch upload in finalize()."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.trace_builder = TraceBuilder(config.agent_id)
        self.stored: dict[str, bytes] = {}
        self.delivered: set[str] = set()
        self.batch_uploaded: list[str] = []
        self._lock = threading.Lock()
        self.started = self.stopped = False

    def start(self) -> "StandInBaseClient":
        """Nothing to start: the stand-in has no flusher."""
        self.started = True
        return self

    def emit_event(self, event: dict) -> StandInResult:
        """Sign and keep the event, like the durable store would."""
        _, body = signed_body(event, self.config.org_salt_key)
        with self._lock:
            self.stored[event["event_id"]] = body
        return StandInResult(True, event["event_id"], event["run_id"], body)

    def mark_delivered(self, event_ids: Iterable[str]) -> int:
        """Record stream-acknowledged events; returns how many were new."""
        with self._lock:
            new = set(event_ids) - self.delivered
            self.delivered |= new
        return len(new)

    def finalize(self, timeout: float = 30.0) -> bool:
        """Upload every event not yet delivered in one request (the batch path)."""
        with self._lock:
            left = [(i, b) for i, b in self.stored.items() if i not in self.delivered]
        if left:
            response = urllib3.request(
                "POST",
                self.config.base_url + "/api/v1/traces/stream",
                body=b"".join(b + b"\n" for _, b in left),
                headers={"Authorization": f"Bearer {self.config.api_key}", "Content-Type": "application/x-ndjson"},
                timeout=timeout,
            )
            assert response.status == 200 and orjson.loads(response.data)["rejected"] == []
            self.batch_uploaded += [i for i, _ in left]
            self.mark_delivered(i for i, _ in left)
        return True

    def stop(self, timeout: float = 10.0) -> bool:
        """Remember that stop() was called."""
        self.stopped = True
        return True


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


def config_for(base_url: str, streaming_url: str | None = None) -> ClientConfig:
    """A ClientConfig for the test keys with streaming enabled."""
    return ClientConfig(
        api_key=TEST_API_KEY,
        base_url=base_url,
        agent_id=123,
        org_salt_key=TEST_ORG_SALT_KEY,
        enable_streaming=True,
        streaming_url=streaming_url,
    )


def emit_run(hybrid: HybridClient, base: StandInBaseClient, count: int) -> list[str]:
    """Emit ``count`` events of the builder's run through the hybrid client; returns their ids."""
    ids = []
    for n in range(count):
        result = hybrid.emit_event(base.trace_builder.create_custom("step", {"n": n}))
        assert result.stored
        ids.append(result.event_id)
    return ids


def closed_port() -> int:
    """A loopback port with nothing listening."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


@pytest.mark.parametrize("mode", ["websocket", "http"])
def test_streamed_events_are_marked_delivered_and_not_resent(server: Served, mode: str) -> None:
    """Every acked event is marked delivered in the store, so finalize() uploads nothing by batch."""
    base = StandInBaseClient(config_for(server.base_url, server.streaming_url))
    with HybridClient(base, streaming_url=server.streaming_url, streaming_mode=mode, **FAST) as hybrid:
        ids = emit_run(hybrid, base, 200)
        wait_until(lambda: base.delivered >= set(ids), timeout=20)
        assert hybrid.finalize() is True
        assert hybrid.stats()["marked_delivered"] == 200
    assert base.batch_uploaded == [] and base.started and base.stopped
    assert server.arrival_seqs(base.trace_builder.run_id) == list(range(1, 201))
    assert server.duplicates() == 0


def test_streaming_down_for_the_whole_run_delivers_by_batch(server: Served) -> None:
    """With no stream endpoint reachable, emit_event still stores and finalize() delivers everything."""
    dead_url = f"ws://127.0.0.1:{closed_port()}/ws/trace/"
    base = StandInBaseClient(config_for(server.base_url, dead_url))
    with HybridClient(base, streaming_url=dead_url, **FAST) as hybrid:
        ids = emit_run(hybrid, base, 120)
        assert hybrid.finalize(timeout=10.0) is True
        assert hybrid.stats()["acked"] == 0 and not hybrid.stream.is_connected()
    assert sorted(base.batch_uploaded) == sorted(ids)
    assert server.arrival_seqs(base.trace_builder.run_id) == list(range(1, 121))


def test_stream_failing_mid_run_is_covered_by_batch(server: Served) -> None:
    """Events the stream never acked (reset mid-run, stalled acks) arrive by batch; the server dedupes."""
    base = StandInBaseClient(config_for(server.base_url, server.streaming_url))
    server.faults.reset_after = 30
    with HybridClient(base, streaming_url=server.streaming_url, stream_flush_timeout=0.2, **FAST) as hybrid:
        emit_run(hybrid, base, 60)
        wait_until(lambda: hybrid.stats()["last_error"], timeout=20)
        server.faults.reset_after = None
        server.faults.freeze = True  # the stream goes silent for the rest of the run
        ids = emit_run(hybrid, base, 40)
        assert hybrid.finalize(timeout=10.0) is True
    server.faults.freeze = False
    held = server.event_ids()
    assert set(ids) <= held and set(base.stored) <= held
    assert server.arrival_seqs(base.trace_builder.run_id) == list(range(1, 101))
    assert base.batch_uploaded  # the stalled tail went by batch


def test_full_stream_buffer_never_loses_events(server: Served) -> None:
    """A tiny stream buffer drops stream copies, never events: the store and batch path keep them."""
    server.faults.freeze = True
    base = StandInBaseClient(config_for(server.base_url, server.streaming_url))
    with HybridClient(base, streaming_url=server.streaming_url, max_buffer=5, **FAST) as hybrid:
        ids = emit_run(hybrid, base, 50)
        assert hybrid.stats()["dropped"] >= 45
        server.faults.freeze = False
        assert hybrid.finalize(timeout=10.0) is True
    assert set(ids) <= server.event_ids()


def test_emit_event_passes_through_refusals() -> None:
    """An event the base client did not store is returned as is and never streamed."""

    class Refusing(StandInBaseClient):
        """A base client whose store is full."""

        def emit_event(self, event: dict) -> StandInResult:
            """Refuse every event."""
            return StandInResult(False, event["event_id"], event["run_id"], b"", reason="full")

    dead_url = f"ws://127.0.0.1:{closed_port()}/ws/trace/"
    base = Refusing(config_for("http://127.0.0.1:1", dead_url))
    hybrid = HybridClient(base, streaming_url=dead_url, **FAST)
    result = hybrid.emit_event(base.trace_builder.create_custom("x"))
    assert not result and result.reason == "full" and hybrid.stats()["offered"] == 0


def test_url_and_mode_default_to_the_config() -> None:
    """Without arguments the stream uses config.streaming_mode and effective_streaming_url."""
    base = StandInBaseClient(config_for("http://127.0.0.1:8000").replace(streaming_mode="http"))
    hybrid = HybridClient(base)
    assert hybrid.stream.mode == "http" and hybrid.stream.stats()["connected"] is False
    base2 = StandInBaseClient(config_for("http://127.0.0.1:8000"))
    assert HybridClient(base2).stream.mode == "websocket"
    assert uuid.UUID(base2.trace_builder.run_id)


# -- with the real AOPClient (durable store, elected flusher, batch endpoint) --


def real_client(collector: object, tmp_path: object, streaming_url: str) -> object:
    """An AOPClient on a private spool directory, aimed at ``collector``."""
    from aop_client import AOPClient

    config = ClientConfig(
        api_key=collector.api_key,  # type: ignore[attr-defined]
        base_url=collector.url,  # type: ignore[attr-defined]
        agent_id=123,
        org_salt_key=collector.org_salt_key,  # type: ignore[attr-defined]
        spool_dir=str(tmp_path),  # type: ignore[arg-type]
        batch_interval=0.2,
        retry_backoff_base=0.05,
        retry_backoff_max=0.5,
        enable_streaming=True,
        streaming_url=streaming_url,
    )
    return AOPClient(config)


def test_real_client_hybrid_run_arrives_complete_and_in_order(aop_collector: object, tmp_path: object) -> None:
    """With AOPClient as the base, a streamed run is acked on the stream and complete at the collector."""
    served = Served(aop_collector)
    base = real_client(aop_collector, tmp_path, served.streaming_url)
    with HybridClient(base, streaming_url=served.streaming_url, streaming_mode="websocket", **FAST) as hybrid:
        builder = base.trace_builder  # type: ignore[attr-defined]
        ids = [hybrid.emit_event(builder.create_custom("step", {"n": n})).event_id for n in range(80)]
        wait_until(lambda: hybrid.stats()["acked"] == 80, timeout=20)
        assert hybrid.finalize(timeout=20.0) is True  # the server confirms seq 1..80
    assert served.arrival_seqs(builder.run_id) == list(range(1, 81))
    assert set(ids) <= served.event_ids()


def test_real_client_streaming_down_for_the_whole_run(aop_collector: object, tmp_path: object) -> None:
    """With AOPClient as the base and no stream endpoint, every event still arrives, by batch."""
    served = Served(aop_collector)
    dead_url = f"ws://127.0.0.1:{closed_port()}/ws/trace/"
    base = real_client(aop_collector, tmp_path, dead_url)
    with HybridClient(base, **FAST) as hybrid:
        builder = base.trace_builder  # type: ignore[attr-defined]
        for n in range(60):
            assert hybrid.emit_event(builder.create_custom("step", {"n": n}))
        assert hybrid.finalize(timeout=20.0) is True
        assert hybrid.stats()["acked"] == 0
    assert sorted(served.arrival_seqs(builder.run_id)) == list(range(1, 61))


def test_enable_streaming_false_means_batch_only(server: Served) -> None:
    """With enable_streaming=False in the config, nothing is streamed; finalize() delivers by batch."""
    base = StandInBaseClient(config_for(server.base_url, server.streaming_url).replace(enable_streaming=False))
    with HybridClient(base, streaming_url=server.streaming_url, **FAST) as hybrid:
        ids = emit_run(hybrid, base, 10)
        assert hybrid.finalize() is True
        stats = hybrid.stats()
    assert stats["streaming_enabled"] is False and stats["offered"] == 0 and stats["connects"] == 0
    assert sorted(base.batch_uploaded) == sorted(ids) and set(ids) <= server.event_ids()


def test_streaming_settings_from_the_environment(aop_collector: object, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """AOP_ENABLE_STREAMING and AOP_STREAMING_URL, read by ClientConfig.from_env, drive HybridClient's stream."""
    from aop_client import AOPClient

    served = Served(aop_collector)
    for name, value in {
        "AOP_API_KEY": aop_collector.api_key,  # type: ignore[attr-defined]
        "AOP_BASE_URL": served.base_url,
        "AOP_AGENT_ID": "123",
        "AOP_ORG_SALT_KEY": aop_collector.org_salt_key,  # type: ignore[attr-defined]
        "AOP_SPOOL_DIR": str(tmp_path),
        "AOP_ENABLE_STREAMING": "true",
        "AOP_STREAMING_URL": served.streaming_url,
    }.items():
        monkeypatch.setenv(name, value)
    config = ClientConfig.from_env()
    base = AOPClient(config)
    with HybridClient(base, streaming_url=config.streaming_url, streaming_mode="websocket", **FAST) as hybrid:
        assert hybrid.stream.is_connected()
        ids = [hybrid.emit_event(base.trace_builder.create_custom("step", {"n": n})).event_id for n in range(5)]
        wait_until(lambda: hybrid.stats()["acked"] == 5, timeout=20)
        assert hybrid.finalize(timeout=20.0) is True
    assert set(ids) <= served.event_ids()
