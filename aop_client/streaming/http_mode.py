"""Chunked-HTTP mode of StreamingClient: NDJSON POSTs kept open for a short window, acked by the batch answer.

A mixin over :class:`~aop_client.streaming.client.StreamingClient` state; it
runs only on the client's I/O thread.
"""

from __future__ import annotations

import time
from typing import Iterator

import orjson

from .._version import __version__
from ..errors import TransportError

_SEND_BURST = 512


class HttpMode:
    """The chunked NDJSON I/O loop of StreamingClient (uses the client's outbox, callbacks and counters)."""

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
        self._http_limit = self._http_max_events
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
                    self._http_limit = max(1, self._http_limit // 2)  # a slow server gets smaller requests
                    self._failed(e)
                    if self._stop.is_set():
                        break
                    continue
                attempt = 0
                self._http_limit = min(self._http_max_events, self._http_limit * 2)
                self._connects += 1
                self._connected.set()
                self._attempted.set()
        finally:
            self._connected.clear()
            pool.clear()

    def _http_body(self, sent: list[str]) -> Iterator[bytes]:
        """The NDJSON body of one streamed request: events within ``http_window`` seconds, at most the current limit.

        The limit starts at ``http_max_events``, halves after a failed request
        (a server too slow to answer within ``ack_timeout`` gets smaller
        requests instead of the same one again) and doubles after a success.
        """
        box = self._outbox
        started = time.monotonic()
        while True:
            now = time.monotonic()
            room = self._http_limit - len(sent)
            run = box.head_run()
            batch = box.take(run, min(_SEND_BURST, room), now) if run is not None and room > 0 else []
            if batch:
                sent.extend(event.event_id for event in batch)
                yield b"".join(event.body + b"\n" for event in batch)
            left = self._http_window - (now - started)
            if left <= 0 or len(sent) >= self._http_limit or self._stop.is_set() or self._stop_now.is_set():
                return
            if not batch:
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
