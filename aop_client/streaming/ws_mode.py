"""WebSocket mode of StreamingClient: one connection per run, frames out, acks in, keepalive and stall detection.

A mixin over :class:`~aop_client.streaming.client.StreamingClient` state; it
runs only on the client's I/O thread. websocket-client performs the
handshake (auth header, TLS); frames are then written and read with
:mod:`aop_client.streaming.ws_codec`.
"""

from __future__ import annotations

import logging
import os
import ssl
import struct
import time
from typing import Any

from .._version import __version__
from ..errors import TransportError, ValidationError
from .frames import Ack, parse_server_frame, websocket_url
from .ws_codec import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameReader, encode_client_frame

log = logging.getLogger("aop_client.streaming")

_SEND_BURST = 512
#: Sent-but-unacknowledged events per connection: flow control, and a bound on what a reconnect re-sends.
_MAX_IN_FLIGHT = 2048
_RECV_BYTES = 256 * 1024


class ConnectionLost(Exception):
    """Internal: the current connection must be dropped and re-opened (reason in args[0])."""


class WebSocketMode:
    """The WebSocket I/O loop of StreamingClient (uses the client's outbox, callbacks and counters)."""

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
            except (ConnectionLost, OSError, self._ws_lib.WebSocketException) as e:
                attempt = 1
                self._failed(e.args[0] if isinstance(e, ConnectionLost) else e)
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
        last_rx = last_ping = last_progress = now
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
            in_flight = box.counts()[1]
            room = _MAX_IN_FLIGHT - in_flight
            batch = box.take(run, min(_SEND_BURST, room), now) if room > 0 else []
            if batch:
                if in_flight == 0:
                    last_progress = now  # the ack clock starts with the first unacknowledged event
                in_flight += len(batch)
                masks = os.urandom(4 * len(batch))
                sock.sendall(b"".join(encode_client_frame(OP_TEXT, e.body, masks[4 * i : 4 * i + 4]) for i, e in enumerate(batch)))
            if now - last_ping >= self._ping_interval:
                sock.sendall(encode_client_frame(OP_PING, b"", os.urandom(4)))
                last_ping = now
            if now - last_rx > 2 * self._ping_interval + self._ack_timeout:
                raise ConnectionLost(f"no frame from the server for {now - last_rx:.1f}s")
            if in_flight and now - last_progress > self._ack_timeout:
                raise ConnectionLost(f"no ack for {now - last_progress:.1f}s with {in_flight} in flight (stalled)")
            window_full = in_flight >= _MAX_IN_FLIGHT
            wait = 0.0 if len(batch) == _SEND_BURST and not window_full else min(self._ping_interval, self._ack_timeout, 0.5)
            if not box.wait(wait, [sock], ignore_pending=switch_since is not None or window_full) and not (tls and sock.pending()):
                continue
            data = sock.recv(_RECV_BYTES)
            while tls and sock.pending():
                data += sock.recv(_RECV_BYTES)
            if not data:
                raise ConnectionLost("server closed the connection")
            last_rx = time.monotonic()
            try:
                messages = reader.feed(data)
            except ValidationError as e:
                raise ConnectionLost(f"protocol error from the server: {e}") from e
            acks: list[str] = []
            for opcode, payload in messages:
                if opcode == OP_TEXT:
                    last_progress = last_rx
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
                    raise ConnectionLost("server closed the stream")
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

