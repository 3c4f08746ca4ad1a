"""The flusher: the one loop that drains the host's store to the server while this process is elected.

It owns the thread, the leader's fencing epoch, the held batch, the hooks and
the delivery counters; every decision is made by :mod:`aop_client.core` (when
a batch is ready, what an answer means, how long to wait) and every byte goes
through the store and :class:`~aop_client.transport.HttpTransport`.

Guarantees:

* nothing is acknowledged in the store without a readable 2xx for it
  (see :func:`aop_client.core.outcome.classify`);
* every store mutation carries the epoch won with the election, so a deposed
  flusher gets :class:`~aop_client.errors.FencedError` and steps down;
* a failed batch keeps its ``batch_id`` (Idempotency-Key) across retries; after
  ``max_retries`` failures its events go to the store's fallback state (and,
  with ``fallback_dir``, to ``fallback_<run_id>_<stamp>.json`` files) and are
  retried on the next flush, by the next leader, or by ``aop flush``;
* ``stop(timeout)`` returns within ``timeout``: undelivered events stay in the
  store (released, or returned by lease expiry) for the next flusher;
* when the loop itself fails (an epoch it cannot start, a store it cannot
  write, e.g. on a full disk) it backs off (:class:`~aop_client.core.backoff.FailureStreak`:
  0.1 s doubling to 5 s) and reports it like any failure (kind ``store``: the
  first at WARNING with its cause, then at most one line a minute), and logs one
  INFO line once an epoch starts again.

Hooks: ``pre_send_hook(event)`` runs for every event before each POST that
carries it; ``post_send_hook(event, success)`` runs once per final outcome in
this flusher: True when acknowledged, False when dead-lettered or parked in
fallback. Both get a fresh dict decoded from the stored (signed) body; changing
it changes nothing that is sent. A hook that raises is counted and logged by
its exception type and hook name only (its message may quote the event).

Failures are visible: each one is classified into a kind
(:func:`aop_client.core.failure_report.failure_kind`) and reported by
:class:`~aop_client.delivery_report.FailureReporter` (first of each kind at
WARNING with what to check, then rate-limited; "recovered" after a success;
the last error written down in the spool for ``aop status``). With ``debug``
every batch outcome is logged at INFO (at DEBUG otherwise): status, event
counts and latency, never an event's content.
"""

from __future__ import annotations

import inspect
import logging
import operator
import random
import threading
import time
import uuid
from collections import defaultdict
from typing import Any, Callable, Optional, Sequence

import orjson

from . import forking
from .core.backoff import FailureStreak, RetryPolicy
from .core.batching import batch_overhead_bytes, build_batch_body, should_flush
from .core.fallback_doc import is_file_name_safe
from .core.flush_machine import BatchAttempt, Step, next_step
from .core.outcome import Delivered, classify
from .delivery_report import FailureReporter, dead_letters_text
from .errors import ConfigError, FencedError, StoreError
from .send_pipeline import InOrder, SendPool
from .store.api import Store, StoredEvent
from .trace_files import write_fallback_file
from .transport import HttpTransport, PreparedBatch

__all__ = ["Flusher"]

log = logging.getLogger("aop_client.flusher")

_EVENT_ID, _ATTEMPTS, _BODY = operator.attrgetter("event_id"), operator.attrgetter("attempts"), operator.attrgetter("body")
_PREPARED_MAX_AGE = 60.0  # seconds a prepared (signed) batch may wait for its POST; servers accept 300
_POLL = 0.25  # longest wait between store polls while elected and idle
_ID_TEMPLATE = "00000000-0000-4000-8000-000000000000"  # a batch id's length, for byte budgeting


class Flusher:
    """Drains one store directory while this process holds its election; see the module docstring."""

    def __init__(
        self,
        store: Store,
        transport: HttpTransport,
        election: Any,
        *,
        batch_size: int = 100,
        batch_interval: float = 5.0,
        max_batch_bytes: int = 4 * 2**20,
        retry_policy: RetryPolicy | None = None,
        fallback_dir: str | None = None,
        pre_send_hook: Callable[[dict], None] | None = None,
        post_send_hook: Callable[[dict, bool], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        on_error: Callable[[BaseException], None] | None = None,
        election_poll: float = 0.1,
        fallback_retry_interval: float = 60.0,
        max_in_flight: int = 1,
        debug: bool = False,
        check_identity: Callable[[], Any] | None = None,
    ) -> None:
        for name, value, low in (("batch_size", batch_size, 1), ("max_batch_bytes", max_batch_bytes, 1),
                                 ("batch_interval", batch_interval, 0), ("election_poll", election_poll, 0.01),
                                 ("fallback_retry_interval", fallback_retry_interval, 0), ("max_in_flight", max_in_flight, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
                raise ConfigError(f"{name} must be a number >= {low}, got {value!r}", field=name, value=value)
        self.store = store
        self.transport = transport
        self.election = election
        self.batch_size = int(batch_size)
        self.batch_interval = float(batch_interval)
        self.max_batch_bytes = int(max_batch_bytes)
        self.retry_policy = retry_policy or RetryPolicy()
        self.fallback_dir = fallback_dir
        self.pre_send_hook = pre_send_hook
        self.post_send_hook = post_send_hook
        self.rng = rng if rng is not None else random.Random()
        self.clock = clock
        self.on_error = on_error
        self.election_poll = float(election_poll)
        self.check_identity = check_identity  # raises when the spool is (now) bound to other credentials
        # HttpTransport can sign and gzip the next batch ahead of time (not part of the Transport protocol)
        self._can_prepare = hasattr(transport, "prepare_batch") and hasattr(transport, "post_prepared")
        try:  # DiskStore.lease also fences (an additive keyword beyond the Store protocol)
            self._lease_fenced = "epoch" in inspect.signature(store.lease).parameters
        except (TypeError, ValueError):
            self._lease_fenced = False
        self._epoch: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        self._one_shot: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._flush_asked = 0  # flush generations requested ...
        self._flush_done = 0  # ... and completed by the leader loop
        self._fallback_retried_for = 0  # the last flush generation for which parked events were retried
        self.fallback_retry_interval = float(fallback_retry_interval)
        self.max_in_flight = int(max_in_flight)  # batch POSTs on the wire at once
        self._fallback_retried_at = time.monotonic()
        self._flush_cond = threading.Condition(self._lock)
        self._counts: dict[str, int] = defaultdict(int)
        self._last_error: Optional[str] = None
        self._paused = False
        self.debug = bool(debug)
        directory = getattr(store, "directory", None)
        self._reporter = FailureReporter(str(directory) if directory else None, log, debug=self.debug)
        self._streak = FailureStreak()  # the loop's own failures (a store it cannot write): its backoff
        forking.register(forking.FLUSHER, self)

    def _after_fork_in_child(self) -> None:
        """In a forked child (aop_client.forking): fresh locks and events, no thread, not leader, own counters.

        A forked child inherits the Flusher but not its thread, and possibly locks a
        parent thread held at fork time: it starts afresh.
        """
        self._lock = threading.Lock()
        self._flush_cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = self._one_shot = None
        self._epoch = None
        self._flush_asked = self._flush_done = self._fallback_retried_for = 0
        self._counts = defaultdict(int)
        self._paused = False
        self._reporter = FailureReporter(self._reporter.directory, log, debug=self.debug)
        self._streak = FailureStreak()
        self.rng = random.Random()  # never the parent's jitter sequence: forked workers must not retry in step

    def __repr__(self) -> str:
        return f"Flusher(store={getattr(self.store, 'directory', '?')!r}, leader={self.is_leader})"

    # ------------------------------------------------------------ public API

    @property
    def is_leader(self) -> bool:
        """True while this process holds the election and a fencing epoch."""
        return self._epoch is not None and bool(self.election.is_leader)

    def start(self) -> "Flusher":
        """Start the daemon thread that campaigns for the election and drains while elected."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="aop-flusher", daemon=True)
            self._thread.start()
        return self

    def wakeup(self) -> None:
        """Tell the loop that events are waiting (a full batch flushes without waiting for a poll)."""
        self._wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver everything in the store now (fallback included); True if nothing is left undelivered.

        With the thread running, asks it for a forced drain; without it, runs a
        one-shot drain on a helper thread. Either way returns within ``timeout``.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        if self._thread is None or not self._thread.is_alive():
            worker = self._one_shot
            if worker is None or not worker.is_alive():  # never two drains at once (one may still be in a POST)
                worker = threading.Thread(target=self._run, kwargs={"one_shot": True}, name="aop-flush", daemon=True)
                self._one_shot = worker
                self._stop.clear()
                worker.start()
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                self._stop.set()
                self._wake.set()
                return False
            return self._store_is_drained()
        with self._flush_cond:
            self._flush_asked += 1
            wanted = self._flush_asked
        self._wake.set()
        while time.monotonic() < deadline:
            with self._flush_cond:
                if self._flush_done >= wanted:
                    break
                self._flush_cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            if not self.is_leader and self._store_is_drained():
                return True
        return self._store_is_drained()

    def stop(self, timeout: float = 10.0, *, flush: bool = True) -> bool:
        """Stop within ``timeout``, after a final drain when leading and ``flush``.

        Returns True when the thread stopped in time and (with ``flush``) the
        store holds nothing undelivered. Undelivered events stay in the store; leased ones are released for the
        next flusher. A non-leader does not wait for the leader: it reports the
        host-wide store state as it is.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        thread = self._thread
        drained: Optional[bool] = None
        if thread is not None and thread.is_alive() and flush:
            # A thread that just started may not have campaigned yet: give it a poll or two to win.
            settle = min(deadline, time.monotonic() + 2 * self.election_poll + 0.05)
            while not self.is_leader and time.monotonic() < settle and self.election.is_leader is False:
                self._stop.wait(0.01)
            if self.is_leader:
                drained = self.flush(timeout=max(0.0, deadline - time.monotonic() - 0.05))
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return False
        self._reporter.write_now(self.clock())  # `aop status` shows the failure as it was when we stopped
        if not flush:
            return True
        return self._store_is_drained() if drained is None else drained

    def stats(self) -> dict[str, Any]:
        """Delivery counters of this process's flusher, plus leadership, pause state and the last error."""
        with self._lock:
            out: dict[str, Any] = {k: self._counts.get(k, 0) for k in (
                "delivered", "duplicates", "dead_letters", "fallback", "retried", "split", "paused_answers",
                "batches_sent", "hook_errors", "fallback_files", "fenced")}
            out.update(last_error=self._last_error, paused=self._paused, is_leader=self.is_leader, epoch=self._epoch)
        return out

    # ------------------------------------------------------------ the loop

    def _run(self, one_shot: bool = False) -> None:
        try:
            while not self._stop.is_set():
                one_shot_worker = self._one_shot
                if not one_shot and one_shot_worker is not None and one_shot_worker.is_alive():
                    self._stop.wait(self.election_poll)  # a flush() drain still runs: one drain at a time
                    continue
                if self._epoch is None and not self._campaign():
                    if one_shot and self._store_is_drained():
                        return None  # another process leads and has drained everything
                    self._stop.wait(self.election_poll)
                    continue
                try:
                    finished = self._drain(one_shot)
                except FencedError as e:
                    self._count("fenced")
                    self._note_error(f"deposed: {e}")
                    self._step_down()
                    continue
                except Exception as e:  # the loop must survive anything the store or a bug throws
                    self._step_down()  # the next epoch returns whatever this one held to pending
                    self._stop.wait(self._loop_failed(f"{type(e).__name__}: {e}", e))
                    continue
                if finished and one_shot:
                    return None
        finally:
            self._step_down()

    def _campaign(self) -> bool:
        try:
            won = self.election.try_acquire()
        except OSError as e:  # StoreError too, e.g. a planted flusher.lock: reported (rate-limited), tried again each poll
            self._note_error(f"cannot campaign for the flusher lock: {e}", e)
            return False
        if not won:
            return False
        if self.check_identity is not None:
            try:  # re-read at each win: `aop spool adopt` may have rebound the spool since we started
                self.check_identity()
            except (ConfigError, StoreError) as e:
                self._note_error(str(e), e)
                self.election.release()  # never send another destination's events
                return False
        try:
            self._epoch = self.store.begin_epoch()
            self.store.retry_fallback()  # crash recovery: a new leader retries what was parked
        except Exception as e:
            self._epoch = None
            self.election.release()
            self._stop.wait(self._loop_failed(f"could not start epoch: {type(e).__name__}: {e}", e))
            return False
        log.info("aop_client flusher elected (epoch %s)", self._epoch)
        streak_started = self._streak.started_at
        failures = self._streak.succeeded()
        if failures:
            log.info("aop_client flusher: the store works again after %d failed attempt(s) over %.1f s",
                     failures, time.monotonic() - (streak_started or time.monotonic()))
        return True

    def _loop_failed(self, message: str, exc: BaseException) -> float:
        """A failure of the loop itself (not of a batch): noted and reported by kind (rate-limited); returns the backoff."""
        self._note_error(message, exc)
        return self._streak.failed(time.monotonic(), self.rng.random())

    def _step_down(self) -> None:
        if self._epoch is not None or self.election.is_leader:
            self._epoch = None
            try:
                self.election.release()
            except Exception as e:
                self._note_error(f"election release failed: {e}", e)

    def _drain(self, one_shot: bool) -> bool:
        """Lease, hold and send batches until stopped; True once a one-shot drain found nothing left to lease.

        Sends run on :class:`SendPool` threads (up to ``max_in_flight`` at once)
        while this loop leases, signs and compresses the next batch.
        """
        held: list[StoredEvent] = []
        held_bytes = 0
        oldest_at: Optional[float] = None
        epoch = self._epoch
        senders = SendPool(self._send, self.max_in_flight)
        try:
            while True:
                if self._stop.is_set():
                    self._release(held, attempted=False)
                    return False
                senders.check()
                with self._lock:
                    wanted = self._flush_asked
                forced = one_shot or wanted > self._flush_done
                if wanted > self._fallback_retried_for or (
                        not held and time.monotonic() - self._fallback_retried_at >= self.fallback_retry_interval):
                    self._fallback_retried_for, self._fallback_retried_at = wanted, time.monotonic()
                    self.store.retry_fallback()  # parked events: retried on each flush and every interval
                room = self.batch_size - len(held)
                room_bytes = self.max_batch_bytes - held_bytes - batch_overhead_bytes(_ID_TEMPLATE, len(held) + room)
                fresh: list[StoredEvent] = []
                if room > 0 and (room_bytes > 0 or not held):
                    fresh = self._lease(room, max(1, room_bytes))
                if fresh:
                    held = fresh if not held else held + fresh
                    held_bytes += sum(map(len, map(_BODY, fresh)))
                    if oldest_at is None:
                        oldest_at = self.clock()
                full = room <= 0 or (not fresh and room_bytes <= 0)
                if should_flush(len(held), held_bytes, oldest_at, self.clock(), batch_size=self.batch_size,
                                max_batch_bytes=self.max_batch_bytes, batch_interval=self.batch_interval,
                                force=forced or full):
                    batch, held, held_bytes, oldest_at = held, [], 0, None
                    # sign and gzip now, while earlier batches are on the wire
                    prepared = self._prepare(batch) if self._can_prepare else None
                    senders.submit(batch, prepared, epoch)
                    continue
                if fresh:
                    continue  # top up at once while the store has more
                if senders.busy:  # a send may still give events back (release): look again once it is done
                    senders.wait_all()
                    continue
                if not held and forced:
                    with self._flush_cond:
                        self._flush_done = max(self._flush_done, wanted)
                        self._flush_cond.notify_all()
                    if one_shot:
                        return True
                wait = _POLL if oldest_at is None else min(_POLL, max(0.0, oldest_at + self.batch_interval - self.clock()))
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            senders.close()

    # ------------------------------------------------------------ one batch

    def _prepare(self, events: list[StoredEvent]) -> tuple[BatchAttempt, bytes, PreparedBatch]:
        """The first attempt of a batch, its body and the transport's ready-to-POST request."""
        attempt = self._new_attempt(events)
        body = build_batch_body(attempt.batch_id, [e.body for e in events])
        return attempt, body, self.transport.prepare_batch(attempt.batch_id, body, now=self.clock())

    def _send(self, events: Sequence[StoredEvent], prepared: Optional[tuple[BatchAttempt, bytes, PreparedBatch]],
              ticket: int, in_order: InOrder, epoch: Optional[int]) -> None:
        """Deliver ``events`` as one batch (and its halves after a split), applying every step to the store.

        Runs on a send thread. ``prepared`` (from :meth:`_prepare`) is used for
        the first POST only; retries are signed afresh. Steps reach the store
        only after every earlier ticket is done, under the epoch of the drain
        that leased the batch.
        """
        first: tuple[BatchAttempt, Optional[bytes], Optional[PreparedBatch]] = (
            prepared if prepared is not None else (self._new_attempt(events), None, None))
        queue: list[tuple[BatchAttempt, list[StoredEvent]]] = [(first[0], list(events))]
        while queue:
            attempt, batch = queue.pop(0)
            by_id = _BatchEvents(batch)
            ready = first[2] if attempt is first[0] else None
            body = first[1] if ready is not None and first[1] is not None else build_batch_body(attempt.batch_id, [e.body for e in batch])
            failed_here = False
            while True:
                if self._stop.is_set():
                    self._release(batch, attempted=failed_here)
                    break
                self._run_pre_hooks(batch)
                if ready is not None and self.clock() - ready.signed_at > _PREPARED_MAX_AGE:
                    ready = None  # waited for a send slot too long: sign afresh, well within the server's tolerance
                started = time.monotonic()
                if ready is not None:
                    response, ready = self.transport.post_prepared(ready), None
                else:
                    response = self.transport.post_batch(attempt.batch_id, body, now=self.clock())
                latency = time.monotonic() - started
                self._count("batches_sent")
                now = self.clock()
                outcome = classify(response.status, response.headers, response.body,
                                   batch_event_ids=attempt.event_ids, now=now,
                                   error=response.error, truncated=response.truncated)
                step = next_step(attempt, outcome, self.retry_policy, self.rng.random())
                self._reporter.answer(attempt, response, outcome, step, latency, now)
                in_order.wait_turn(ticket)
                self._apply(step, by_id, attempt, outcome.duplicates if isinstance(outcome, Delivered) else 0, epoch)
                if step.halves:
                    self._count("split")
                    queue[:0] = [(self._new_attempt(part), part)
                                 for part in (by_id.of(half) for half in step.halves)]
                if step.retry is None:
                    break
                attempt, failed_here = step.retry, True
                if self._stop.wait(step.delay):
                    self._release(batch, attempted=True)
                    break

    def _new_attempt(self, events: Sequence[StoredEvent]) -> BatchAttempt:
        ids = tuple(map(_EVENT_ID, events))
        failures = min(map(_ATTEMPTS, events), default=0)
        # uuid4 reads os.urandom: forked processes never share batch ids (a seeded rng would).
        return BatchAttempt(batch_id=str(uuid.uuid4()), event_ids=ids, failures=failures)

    def _apply(self, step: Step, by_id: "_BatchEvents", attempt: BatchAttempt, duplicates: int,
               epoch: Optional[int]) -> None:
        if epoch is None:
            raise FencedError("flusher has no epoch: not elected")
        if step.ack:
            acked = by_id.of(step.ack)
            self.store.ack([e.ref for e in acked], epoch=epoch)
            self._count("delivered", len(step.ack))
            self._count("duplicates", duplicates)
            self._paused = False
            self._run_post_hooks(acked, True)
        if step.dead:
            reasons: dict[str, list[StoredEvent]] = defaultdict(list)
            for event_id, reason in step.dead:
                reasons[reason].extend(by_id.of((event_id,)))
            for reason, events in reasons.items():
                self.store.dead_letter([e.ref for e in events], reason, epoch=epoch)
                self._run_post_hooks(events, False)
            self._count("dead_letters", len(step.dead))
            self._note_error(dead_letters_text(len(step.dead)))
        if step.fallback:
            parked = by_id.of(step.fallback)
            self.store.fallback([e.ref for e in parked], epoch=epoch)
            self._count("fallback", len(step.fallback))
            self._note_error(f"batch {attempt.batch_id} failed {attempt.failures + 1} time(s), parked: {step.reason}")
            if self.fallback_dir:
                self._write_fallback_files(parked, attempt, step.reason or "")
            self._run_post_hooks(parked, False)
        if step.retry is not None:
            self._count("paused_answers" if step.paused else "retried")
            self._paused = self._paused or step.paused
            self._note_error(f"batch {attempt.batch_id}: {step.reason}; next attempt in {step.delay:.2f} s")

    def _lease(self, max_events: int, max_bytes: int) -> list[StoredEvent]:
        if self._lease_fenced and self._epoch is not None:
            return self.store.lease(max_events, max_bytes, epoch=self._epoch)  # type: ignore[call-arg]
        return self.store.lease(max_events, max_bytes)

    def _release(self, events: Sequence[StoredEvent], *, attempted: bool) -> None:
        if events and self._epoch is not None:
            try:
                self.store.release([e.ref for e in events], epoch=self._epoch, attempted=attempted)
            except FencedError:
                self._count("fenced")
            except Exception as e:  # lease expiry returns them anyway
                self._note_error(f"release failed: {type(e).__name__}: {e}", e)

    # ------------------------------------------------------------ side effects

    def _write_fallback_files(self, events: Sequence[StoredEvent], attempt: BatchAttempt, reason: str) -> None:
        runs: dict[str, list[StoredEvent]] = defaultdict(list)
        for event in events:
            runs[event.run_id].append(event)
        for run_id, parked in runs.items():
            if not is_file_name_safe(run_id):
                self._note_error(f"fallback file skipped: run_id {run_id[:40]!r} is not file-name safe")
                continue
            try:
                agent_id = orjson.loads(parked[0].body).get("agent_id")
            except (orjson.JSONDecodeError, AttributeError):
                agent_id = None
            metadata = {"agent_id": agent_id, "reason": "max_retries", "batch_id": attempt.batch_id,
                        "attempts": attempt.failures + 1, "last_error": reason}
            try:
                write_fallback_file(str(self.fallback_dir), run_id, parked, metadata, now=self.clock())
                self._count("fallback_files")
            except OSError as e:  # the events are still safe in the store
                self._note_error(f"fallback file not written in {self.fallback_dir!r}: {e.strerror or e}", e)

    def _run_pre_hooks(self, batch: Sequence[StoredEvent]) -> None:
        hook = self.pre_send_hook
        if hook is not None:
            for event in batch:
                self._call_hook(hook, event, None)

    def _run_post_hooks(self, events: Sequence[StoredEvent], success: bool) -> None:
        hook = self.post_send_hook
        if hook is not None:
            for event in events:
                self._call_hook(hook, event, success)

    def _call_hook(self, hook: Callable[..., Any], event: StoredEvent, success: Optional[bool]) -> None:
        try:
            doc = orjson.loads(event.body)
            hook(doc) if success is None else hook(doc, success)
        except Exception as e:  # a user hook never stops delivery
            self._count("hook_errors")
            name = "pre_send_hook" if success is None else "post_send_hook"
            # type and hook name only: a hook's message may quote the event's content
            self._reporter.failure(name, f"{name} raised {type(e).__name__}", self.clock())

    def _store_is_drained(self) -> bool:
        try:
            s = self.store.stats()
        except Exception as e:
            self._note_error(f"store stats failed: {type(e).__name__}: {e}", e)
            return False
        return s.pending == 0 and s.in_flight == 0 and s.fallback == 0

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _note_error(self, message: str, exc: BaseException | None = None) -> None:
        """Keep ``message`` as the last error; an exception is also reported (rate-limited, by kind)."""
        self._last_error = message
        if exc is not None:
            kind = ("spool_identity" if isinstance(exc, ConfigError)
                    else "store" if isinstance(exc, (StoreError, OSError)) else "internal")
            self._reporter.failure(kind, message, self.clock())
            if self.on_error is not None:
                try:
                    self.on_error(exc)
                except Exception as e:  # no traceback: it would chain a hook's exception and its message
                    self._reporter.failure("internal", f"on_error callback raised {type(e).__name__}", self.clock())


class _BatchEvents:
    """The events of one batch, found by event_id; a step naming every event costs no lookup at all."""

    __slots__ = ("events", "_by_id")

    def __init__(self, events: list[StoredEvent]) -> None:
        self.events = events
        self._by_id: Optional[dict[str, list[StoredEvent]]] = None

    def of(self, ids: Sequence[str]) -> list[StoredEvent]:
        """The events carrying ``ids`` (ids of this batch); every event when ``ids`` names them all."""
        if len(ids) == len(self.events) and len(set(ids)) == len(ids):  # as many distinct batch ids as events: all
            return self.events
        if self._by_id is None:
            self._by_id = defaultdict(list)
            for event in self.events:
                self._by_id[event.event_id].append(event)
        return [e for i in ids for e in self._by_id.get(i, ())]
