"""StreamingClient: the I/O adapter that copies events to the server in real time (protocol-v1 section 4).

The client owns the life cycle: the bounded
:class:`~aop_client.streaming.outbox.Outbox` producers offer to, the one
background I/O thread, the stop flags and the user's callbacks (a
:class:`~aop_client.streaming.port.Session` per ``connect()``). The wire is a
:class:`~aop_client.streaming.port.StreamSender`, built by :func:`open_sender`
for the mode:

* ``"websocket"`` (:mod:`.ws_sender`): one connection per run
  (``streaming_url + run_id``), one text frame per envelope,
  ``{"ack"|"nack": id}`` frames back. Keepalive pings, a dead-connection and a
  stalled-ack detector, and reconnects with jittered exponential backoff;
  unacknowledged events are re-sent in order after a reconnect (the server
  dedupes by ``event_id``). Needs the ``streaming`` extra.
* ``"http"`` (:mod:`.http_sender`): chunked NDJSON POSTs to
  ``{base_url}/api/v1/traces/stream``, each kept open for a short window,
  acknowledged by the batch response.

``send_event`` never blocks on the network: a full buffer or a closed client
refuses the event and returns False. The stream is a low-latency copy, never
the source of truth.
"""

from __future__ import annotations

import random
import threading
from types import ModuleType
from typing import Any, Callable, TypedDict

from ..config import ClientConfig
from ..errors import ConfigError, StreamingUnavailableError, TransportError
from ..extras import install_hint
from .frames import OutgoingEvent, encode_event
from .http_sender import HttpSender
from .outbox import Outbox
from .port import AckCallbacks, Session, StreamSender, StreamSettings
from .ws_sender import WebSocketSender

__all__ = ["StreamingClient", "StreamStats", "open_sender"]

_MODES = ("websocket", "http")


def _load_websocket() -> ModuleType:
    try:
        import websocket  # websocket-client, the ``streaming`` extra
    except ImportError as e:
        raise StreamingUnavailableError(
            f"streaming_mode='websocket' needs the 'streaming' extra (websocket-client): {install_hint('streaming')}"
        ) from e
    return websocket


def open_sender(mode: str, settings: StreamSettings, rng: random.Random) -> StreamSender:
    """The sender of ``mode``: WebSocket (needs the ``streaming`` extra) or chunked HTTP; checks its URL."""
    if mode == "websocket":
        _load_websocket()
        return WebSocketSender(settings, rng)
    if mode == "http":
        return HttpSender(settings, rng)
    raise ConfigError(f"mode must be one of {_MODES}, got {mode!r}", field="mode", value=mode)


class StreamStats(TypedDict):
    """What :meth:`StreamingClient.stats` returns."""

    mode: str
    connected: bool
    run_id: str | None
    offered: int
    sent: int
    acked: int
    nacked: int
    dropped: int
    abandoned: int
    pending: int
    in_flight: int
    connects: int
    reconnects: int
    last_error: str | None


