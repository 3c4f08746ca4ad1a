"""In-memory test doubles for flusher tests: a Store that follows store/api.py, a scripted transport.

MemoryStore keeps the contract's states and fencing (so flusher logic is
tested without the disk); ScriptedTransport answers from a list of canned
responses. Both record what happened for assertions. The tests at the bottom
check the doubles themselves, so the flusher tests stand on solid ground.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Callable, Iterable, Iterator, Sequence

import orjson
import pytest

from aop_client.errors import FencedError
from aop_client.store.api import AppendResult, DeadLetter, StoredEvent, StoreStats
from aop_client.transport import Response

PENDING, IN_FLIGHT, DELIVERED, DEAD, FALLBACK = "pending", "in_flight", "delivered", "dead", "fallback"


class MemoryStore:
    """A thread-safe in-memory Store with the contract's states, attempts and epoch fencing."""

    def __init__(self, directory: str = "<memory>") -> None:
        self.directory = directory
        self.lock = threading.Lock()
        self.epoch = 0
        self.order: list[int] = []
        self.rows: dict[int, dict] = {}
        self.acks: list[int] = []  # refs in ack order

    def append(self, event_id: str, run_id: str, seq: int, body: bytes) -> AppendResult:
        """Store one event as pending."""
        with self.lock:
            ref = len(self.order)
            self.order.append(ref)
            self.rows[ref] = {"event_id": event_id, "run_id": run_id, "seq": seq, "body": body,
                              "state": PENDING, "attempts": 0, "reason": None}
        return AppendResult(stored=True)

    def begin_epoch(self) -> int:
        """New epoch; in-flight events of the old leader go back to pending."""
        with self.lock:
            self.epoch += 1
            for row in self.rows.values():
                if row["state"] == IN_FLIGHT:
                    row["state"] = PENDING
            return self.epoch

    def lease(self, max_events: int, max_bytes: int) -> list[StoredEvent]:
        """Oldest pending first, at least one event when any is pending."""
        out, size = [], 0
        with self.lock:
            for ref in self.order:
                row = self.rows[ref]
                if row["state"] != PENDING:
                    continue
                if len(out) >= max_events or (out and size + len(row["body"]) > max_bytes):
                    break
                row["state"] = IN_FLIGHT
                size += len(row["body"])
                out.append(StoredEvent(ref, row["event_id"], row["run_id"], row["seq"], row["body"], row["attempts"]))
        return out

    def _move(self, refs: Iterable[object], epoch: int, state: str, reason: str | None = None) -> None:
        with self.lock:
            if epoch != self.epoch:
                raise FencedError(f"epoch {epoch} is stale (current {self.epoch})")
            for ref in refs:
                row = self.rows[ref]
                assert row["state"] == IN_FLIGHT, f"ref {ref} moved to {state} from {row['state']}"
                row["state"] = state
                row["reason"] = reason
                if state == DELIVERED:
                    self.acks.append(ref)

    def ack(self, refs: Iterable[object], *, epoch: int) -> None:
        """Leased -> delivered."""
        self._move(refs, epoch, DELIVERED)

    def release(self, refs: Iterable[object], *, epoch: int, attempted: bool = True) -> None:
        """Leased -> pending, counting the attempt."""
        refs = list(refs)
        self._move(refs, epoch, PENDING)
        with self.lock:
            for ref in refs:
                self.rows[ref]["attempts"] += int(attempted)

    def dead_letter(self, refs: Iterable[object], reason: str, *, epoch: int) -> None:
        """Leased -> dead with a reason."""
        self._move(refs, epoch, DEAD, reason)

    def fallback(self, refs: Iterable[object], *, epoch: int) -> None:
        """Leased -> fallback."""
        self._move(refs, epoch, FALLBACK)

    def retry_fallback(self) -> int:
        """Fallback -> pending."""
        with self.lock:
            rows = [r for r in self.rows.values() if r["state"] == FALLBACK]
            for row in rows:
                row["state"] = PENDING
            return len(rows)

    def iter_run(self, run_id: str, *, include_delivered: bool = True) -> Iterator[StoredEvent]:
        """Every event of a run in seq order."""
        with self.lock:
            rows = sorted(((k, r) for k, r in self.rows.items() if r["run_id"] == run_id), key=lambda kr: kr[1]["seq"])
        for ref, r in rows:
            if include_delivered or r["state"] != DELIVERED:
                yield StoredEvent(ref, r["event_id"], r["run_id"], r["seq"], r["body"], r["attempts"])

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter."""
        with self.lock:
            return [DeadLetter(k, r["event_id"], r["run_id"], r["seq"], r["body"], r["reason"], 0.0)
                    for k, r in self.rows.items() if r["state"] == DEAD]

    def retry_dead_letters(self, event_ids: Sequence[str] | None = None) -> int:
        """Dead -> pending."""
        return 0

    def purge_dead_letters(self, event_ids: Sequence[str] | None = None) -> int:
        """Not needed by the flusher."""
        return 0

    def reclaim(self, now: float | None = None) -> int:
        """Not needed by the flusher."""
        return 0

    def states(self) -> Counter:
        """How many events are in each state."""
        with self.lock:
            return Counter(r["state"] for r in self.rows.values())

    def state_of(self, event_id: str) -> str:
        """The state of one event (the last row with that id)."""
        with self.lock:
            return [r["state"] for r in self.rows.values() if r["event_id"] == event_id][-1]

    def stats(self, now: float | None = None) -> StoreStats:
        """Counters per state."""
        c = self.states()
        return StoreStats(pending=c[PENDING], in_flight=c[IN_FLIGHT], delivered_retained=c[DELIVERED],
                          dead_letters=c[DEAD], fallback=c[FALLBACK])

    def close(self) -> None:
        """Nothing to close."""


class SoloElection:
    """An election that this process always wins (unless told otherwise)."""

    def __init__(self, winnable: bool = True) -> None:
        self.winnable = winnable
        self.is_leader = False
        self.acquired = 0

    def try_acquire(self) -> bool:
        """Win when winnable."""
        if self.winnable and not self.is_leader:
            self.is_leader = True
            self.acquired += 1
        return self.is_leader

    def release(self) -> None:
        """Step down."""
        self.is_leader = False


def ok_response(body: bytes) -> Response:
    """The protocol's 200 for a batch body: every event accepted."""
    events = orjson.loads(body)["events"]
    return Response(200, {"content-type": "application/json"}, orjson.dumps({"accepted": len(events), "rejected": []}))


