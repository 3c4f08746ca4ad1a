"""The WebSocket sender: one connection per run, frames out, acks in, keepalive and stall detection.

A :class:`~aop_client.streaming.port.StreamSender`. It owns its connection,
its reconnect loop and its :class:`~aop_client.streaming.port.LinkState`; it
runs only on the client's I/O thread and sees the client only through the
:class:`~aop_client.streaming.port.Session` it is given. websocket-client
(the ``streaming`` extra; the factory checks it is installed) performs the
handshake (auth header, TLS); frames are then written and read with
:mod:`aop_client.streaming.ws_codec`.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import struct
import time
from typing import TYPE_CHECKING

from .._version import __version__
from ..errors import TransportError, ValidationError
from .frames import Ack, parse_server_frame, websocket_url
from .port import LinkState, Session, StreamSettings
from .ws_codec import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameReader, encode_client_frame

if TYPE_CHECKING:
    from websocket import WebSocket

__all__ = ["WebSocketSender"]

log = logging.getLogger("aop_client.streaming")

_SEND_BURST = 512
#: Sent-but-unacknowledged events per connection: flow control, and a bound on what a reconnect re-sends.
_MAX_IN_FLIGHT = 2048
_RECV_BYTES = 256 * 1024


class ConnectionLost(Exception):
    """Internal: the current connection must be dropped and re-opened (reason in args[0])."""


class WebSocketSender:
    """Streams each run over its own WebSocket (``streaming_url + run_id``) and reconnects with backoff."""

    mode = "websocket"

    def __init__(self, settings: StreamSettings, rng: random.Random) -> None:
        """Check ``settings.url`` (a ws:// or wss:// URL; ConfigError otherwise); nothing is opened yet."""
        self.url = settings.url or ""
        websocket_url(self.url, settings.run_id or "probe")
        self.settings = settings
        self.state = LinkState()
        self._rng = rng

    def __repr__(self) -> str:
        return f"WebSocketSender(url={self.url!r})"

    def run(self, session: Session) -> None:
        """Connect, pump, reconnect after a loss, follow the run of the queued events; until the session ends."""
        import websocket  # the factory checked that the extra is installed

        attempt = 0
        run = self.settings.run_id
        box, state = session.outbox, self.state
        while not session.finished():
            if run is None:
                run = box.head_run()
                if run is None:
                    box.wait(0.5)
                    continue
            if attempt and session.pause(self.settings.reconnect_delay(attempt - 1, self._rng.random())):
                break
            try:
                ws = self._open(run)
            except TransportError as e:
                attempt += 1
                state.failed(e)
                session.attempted.set()
                if session.stop.is_set():
                    break  # closing: the batch path has every event
                continue
            state.opened(run)
            attempt = 0
            session.attempted.set()
            try:
                run = self._serve(ws, run, session)
            except (ConnectionLost, OSError, websocket.WebSocketException) as e:
                attempt = 1
                state.failed(e.args[0] if isinstance(e, ConnectionLost) else e)
                log.info("stream connection lost (%s); reconnecting", state.status().last_error)
            except Exception as e:  # a bug or an odd frame must not end streaming for good
                attempt = 1
                state.failed(e)
                log.exception("stream I/O failed unexpectedly; reconnecting")
            finally:
                state.closed()
                self._close(ws)
                box.requeue_inflight()
        state.closed()

    def _open(self, run_id: str) -> WebSocket:
        import websocket

        settings = self.settings
        sslopt = None if settings.verify_ssl else {"cert_reqs": ssl.CERT_NONE, "check_hostname": False}
        try:
            ws = websocket.create_connection(
                websocket_url(self.url, run_id),
                timeout=settings.connect_timeout,
                header=[f"Authorization: Bearer {settings.api_key}", f"User-Agent: aop-client/{__version__}"],
                sslopt=sslopt,
                skip_utf8_validation=True,
                enable_multithread=False,
            )
        except websocket.WebSocketBadStatusException as e:
            raise TransportError(f"stream handshake refused with HTTP {e.status_code}", status=e.status_code) from e
        except (websocket.WebSocketException, OSError) as e:
            raise TransportError(f"cannot open stream for run {run_id}: {type(e).__name__}: {e}") from e
        ws.settimeout(max(settings.ack_timeout, 1.0))
        return ws

    def _serve(self, ws: WebSocket, run: str, session: Session) -> str:
        """Pump one connection; returns the next run's id when the run changes, raises on connection loss."""
        sock = ws.sock
        if sock is None:
            raise ConnectionLost("the connection has no socket")
        tls = sock if isinstance(sock, ssl.SSLSocket) else None
        reader = FrameReader()
        box = session.outbox
        ping_interval, ack_timeout = self.settings.ping_interval, self.settings.ack_timeout
        idle_wait = min(ping_interval, ack_timeout, 0.5)
        now = time.monotonic()
        last_rx = last_ping = last_progress = now
        switch_since: float | None = None
        while True:
            if session.finished():
                return run
            now = time.monotonic()
            head = box.head_run()
            if head is not None and head != run:
                switch_since = switch_since or now
                if box.counts()[1] == 0 or now - switch_since > ack_timeout:
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
            if now - last_ping >= ping_interval:
                sock.sendall(encode_client_frame(OP_PING, b"", os.urandom(4)))
                last_ping = now
            if now - last_rx > 2 * ping_interval + ack_timeout:
                raise ConnectionLost(f"no frame from the server for {now - last_rx:.1f}s")
            if in_flight and now - last_progress > ack_timeout:
                raise ConnectionLost(f"no ack for {now - last_progress:.1f}s with {in_flight} in flight (stalled)")
            window_full = in_flight >= _MAX_IN_FLIGHT
            wait = 0.0 if len(batch) == _SEND_BURST and not window_full else idle_wait
            if not box.wait(wait, [sock], ignore_pending=switch_since is not None or window_full) and not (tls is not None and tls.pending()):
                continue
            data = sock.recv(_RECV_BYTES)
            while tls is not None and tls.pending():
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
                        session.deliver_acks(acks)
                        acks = []
                        session.deliver_nack(answer.event_id, answer.reason)
                elif opcode == OP_PING:
                    sock.sendall(encode_client_frame(OP_PONG, payload, os.urandom(4)))
                elif opcode == OP_CLOSE:
                    session.deliver_acks(acks)
                    raise ConnectionLost("server closed the stream")
            session.deliver_acks(acks)

    @staticmethod
    def _close(ws: WebSocket) -> None:
        """Send a normal close frame (best effort) and drop the socket without waiting."""
        sock = ws.sock
        if sock is None:
            return
        try:
            sock.settimeout(0.2)
            sock.sendall(encode_client_frame(OP_CLOSE, struct.pack("!H", 1000), os.urandom(4)))
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass
