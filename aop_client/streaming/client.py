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
import os
import random
import ssl
import struct
import threading
import time
from typing import Any, Callable, Iterator

import orjson

from .._version import __version__
from ..errors import ConfigError, StreamingUnavailableError, TransportError, ValidationError
from .frames import Ack, OutgoingEvent, encode_event, http_stream_url, parse_server_frame, reconnect_delay, websocket_url
from .outbox import Outbox
from .ws_codec import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameReader, encode_client_frame

__all__ = ["StreamingClient"]

log = logging.getLogger("aop_client.streaming")

_MODES = ("websocket", "http")
_SEND_BURST = 512
_RECV_BYTES = 256 * 1024


class _ConnectionLost(Exception):
    """Internal: the current connection must be dropped and re-opened (reason in args[0])."""


def _load_websocket() -> Any:
    try:
        import websocket  # websocket-client, the ``streaming`` extra
    except ImportError as e:
        raise StreamingUnavailableError(
            "streaming_mode='websocket' needs the 'streaming' extra (websocket-client): "
            "pip install aop-client[streaming]"
        ) from e
    return websocket


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}", field=name, value=value)
    return float(value)


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
        on_ack_batch: Callable[[list[str]], None] | None = None,
        rng: random.Random | None = None,
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
        self._max_buffer = max_buffer
        self._ping_interval = _positive("ping_interval", ping_interval)
        self._reconnect_base = _positive("reconnect_base", reconnect_base)
        self._reconnect_max = _positive("reconnect_max", reconnect_max)
        if self._reconnect_base > self._reconnect_max:
            raise ConfigError(f"reconnect_base={reconnect_base!r} is larger than reconnect_max={reconnect_max!r}", field="reconnect_base", value=reconnect_base)
        self._ack_timeout = _positive("ack_timeout", ack_timeout)
        self._connect_timeout = _positive("connect_timeout", connect_timeout)
        self._http_window = _positive("http_window", http_window)
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
        settled = self._outbox.ack(event_ids)
        if not settled:
            return
        try:
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

    # -- WebSocket mode --

    def _open_websocket(self, run_id: str) -> Any:
        ws_lib = self._ws_lib
        sslopt = None if self._verify_ssl else {"cert_reqs": ssl.CERT_NONE, "check_hostname": False}
        try:
            ws = ws_lib.create_connection(
                websocket_url(self._url, run_id),
                timeout=self._connect_timeout,
                header=[f"Authorization: Bearer {self._api_key}", f"User-Agent: aop-client/{__version__}"],
                sslopt=sslopt,
                skip_utf8_validation=True,
                enable_multithread=False,
            )
        except ws_lib.WebSocketBadStatusException as e:
            raise TransportError(f"stream handshake refused with HTTP {e.status_code}", status=e.status_code) from e
        except (ws_lib.WebSocketException, OSError) as e:
            raise TransportError(f"cannot open stream for run {run_id}: {type(e).__name__}: {e}") from e
        ws.settimeout(max(self._ack_timeout, 1.0))
        return ws

    def _run_websocket(self) -> None:
        attempt = 0
        run = self._run_id
        while not self._finished():
            if run is None:
                run = self._outbox.head_run()
                if run is None:
                    self._outbox.wait(0.5)
                    continue
            if attempt:
                self._backoff(attempt - 1)
                if self._stop_now.is_set():
                    break
            try:
                ws = self._open_websocket(run)
            except TransportError as e:
                attempt += 1
                self._failed(e)
                if self._stop.is_set():
                    break  # closing: the batch path has every event
                continue
            self._connects += 1
            self._reconnects += self._connects > 1
            self._current_run = run
            attempt = 0
            self._connected.set()
            self._attempted.set()
            try:
                run = self._serve_websocket(ws, run)
            except (_ConnectionLost, OSError, self._ws_lib.WebSocketException) as e:
                attempt = 1
                self._failed(e.args[0] if isinstance(e, _ConnectionLost) else e)
                log.info("stream connection lost (%s); reconnecting", self._last_error)
            except Exception as e:  # a bug or an odd frame must not end streaming for good
                attempt = 1
                self._failed(e)
                log.exception("stream I/O failed unexpectedly; reconnecting")
            finally:
                self._connected.clear()
                self._close_websocket(ws)
                self._outbox.requeue_inflight()
        self._connected.clear()

    def _serve_websocket(self, ws: Any, run: str) -> str:
        """Pump one connection; returns the next run's id when the run changes, raises on connection loss."""
        sock = ws.sock
        tls = isinstance(sock, ssl.SSLSocket)
        reader = FrameReader()
        box = self._outbox
        now = time.monotonic()
        last_rx = last_ping = now
        switch_since: float | None = None
        while True:
            if self._finished():
                return run
            now = time.monotonic()
            head = box.head_run()
            if head is not None and head != run:
                switch_since = switch_since or now
                if box.counts()[1] == 0 or now - switch_since > self._ack_timeout:
                    box.abandon_inflight()
                    return head
            batch = box.take(run, _SEND_BURST, now)
            if batch:
                masks = os.urandom(4 * len(batch))
                sock.sendall(b"".join(encode_client_frame(OP_TEXT, e.body, masks[4 * i : 4 * i + 4]) for i, e in enumerate(batch)))
            if now - last_ping >= self._ping_interval:
                sock.sendall(encode_client_frame(OP_PING, b"", os.urandom(4)))
                last_ping = now
            if now - last_rx > 2 * self._ping_interval + self._ack_timeout:
                raise _ConnectionLost(f"no frame from the server for {now - last_rx:.1f}s")
            if box.oldest_inflight_age(now) > self._ack_timeout:
                raise _ConnectionLost(f"no ack for {box.oldest_inflight_age(now):.1f}s (stalled)")
            wait = 0.0 if len(batch) == _SEND_BURST else min(self._ping_interval, self._ack_timeout, 0.5)
            if not box.wait(wait, [sock], ignore_pending=switch_since is not None) and not (tls and sock.pending()):
                continue
            data = sock.recv(_RECV_BYTES)
            while tls and sock.pending():
                data += sock.recv(_RECV_BYTES)
            if not data:
                raise _ConnectionLost("server closed the connection")
            last_rx = time.monotonic()
            try:
                messages = reader.feed(data)
            except ValidationError as e:
                raise _ConnectionLost(f"protocol error from the server: {e}") from e
            acks: list[str] = []
            for opcode, payload in messages:
                if opcode == OP_TEXT:
                    try:
                        answer = parse_server_frame(payload)
                    except ValidationError as e:
                        log.warning("ignoring unreadable stream frame: %s", e)
                        continue
                    if isinstance(answer, Ack):
                        acks.append(answer.event_id)
                    else:
                        self._deliver_acks(acks)
                        acks = []
                        self._deliver_nack(answer.event_id, answer.reason)
                elif opcode == OP_PING:
                    sock.sendall(encode_client_frame(OP_PONG, payload, os.urandom(4)))
                elif opcode == OP_CLOSE:
                    self._deliver_acks(acks)
                    raise _ConnectionLost("server closed the stream")
            self._deliver_acks(acks)

    @staticmethod
    def _close_websocket(ws: Any) -> None:
        """Send a normal close frame (best effort) and drop the socket without waiting."""
        sock = ws.sock
        try:
            if sock is not None:
                sock.settimeout(0.2)
                sock.sendall(encode_client_frame(OP_CLOSE, struct.pack("!H", 1000), os.urandom(4)))
        except OSError:
            pass
        try:
            ws.shutdown()
        except Exception:
            pass

    # -- chunked HTTP mode --

    def _run_http(self) -> None:
        import urllib3

        pool = urllib3.PoolManager(
            cert_reqs="CERT_REQUIRED" if self._verify_ssl else "CERT_NONE",
            retries=False,
            timeout=urllib3.Timeout(connect=self._connect_timeout, read=self._ack_timeout),
        )
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/x-ndjson",
            "User-Agent": f"aop-client/{__version__}",
        }
        attempt = 0
        try:
            while not self._finished():
                if self._outbox.head_run() is None:
                    self._outbox.wait(0.5)
                    continue
                if attempt:
                    self._backoff(attempt - 1)
                    if self._stop_now.is_set():
                        break
                sent: list[str] = []
                try:
                    response = pool.urlopen("POST", self._url, body=self._http_body(sent), headers=headers, chunked=True, preload_content=True, redirect=False)
                    self._settle_http(response.status, response.data, sent)
                except (urllib3.exceptions.HTTPError, OSError, TransportError) as e:
                    self._outbox.requeue_inflight()
                    attempt += 1
                    self._failed(e)
                    if self._stop.is_set():
                        break
                    continue
                attempt = 0
                self._connects += 1
                self._connected.set()
                self._attempted.set()
        finally:
            self._connected.clear()
            pool.clear()

    def _http_body(self, sent: list[str]) -> Iterator[bytes]:
        """The NDJSON body of one streamed request: events for up to ``http_window`` seconds."""
        box = self._outbox
        started = time.monotonic()
        while True:
            now = time.monotonic()
            run = box.head_run()
            batch = box.take(run, _SEND_BURST, now) if run is not None else []
            if batch:
                sent.extend(event.event_id for event in batch)
                yield b"".join(event.body + b"\n" for event in batch)
                continue
            left = self._http_window - (now - started)
            if left <= 0 or self._stop.is_set() or self._stop_now.is_set():
                return
            box.wait(left)

    def _settle_http(self, status: int, data: bytes, sent: list[str]) -> None:
        if status != 200:
            raise TransportError(f"stream request answered HTTP {status}", status=status)
        try:
            doc = orjson.loads(data)
            rejected = {item["event_id"]: str(item.get("reason", "rejected")) for item in doc.get("rejected", [])}
        except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError) as e:
            raise TransportError(f"stream response is not a batch response: {data[:80]!r}", status=status) from e
        for event_id, reason in rejected.items():
            self._deliver_nack(event_id, reason)
        self._deliver_acks([event_id for event_id in sent if event_id not in rejected])