class ScriptedTransport:
    """Answers each post_batch with the next scripted reply (a Response or a function of the body), then 200s."""

    def __init__(self, script: Sequence[Response | Callable[[bytes], Response]] = ()) -> None:
        self.script = list(script)
        self.posts: list[tuple[str, bytes, Response]] = []
        self.lock = threading.Lock()

    def post_batch(self, batch_id: str, body: bytes, *, now: float) -> Response:
        """The next scripted answer (default: accept everything)."""
        with self.lock:
            reply = self.script.pop(0) if self.script else ok_response
        response = reply(body) if callable(reply) else reply
        with self.lock:
            self.posts.append((batch_id, body, response))
        return response


def event_body(i: int, run_id: str = "run-1") -> tuple[str, bytes]:
    """A small event envelope for tests and its id."""
    event_id = f"00000000-0000-4000-8000-{i:012d}"
    return event_id, orjson.dumps({"event_id": event_id, "run_id": run_id, "agent_id": 7, "seq": i + 1,
                                   "type": "custom", "payload": {"i": i}})


def test_memory_store_fences_stale_epochs() -> None:
    """A mutation with an old epoch raises FencedError and changes nothing."""
    store = MemoryStore()
    event_id, body = event_body(0)
    store.append(event_id, "run-1", 1, body)
    old = store.begin_epoch()
    leased = store.lease(10, 10**6)
    store.begin_epoch()
    with pytest.raises(FencedError):
        store.ack([e.ref for e in leased], epoch=old)
    assert store.states() == Counter({PENDING: 1})


def test_scripted_transport_answers_in_order_then_accepts() -> None:
    """Scripted replies come first, then the default 200 acknowledging the whole batch."""
    transport = ScriptedTransport([Response(503)])
    body = b'{"batch_id":"b","events":[{"event_id":"x"}]}'
    first, second = (transport.post_batch("b", body, now=0.0) for _ in range(2))
    assert first.status == 503 and second.status == 200 and orjson.loads(second.body)["accepted"] == 1
