"""The port between StreamingClient and its transports: :class:`StreamSender`, and what a sender is given.

:class:`~aop_client.streaming.client.StreamingClient` owns the life cycle
(the I/O thread, the outbox, the stop flags, the user's callbacks); a sender
owns one transport: its connection, its I/O loop and the :class:`LinkState`
it reports. Nothing else is shared. What a sender needs from the client for
one ``connect()`` .. ``disconnect()`` span is handed to it explicitly as a
:class:`Session`; its options arrive validated, as :class:`StreamSettings`.

The two senders are :class:`~aop_client.streaming.ws_sender.WebSocketSender`
and :class:`~aop_client.streaming.http_sender.HttpSender`; ``client.open_sender``
builds the one a mode names.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..errors import ConfigError
from .frames import OutgoingEvent, reconnect_delay
from .outbox import Outbox

__all__ = ["StreamSender", "StreamSettings", "Session", "AckCallbacks", "LinkState", "LinkStatus"]

log = logging.getLogger("aop_client.streaming")


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}", field=name, value=value)
    return float(value)


@dataclass(frozen=True)
class StreamSettings:
    """The validated options of one stream (durations in seconds); built by :meth:`validated`.

    ``url`` and ``base_url`` are as given: each sender derives (and checks)
    the endpoint of its mode from them.
    """

    url: str | None
    base_url: str | None
    api_key: str = field(repr=False)
    run_id: str | None
    verify_ssl: bool
    ping_interval: float
    reconnect_base: float
    reconnect_max: float
    ack_timeout: float
    connect_timeout: float
    http_window: float
    http_max_events: int

    @classmethod
    def validated(
        cls,
        url: str | None,
        *,
        base_url: str | None,
        api_key: str,
        run_id: str | None,
        verify_ssl: bool,
        ping_interval: float,
        reconnect_base: float,
        reconnect_max: float,
        ack_timeout: float,
        connect_timeout: float,
        http_window: float,
        http_max_events: int,
    ) -> "StreamSettings":
        """Check every bound (ConfigError naming the field) and return the settings."""
        ping = _positive("ping_interval", ping_interval)
        base = _positive("reconnect_base", reconnect_base)
        cap = _positive("reconnect_max", reconnect_max)
        if base > cap:
            raise ConfigError(f"reconnect_base={reconnect_base!r} is larger than reconnect_max={reconnect_max!r}",
                              field="reconnect_base", value=reconnect_base)
        ack = _positive("ack_timeout", ack_timeout)
        connect = _positive("connect_timeout", connect_timeout)
        window = _positive("http_window", http_window)
        if isinstance(http_max_events, bool) or not isinstance(http_max_events, int) or http_max_events < 1:
            raise ConfigError(f"http_max_events must be an int >= 1, got {http_max_events!r}",
                              field="http_max_events", value=http_max_events)
        return cls(url, base_url, api_key, run_id, verify_ssl, ping, base, cap, ack, connect, window, http_max_events)

    def reconnect_delay(self, attempt: int, u: float) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based), for a uniform draw ``u``."""
        return reconnect_delay(attempt, u, base=self.reconnect_base, cap=self.reconnect_max)


@dataclass(frozen=True)
class AckCallbacks:
    """The user's callbacks for settled events; none of them may stop the stream by raising."""

    on_ack: Callable[[str], None] | None = None
    on_nack: Callable[[str, str], None] | None = None
    on_ack_batch: Callable[[list[str]], None] | None = None
    #: Acked events with their run and seq (HybridClient settles them in the store).
    on_ack_events: Callable[[list[OutgoingEvent]], None] | None = None


