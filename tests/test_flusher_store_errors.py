"""The flusher over a store it cannot write (a full disk): it backs off, logs rate-limited, and recovers."""

from __future__ import annotations

import logging
import random
import time

from test_flusher_fakes import MemoryStore, ScriptedTransport, SoloElection, event_body

from aop_client.errors import StoreError
from aop_client.flusher import Flusher
from aop_client.testing import wait_until

FULL = "begin_epoch on store '<memory>' failed: database or disk is full"


class FullDiskStore(MemoryStore):
    """A MemoryStore whose begin_epoch fails as a full disk makes it fail, until told the room is back."""

    def __init__(self) -> None:
        super().__init__()
        self.full = True
        self.attempts: list[float] = []

    def begin_epoch(self) -> int:
        self.attempts.append(time.monotonic())
        if self.full:
            raise StoreError(FULL)
        return super().begin_epoch()


def test_a_store_that_cannot_start_an_epoch_is_retried_with_backoff_and_one_warning(caplog) -> None:
    """No 10 Hz spin and no WARNING per try: growing waits, one WARNING with the cause, a recovery line."""
    store = FullDiskStore()
    event_id, body = event_body(1)
    store.append(event_id, "run-1", 1, body)
    transport = ScriptedTransport()
    flusher = Flusher(store, transport, SoloElection(), rng=random.Random(7), election_poll=0.1, batch_interval=0.01)
    caplog.set_level(logging.INFO, logger="aop_client")
    flusher.start()
    try:
        wait_until(lambda: len(store.attempts) >= 6, timeout=30)
        spent = store.attempts[5] - store.attempts[0]
        assert spent >= 1.0, f"6 epoch attempts in {spent:.2f} s: the flusher spins instead of backing off"
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "database or disk is full" in warnings[0], warnings
        assert "disk is full" in flusher.stats()["last_error"]
        store.full = False
        wait_until(lambda: store.state_of(event_id) == "delivered", timeout=30)
    finally:
        assert flusher.stop(timeout=5)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("works again after" in m for m in infos), infos
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
