"""StreamingClient: the I/O adapter that copies events to the server in real time (protocol-v1 section 4).

Two modes share one bounded :class:`~aop_client.streaming.outbox.Outbox` and
one background I/O thread per client:

* ``"websocket"``: one connection per run (``streaming_url + run_id``), one
  text frame per envelope, ``{"ack"|"nack": id}`` frames back. Keepalive pings,
  a dead-connection and a stalled-ack detector, and reconnects with jittered
  exponential backoff; unacknowledged events are re-sent in order after a
  reconnect (the server dedupes by ``event_id``). Needs the ``streaming`` extra.
* ``"http"``: chunked NDJSON POSTs to ``{base_url}/api/v1/traces/stream``,
  each kept open for a short window, acknowledged by the batch response.

``send_event`` never blocks on the network: a full buffer or a closed client
refuses the event and returns False. The stream is a low-latency copy, never
the source of truth.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any, Callable

from ..errors import ConfigError, StreamingUnavailableError, TransportError
from ..extras import install_hint
from .frames import OutgoingEvent, encode_event, http_stream_url, reconnect_delay, websocket_url
from .http_mode import HttpMode
from .outbox import Outbox
from .ws_mode import WebSocketMode

__all__ = ["StreamingClient"]

log = logging.getLogger("aop_client.streaming")

_MODES = ("websocket", "http")

def _load_websocket() -> Any:
    try:
        import websocket  # websocket-client, the ``streaming`` extra
    except ImportError as e:
        raise StreamingUnavailableError(
            f"streaming_mode='websocket' needs the 'streaming' extra (websocket-client): {install_hint('streaming')}"
        ) from e
    return websocket


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}", field=name, value=value)
    return float(value)


class StreamingClient(WebSocketMode, HttpMode):
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
        self._ws_lib = _load_websocket() if mode == "websocket" else None
        if mode == "websocket":
            websocket_url(url or "", run_id or "probe")  # validates url early
            self._url: str = url  # type: ignore[assignment]
        else:
            self._url = http_stream_url(url, base_url)
        self._api_key = api_key
        self._run_id = run_id
        self._verify_ssl = verify_ssl
        self._on_ack = on_ack
        self._on_nack = on_nack
        self._on_ack_batch = on_ack_batch
        self._on_ack_events = on_ack_events  # acked events with their run and seq (HybridClient settles them)
        self._max_buffer = max_buffer
        self._ping_interval = _positive("ping_interval", ping_interval)
        self._reconnect_base = _positive("reconnect_base", reconnect_base)
        self._reconnect_max = _positive("reconnect_max", reconnect_max)
        if self._reconnect_base > self._reconnect_max:
            raise ConfigError(f"reconnect_base={reconnect_base!r} is larger than reconnect_max={reconnect_max!r}", field="reconnect_base", value=reconnect_base)
        self._ack_timeout = _positive("ack_timeout", ack_timeout)
        self._connect_timeout = _positive("connect_timeout", connect_timeout)
        self._http_window = _positive("http_window", http_window)
        if isinstance(http_max_events, bool) or not isinstance(http_max_events, int) or http_max_events < 1:
            raise ConfigError(f"http_max_events must be an int >= 1, got {http_max_events!r}", field="http_max_events", value=http_max_events)
        self._http_max_events = http_max_events
        self._http_limit = http_max_events
        self._rng = rng or random.Random()
        self._outbox = Outbox(max_buffer)
        self._outbox.close()  # nothing is accepted before connect()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # drain what is left, then stop
        self._stop_now = threading.Event()  # stop at once
        self._connected = threading.Event()
        self._attempted = threading.Event()
        self._reconnects = 0
        self._connects = 0
        self._last_error: str | None = None
        self._last_status: int | None = None
        self._current_run: str | None = None

    def __repr__(self) -> str:
        return f"StreamingClient(mode={self.mode!r}, url={self._url!r}, connected={self.is_connected()})"

    # -- public API --

    def connect(self, timeout: float | None = None) -> bool:
        """Start the I/O thread; in WebSocket mode with a known run, wait for the first connection.

        Returns True once connected (or, when the run is not known yet, once
        started). Raises TransportError when the first attempt fails; the thread
        keeps retrying in the background either way.
        """
        if self._thread is not None and self._thread.is_alive():
            return self.is_connected() or self._run_id is None
        self._outbox = Outbox(self._max_buffer)
        self._stop.clear()
        self._stop_now.clear()
        self._attempted.clear()
        target = self._run_websocket if self.mode == "websocket" else self._run_http
        self._thread = threading.Thread(target=target, name=f"aop-stream-{self.mode}", daemon=True)
        self._thread.start()
        if self.mode == "http" or self._run_id is None:
            return True
        self._attempted.wait(self._connect_timeout if timeout is None else timeout)
        if not self._connected.is_set():
            raise TransportError(
                f"cannot open stream {self._url}: {self._last_error or 'timed out'}", status=self._last_status, retryable=True
            )
        return True

    def send_event(self, event: dict | bytes) -> bool:
        """Queue one event envelope for streaming; False when the buffer is full or the client is closed."""
        return self._outbox.offer(encode_event(event))

    def send_encoded(self, event: OutgoingEvent) -> bool:
        """Queue an already framed event (see :func:`~aop_client.streaming.frames.encode_event`); the fast path."""
        return self._outbox.offer(event)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued is acknowledged (True) or ``timeout`` passes (False)."""
        if self._thread is None or not self._thread.is_alive():
            return self._outbox.counts() == (0, 0)
        self._outbox.wake()
        return self._outbox.wait_empty(timeout)

    def disconnect(self, timeout: float = 5.0) -> int:
        """Send what is queued (bounded by ``timeout``), close, and return how many events were left unacknowledged."""
        thread = self._thread
        if thread is None:
            return 0
        self._stop.set()
        self._outbox.wake()
        thread.join(timeout)
        if thread.is_alive():
            self._stop_now.set()
            self._outbox.wake()
            thread.join(max(1.0, self._connect_timeout))
        left = self._outbox.abandon_all()
        self._outbox.close()
        self._connected.clear()
        self._thread = None
        return left

    def is_connected(self) -> bool:
        """True while a stream connection is open (HTTP mode: while the last request succeeded)."""
        return self._connected.is_set()

    def stats(self) -> dict:
        """Counters of this client: offered, sent, acked, nacked, dropped, abandoned, pending, in_flight, reconnects..."""
        box = self._outbox
        pending, in_flight = box.counts()
        return {
            "mode": self.mode,
            "connected": self.is_connected(),
            "run_id": self._current_run,
            "offered": box.offered,
            "sent": box.sent,
            "acked": box.acked,
            "nacked": box.nacked,
            "dropped": box.dropped,
            "abandoned": box.abandoned,
            "pending": pending,
            "in_flight": in_flight,
            "connects": self._connects,
            "reconnects": self._reconnects,
            "last_error": self._last_error,
        }

    # -- shared helpers (I/O thread) --

    def _deliver_acks(self, event_ids: list[str]) -> None:
        events = self._outbox.ack_events(event_ids)
        if not events:
            return
        settled = [event.event_id for event in events]
        try:
            if self._on_ack_events is not None:
                self._on_ack_events(events)
            if self._on_ack_batch is not None:
                self._on_ack_batch(settled)
            if self._on_ack is not None:
                for event_id in settled:
                    self._on_ack(event_id)
        except Exception:  # a callback must never kill the stream
            log.exception("stream ack callback failed")

    def _deliver_nack(self, event_id: str, reason: str) -> None:
        if not self._outbox.nack(event_id):
            return
        log.debug("stream nack for event %s: %s", event_id, reason)
        if self._on_nack is not None:
            try:
                self._on_nack(event_id, reason)
            except Exception:
                log.exception("stream nack callback failed")

    def _finished(self) -> bool:
        return self._stop_now.is_set() or (self._stop.is_set() and self._outbox.counts() == (0, 0))

    def _backoff(self, attempt: int) -> None:
        delay = reconnect_delay(attempt, self._rng.random(), base=self._reconnect_base, cap=self._reconnect_max)
        self._stop_now.wait(delay)

    def _failed(self, error: BaseException | str) -> None:
        self._last_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self._last_status = getattr(error, "status", None)
        self._connected.clear()
        self._attempted.set()
