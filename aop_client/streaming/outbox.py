"""The stream's bounded send buffer: events waiting to be sent and events sent but not yet acknowledged.

Shared between the producer (``StreamingClient.send_event``, any thread) and
the client's single I/O thread. ``offer`` never blocks beyond one short lock
hold: a full buffer refuses the event (the durable store still holds it, so
the batch path delivers it). The I/O thread sleeps on :meth:`Outbox.wait`,
which a producer interrupts through a self-pipe only when the thread is idle.
"""

from __future__ import annotations

import select
import socket
import threading
from collections import OrderedDict, deque
from typing import Iterable

from .frames import OutgoingEvent

__all__ = ["Outbox"]


class Outbox:
    """Pending and in-flight events of one StreamingClient, bounded by ``max_events`` in total."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self._lock = threading.Lock()
        self._emptied = threading.Condition(self._lock)
        self._pending: deque[OutgoingEvent] = deque()
        self._inflight: "OrderedDict[str, tuple[OutgoingEvent, float]]" = OrderedDict()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sleeping = False
        self._woken = False
        self.closed = False
        self.offered = 0
        self.dropped = 0
        self.sent = 0
        self.acked = 0
        self.nacked = 0
        self.abandoned = 0

    # -- producer side --

    def offer(self, event: OutgoingEvent) -> bool:
        """Queue ``event`` for sending; False (and counted as dropped) when full or closed."""
        with self._lock:
            if self.closed or len(self._pending) + len(self._inflight) >= self.max_events:
                self.dropped += 1
                return False
            self._pending.append(event)
            self.offered += 1
            wake = self._sleeping and not self._woken
            if wake:
                self._woken = True
        if wake:
            self.wake()
        return True

    def wake(self) -> None:
        """Interrupt :meth:`wait` (used by producers and by ``disconnect``)."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is already full of wake-ups, or closed

    # -- I/O thread side --

    @property
    def wake_fd(self) -> socket.socket:
        """The readable end of the wake-up pipe, for ``select`` next to a connection socket."""
        return self._wake_r

    def wait_empty(self, timeout: float) -> bool:
        """Block until nothing is pending or in flight (True) or ``timeout`` passes (False)."""
        with self._lock:
            return self._emptied.wait_for(lambda: not self._pending and not self._inflight, timeout)

    def _notify_if_empty(self) -> None:
        if not self._pending and not self._inflight:
            self._emptied.notify_all()

    def wait(self, timeout: float, extra: Iterable[socket.socket] = (), *, ignore_pending: bool = False) -> list[socket.socket]:
        """Sleep until woken, until one of ``extra`` is readable, or ``timeout``; returns the readable extras.

        Returns at once (after polling ``extra``) when events are pending, unless ``ignore_pending``.
        """
        with self._lock:
            if self._pending and not ignore_pending:
                timeout = 0.0
            self._sleeping = True
            self._woken = False
        try:
            readable, _, _ = select.select([self._wake_r, *extra], [], [], max(0.0, timeout))
        finally:
            with self._lock:
                self._sleeping = False
        if self._wake_r in readable:
            self._drain_wake()
            readable = [r for r in readable if r is not self._wake_r]
        return readable

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def head_run(self) -> str | None:
        """The run_id of the next event to send, or None when nothing is pending."""
        with self._lock:
            return self._pending[0].run_id if self._pending else None

    def take(self, run_id: str, limit: int, now: float) -> list[OutgoingEvent]:
        """Move up to ``limit`` leading pending events of ``run_id`` to in-flight (sent at ``now``)."""
        taken: list[OutgoingEvent] = []
        with self._lock:
            pending, inflight = self._pending, self._inflight
            while pending and len(taken) < limit and pending[0].run_id == run_id:
                event = pending.popleft()
                if event.event_id in inflight:
                    continue  # the same event offered twice while unacknowledged: one copy is enough
                inflight[event.event_id] = (event, now)
                taken.append(event)
            self.sent += len(taken)
        return taken

    def ack(self, event_ids: Iterable[str]) -> list[str]:
        """Settle in-flight events the server acknowledged; returns the ids that were in flight."""
        return [event.event_id for event in self.ack_events(event_ids)]

    def ack_events(self, event_ids: Iterable[str]) -> list[OutgoingEvent]:
        """Like :meth:`ack`, returning the settled events themselves (their run and seq, for the store)."""
        settled = []
        with self._lock:
            for event_id in event_ids:
                entry = self._inflight.pop(event_id, None)
                if entry is not None:
                    settled.append(entry[0])
            self.acked += len(settled)
            self._notify_if_empty()
        return settled

    def nack(self, event_id: str) -> bool:
        """Settle an in-flight event the server refused (the batch path still delivers or dead-letters it)."""
        with self._lock:
            found = self._inflight.pop(event_id, None) is not None
            self.nacked += found
            self._notify_if_empty()
        return found

    def requeue_inflight(self) -> int:
        """Put unacknowledged events back at the front of the queue, in their order (after a reconnect)."""
        with self._lock:
            events = [event for event, _ in self._inflight.values()]
            self._inflight.clear()
            self._pending.extendleft(reversed(events))
            self.sent -= len(events)
        return len(events)

    def abandon_inflight(self) -> int:
        """Forget unacknowledged events (their run's stream is over; the batch path has them)."""
        with self._lock:
            count = len(self._inflight)
            self._inflight.clear()
            self.abandoned += count
            self._notify_if_empty()
        return count

    def abandon_all(self) -> int:
        """Forget everything still queued or in flight (on disconnect); returns how many."""
        with self._lock:
            count = len(self._inflight) + len(self._pending)
            self._inflight.clear()
            self._pending.clear()
            self.abandoned += count
            self._notify_if_empty()
        return count

    def counts(self) -> tuple[int, int]:
        """(pending, in_flight) right now."""
        with self._lock:
            return len(self._pending), len(self._inflight)

    def close(self) -> None:
        """Refuse further offers and release the wake-up pipe."""
        with self._lock:
            self.closed = True
        for sock in (self._wake_r, self._wake_w):
            try:
                sock.close()
            except OSError:
                pass

