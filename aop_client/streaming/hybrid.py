"""HybridClient: durable store first, real-time stream second, batch upload for whatever the stream missed.

``emit_event`` stores the event through the base client (the source of truth)
and then offers the stored envelope to a :class:`StreamingClient` without
waiting. Events the server acknowledges on the stream are marked delivered
in the store (from the stream's own thread, in batches, as the
``(event_id, run_id, seq)`` the stream sent: only the stream's bounded unacked
window is remembered) so the batch flusher skips them; everything else reaches
the server by batch upload, and the server dedupes by ``event_id`` either way.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Protocol, Union

from ..config import ClientConfig
from ..errors import AOPError
from .client import StreamingClient, StreamStats
from .frames import OutgoingEvent

__all__ = ["HybridClient", "BaseClient", "StoredEvent", "HybridStats"]

log = logging.getLogger("aop_client.streaming")

#: How a streamed event is named to ``mark_delivered``: ``(event_id, run_id, seq)``, or the id alone.
Delivered = Union[str, tuple[str, str, int]]


class StoredEvent(Protocol):
    """What HybridClient reads of ``emit_event``'s answer (AOPClient's EmitResult): truthy when stored."""

    @property
    def event_id(self) -> str: ...

    @property
    def run_id(self) -> str: ...

    @property
    def body(self) -> bytes:
        """The envelope exactly as stored (an optional ``seq`` attribute is its store seq)."""
        ...

    @property
    def reason(self) -> str | None: ...

    def __bool__(self) -> bool: ...


class BaseClient(Protocol):
    """Port: what HybridClient needs of its base client (AOPClient has it all; ``finalize`` is optional)."""

    @property
    def config(self) -> ClientConfig: ...

    def start(self) -> object: ...

    def stop(self, timeout: float = ...) -> object: ...

    def emit_event(self, event: dict[str, Any]) -> StoredEvent: ...

    def mark_delivered(self, events: Iterable[Delivered]) -> int: ...


class HybridStats(StreamStats):
    """What :meth:`HybridClient.stats` returns: the stream's counters and the store-side ones."""

    marked_delivered: int
    mark_failures: int
    streaming_enabled: bool


def _current_run(base_client: BaseClient) -> str | None:
    """The run the base client's trace builder is on (the stream opens its URL at once), if it has one."""
    run_id = getattr(getattr(base_client, "trace_builder", None), "run_id", None)
    return run_id if isinstance(run_id, str) else None


class HybridClient:
    """Stream events in real time and upload the rest by batch; use it as a context manager."""

    def __init__(
        self,
        base_client: BaseClient,
        streaming_url: str | None = None,
        streaming_mode: str | None = None,
        *,
        stream_flush_timeout: float = 2.0,
        connect_wait: float = 1.0,
        **stream_options: Any,
    ) -> None:
        """Wrap ``base_client`` (an AOPClient); URL and mode default to its config's streaming settings.

        Streaming follows ``config.enable_streaming``: when it is False, nothing is
        streamed and every event goes by batch upload.
        """
        config = base_client.config
        self.base_client = base_client
        self.stream_flush_timeout = stream_flush_timeout
        self.connect_wait = connect_wait
        self.stream = StreamingClient.from_config(
            config,
            streaming_url=streaming_url,
            streaming_mode=streaming_mode,
            on_ack_events=self._mark_delivered,
            **{"run_id": _current_run(base_client), **stream_options},
        )
        #: False when the config says ``enable_streaming=False``: events then go by batch only.
        self.streaming_enabled = bool(config.enable_streaming)
        self._entered = False
        self._finalized = False
        self.marked_delivered = 0
        self.mark_failures = 0

    def __repr__(self) -> str:
        return f"HybridClient(stream={self.stream!r})"

    # -- lifecycle --

    def start(self) -> "HybridClient":
        """Start the base client and open the stream (a stream failure is logged, never raised)."""
        self.base_client.start()
        if self.streaming_enabled:
            try:
                self.stream.connect(timeout=self.connect_wait)
            except AOPError as e:
                log.warning("streaming unavailable, events go by batch upload: %s", e)
        else:
            log.info("enable_streaming is False: HybridClient delivers by batch upload only")
        self._entered = True
        self._finalized = False
        return self

    def __enter__(self) -> "HybridClient":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Finalize if not done yet, close the stream and stop the base client."""
        if not self._entered:
            return
        try:
            if not self._finalized:
                self.finalize(timeout)
        finally:
            self.stream.disconnect(timeout=0.5)
            self.base_client.stop(timeout)
            self._entered = False

    # -- events --

    def emit_event(self, event: dict[str, Any]) -> StoredEvent:
        """Store ``event`` durably (base client), then offer it to the stream without waiting."""
        result = self.base_client.emit_event(event)
        if result and self.streaming_enabled:
            try:
                self.stream.send_encoded(OutgoingEvent(result.event_id, result.run_id, result.body,
                                                       getattr(result, "seq", None)))
            except Exception:  # the stream is best-effort; the store already has the event
                log.debug("stream refused event %s", result.event_id, exc_info=True)
        return result

    def _mark_delivered(self, events: list[OutgoingEvent]) -> None:
        """Stream thread: record acknowledged events as delivered in the store, by (event_id, run_id, seq).

        An event whose seq is unknown goes by id alone (the store looks it up in the current run).
        """
        items: list[Delivered] = [e.event_id if e.seq is None else (e.event_id, e.run_id, e.seq) for e in events]
        try:
            self.marked_delivered += int(self.base_client.mark_delivered(items) or 0)
        except Exception as e:  # the batch path resends them; the server dedupes
            self.mark_failures += 1
            level = logging.WARNING if self.mark_failures == 1 else logging.DEBUG
            log.log(level, "could not mark %d streamed events delivered (%s: %s); batch upload will resend them",
                    len(events), type(e).__name__, e)

    def finalize(self, timeout: float = 30.0) -> bool:
        """Give the stream a bounded moment to finish, then let the base client deliver the rest by batch."""
        started = time.monotonic()
        if self.stream.is_connected():  # a stream that is down has nothing to finish
            self.stream.flush(min(self.stream_flush_timeout, timeout))
        self._finalized = True
        remaining = max(0.1, timeout - (time.monotonic() - started))
        finalize = getattr(self.base_client, "finalize", None)
        if finalize is None:  # a base client without finalize(): stopping flushes it
            return bool(self.base_client.stop(remaining))
        return bool(finalize(timeout=remaining))

    def stats(self) -> HybridStats:
        """The stream's counters plus ``marked_delivered`` (events settled by stream acks)."""
        return {**self.stream.stats(), "marked_delivered": self.marked_delivered,
                "mark_failures": self.mark_failures, "streaming_enabled": self.streaming_enabled}
