"""Flusher failures: a SIGKILLed flusher's leases come back; a SIGSTOPped one is fenced on resume."""

from __future__ import annotations

import os
import signal

from aop_client.errors import FencedError
from aop_client.store import DiskStore


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1024)
        assert chunk, "child closed its pipe early"
        data += chunk
    return data.decode().strip()


def _fill(directory: str, n: int) -> list[str]:
    store = DiskStore(directory)
    ids = [f"e{i}" for i in range(1, n + 1)]
    for i, eid in enumerate(ids, 1):
        assert store.append(eid, "run", i, b"{}").stored
    store.close()
    return ids


def test_sigkilled_flusher_leases_return_to_pending(tmp_path) -> None:
    """Events leased by a flusher that is SIGKILLed are all delivered by the next flusher, in order."""
    directory = str(tmp_path / "s")
    ids = _fill(directory, 100)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        store = DiskStore(directory)
        store.begin_epoch()
        leased = store.lease(40, 1 << 20)
        os.write(w, f"{len(leased)}\n".encode())
        while True:
            signal.pause()
    assert _read_line(r) == "40"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    store = DiskStore(directory)
    assert (store.stats().in_flight, store.stats().pending) == (40, 60)
    epoch = store.begin_epoch()
    got: list[str] = []
    while batch := store.lease(25, 1 << 20):
        store.ack([e.ref for e in batch], epoch=epoch)
        got.extend(e.event_id for e in batch)
    assert got == ids
    store.close()


def test_resumed_stopped_flusher_is_fenced(tmp_path) -> None:
    """A flusher stopped while holding leases cannot ack after a new flusher took over."""
    directory = str(tmp_path / "s")
    ids = _fill(directory, 30)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        store = DiskStore(directory)
        epoch = store.begin_epoch()
        leased = store.lease(10, 1 << 20)
        os.write(w, b"leased\n")
        os.kill(os.getpid(), signal.SIGSTOP)
        outcome = {}
        for name, call in (
            ("ack", lambda: store.ack([e.ref for e in leased], epoch=epoch)),
            ("dead_letter", lambda: store.dead_letter([e.ref for e in leased], "x", epoch=epoch)),
            ("fallback", lambda: store.fallback([e.ref for e in leased], epoch=epoch)),
        ):
            try:
                call()
                outcome[name] = "applied"
            except FencedError:
                outcome[name] = "fenced"
        os.write(w, (",".join(f"{k}={v}" for k, v in outcome.items()) + "\n").encode())
        os._exit(0)
    assert _read_line(r) == "leased"
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    store = DiskStore(directory)
    epoch = store.begin_epoch()
    got: list[str] = []
    while batch := store.lease(7, 1 << 20):
        store.ack([e.ref for e in batch], epoch=epoch)
        got.extend(e.event_id for e in batch)
    assert got == ids
    os.kill(pid, signal.SIGCONT)
    assert _read_line(r) == "ack=fenced,dead_letter=fenced,fallback=fenced"
    os.waitpid(pid, 0)
    stats = store.stats()
    assert (stats.delivered_retained, stats.dead_letters, stats.fallback) == (30, 0, 0)
    store.close()
