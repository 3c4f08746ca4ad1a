"""The collector's connection bounds, with real sockets: stalled heads and bodies, idle keep-alive, the connection
limit under a low RLIMIT_NOFILE, and WebSocket streams that must outlive every one of those timers."""

from __future__ import annotations

import http.client
import json
import resource
import select
import socket
import time
from urllib.parse import urlsplit

import orjson
import pytest

from aop_client.collector.connections import RATE_GRACE
from aop_client.testing import TEST_API_KEY, wait_until
from collector_helpers import batch_body, make_run, post_batch

FD_LIMIT = 64  # the collector child's RLIMIT_NOFILE (soft and hard): fewer than the stalled sockets
STALLED = 70
HALF_HEAD = b"POST /api/v1/traces/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"
HEALTH_BOUND = 3.0  # seconds a health check may take while the flood is open


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _address(collector) -> tuple[str, int]:
    parts = urlsplit(collector.url)
    return parts.hostname, parts.port


def _health(collector) -> float:
    """GET /api/v1/health on a new connection; asserts 200 and returns the seconds it took."""
    began = time.monotonic()
    conn = http.client.HTTPConnection(*_address(collector), timeout=HEALTH_BOUND + 2)
    try:
        conn.request("GET", "/api/v1/health")
        answer = conn.getresponse()
        assert (answer.status, orjson.loads(answer.read())) == (200, {"status": "ok"})
    finally:
        conn.close()
    return time.monotonic() - began


def _stall(collector, count: int, data: bytes = HALF_HEAD) -> list[socket.socket]:
    """``count`` connections that send ``data`` and then nothing."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(_address(collector), timeout=5)
        sock.sendall(data)
        socks.append(sock)
    return socks


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (EOF or reset); never blocks."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
            if not select.select([sock], [], [], 0)[0]:
                return False  # it sent something (a response) and is still open
    except (ConnectionResetError, BrokenPipeError):
        return True


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def test_stalled_heads_beyond_the_fd_limit_are_closed_within_header_timeout_and_health_answers(
        aop_collector_factory) -> None:
    """70 half heads against a collector with 64 descriptors: health stays 200, each is closed in header_timeout."""
    header_timeout = 0.5
    collector = aop_collector_factory(process=True, preexec_fn=_low_fd_limit, header_timeout=header_timeout)
    opened = time.monotonic()
    socks = _stall(collector, STALLED)
    try:
        for _ in range(3):
            assert _health(collector) < HEALTH_BOUND
        wait_until(lambda: all(_closed_by_peer(s) for s in socks), timeout=header_timeout + 5.0)
        assert time.monotonic() - opened < header_timeout + 5.0
        counters = collector.connections()
        assert counters["header_timeouts"] + counters["evicted"] >= STALLED
        assert counters["limit"] < FD_LIMIT and counters["accept_failures"] == 0  # never out of descriptors
        run_id, events = make_run(3, collector.org_salt_key)  # a normal upload after the attack
        assert post_batch(collector, events)[1]["accepted"] == 3
        assert collector.events(run_id) == events
    finally:
        _close_all(socks)


def test_a_head_is_bounded_from_its_first_byte_however_slowly_it_trickles(aop_collector_factory) -> None:
    """header_timeout runs from a head's first byte: stalled heads and a head sent one byte at a time are cut."""
    header_timeout = 0.5
    collector = aop_collector_factory(header_timeout=header_timeout)
    stalled = _stall(collector, 10)
    trickle = socket.create_connection(_address(collector), timeout=5)
    began = time.monotonic()
    try:
        if time.monotonic() - began < header_timeout * 0.8:
            assert not any(_closed_by_peer(s) for s in stalled)  # not before their time
        closed = False
        for byte in (b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: " + b"a" * 4000):
            try:
                trickle.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            closed = closed or bool(select.select([trickle], [], [], 0.02)[0]) and _closed_by_peer(trickle)
            if closed:
                break
            assert time.monotonic() - began < header_timeout + 5.0
        took = time.monotonic() - began
        assert closed
        assert header_timeout * 0.8 <= took < header_timeout + 5.0
        wait_until(lambda: all(_closed_by_peer(s) for s in stalled), timeout=header_timeout + 5.0)
    finally:
        _close_all(stalled + [trickle])
    assert collector.connections()["header_timeouts"] == 11
    assert _health(collector) < HEALTH_BOUND


def test_the_connection_limit_evicts_the_oldest_stalled_connection_first(aop_collector_factory) -> None:
    """With a long header_timeout, a flood past the limit closes the oldest stalled sockets; health still answers."""
    collector = aop_collector_factory(process=True, preexec_fn=_low_fd_limit, header_timeout=300.0)
    socks = _stall(collector, STALLED)
    try:
        for _ in range(5):
            assert _health(collector) < HEALTH_BOUND
        wait_until(lambda: _closed_by_peer(socks[0]), timeout=10)
        counters = collector.connections()
        assert counters["evicted"] >= STALLED - counters["limit"]
        assert counters["open"] <= counters["limit"] and counters["header_timeouts"] == 0
        assert counters["accept_failures"] == 0
        assert not _closed_by_peer(socks[-1])  # the newest stalled socket is still waiting for its timer
        run_id, events = make_run(2, collector.org_salt_key)
        assert post_batch(collector, events)[1]["accepted"] == 2
    finally:
        _close_all(socks)


def _send_partial_batch(collector, share: float) -> tuple[socket.socket, list]:
    """A signed batch POST whose body stops after ``share`` of its bytes; returns the socket and the events."""
    from aop_client.signing import request_signature

    run_id, events = make_run(5, collector.org_salt_key)
    batch_id, body = batch_body(events)
    head = (f"POST /api/v1/traces/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {collector.api_key}\r\nIdempotency-Key: {batch_id}\r\n"
            f"X-AOP-Signature: {request_signature(body, collector.org_salt_key, now=time.time())}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.create_connection(_address(collector), timeout=10)
    sock.sendall(head + body[:int(len(body) * share)])
    return sock, events


def _answer_then_close(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (bounded by ``timeout``)."""
    sock.settimeout(timeout)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


@pytest.mark.parametrize("rule", ["body_timeout", "body_min_rate"])
def test_a_slow_body_gets_408_and_nothing_of_it_is_stored(aop_collector_factory, rule) -> None:
    """A body stalled past body_timeout, or slower than body_min_rate, is answered 408 and closed; nothing stored."""
    fields = {"body_timeout": 0.5, "body_min_rate": 0} if rule == "body_timeout" else \
        {"body_timeout": 300.0, "body_min_rate": 10**6}
    collector = aop_collector_factory(**fields)
    began = time.monotonic()
    sock, events = _send_partial_batch(collector, 0.5)
    try:
        answer = _answer_then_close(sock, timeout=RATE_GRACE + 5.0)
    finally:
        sock.close()
    took = time.monotonic() - began
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert rule.encode() in answer
    assert took < (0.5 if rule == "body_timeout" else RATE_GRACE) + 3.0
    wait_until(lambda: [r for r in collector.request_log() if r["status"] == 408], timeout=5)
    assert collector.event_ids() == set()
    assert collector.connections()["body_timeouts"] == 1
    assert post_batch(collector, events)[1]["accepted"] == 5  # the same batch, sent whole, is stored


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(aop_collector_factory) -> None:
    """After a response, or from its start when silent, a connection is closed keepalive_timeout later."""
    keepalive = 1.0
    collector = aop_collector_factory(keepalive_timeout=keepalive, header_timeout=0.2)
    silent = socket.create_connection(_address(collector), timeout=10)  # never sends a byte
    silent_since = time.monotonic()
    conn = http.client.HTTPConnection(*_address(collector), timeout=10)
    try:
        conn.request("GET", "/api/v1/health")
        answer = conn.getresponse()
        assert answer.status == 200 and answer.read() and not answer.will_close
        idle_since = time.monotonic()
        wait_until(lambda: _closed_by_peer(conn.sock), timeout=keepalive + 5.0)
        idle = time.monotonic() - idle_since
        wait_until(lambda: _closed_by_peer(silent), timeout=keepalive + 5.0)
        silent_for = time.monotonic() - silent_since
    finally:
        conn.close()
        silent.close()
    # idle is not a stalled head: header_timeout (0.2 s) does not apply to either
    assert keepalive * 0.8 <= idle < keepalive + 5.0
    assert keepalive * 0.8 <= silent_for < keepalive + 5.0


def test_websocket_stream_outlives_header_body_and_idle_timers(aop_collector_factory) -> None:
    """A WebSocket stream, active and then quiet, stays open well past header/body/keep-alive timeouts."""
    import websocket

    timers = 0.3
    collector = aop_collector_factory(header_timeout=timers, body_timeout=timers, keepalive_timeout=timers,
                                      body_min_rate=10**6)
    run_id, events = make_run(20, collector.org_salt_key)
    ws = websocket.create_connection(collector.url.replace("http", "ws") + f"/ws/trace/{run_id}",
                                     header=[f"Authorization: Bearer {TEST_API_KEY}"], timeout=10)
    began = time.monotonic()
    try:
        acks = []
        for event in events[:10]:  # active: one frame after another for longer than every timer
            ws.send(json.dumps(event))
            acks.append(json.loads(ws.recv()))
            if time.monotonic() - began > 4 * timers:
                break
        ws.settimeout(4 * timers)  # quiet: no frame at all for longer than every timer
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv()
        ws.settimeout(10)
        for event in events[len(acks):]:
            ws.send(json.dumps(event))
            acks.append(json.loads(ws.recv()))
    finally:
        ws.close()
    assert time.monotonic() - began > 4 * timers
    assert acks == [{"ack": e["event_id"]} for e in events]
    assert collector.events(run_id) == events


def test_a_websocket_peer_that_never_answers_pings_is_closed_by_the_heartbeat(aop_collector_factory) -> None:
    """ws_heartbeat bounds a dead WebSocket peer: no pong within half the interval closes the stream."""
    import websocket

    heartbeat = 0.4
    collector = aop_collector_factory(ws_heartbeat=heartbeat)
    run_id, _ = make_run(1, collector.org_salt_key)
    ws = websocket.create_connection(collector.url.replace("http", "ws") + f"/ws/trace/{run_id}",
                                     header=[f"Authorization: Bearer {TEST_API_KEY}"], timeout=10)
    try:
        began = time.monotonic()
        wait_until(lambda: _closed_by_peer(ws.sock), timeout=heartbeat * 1.5 + 5.0)  # never read: no pongs
        assert time.monotonic() - began < heartbeat * 1.5 + 5.0
    finally:
        ws.close()


def test_connection_bounds_come_from_the_command_line() -> None:
    """Every bound has a CLI flag whose stated default is CollectorConfig's, and bad values name the field."""
    from aop_client.cli.serve import BOUND_OPTIONS, bound_field
    from aop_client.collector import CollectorConfig
    from aop_client.collector.cli import build_parser, config_from_args
    from aop_client.errors import ConfigError

    env = {"AOP_COLLECTOR_API_KEY": "k"}
    default = config_from_args(build_parser().parse_args([]), env)
    for flag, kind, shown, _help in BOUND_OPTIONS:
        assert getattr(default, bound_field(flag)) == shown == getattr(CollectorConfig, bound_field(flag))
        value = kind(shown * 2)
        assert getattr(config_from_args(build_parser().parse_args([flag, str(value)]), env), bound_field(flag)) == value
    for field, bad in (("header_timeout", 0), ("body_timeout", float("inf")), ("keepalive_timeout", -1),
                       ("ws_heartbeat", True), ("max_connections", 0), ("body_min_rate", -1)):
        with pytest.raises(ConfigError) as info:
            CollectorConfig(api_key="k", **{field: bad})
        assert info.value.field == field


def test_serving_raises_the_soft_open_file_limit_to_the_hard_one(aop_collector_factory) -> None:
    """A collector process started with a low soft RLIMIT_NOFILE runs with its hard limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = min(FD_LIMIT, hard)

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    collector = aop_collector_factory(process=True, preexec_fn=low_soft_limit)
    with open(f"/proc/{collector.pid}/limits") as limits:
        line = next(x for x in limits if x.startswith("Max open files"))
    raised = 65536 if hard == resource.RLIM_INFINITY else hard
    assert int(line.split()[3]) == raised
    if raised > 2048:  # room for every connection of the default max_connections
        assert collector.connections()["limit"] == 1024


def _ws_connect(collector, run_id: str):
    import websocket

    return websocket.create_connection(collector.url.replace("http", "ws") + f"/ws/trace/{run_id}",
                                       header=[f"Authorization: Bearer {TEST_API_KEY}"], timeout=10)


def test_websocket_streams_count_toward_the_limit_and_are_never_evicted(aop_collector_factory) -> None:
    """max_connections=2 held by two streams: a third connection waits (no stream is cut) until one ends."""
    collector = aop_collector_factory(max_connections=2)
    run_id, events = make_run(2, collector.org_salt_key)
    first, second = _ws_connect(collector, run_id), _ws_connect(collector, run_id)
    try:
        first.send(json.dumps(events[0]))
        assert json.loads(first.recv()) == {"ack": events[0]["event_id"]}  # both streams are running
        with socket.create_connection(_address(collector), timeout=10) as waiting:
            waiting.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            waiting.settimeout(1.0)
            with pytest.raises(socket.timeout):
                waiting.recv(1)  # not served while both streams run
            second.send(json.dumps(events[1]))
            assert json.loads(second.recv()) == {"ack": events[1]["event_id"]}  # and no stream was cut
            first.close()
            assert _answer_then_close(waiting, timeout=10).startswith(b"HTTP/1.1 200 ")
    finally:
        first.close()
        second.close()
    assert collector.events(run_id) == events
    counters = collector.connections()
    assert counters["accept_waits"] >= 1 and counters["evicted"] == 0


def test_at_the_limit_the_oldest_stalled_body_makes_room_with_408(aop_collector_factory) -> None:
    """max_connections=2 held by two stalled bodies: a health check gets in, the oldest body gets 408."""
    collector = aop_collector_factory(max_connections=2, body_timeout=300.0, body_min_rate=0)
    oldest, _ = _send_partial_batch(collector, 0.5)
    wait_until(lambda: collector.connections()["reading_bodies"] == 1, timeout=5)
    newest, _ = _send_partial_batch(collector, 0.5)
    wait_until(lambda: collector.connections()["reading_bodies"] == 2, timeout=5)
    try:
        assert _health(collector) < HEALTH_BOUND
        assert _answer_then_close(oldest, timeout=10).startswith(b"HTTP/1.1 408 ")
        assert not _closed_by_peer(newest)
        assert collector.connections()["evicted"] == 1
    finally:
        oldest.close()
        newest.close()
    assert collector.event_ids() == set()
