"""The stream's port: StreamSettings bounds, Session ack delivery, LinkState counters, the sender factory, from_config."""

from __future__ import annotations

import logging
import random
from typing import Iterator

import pytest
from hypothesis import given, strategies as st

from aop_client.config import ClientConfig
from aop_client.errors import ConfigError, TransportError
from aop_client.streaming import StreamingClient
from aop_client.streaming.client import open_sender
from aop_client.streaming.frames import STREAM_PATH, OutgoingEvent
from aop_client.streaming.http_sender import HttpSender
from aop_client.streaming.outbox import Outbox
from aop_client.streaming.port import AckCallbacks, LinkState, Session, StreamSettings
from aop_client.streaming.ws_sender import WebSocketSender

DURATIONS = ["ping_interval", "reconnect_base", "reconnect_max", "ack_timeout", "connect_timeout", "http_window"]
GOOD = dict(base_url=None, api_key="secret-key-42", run_id=None, verify_ssl=True, ping_interval=10.0,
            reconnect_base=0.1, reconnect_max=5.0, ack_timeout=10.0, connect_timeout=5.0,
            http_window=0.2, http_max_events=1000)


def settings(url: str | None = "ws://h/ws/trace/", **changes: object) -> StreamSettings:
    """Valid settings with ``changes`` applied."""
    return StreamSettings.validated(url, **{**GOOD, **changes})  # type: ignore[arg-type]


def event(n: int, run: str = "run-a") -> OutgoingEvent:
    """A framed event named ``e<n>``."""
    return OutgoingEvent(f"e{n}", run, b"{}", seq=n)


@pytest.fixture
def box() -> Iterator[Outbox]:
    """An outbox of 10 with e1..e3 in flight."""
    outbox = Outbox(10)
    for n in (1, 2, 3):
        outbox.offer(event(n))
    outbox.take("run-a", 10, now=0.0)
    yield outbox
    outbox.close()


@given(name=st.sampled_from(DURATIONS),
       value=st.one_of(st.floats(max_value=0.0), st.integers(max_value=0), st.booleans(), st.none(), st.text(max_size=3)))
def test_a_non_positive_duration_is_refused_naming_it(name: str, value: object) -> None:
    """Every duration must be a number > 0 (not a bool): anything else is a ConfigError naming the field."""
    with pytest.raises(ConfigError) as info:
        settings(**{name: value})
    assert info.value.field == name


@given(st.floats(min_value=0.001, max_value=1e6, allow_nan=False), st.floats(min_value=0.001, max_value=1e6, allow_nan=False))
def test_reconnect_bounds_are_ordered(base: float, cap: float) -> None:
    """reconnect_base above reconnect_max is refused; otherwise every delay lies within [0, cap]."""
    if base > cap:
        with pytest.raises(ConfigError) as info:
            settings(reconnect_base=base, reconnect_max=cap)
        assert info.value.field == "reconnect_base"
    else:
        s = settings(reconnect_base=base, reconnect_max=cap)
        assert all(0.0 <= s.reconnect_delay(attempt, 0.999) <= cap for attempt in range(40))


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "10"])
def test_http_max_events_must_be_a_positive_int(value: object) -> None:
    """http_max_events is an int >= 1."""
    with pytest.raises(ConfigError) as info:
        settings(http_max_events=value)
    assert info.value.field == "http_max_events"


def test_settings_never_show_the_api_key() -> None:
    """The api key is not part of the settings' repr (logs and error messages print settings)."""
    assert "secret-key-42" not in repr(settings())


def test_acks_reach_every_callback_once_and_only_for_events_in_flight(box: Outbox) -> None:
    """on_ack_events, on_ack_batch, on_ack see the events that were in flight, in the server's order; unknown ids are ignored."""
    calls: list[tuple[str, object]] = []
    session = Session(box, AckCallbacks(on_ack=lambda i: calls.append(("ack", i)),
                                        on_ack_batch=lambda ids: calls.append(("batch", ids)),
                                        on_ack_events=lambda evs: calls.append(("events", [(e.event_id, e.seq) for e in evs]))))
    session.deliver_acks(["e3", "unknown", "e1"])
    session.deliver_acks(["e1"])  # already settled: nothing more
    assert calls == [("events", [("e3", 3), ("e1", 1)]), ("batch", ["e3", "e1"]), ("ack", "e3"), ("ack", "e1")]
    assert box.counts() == (0, 1) and box.acked == 2


