"""TraceBuilder: creates the events of one agent run with gap-free sequence numbers.

This module owns sequence numbering and the in-memory record of the events of a
run that are not emitted yet. Each ``create_*`` method builds its payload with
:class:`ToonBuilder`, wraps it in an envelope (:func:`aop_client.events.make_event`),
validates it fully, holds a copy and returns it. Events are not signed here: the
client signs at emit time.

Memory stays bounded in a long-lived process: an event handed to
``AOPClient.emit_event`` is *released* (the durable store is its record from then
on, and ``get_events``/``get_trace`` read it back from there), and at most
``max_held_events`` created-but-not-emitted events are held: beyond that the
oldest is dropped, counted in :attr:`TraceBuilder.dropped_unemitted` and logged
once per run.

Sequence numbers are 1, 2, 3... per run with no gaps or duplicates, also when
several threads create events at once (a lock covers numbering and recording);
an invalid event raises ValidationError *before* it takes a number.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from . import forking
from .errors import ValidationError
from .events import DEFAULT_MAX_EVENT_BYTES, check_event_size, make_event, new_run_id
from .protocol import check_envelope, is_uuid
from .toon_parser import ToonBuilder

__all__ = ["TraceBuilder", "DEFAULT_MAX_HELD_EVENTS"]

log = logging.getLogger("aop_client")

#: How many created but not yet emitted events a builder holds by default (Active Mode).
DEFAULT_MAX_HELD_EVENTS = 10_000


class TraceBuilder:
    """Creates and records the events of one run (``run_id``) of agent ``agent_id``; thread-safe."""

    def __init__(
        self,
        agent_id: int,
        run_id: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_held_events: int = DEFAULT_MAX_HELD_EVENTS,
        emitted_source: Callable[[str], Iterable[dict[str, Any]]] | None = None,
    ) -> None:
        """``emitted_source(run_id)``, when given (AOPClient gives its store's reader), returns
        the emitted events of a run, so that :meth:`get_events` still covers the whole run."""
        if type(agent_id) is not int:
            raise ValidationError(f"agent_id: expected an integer, got {agent_id!r:.80}", field="agent_id", value=agent_id)
        if run_id is not None and not is_uuid(run_id):
            raise ValidationError(f"run_id: expected a UUID string, got {run_id!r:.80}", field="run_id", value=run_id)
        if type(max_event_bytes) is not int or max_event_bytes < 1:
            raise ValidationError(
                f"max_event_bytes: expected a positive integer, got {max_event_bytes!r:.80}",
                field="max_event_bytes",
                value=max_event_bytes,
            )
        if type(max_held_events) is not int or max_held_events < 1:
            raise ValidationError(
                f"max_held_events: expected a positive integer, got {max_held_events!r:.80}",
                field="max_held_events",
                value=max_held_events,
            )
        self._agent_id = agent_id
        self._run_id = run_id if run_id is not None else new_run_id()
        self._clock = clock
        self._max_event_bytes = max_event_bytes
        self._max_held = max_held_events
        self._emitted_source = emitted_source
        self._lock = threading.Lock()
        self._start_run()
        forking.register(forking.BUILDER, self)

    def _start_run(self) -> None:
        """Forget the held events of the run before (under the lock, or before any thread sees it)."""
        self._last_seq = 0
        self._held: dict[str, dict[str, Any]] = {}  # event_id -> event, created and not emitted, oldest first
        self._dropped_unemitted = 0

    def _after_fork_in_child(self) -> None:
        """A forked child starts its own run: the parent's run and seqs stay the parent's.

        The lock is replaced first, since another thread of the parent may have held it
        at the moment of the fork.
        """
        self._lock = threading.Lock()
        self._run_id = new_run_id()
        self._start_run()

    def __repr__(self) -> str:
        return f"TraceBuilder(agent_id={self._agent_id}, run_id={self._run_id!r}, next_seq={self.next_seq})"

    @property
    def agent_id(self) -> int:
        """The agent id stamped on every event."""
        return self._agent_id

    @property
    def run_id(self) -> str:
        """The current run id (changes with :meth:`new_run`)."""
        return self._run_id

    @property
    def next_seq(self) -> int:
        """The seq the next created event will get."""
        return self._last_seq + 1

    @property
    def max_held_events(self) -> int:
        """How many created but not yet emitted events are held at most (oldest dropped first)."""
        return self._max_held

    @property
    def dropped_unemitted(self) -> int:
        """Events of the current run dropped from the held set, never emitted, because it was full."""
        return self._dropped_unemitted

    def new_run(self, run_id: str | None = None) -> str:
        """Start a fresh run: new run_id (given or uuid4), seq back to 1, held events cleared."""
        if run_id is not None and not is_uuid(run_id):
            raise ValidationError(f"run_id: expected a UUID string, got {run_id!r:.80}", field="run_id", value=run_id)
        with self._lock:
            self._run_id = run_id if run_id is not None else new_run_id()
            self._start_run()
            return self._run_id

    def _record(self, event_type: str, payload: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        now = self._clock()
        with self._lock:  # a seq is taken only by the append: any failure above it takes none
            event = make_event(
                run_id=self._run_id,
                agent_id=self._agent_id,
                seq=self._last_seq + 1,
                type=event_type,
                payload=payload,
                now=now,
                name=name,
            )
            check_envelope(event)  # the payload was validated and copied by ToonBuilder
            check_event_size(event, self._max_event_bytes)
            self._last_seq += 1
            held = self._held
            held[event["event_id"]] = event
            if len(held) > self._max_held:
                del held[next(iter(held))]
                self._dropped_unemitted += 1
                if self._dropped_unemitted == 1:
                    log.warning("aop_client: run %s holds %d created events that were never emitted; the oldest "
                                "are dropped from get_trace() (emit them, or call new_run() per run)",
                                self._run_id, self._max_held)
        return _copy(event)

    def release(self, event_id: str) -> bool:
        """Stop holding an event (AOPClient.emit_event calls this: the store has it now); True if it was held."""
        with self._lock:
            return self._held.pop(event_id, None) is not None

    def held_events(self) -> list[dict[str, Any]]:
        """Deep copies of the events created in the current run and not emitted, in seq order."""
        with self._lock:
            events = list(self._held.values())
        return [_copy(event) for event in events]

    def create_reasoning(
        self,
        goal: str,
        steps: Sequence[Mapping[str, Any]] | None = None,
        safety_checks: Sequence[Mapping[str, Any]] | None = None,
        uncertainty: str = "low",
        **extra: Any,
    ) -> dict[str, Any]:
        """Create and record a ``reasoning`` event (see ToonBuilder.build_reasoning_payload)."""
        payload = ToonBuilder.build_reasoning_payload(goal, steps, safety_checks, uncertainty, **extra)
        return self._record("reasoning", payload)

    def create_action_request(
        self, action: str, params: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Create and record an ``action_request`` event."""
        return self._record("action_request", ToonBuilder.build_action_request_payload(action, params, context))

    def create_action_response(self, status: str, data: Any = None, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create and record an ``action_response`` event."""
        return self._record("action_response", ToonBuilder.build_action_response_payload(status, data, meta))

    def create_final_output(self, text: str, structured: Any = None) -> dict[str, Any]:
        """Create and record a ``final_output`` event."""
        return self._record("final_output", ToonBuilder.build_final_output_payload(text, structured))

    def create_error(
        self,
        message: str | BaseException,
        error_type: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create and record an ``error`` event; ``message`` may be an exception."""
        return self._record("error", ToonBuilder.build_error_payload(message, error_type, details))

    def create_custom(self, name: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create and record a ``custom`` event: top-level ``name``, and ``data`` (a dict) as its payload.

        Protocol v1 section 1: the payload is the caller's object itself (``{}`` when
        ``data`` is None), so a redaction hook sees ``payload["email"]`` as given.
        """
        name = ToonBuilder.custom_name(name)
        return self._record("custom", ToonBuilder.build_custom_payload(data), name)

    def get_events(self) -> list[dict[str, Any]]:
        """The events of the current run in seq order: emitted ones (from ``emitted_source``) and held ones.

        Without an ``emitted_source`` (a builder used on its own), the held events.
        """
        source = self._emitted_source
        held = self.held_events()
        return merge_trace(source(self._run_id), held) if source is not None else held

    def export_trace(self) -> list[dict[str, Any]]:
        """Return the current run's trace as a list of event dicts (deep copies); see :meth:`get_events`."""
        return self.get_events()

    def export_trace_json(self, pretty: bool = False) -> str:
        """Return the trace as a JSON array: compact, or indented by 2 spaces when ``pretty``."""
        option = orjson.OPT_INDENT_2 if pretty else 0
        return orjson.dumps(self.get_events(), option=option).decode("utf-8")


def merge_trace(emitted: Iterable[dict[str, Any]], held: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One run's trace in seq order: emitted events (as stored) and held ones (an event in both counts once)."""
    events = {e["event_id"]: e for e in held}
    events.update((e["event_id"], e) for e in emitted)
    return sorted(events.values(), key=lambda e: e["seq"])


def _copy(event: dict[str, Any]) -> dict[str, Any]:
    """Deep copy of a validated (hence plain JSON) event."""
    copied: dict[str, Any] = orjson.loads(orjson.dumps(event))
    return copied
