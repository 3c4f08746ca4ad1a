"""AOPClient: the public entry point that ties the builder, the durable store and the flusher.

It owns the emit path (validate, redact, sign, durable append: nothing here
touches the network), the life cycle of the flusher thread (start, stop, fork,
interpreter exit), run completion, replay files and the combined statistics.
Transport failures never reach user code: they end up in ``get_stats()`` and
the logs, and the events stay on disk until they are delivered. An event the
client drops (a redaction hook that raises or returns an invalid envelope, a
store failure) is reported by reason and exception type only, rate-limited:
a hook's message, or a ValidationError about its result, can quote the very
value being redacted, so no such text reaches a log, ``last_error`` or a file.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

import orjson

from . import forking
from .config import ClientConfig, RedactionHook
from .delivery_report import FailureReporter
from .errors import AOPError, ConfigError, StoreError, ValidationError
from .events import validate_envelope
from .protocol import check_json, copy_json
from .signing import signed_body
from .trace_builder import TraceBuilder, merge_trace
from .trace_files import write_replay_file

if TYPE_CHECKING:
    from .store.api import Store

__all__ = ["AOPClient", "EmitResult"]

log = logging.getLogger("aop_client")

_STORE_RETRY = 1.0  # seconds between two attempts to open a store that failed to open


class EmitResult:
    """What emit_event did with one event; truthy when the event is durably stored."""

    __slots__ = ("stored", "event_id", "run_id", "body", "reason", "seq")

    def __init__(self, stored: bool, event_id: str, run_id: str, body: bytes = b"",
                 reason: Optional[str] = None, seq: Optional[int] = None) -> None:
        self.stored = stored
        self.event_id = event_id
        self.run_id = run_id
        self.seq = seq  # the seq it is stored under (set when stored)
        self.body = body  # the signed, redacted envelope exactly as stored
        self.reason = reason  # why it was not stored: "redacted", "full", "disk_full", ...

    def __bool__(self) -> bool:
        return self.stored

    def __repr__(self) -> str:
        return (f"EmitResult(stored={self.stored}, event_id={self.event_id!r}, "
                f"reason={self.reason!r})")


class AOPClient:
    """Emits trace events durably and delivers them through one elected flusher per host."""

    #: Counters a flusher keeps; the client adds them up over its flushers' lifetimes.
    _FLUSHER_COUNTERS = ("delivered", "duplicates", "retried", "hook_errors")

    def __init__(self, config: Optional[ClientConfig] = None) -> None:
        self.config = config if config is not None else ClientConfig.from_env()
        self.trace_builder = TraceBuilder(self.config.agent_id, emitted_source=_StoredTrace(self))
        self._key = self.config.org_salt_key
        self._lock = threading.RLock()
        self._store: Optional[Store] = None
        self._store_gen = -1  # the fork generation (aop_client.forking) that opened _store
        self._store_failed: Optional[tuple[int, float, str]] = None  # (fork generation, monotonic time, why) of a failed open
        self._flusher: Any = None
        self._flusher_gen = -1  # the fork generation whose thread runs _flusher (a fork leaves it behind)
        self._started = False
        self._counts: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._emitted_run: Optional[str] = None  # the last run this client stored an event of
        self._last_error: Optional[str] = None
        self._since_wakeup = 0
        self._run_completion: Optional[dict[str, Any]] = None  # the server's last run-completion answer
        self._replay_written: Optional[tuple[str, int]] = None  # (run_id, next_seq) of the last replay file
        self._drop_reporter = FailureReporter(None, log)  # rate-limited WARNINGs for dropped events
        forking.register(forking.CLIENT, self)

    # ------------------------------------------------------------------ store

    @property
    def store(self) -> Store:
        """The durable store behind this client (opened on first use, reopened after fork).

        Opening it checks the spool's binding (:mod:`aop_client.spool_identity`): a spool of
        other credentials raises ConfigError, from ``start()`` or the first ``emit_event()``.
        Any other failure to open it is a StoreError (``emit_event`` drops with
        ``reason='store_error'``); after one, the open is tried again at most once every
        ``_STORE_RETRY`` seconds (meanwhile the same StoreError, at no cost).
        """
        store = self._store
        if store is None or self._store_gen != forking.generation:
            with self._lock:
                if self._store is None or self._store_gen != forking.generation:
                    self._store = self._open_store()
                    self._store_gen = forking.generation
                store = self._store
        return store

    def _open_store(self) -> Store:
        """Open and check the store (caller holds self._lock); remembers a failure to back off."""
        failed = self._store_failed
        if failed is not None and failed[0] == forking.generation and time.monotonic() - failed[1] < _STORE_RETRY:
            raise StoreError(failed[2])
        try:
            store = self._open_bound()
        except ConfigError:  # a spool bound to other credentials: raised as such, every time
            raise
        except OSError as exc:  # StoreError included; a raw one (ENOSPC, EACCES, a racing rename) too
            why = str(exc) if isinstance(exc, StoreError) else f"cannot open spool {self.config.spool_path!r}: {exc}"
            self._store_failed = (forking.generation, time.monotonic(), why)
            raise StoreError(why) from exc
        self._store_failed = None
        return store

    def _open_bound(self) -> Store:
        from .spool_identity import open_bound
        from .store import DiskStore

        c = self.config
        return open_bound(c, lambda: DiskStore(  # ConfigError: another destination's spool
            c.spool_path,
            durability=c.durability,
            max_events=c.max_buffer_size,
            max_bytes=c.max_buffer_bytes,
            full_policy=c.buffer_full_policy,
            block_timeout=c.buffer_block_timeout,
            retention_seconds=c.retention_seconds,
            retention_bytes=c.retention_bytes,
            max_event_bytes=c.max_event_bytes,
        ))

    # ------------------------------------------------------------------- emit

    def emit_event(self, event: dict[str, Any]) -> EmitResult:
        """Validate, redact, sign and durably store one event; never raises transport errors."""
        validate_envelope(event)
        event_id, run_id = event["event_id"], event["run_id"]
        self.trace_builder.release(event_id)  # emitted: the store is its record from now on
        self._counts["emitted"] += 1
        hook = self.config.redaction_hook
        if hook is not None:
            redacted, why = self._redact(hook, event)
            if redacted is None:
                return EmitResult(False, event_id, run_id, reason=why)
            event = redacted
        _, body = signed_body(event, self._key)
        if len(body) > self.config.max_event_bytes:
            raise ValidationError(
                f"event {event_id} is {len(body)} bytes, over max_event_bytes="
                f"{self.config.max_event_bytes}",
                field="event",
                value=len(body),
            )
        try:
            result = self.store.append(event_id, run_id, event["seq"], body)
        except ConfigError:  # a spool bound to other credentials: a misconfiguration, raised
            raise
        except AOPError as exc:  # the store counts its own drops; this is the last guard
            self._drop("store_error", f"{type(exc).__name__}: {exc}", "store_error")
            return EmitResult(False, event_id, run_id, reason="store_error")
        if not result.stored:
            self._dropped[result.reason or "unknown"] += 1
            return EmitResult(False, event_id, run_id, reason=result.reason)
        self._counts["stored"] += 1
        self._emitted_run = run_id
        flusher = self._flusher
        if flusher is not None:
            if self._flusher_gen != forking.generation:  # forked: the thread stayed in the parent
                self._restart_after_fork()
                flusher = self._flusher
            self._since_wakeup += 1
            if self._since_wakeup >= self.config.batch_size:
                self._since_wakeup = 0
                flusher.wakeup()
        return EmitResult(True, event_id, run_id, body, seq=event["seq"])

    def _redact(self, hook: RedactionHook, event: dict[str, Any]) -> tuple[Optional[dict[str, Any]], Optional[str]]:
        """Run the redaction hook on a private copy: (event, None), or (None, why it was dropped).

        None from the hook drops the event; an exception, or a result that is no longer a
        valid envelope, drops and counts it: a broken hook never lets PII reach the disk.
        Neither the exception's text nor the ValidationError's is kept (both may quote
        the value being redacted).
        """
        copy = _copy_json(event)  # not JSON (e.g. nested too deep) is the caller's ValidationError
        try:
            out = hook(copy)
        except Exception as exc:
            self._drop("redaction_error", f"redaction_hook raised {type(exc).__name__}", "redaction_hook")
            return None, "redaction_error"
        if out is None:
            self._dropped["redacted"] += 1
            return None, "redacted"
        try:
            validate_envelope(out)
            check_json(out)  # the protocol walk signed_body relies on: a set, 2**53 or 200 levels is not JSON
        except (ValidationError, RecursionError, TypeError) as exc:
            self._drop("redaction_error",
                       f"redaction_hook returned an invalid envelope ({type(exc).__name__})", "redaction_hook")
            return None, "redaction_error"
        return out, None

    def _drop(self, reason: str, what: str, kind: str) -> None:
        """Count a dropped event; ``what`` (no event content in it) becomes last_error and a rate-limited WARNING."""
        self._dropped[reason] += 1
        self._last_error = f"{reason}: {what}"
        self._drop_reporter.failure(kind, f"dropped an event ({reason}): {what}", time.time())

    def mark_delivered(self, events: Iterable[Any]) -> int:
        """Record events acknowledged on a stream as delivered, so no batch resends them.

        ``events`` are ``(event_id, run_id, seq)`` triples (what a stream sent: the store finds
        them by run and seq), or bare event ids, looked up among the stored events of the
        current run (a scan of that run's index rows). Unknown events are ignored (the batch
        path delivers them and the server dedupes). Returns how many moved.
        """
        run_id = self.trace_builder.run_id
        items = [(e, run_id, None) if isinstance(e, str) else tuple(e) for e in events]
        if not items:
            return 0
        return int(self.store.mark_delivered(items))

    # -------------------------------------------------------------- lifecycle

    def start(self) -> "AOPClient":
        """Start the background flusher (it delivers only while elected for this host)."""
        with self._lock:
            if self._started and self._flusher is not None:
                return self
            self._flusher = self._make_flusher()
            self._flusher.start()
            self._flusher_gen = forking.generation
            self._started = True
        _register_exit_handler()
        return self

    def _after_fork_in_child(self) -> None:
        """In a forked child (aop_client.forking): fresh locks (another parent thread may have held one).

        The store is reopened and this process's own flusher started on next use
        (their fork-generation stamps no longer match).
        """
        self._lock = threading.RLock()

    def _restart_after_fork(self) -> None:
        """In a forked child, start this process's own flusher (it campaigns; the lock decides)."""
        with self._lock:
            if self._flusher is not None and self._flusher_gen != forking.generation:
                self._flusher = None
                self._started = False
                self.start()

    def _make_flusher(self) -> Any:
        from .core.backoff import RetryPolicy
        from .election import FlusherElection
        from .flusher import Flusher
        from .spool_identity import refuse_other
        from .transport import HttpTransport

        c = self.config
        transport = HttpTransport(
            c.base_url,
            c.api_key,
            c.org_salt_key,
            verify_ssl=c.verify_ssl,
            connect_timeout=c.connect_timeout,
            read_timeout=c.read_timeout,
            gzip_threshold=c.gzip_threshold,
        )
        return Flusher(
            self.store,
            transport,
            FlusherElection(c.spool_path),
            batch_size=c.batch_size,
            batch_interval=c.batch_interval,
            max_batch_bytes=c.max_batch_bytes,
            max_in_flight=c.max_in_flight,
            retry_policy=RetryPolicy(
                max_retries=c.max_retries, base=c.retry_backoff_base, cap=c.retry_backoff_max
            ),
            fallback_dir=c.local_fallback_dir if c.enable_local_fallback else None,
            check_identity=lambda: refuse_other(c.spool_path, c),
            pre_send_hook=c.pre_send_hook,
            post_send_hook=c.post_send_hook,
            debug=c.debug,
        )

    def stop(self, timeout: float = 10.0, *, flush: bool = True) -> bool:
        """Stop the flusher within timeout, write the replay file if enabled; True if nothing is left undelivered.

        With ``flush=False`` the flusher stops at once without a final drain; either way what
        is not delivered stays on disk for the next flusher.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        drained = True
        with self._lock:
            flusher, self._flusher, self._started = self._flusher, None, False
        if flusher is not None:
            try:
                # Ask for a final drain first: it also covers a flusher that has not yet won the
                # election, or another process being the flusher (then we wait for its drain).
                drained = flush and bool(
                    flusher.flush(timeout=max(0.0, deadline - time.monotonic() - 0.1)))
                stopped = flusher.stop(timeout=max(0.0, deadline - time.monotonic()), flush=False)
                drained = drained and bool(stopped)
            except Exception as exc:  # stop must return, whatever the flusher did
                self._last_error = f"stop: {type(exc).__name__}: {exc}"
                drained = False
            self._retire(flusher)
        if self.config.enable_local_replay:
            self._write_replay()
        return drained and self._nothing_left()

    def _nothing_left(self) -> bool:
        """True when the host's store holds no pending, in-flight or fallback event."""
        try:
            st = self.store.stats()
        except AOPError:
            return False
        return st.pending + st.in_flight + st.fallback == 0

    def flush(self, timeout: float = 30.0) -> bool:
        """Deliver everything pending now (starting the flusher if needed); True when drained."""
        self._ensure_flusher()
        return bool(self._flusher.flush(timeout=timeout))

    def finalize(self, timeout: float = 30.0) -> bool:
        """Deliver the run, send the protocol's run completion and write the replay file.

        Returns True when the server reports the run complete (every seq held).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        run_id = self.trace_builder.run_id
        complete = False
        try:
            if self._deliver_run(run_id, deadline):
                complete = self._send_run_completion(run_id)
        except Exception as exc:  # finalize reports, it never raises transport errors
            self._last_error = f"finalize: {type(exc).__name__}: {exc}"
            log.warning("aop_client could not finalize run %s: %s", run_id, exc)
        if self.config.enable_local_replay:
            self._write_replay()
        return complete

    def _deliver_run(self, run_id: str, deadline: float) -> bool:
        """Drive the flusher until no event of this run is left undelivered (or the deadline)."""
        self._ensure_flusher()
        while True:
            if next(self.store.iter_run(run_id, include_delivered=False), None) is None:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # The leader drains now; another process's flusher is waited for (in short steps,
            # so our own run is re-checked rather than the host's whole backlog).
            self._flusher.flush(timeout=min(0.5, remaining))

    def _send_run_completion(self, run_id: str) -> bool:
        last_seq = self.trace_builder.next_seq - 1
        if last_seq < 1:
            return True
        body = {"run_id": run_id, "agent_id": self.config.agent_id,
                "event_count": last_seq, "last_seq": last_seq}
        response = self._flusher.transport.post_run_complete(run_id, body)
        if response.status != 200:
            self._last_error = (f"run completion: HTTP {response.status} "
                                f"{response.error or response.body[:200]!r}")
            return False
        try:
            answer = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            self._last_error = "run completion: unreadable answer"
            return False
        self._run_completion = answer
        if not answer.get("complete"):
            self._last_error = f"run completion: server misses seqs {answer.get('missing')}"
        return bool(answer.get("complete"))

    def _retire(self, flusher: Any) -> None:
        """Fold a stopped flusher's counters into the client's totals."""
        fs = flusher.stats()
        for key in self._FLUSHER_COUNTERS:
            self._counts[key] += fs.get(key, 0) or 0
        self._last_error = fs.get("last_error") or self._last_error

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher_gen != forking.generation:
            self._flusher = None
            self._started = False
            self.start()

    #: The host-wide store's figures in get_stats() (None / 0 when the store cannot be read).
    _STORE_STATS = ("pending", "in_flight", "delivered_retained", "dead_letters", "fallback",
                    "quarantined", "foreign_files", "bytes_on_disk", "oldest_pending_age")

    def get_stats(self) -> dict[str, Any]:
        """Counters of this client, its flusher (when started) and the host-wide store.

        The keys are always the same: when the store cannot be read, its figures are
        None (``dead_letters`` and ``fallback`` 0) and ``store_error`` says why.
        """
        out: dict[str, Any] = {
            "emitted": self._counts["emitted"],
            "stored": self._counts["stored"],
            **{key: self._counts[key] for key in self._FLUSHER_COUNTERS},
            "dead_letters": 0, "fallback": 0, "paused": False,
            "dropped": dict(self._dropped),
            "is_flusher": False,
            "last_error": self._last_error,
            "run_id": self.trace_builder.run_id,
            **{name: None for name in self._STORE_STATS if name not in ("dead_letters", "fallback")},
            "store_error": None,
        }
        flusher = self._flusher
        if flusher is not None:
            fs = flusher.stats()
            for key in self._FLUSHER_COUNTERS:
                out[key] += fs.get(key, 0) or 0
            out["paused"] = bool(fs.get("paused"))
            out["is_flusher"] = bool(fs.get("is_leader"))
            out["last_error"] = fs.get("last_error") or out["last_error"]
        try:
            st = self.store.stats()
        except (AOPError, OSError) as exc:
            out["store_error"] = f"{type(exc).__name__}: {exc}"
            return out
        for name in self._STORE_STATS:
            out[name] = getattr(st, name)
        for reason, n in st.dropped.items():
            out["dropped"][reason] = max(out["dropped"].get(reason, 0), n)
        return out


    def get_trace(self) -> list[dict[str, Any]]:
        """The current run's events in seq order: emitted ones read back from the store, created ones held.

        Emitted events are returned as stored (redacted, with ``sig``) while the store keeps
        them: pending, in flight, fallback, and delivered within retention. An event reclaimed
        past ``retention_seconds``/``retention_bytes`` is no longer returned (its seq is missing);
        dead letters are not part of the trace. See docs/concepts.md.
        """
        builder = self.trace_builder
        return merge_trace(self._stored_trace(builder.run_id), builder.held_events())

    def _stored_trace(self, run_id: str) -> Iterator[dict[str, Any]]:
        """The stored events of one run this client emitted into (none, and no store opened, otherwise)."""
        if run_id != self._emitted_run:
            return iter(())
        return (orjson.loads(e.body) for e in self.store.iter_run(run_id, include_delivered=True))

    def get_trace_json(self, pretty: bool = False) -> str:
        """get_trace() as JSON text (indented when pretty)."""
        option = orjson.OPT_INDENT_2 if pretty else 0
        return orjson.dumps(self.get_trace(), option=option).decode()

    def _write_replay(self) -> Optional[Path]:
        """Write the current run's replay file, unless an identical one was already written."""
        run_id = self.trace_builder.run_id
        written = (run_id, self.trace_builder.next_seq)
        if self._replay_written == written:
            return None
        try:
            c = self.config
            path = write_replay_file(c.replay_dir, run_id, self.store.iter_run(run_id, include_delivered=True),
                                     agent_id=c.agent_id, seed=c.seed, stats=self.get_stats())
            self._replay_written = written
            return path
        except Exception as exc:
            self._last_error = f"replay: {type(exc).__name__}: {exc}"
            log.warning("aop_client could not write the replay file: %s", exc)
            return None


