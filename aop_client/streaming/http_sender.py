"""The chunked-HTTP sender: NDJSON POSTs kept open for a short window, acked by the batch answer.

A :class:`~aop_client.streaming.port.StreamSender`. It owns its connection
pool, its request-size limit and its
:class:`~aop_client.streaming.port.LinkState`; it runs only on the client's
I/O thread and sees the client only through the
:class:`~aop_client.streaming.port.Session` it is given.
"""

from __future__ import annotations

import random
import time
from typing import Iterator

import orjson

from .._version import __version__
from ..errors import TransportError
from .frames import http_stream_url
from .port import LinkState, Session, StreamSettings

__all__ = ["HttpSender"]

_SEND_BURST = 512


class HttpSender:
    """Streams events as chunked NDJSON requests to ``{base_url}/api/v1/traces/stream``."""

    mode = "http"

    def __init__(self, settings: StreamSettings, rng: random.Random) -> None:
        """Derive the endpoint from ``base_url`` or ``url`` (ConfigError when neither is usable); nothing is opened yet."""
        self.url = http_stream_url(settings.url, settings.base_url)
        self.settings = settings
        self.state = LinkState()
        self._rng = rng
        #: Events per request: starts at ``http_max_events``, halves after a failure, doubles after a success.
        self._limit = settings.http_max_events

    def __repr__(self) -> str:
        return f"HttpSender(url={self.url!r})"

    def run(self, session: Session) -> None:
        """POST what is queued, one request per window; re-queue a failed request's events in order."""
        import urllib3

        settings, state, box = self.settings, self.state, session.outbox
        pool = urllib3.PoolManager(
            cert_reqs="CERT_REQUIRED" if settings.verify_ssl else "CERT_NONE",
            retries=False,
            timeout=urllib3.Timeout(connect=settings.connect_timeout, read=settings.ack_timeout),
        )
        headers = {
            "Authorization": f"Bearer {settings.api_key}",
            "Content-Type": "application/x-ndjson",
            "User-Agent": f"aop-client/{__version__}",
        }
        attempt = 0
        self._limit = settings.http_max_events
        try:
            while not session.finished():
                if box.head_run() is None:
                    box.wait(0.5)
                    continue
                if attempt and session.pause(settings.reconnect_delay(attempt - 1, self._rng.random())):
                    break
                sent: list[str] = []
                try:
                    response = pool.urlopen("POST", self.url, body=self._body(session, sent), headers=headers,
                                            chunked=True, preload_content=True, redirect=False)
                    self._settle(response.status, response.data, sent, session)
                except (urllib3.exceptions.HTTPError, OSError, TransportError) as e:
                    box.requeue_inflight()
                    attempt += 1
                    self._limit = max(1, self._limit // 2)  # a slow server gets smaller requests
                    state.failed(e)
                    session.attempted.set()
                    if session.stop.is_set():
                        break
                    continue
                attempt = 0
                self._limit = min(settings.http_max_events, self._limit * 2)
                state.answered()
                session.attempted.set()
        finally:
            state.closed()
            pool.clear()

    def _body(self, session: Session, sent: list[str]) -> Iterator[bytes]:
        """The NDJSON body of one streamed request: events within ``http_window`` seconds, at most the current limit.

        The limit starts at ``http_max_events``, halves after a failed request
        (a server too slow to answer within ``ack_timeout`` gets smaller
        requests instead of the same one again) and doubles after a success.
        """
        box = session.outbox
        window = self.settings.http_window
        started = time.monotonic()
        while True:
            now = time.monotonic()
            room = self._limit - len(sent)
            run = box.head_run()
            batch = box.take(run, min(_SEND_BURST, room), now) if run is not None and room > 0 else []
            if batch:
                sent.extend(event.event_id for event in batch)
                yield b"".join(event.body + b"\n" for event in batch)
            left = window - (now - started)
            if left <= 0 or len(sent) >= self._limit or session.stop.is_set() or session.stop_now.is_set():
                return
            if not batch:
                box.wait(left)

    @staticmethod
    def _settle(status: int, data: bytes, sent: list[str], session: Session) -> None:
        if status != 200:
            raise TransportError(f"stream request answered HTTP {status}", status=status)
        try:
            doc = orjson.loads(data)
            rejected = {item["event_id"]: str(item.get("reason", "rejected")) for item in doc.get("rejected", [])}
        except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError) as e:
            raise TransportError(f"stream response is not a batch response: {data[:80]!r}", status=status) from e
        for event_id, reason in rejected.items():
            session.deliver_nack(event_id, reason)
        session.deliver_acks([event_id for event_id in sent if event_id not in rejected])
