"""Crash safety: writer processes SIGKILLed at random moments while a flusher drains the store."""

from __future__ import annotations

import os
import random
import select
import signal
import time

import pytest

from aop_client.store import DiskStore

SOAK = bool(os.environ.get("AOP_SOAK"))
KILLS = 1000 if SOAK else 50
WRITERS = 4
PER_WRITER = 600 if SOAK else 1500  # a writer stops (and waits to be killed) after this many appends
BODY = b'{"kind":"reasoning","text":"' + b"x" * 300 + b'"}'


def _writer(store: DiskStore | None, directory: str, durability: str, name: str, report_fd: int) -> None:
    """Child body: append forever, reporting each event id after its append returned."""
    try:
        if store is None:
            store = DiskStore(directory, durability=durability)
        for seq in range(1, PER_WRITER + 1):
            eid = f"{name}:{seq}"
            result = store.append(eid, name, seq, BODY)
            if not result.stored:
                os._exit(3)
            os.write(report_fd, eid.encode() + b"\n")
        while True:
            signal.pause()
    finally:
        os._exit(4)


class Writer:
    """A forked writer process and the event ids it reported as appended."""

    def __init__(self, store: DiskStore, directory: str, durability: str, name: str, inherit: bool) -> None:
        self.name = name
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _writer(store if inherit else None, directory, durability, name, w)
        os.close(w)
        self.pid, self.fd, self.buf, self.reported = pid, r, b"", []

    def pump(self, timeout: float) -> int:
        """Read what the writer reported (complete lines only); returns lines read."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return 0
        chunk = os.read(self.fd, 65536)
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        self.reported.extend(line.decode() for line in lines)
        return len(lines) if chunk else -1

    def kill(self) -> None:
        """SIGKILL the writer, reap it and collect everything it reported before dying."""
        os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        assert os.WIFSIGNALED(status), f"writer {self.name} exited on its own: status {status}"
        while self.pump(0) > 0:
            pass
        os.close(self.fd)


def _drain(store: DiskStore, epoch: int, delivered: list[str], limit: int | None = None) -> int:
    """Lease and ack up to limit batches; returns events acked."""
    n = 0
    while limit is None or limit > 0:
        batch = store.lease(200, 1 << 20)
        if not batch:
            break
        store.ack([e.ref for e in batch], epoch=epoch)
        delivered.extend(e.event_id for e in batch)
        n += len(batch)
        if limit is not None:
            limit -= 1
    return n


@pytest.mark.timeout(3600 if SOAK else 300)
@pytest.mark.parametrize("durability,kills", [("process", KILLS), ("fsync", max(10, KILLS // 5))])
def test_sigkilled_writers_lose_no_returned_append(tmp_path, durability: str, kills: int) -> None:
    """Every append that returned before SIGKILL is delivered exactly once, in seq order per run."""
    rng = random.Random(int(os.environ.get("AOP_SEED", "0")) or None)
    directory = str(tmp_path / "store")
    flusher = DiskStore(directory, durability=durability)
    epoch = flusher.begin_epoch()
    delivered: list[str] = []
    done: list[Writer] = []
    counter = 0

    def spawn() -> Writer:
        nonlocal counter
        counter += 1
        return Writer(flusher, directory, durability, f"w{counter}", inherit=counter % 2 == 0)

    live = [spawn() for _ in range(WRITERS)]
    for _ in range(kills):
        victim = rng.choice([w for w in live if len(w.reported) < PER_WRITER] or live)  # prefer one still writing
        want = min(PER_WRITER, len(victim.reported) + rng.randint(1, 300))
        deadline = time.monotonic() + 30
        while len(victim.reported) < want:
            assert time.monotonic() < deadline, f"writer {victim.name} stalled at {len(victim.reported)} events"
            assert victim.pump(1.0) >= 0, f"writer {victim.name} died on its own"
            for other in live:
                if other is not victim:
                    other.pump(0)
        victim.kill()
        live.remove(victim)
        done.append(victim)
        live.append(spawn())
        _drain(flusher, epoch, delivered, limit=rng.randint(0, 3))
    for w in live:
        w.kill()
        done.append(w)
    _drain(flusher, epoch, delivered)

    assert len(delivered) == len(set(delivered)), "an event was delivered twice"
    got = set(delivered)
    by_writer: dict[str, list[int]] = {}
    for eid in delivered:
        name, seq = eid.split(":")
        by_writer.setdefault(name, []).append(int(seq))
    for w in done:
        missing = [eid for eid in w.reported if eid not in got]
        assert not missing, f"{w.name}: {len(missing)} returned appends lost, e.g. {missing[:3]}"
        mine = by_writer.get(w.name, [])
        assert mine == sorted(mine), f"{w.name}: events of one run delivered out of seq order"
        # At most one append can have returned without being reported before the kill.
        assert len(mine) - len(w.reported) in (0, 1)
        assert mine == list(range(1, len(mine) + 1))
    stats = flusher.stats()
    assert (stats.pending, stats.in_flight) == (0, 0)
    assert stats.delivered_retained == len(delivered)
    flusher.close()

    reopened = DiskStore(directory, durability=durability)
    sample = done[len(done) // 2]
    replay = [e.seq for e in reopened.iter_run(sample.name)]
    assert replay[: len(sample.reported)] == list(range(1, len(sample.reported) + 1))
    assert reopened.stats().delivered_retained == len(delivered)
    reopened.close()