class _StoredTrace:
    """The builder's ``emitted_source``: a client's stored events of a run (a weak reference, no cycle)."""

    __slots__ = ("_client",)

    def __init__(self, client: "AOPClient") -> None:
        self._client = weakref.ref(client)

    def __call__(self, run_id: str) -> Iterator[dict[str, Any]]:
        client = self._client()
        return client._stored_trace(run_id) if client is not None else iter(())


def _copy_json(event: Any) -> Any:
    """A private deep copy of an event (scalars shared) for a hook, checked by the protocol's one walk.

    Raises ValidationError for what signing would refuse anyway (nesting beyond
    MAX_JSON_DEPTH, NaN, big ints, non-JSON types), never RecursionError.
    """
    return copy_json(event)


_exit_registered = False


def _register_exit_handler() -> None:
    global _exit_registered
    if not _exit_registered:
        atexit.register(_stop_all_at_exit)
        _exit_registered = True


def _stop_all_at_exit() -> None:
    """At interpreter exit, stop every started client within a short, bounded time.

    Only the elected flusher spends up to 2 s on a last drain; any other process
    stops at once (its events are on disk, and the flusher or the next process to
    start delivers them), so recycling a worker costs no waiting.
    """
    for client in forking.live(forking.CLIENT):
        if client._started:
            flusher = client._flusher
            leading = flusher is not None and client._flusher_gen == forking.generation and flusher.is_leader
            client.stop(timeout=2.0, flush=leading)