class StreamingClient:
    """Real-time event stream over WebSocket or chunked HTTP, with a bounded buffer and reconnects."""

    def __init__(
        self,
        url: str | None,
        *,
        api_key: str,
        mode: str = "websocket",
        run_id: str | None = None,
        base_url: str | None = None,
        verify_ssl: bool = True,
        on_ack: Callable[[str], None] | None = None,
        on_nack: Callable[[str, str], None] | None = None,
        max_buffer: int = 10_000,
        ping_interval: float = 10.0,
        reconnect_base: float = 0.1,
        reconnect_max: float = 5.0,
        ack_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        http_window: float = 0.2,
        http_max_events: int = 1000,
        on_ack_batch: Callable[[list[str]], None] | None = None,
        rng: random.Random | None = None,
        on_ack_events: Callable[[list[OutgoingEvent]], None] | None = None,
    ) -> None:
        """Configure the stream; nothing is opened until :meth:`connect`."""
        if mode not in _MODES:
            raise ConfigError(f"mode must be one of {_MODES}, got {mode!r}", field="mode", value=mode)
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
            raise ConfigError(f"max_buffer must be an int >= 1, got {max_buffer!r}", field="max_buffer", value=max_buffer)
        self.mode = mode
        settings = StreamSettings.validated(
            url, base_url=base_url, api_key=api_key, run_id=run_id, verify_ssl=verify_ssl,
            ping_interval=ping_interval, reconnect_base=reconnect_base, reconnect_max=reconnect_max,
            ack_timeout=ack_timeout, connect_timeout=connect_timeout,
            http_window=http_window, http_max_events=http_max_events,
        )
        self._sender = open_sender(mode, settings, rng or random.Random())
        self._callbacks = AckCallbacks(on_ack, on_nack, on_ack_batch, on_ack_events)
        self._max_buffer = max_buffer
        self._session = Session(Outbox(max_buffer), self._callbacks)
        self._session.outbox.close()  # nothing is accepted before connect()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(
        cls,
        config: ClientConfig,
        *,
        streaming_url: str | None = None,
        streaming_mode: str | None = None,
        **options: Any,
    ) -> "StreamingClient":
        """The stream a ClientConfig describes: its api key, TLS check, ``streaming_mode`` and streaming URL.

        ``streaming_url`` and ``streaming_mode`` override the config's; ``options``
        are the keyword arguments of the constructor (``run_id``, ``max_buffer``...).
        HTTP mode posts under ``config.base_url``.
        """
        mode = streaming_mode or config.streaming_mode
        return cls(
            streaming_url or config.effective_streaming_url,
            api_key=config.api_key,
            mode=mode,
            base_url=config.base_url if mode == "http" else None,
            verify_ssl=config.verify_ssl,
            **options,
        )

    def __repr__(self) -> str:
        return f"StreamingClient(mode={self.mode!r}, url={self._sender.url!r}, connected={self.is_connected()})"

    # -- public API --

    def connect(self, timeout: float | None = None) -> bool:
        """Start the I/O thread; in WebSocket mode with a known run, wait for the first connection.

        Returns True once connected (or, when the run is not known yet, once
        started). Raises TransportError when the first attempt fails; the thread
        keeps retrying in the background either way.
        """
        sender = self._sender
        settings = sender.settings
        if self._thread is not None and self._thread.is_alive():
            return self.is_connected() or settings.run_id is None
        session = self._session = Session(Outbox(self._max_buffer), self._callbacks)
        self._thread = threading.Thread(target=sender.run, args=(session,), name=f"aop-stream-{self.mode}", daemon=True)
        self._thread.start()
        if self.mode == "http" or settings.run_id is None:
            return True
        session.attempted.wait(settings.connect_timeout if timeout is None else timeout)
        if not sender.state.is_connected():
            status = sender.state.status()
            raise TransportError(
                f"cannot open stream {sender.url}: {status.last_error or 'timed out'}", status=status.last_status, retryable=True
            )
        return True

    def send_event(self, event: dict[str, Any] | bytes) -> bool:
        """Queue one event envelope for streaming; False when the buffer is full or the client is closed."""
        return self._session.outbox.offer(encode_event(event))

    def send_encoded(self, event: OutgoingEvent) -> bool:
        """Queue an already framed event (see :func:`~aop_client.streaming.frames.encode_event`); the fast path."""
        return self._session.outbox.offer(event)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued is acknowledged (True) or ``timeout`` passes (False)."""
        box = self._session.outbox
        if self._thread is None or not self._thread.is_alive():
            return box.counts() == (0, 0)
        box.wake()
        return box.wait_empty(timeout)

    def disconnect(self, timeout: float = 5.0) -> int:
        """Send what is queued (bounded by ``timeout``), close, and return how many events were left unacknowledged."""
        thread = self._thread
        if thread is None:
            return 0
        session = self._session
        session.stop.set()
        session.outbox.wake()
        thread.join(timeout)
        if thread.is_alive():
            session.stop_now.set()
            session.outbox.wake()
            thread.join(max(1.0, self._sender.settings.connect_timeout))
        left = session.outbox.abandon_all()
        session.outbox.close()
        self._sender.state.closed()
        self._thread = None
        return left

    def is_connected(self) -> bool:
        """True while a stream connection is open (HTTP mode: while the last request succeeded)."""
        return self._sender.state.is_connected()

    def stats(self) -> StreamStats:
        """Counters of this client: offered, sent, acked, nacked, dropped, abandoned, pending, in_flight, reconnects..."""
        box = self._session.outbox
        pending, in_flight = box.counts()
        link = self._sender.state.status()
        return {
            "mode": self.mode,
            "connected": self.is_connected(),
            "run_id": link.current_run,
            "offered": box.offered,
            "sent": box.sent,
            "acked": box.acked,
            "nacked": box.nacked,
            "dropped": box.dropped,
            "abandoned": box.abandoned,
            "pending": pending,
            "in_flight": in_flight,
            "connects": link.connects,
            "reconnects": link.reconnects,
            "last_error": link.last_error,
        }
