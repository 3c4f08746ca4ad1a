"""TraceBuilder: creates the events of one agent run with gap-free sequence numbers.

This module owns sequence numbering and the in-memory record of a run. Each
``create_*`` method builds its payload with :class:`ToonBuilder`, wraps it in an
envelope (:func:`aop_client.events.make_event`), validates it fully, records it
and returns it. Events are not signed here: the client signs at emit time.

Sequence numbers are 1, 2, 3... per run with no gaps or duplicates, also when
several threads create events at once (a lock covers numbering and recording);
an invalid event raises ValidationError *before* it takes a number.
"""

from __future__ import annotations

import os
import threading
import weakref
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from .errors import ValidationError
from .events import (
    DEFAULT_MAX_EVENT_BYTES,
    is_uuid,
    make_event,
    new_run_id,
    check_event_size,
    validate_envelope,
)
from .toon_parser import ToonBuilder

__all__ = ["TraceBuilder"]


_LIVE_BUILDERS: "weakref.WeakSet[TraceBuilder]" = weakref.WeakSet()


def _reset_builders_in_child() -> None:
    for builder in list(_LIVE_BUILDERS):
        builder._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_builders_in_child)


class TraceBuilder:
    """Creates and records the events of one run (``run_id``) of agent ``agent_id``; thread-safe."""

    def __init__(
        self,
        agent_id: int,
        run_id: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
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
        self._agent_id = agent_id
        self._run_id = run_id if run_id is not None else new_run_id()
        self._clock = clock
        self._max_event_bytes = max_event_bytes
        self._lock = threading.Lock()
        self._events: list[dict] = []
        _LIVE_BUILDERS.add(self)

    def _after_fork_in_child(self) -> None:
        """A forked child starts its own run: the parent's run and seqs stay the parent's.

        The lock is replaced first, since another thread of the parent may have held it
        at the moment of the fork.
        """
        self._lock = threading.Lock()
        self._run_id = new_run_id()
        self._events = []

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
        return len(self._events) + 1

    def new_run(self, run_id: str | None = None) -> str:
        """Start a fresh run: new run_id (given or uuid4), seq back to 1, recorded events cleared."""
        if run_id is not None and not is_uuid(run_id):
            raise ValidationError(f"run_id: expected a UUID string, got {run_id!r:.80}", field="run_id", value=run_id)
        with self._lock:
            self._run_id = run_id if run_id is not None else new_run_id()
            self._events = []
            return self._run_id

    def _record(self, event_type: str, payload: dict, name: str | None = None) -> dict:
        now = self._clock()
        with self._lock:  # a seq is taken only by the append: any failure above it takes none
            event = make_event(
                run_id=self._run_id,
                agent_id=self._agent_id,
                seq=len(self._events) + 1,
                type=event_type,
                payload=payload,
                now=now,
                name=name,
            )
            validate_envelope(event)  # the payload was validated and copied by ToonBuilder
            check_event_size(event, self._max_event_bytes)
            self._events.append(event)
        return _copy(event)

    def create_reasoning(
        self,
        goal: str,
        steps: Sequence[Mapping[str, Any]] | None = None,
        safety_checks: Sequence[Mapping[str, Any]] | None = None,
        uncertainty: str = "low",
        **extra: Any,
    ) -> dict:
        """Create and record a ``reasoning`` event (see ToonBuilder.build_reasoning_payload)."""
        payload = ToonBuilder.build_reasoning_payload(goal, steps, safety_checks, uncertainty, **extra)
        return self._record("reasoning", payload)

    def create_action_request(
        self, action: str, params: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None
    ) -> dict:
        """Create and record an ``action_request`` event."""
        return self._record("action_request", ToonBuilder.build_action_request_payload(action, params, context))

    def create_action_response(self, status: str, data: Any = None, meta: Mapping[str, Any] | None = None) -> dict:
        """Create and record an ``action_response`` event."""
        return self._record("action_response", ToonBuilder.build_action_response_payload(status, data, meta))

    def create_final_output(self, text: str, structured: Any = None) -> dict:
        """Create and record a ``final_output`` event."""
        return self._record("final_output", ToonBuilder.build_final_output_payload(text, structured))

    def create_error(
        self,
        message: str | BaseException,
        error_type: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> dict:
        """Create and record an ``error`` event; ``message`` may be an exception."""
        return self._record("error", ToonBuilder.build_error_payload(message, error_type, details))

    def create_custom(self, name: str, data: Mapping[str, Any] | None = None) -> dict:
        """Create and record a ``custom`` event: top-level ``name``, and ``data`` (a dict) as its payload.

        Protocol v1 section 1: the payload is the caller's object itself (``{}`` when
        ``data`` is None), so a redaction hook sees ``payload["email"]`` as given.
        """
        name = ToonBuilder.custom_name(name)
        return self._record("custom", ToonBuilder.build_custom_payload(data), name)

    def get_events(self) -> list[dict]:
        """Return deep copies of the recorded events of the current run, in seq order."""
        with self._lock:
            events = list(self._events)
        return [_copy(event) for event in events]

    def export_trace(self) -> list[dict]:
        """Return the current run's trace as a list of event dicts (deep copies)."""
        return self.get_events()

    def export_trace_json(self, pretty: bool = False) -> str:
        """Return the trace as a JSON array: compact, or indented by 2 spaces when ``pretty``."""
        with self._lock:
            events = list(self._events)
        option = orjson.OPT_INDENT_2 if pretty else 0
        return orjson.dumps(events, option=option).decode("utf-8")


def _copy(event: dict) -> dict:
    """Deep copy of a validated (hence plain JSON) event."""
    return orjson.loads(orjson.dumps(event))
