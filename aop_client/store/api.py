"""The contract of the durable store: what the client appends and what the flusher drains.

This module owns only types (no I/O). The implementation lives beside it in
``aop_client.store``; the flusher, the client, the CLI and the tests program
against these names.

Event states inside one store directory::

    append -> PENDING --lease--> IN_FLIGHT --ack--------> DELIVERED (retained for replay, then reclaimed)
                 ^                  |  \\--dead_letter--> DEAD (kept until purged or retried)
                 |                  \\--fallback-------> FALLBACK (retried on a later cycle)
                 +------release / lease expiry / retry_fallback / retry_dead--+

Mutations made by the flusher (ack, dead_letter, fallback) carry the fencing
``epoch`` returned by :meth:`Store.begin_epoch`; a store whose epoch has moved
on raises :class:`aop_client.errors.FencedError` instead of applying them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple, Protocol, Sequence


class Durability(str, enum.Enum):
    """How far an append is durable when ``append`` returns."""

    #: Written to the kernel (page cache) before return: survives SIGKILL of any process.
    PROCESS = "process"
    #: fsync'd (group commit) before return: survives power loss and kernel crash.
    FSYNC = "fsync"


class FullPolicy(str, enum.Enum):
    """What ``append`` does when the store is at ``max_events`` or ``max_bytes``."""

    DROP_NEWEST = "drop_newest"  # refuse the new event, count it under dropped["full"]
    DROP_OLDEST = "drop_oldest"  # discard the oldest pending event, count it under dropped["evicted"]
    BLOCK = "block"  # wait up to block_timeout for room, then drop newest


class StoredEvent(NamedTuple):
    """One event as the store hands it to the flusher (immutable; a NamedTuple, built 3x faster than a frozen dataclass)."""

    ref: object  # opaque position inside the store, passed back to ack/dead_letter/...
    event_id: str
    run_id: str
    seq: int
    body: bytes  # the serialized, signed event envelope (UTF-8 JSON)
    attempts: int = 0  # delivery attempts made so far (persisted across flushers)


@dataclass(frozen=True)
class AppendResult:
    """What happened to one append: stored durably, or dropped and why."""

    stored: bool
    reason: str | None = None  # set when not stored: "full", "too_large", "disk_full", "io_error"


@dataclass(frozen=True)
class StoreStats:
    """A snapshot of the store's counters; every field is host-wide, not per process."""

    pending: int = 0
    in_flight: int = 0
    delivered_retained: int = 0
    dead_letters: int = 0
    fallback: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    quarantined: int = 0  # damaged records detected and set aside
    foreign_files: int = 0  # segment/index files of another uid: ignored, never read (docs/security.md)
    bytes_on_disk: int = 0
    oldest_pending_age: float | None = None  # seconds, None when nothing is pending


@dataclass(frozen=True)
class DeadLetter:
    """An event the server refused for good, with the server's (or our) reason."""

    ref: object
    event_id: str
    run_id: str
    seq: int
    body: bytes
    reason: str
    at: float  # unix time it was dead-lettered


class Store(Protocol):
    """The durable, multi-process event store (see module docstring for states)."""

    directory: str

    # -- the emitting side (any process, any thread) --
    def append(self, event_id: str, run_id: str, seq: int, body: bytes) -> AppendResult:
        """Durably append one serialized event; never raises for full/disk-full (see result)."""

    # -- the flusher side (one elected process) --
    def begin_epoch(self) -> int:
        """Start a new fencing epoch (call after winning the election); returns it."""

    def lease(self, max_events: int, max_bytes: int) -> list[StoredEvent]:
        """Take up to max_events/max_bytes pending events, oldest first, seq order within a run."""

    def ack(self, refs: Iterable[object], *, epoch: int) -> None:
        """Mark leased events delivered (2xx seen); they are retained for replay, then reclaimed."""

    def release(self, refs: Iterable[object], *, epoch: int, attempted: bool = True) -> None:
        """Give leased events back to pending (a failed attempt, counted when attempted)."""

    def dead_letter(self, refs: Iterable[object], reason: str, *, epoch: int) -> None:
        """Move leased events to dead letters with a reason."""

    def fallback(self, refs: Iterable[object], *, epoch: int) -> None:
        """Park leased events that exhausted max_retries; they are retried by retry_fallback()."""

    def mark_delivered(self, events: Iterable[tuple[str, str, int]]) -> int:
        """Mark (event_id, run_id, seq) events acknowledged on a stream delivered; any process."""

    def retry_fallback(self) -> int:
        """Return every fallback event to pending; returns how many."""

    # -- inspection and maintenance (any process) --
    def iter_run(self, run_id: str, *, include_delivered: bool = True) -> Iterator[StoredEvent]:
        """Every stored event of one run in seq order (pending, in flight, fallback, delivered)."""

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter currently kept."""

    def retry_dead_letters(self, event_ids: Sequence[str] | None = None) -> int:
        """Return dead letters (all, or the named ones) to pending; returns how many."""

    def purge_dead_letters(self, event_ids: Sequence[str] | None = None) -> int:
        """Delete dead letters for good (all, or the named ones); returns how many."""

    def reclaim(self, now: float | None = None) -> int:
        """Drop delivered events past retention and free space; returns events reclaimed."""

    def stats(self, now: float | None = None) -> StoreStats:
        """Host-wide counters; see StoreStats."""

    def close(self) -> None:
        """Release file handles; safe to call twice."""
