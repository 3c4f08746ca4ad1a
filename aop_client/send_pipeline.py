"""The flusher's send threads: up to N batch POSTs at once, their outcomes applied to the store in send order.

The flusher loop leases and prepares batch k+1 while batch k is on the wire
(and, with ``max_in_flight`` > 1, while several batches are on the wire, so a
server with several workers is kept busy). Each batch is sent by
:meth:`Flusher._send` on a worker thread of :class:`SendPool`; its outcome is
applied to the store only when every earlier batch is finished
(:class:`InOrder`), so the store settles leases oldest first, as a one-batch-
at-a-time flusher would, whatever order the answers come back in.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable

__all__ = ["InOrder", "SendPool"]


class InOrder:
    """Tickets 0, 1, 2, ...: :meth:`wait_turn` returns once every lower ticket is :meth:`done`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0  # the lowest ticket not done yet
        self._finished: set[int] = set()

    def wait_turn(self, ticket: int) -> None:
        """Block until every ticket below ``ticket`` is done."""
        with self._cond:
            self._cond.wait_for(lambda: self._next >= ticket)

    def done(self, ticket: int) -> None:
        """Mark ``ticket`` finished (in any order); wakes the waiters whose turn came."""
        with self._cond:
            self._finished.add(ticket)
            while self._next in self._finished:
                self._finished.remove(self._next)
                self._next += 1
            self._cond.notify_all()


class SendPool:
    """Runs ``send(batch, prepared, ticket, in_order, *args)`` on up to ``limit`` daemon threads; errors surface in the loop.

    Daemon threads, one per batch, rather than a ThreadPoolExecutor: the
    interpreter joins executor threads at exit before ``atexit`` handlers run,
    so a send sleeping through a server outage would keep the process alive.
    """

    def __init__(self, send: Callable[..., None], limit: int) -> None:
        self._send = send
        self._limit = limit
        self._order = InOrder()
        self._tickets = 0
        self._running: list[concurrent.futures.Future] = []

    @property
    def busy(self) -> bool:
        """True while a send is running."""
        self._reap(block=False)
        return bool(self._running)

    def submit(self, batch: list, prepared: Any, *args: Any) -> None:
        """Start sending ``batch`` (waits for a free thread first); re-raises an earlier send's error.

        Returns once the send thread runs: the caller's next CPU-bound step (a
        lease) would otherwise hold the GIL for up to a switch interval (5 ms)
        before the POST even starts.
        """
        self._reap(block=len(self._running) >= self._limit)
        ticket, self._tickets = self._tickets, self._tickets + 1
        started = threading.Event()
        future: concurrent.futures.Future = concurrent.futures.Future()
        threading.Thread(target=self._run, args=(future, batch, prepared, ticket, args, started),
                         name="aop-flusher-send", daemon=True).start()
        self._running.append(future)
        started.wait()

    def _run(self, future: concurrent.futures.Future, batch: list, prepared: Any, ticket: int, args: tuple,
             started: threading.Event) -> None:
        started.set()
        error: BaseException | None = None
        try:
            self._send(batch, prepared, ticket, self._order, *args)
        except BaseException as e:  # handed to the loop through the future
            error = e
        finally:
            self._order.done(ticket)  # a failed send must not hold the later ones back
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def _reap(self, *, block: bool) -> None:
        if block and self._running:
            concurrent.futures.wait(self._running, return_when=concurrent.futures.FIRST_COMPLETED)
        still: list[concurrent.futures.Future[None]] = []
        finished: list[concurrent.futures.Future[None]] = []
        for future in self._running:
            (finished if future.done() else still).append(future)
        self._running = still
        for future in finished:
            future.result()  # re-raises what the send raised (e.g. FencedError) in the flusher loop

    def check(self) -> None:
        """Re-raise the error of a send that has finished, if any."""
        self._reap(block=False)

    def wait_all(self) -> None:
        """Wait for every running send; re-raises the first error."""
        while self._running:
            self._reap(block=True)

    def close(self) -> None:
        """Wait for the running sends (they stop on the flusher's stop event); their errors are dropped."""
        for future in self._running:
            try:
                future.result()
            except BaseException:  # already reported by the loop, or moot: the flusher is leaving this drain
                pass
        self._running = []