class Session:
    """What the client hands a sender for one ``connect()`` .. ``disconnect()`` span.

    The outbox to pump, the stop flags the client sets, ``attempted`` (set by
    the sender once its first attempt has succeeded or failed; ``connect()``
    waits on it) and the delivery of acks and nacks to the user's callbacks.
    """

    def __init__(self, outbox: Outbox, callbacks: AckCallbacks) -> None:
        self.outbox = outbox
        self.callbacks = callbacks
        self.stop = threading.Event()  # drain what is left, then stop
        self.stop_now = threading.Event()  # stop at once
        self.attempted = threading.Event()

    def finished(self) -> bool:
        """True when the sender must return: stopped at once, or stopping with nothing left to send."""
        return self.stop_now.is_set() or (self.stop.is_set() and self.outbox.counts() == (0, 0))

    def pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless told to stop at once; True when that happened."""
        return self.stop_now.wait(seconds)

    def deliver_acks(self, event_ids: list[str]) -> None:
        """Settle acknowledged events in the outbox and tell the callbacks about those that were in flight."""
        events = self.outbox.ack_events(event_ids)
        if not events:
            return
        callbacks = self.callbacks
        settled = [event.event_id for event in events]
        try:
            if callbacks.on_ack_events is not None:
                callbacks.on_ack_events(events)
            if callbacks.on_ack_batch is not None:
                callbacks.on_ack_batch(settled)
            if callbacks.on_ack is not None:
                for event_id in settled:
                    callbacks.on_ack(event_id)
        except Exception:  # a callback must never kill the stream
            log.exception("stream ack callback failed")

    def deliver_nack(self, event_id: str, reason: str) -> None:
        """Settle an event the server refused and tell ``on_nack`` (when it was in flight)."""
        if not self.outbox.nack(event_id):
            return
        log.debug("stream nack for event %s: %s", event_id, reason)
        if self.callbacks.on_nack is not None:
            try:
                self.callbacks.on_nack(event_id, reason)
            except Exception:
                log.exception("stream nack callback failed")


@dataclass(frozen=True)
class LinkStatus:
    """A consistent snapshot of a :class:`LinkState`."""

    connects: int
    reconnects: int
    last_error: str | None
    last_status: int | None
    current_run: str | None


class LinkState:
    """The connection status one sender reports: written by its I/O thread, read by the client (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._connects = 0
        self._reconnects = 0
        self._last_error: str | None = None
        self._last_status: int | None = None
        self._current_run: str | None = None

    def opened(self, run_id: str) -> None:
        """A WebSocket connection for ``run_id`` is open (every one after the first is a reconnect)."""
        with self._lock:
            self._connects += 1
            self._reconnects += self._connects > 1
            self._current_run = run_id
        self._connected.set()

    def answered(self) -> None:
        """A chunked request was answered and settled."""
        with self._lock:
            self._connects += 1
        self._connected.set()

    def failed(self, error: BaseException | str) -> None:
        """The connection or request failed with ``error`` (kept as its type and message)."""
        with self._lock:
            self._last_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            status = getattr(error, "status", None)
            self._last_status = status if isinstance(status, int) else None
        self._connected.clear()

    def closed(self) -> None:
        """The connection is closed (or given up by the client)."""
        self._connected.clear()

    def is_connected(self) -> bool:
        """True while a connection is open (chunked HTTP: while the last request succeeded)."""
        return self._connected.is_set()

    def status(self) -> LinkStatus:
        """The counters and the last error, read together."""
        with self._lock:
            return LinkStatus(self._connects, self._reconnects, self._last_error, self._last_status, self._current_run)


class StreamSender(Protocol):
    """Port: one transport of the stream (``"websocket"`` or ``"http"``).

    :meth:`run` is the sender's I/O loop; the client calls it on its I/O
    thread, once per session, and it returns when ``session.finished()`` or
    when the session is stopping and the server cannot be reached (the
    durable store, not the stream, is the source of truth). Connection
    failures are retried with backoff and reported in :attr:`state`, never
    raised. The sender keeps its connection and its state to itself.
    """

    @property
    def mode(self) -> str:
        """The mode name: ``"websocket"`` or ``"http"``."""
        ...

    @property
    def url(self) -> str:
        """The endpoint the sender dials (for a WebSocket: the URL the run id is appended to)."""
        ...

    @property
    def settings(self) -> StreamSettings:
        """The validated options the sender runs with."""
        ...

    @property
    def state(self) -> LinkState:
        """What the sender reports about its connection."""
        ...

    def run(self, session: Session) -> None:
        """Send the session's events until it is finished (or stopping while the server is out of reach)."""
        ...