def test_a_raising_callback_does_not_stop_the_stream(box: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """A callback that raises is logged; the events are settled all the same."""

    def boom(*_: object) -> None:
        raise RuntimeError("callback bug")

    session = Session(box, AckCallbacks(on_ack=boom, on_nack=boom))
    with caplog.at_level(logging.ERROR, logger="aop_client.streaming"):
        session.deliver_acks(["e1"])
        session.deliver_nack("e2", "bad signature")
    assert box.counts() == (0, 1) and (box.acked, box.nacked) == (1, 1)
    assert [r.getMessage() for r in caplog.records] == ["stream ack callback failed", "stream nack callback failed"]


def test_a_nack_is_reported_once_and_only_when_in_flight(box: Outbox) -> None:
    """on_nack hears of an event the server refused once; a nack for an unknown id is ignored."""
    nacks: list[tuple[str, str]] = []
    session = Session(box, AckCallbacks(on_nack=lambda i, r: nacks.append((i, r))))
    for event_id in ("e2", "e2", "nope"):
        session.deliver_nack(event_id, "bad signature")
    assert nacks == [("e2", "bad signature")] and box.nacked == 1


def test_a_session_finishes_when_stopped_now_or_drained(box: Outbox) -> None:
    """stop: finished once nothing is pending or in flight; stop_now: finished at once, and pause() says so."""
    session = Session(box, AckCallbacks())
    assert not session.finished()
    session.stop.set()
    assert not session.finished()  # three events in flight
    session.deliver_acks(["e1", "e2", "e3"])
    assert session.finished()
    other = Session(Outbox(1), AckCallbacks())
    assert other.pause(0.0) is False
    other.stop_now.set()
    assert other.finished() and other.pause(30.0) is True  # returns at once
    other.outbox.close()


def test_link_state_counts_connections_reconnects_and_the_last_failure() -> None:
    """A WebSocket open counts a reconnect after the first; a chunked answer counts a connect only."""
    state = LinkState()
    state.opened("run-1")
    state.failed(TransportError("stream handshake refused with HTTP 503", status=503))
    assert not state.is_connected()
    state.opened("run-2")
    status = state.status()
    assert state.is_connected() and (status.connects, status.reconnects, status.current_run) == (2, 1, "run-2")
    assert status.last_error == "TransportError: stream handshake refused with HTTP 503" and status.last_status == 503
    http = LinkState()
    http.answered()
    http.answered()
    http.failed("no frame from the server for 2.0s")
    assert (http.status().connects, http.status().reconnects, http.status().last_error, http.status().last_status) == (
        2, 0, "no frame from the server for 2.0s", None)


def test_the_factory_builds_the_sender_of_each_mode_and_checks_its_url() -> None:
    """websocket -> WebSocketSender (ws:// URL required), http -> HttpSender on base_url's endpoint; else ConfigError."""
    rng = random.Random(1)
    ws = open_sender("websocket", settings("wss://h/ws/trace/"), rng)
    assert isinstance(ws, WebSocketSender) and ws.url == "wss://h/ws/trace/" and not ws.state.is_connected()
    http = open_sender("http", settings(None, base_url="https://h:8443/"), rng)
    assert isinstance(http, HttpSender) and http.url == "https://h:8443" + STREAM_PATH
    with pytest.raises(ConfigError) as info:
        open_sender("websocket", settings("http://h/ws/trace/"), rng)
    assert info.value.field == "streaming_url"
    with pytest.raises(ConfigError) as info:
        open_sender("http", settings(None), rng)
    assert info.value.field == "base_url"
    with pytest.raises(ConfigError) as info:
        open_sender("pigeon", settings(), rng)
    assert info.value.field == "mode"


def test_from_config_takes_key_mode_and_urls_from_the_config() -> None:
    """from_config: the config's mode and streaming URL unless overridden; HTTP posts under base_url."""
    config = ClientConfig(api_key="k", base_url="https://collector.example:8443", agent_id=1, enable_streaming=True)
    ws = StreamingClient.from_config(config, run_id="r1")
    assert ws.mode == "websocket" and "wss://collector.example:8443/ws/trace/" in repr(ws)
    http = StreamingClient.from_config(config.replace(streaming_mode="http"))
    assert http.mode == "http" and f"https://collector.example:8443{STREAM_PATH}" in repr(http)
    custom = StreamingClient.from_config(config, streaming_url="ws://other:1/s/", streaming_mode="websocket", max_buffer=3)
    assert "ws://other:1/s/" in repr(custom)
    assert all(custom.send_event({"event_id": f"e{n}", "run_id": "r"}) is False for n in range(2))  # closed until connect()


def test_streaming_client_is_composed_not_mixed() -> None:
    """StreamingClient inherits nothing: the transports are senders it holds, not base classes sharing its state."""
    assert StreamingClient.__mro__ == (StreamingClient, object)
