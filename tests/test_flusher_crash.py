"""Crash tests: real emitting processes, the real collector, the current flusher SIGKILLed at random points.

Each child process appends signed events to the shared DiskStore and runs a
Flusher that campaigns for the host's election. While a chaos file exists,
children kill themselves at the two worst moments (after leasing, before the
POST; after a 2xx, before the ack), and the test SIGKILLs whichever process
holds the election at random times (mid-send, mid-batch, mid-ack), then
starts a replacement. Afterwards the collector must hold every event whose
append returned (0 lost), each stored once (duplicate deliveries absorbed by
event_id). A second variant adds 30% injected server faults. AOP_SOAK=1 runs
many more kill loops.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import statistics
import threading
import time
from pathlib import Path

import pytest

from aop_client.collector.faults import FaultConfig
from aop_client.core.backoff import RetryPolicy
from aop_client.election import FlusherElection
from aop_client.flusher import Flusher
from aop_client.signing import signed_body
from aop_client.store import DiskStore
from aop_client.testing import wait_until
from aop_client.trace_builder import TraceBuilder
from aop_client.transport import HttpTransport

SOAK = os.environ.get("AOP_SOAK") == "1"
KILL_LOOPS = 200 if SOAK else 15
EVENTS_PER_CHILD = 400 if SOAK else 150


class KillingTransport:
    """Wraps the real transport; while the chaos file exists, SIGKILLs this process before a POST or after a 2xx."""

    def __init__(self, inner: HttpTransport, chaos: str, kill_log: str, probability: float, seed: int) -> None:
        self.inner, self.chaos, self.kill_log = inner, chaos, kill_log
        self.probability, self.rng = probability, random.Random(seed)

    def _maybe_die(self, point: str) -> None:
        if os.path.exists(self.chaos) and self.rng.random() < self.probability:
            fd = os.open(self.kill_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, f"{point}\n".encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

    def post_batch(self, batch_id: str, body: bytes, *, now: float):
        """Maybe die after the lease, post, maybe die after a 2xx (the server has the events, the store not acked)."""
        self._maybe_die("before_post")
        response = self.inner.post_batch(batch_id, body, now=now)
        if response.status is not None and 200 <= response.status < 300:
            self._maybe_die("after_2xx")
        return response


def child_main(spool: str, url: str, api_key: str, salt: str, work: str, n_events: int, seed: int) -> None:
    """One worker process: emit n_events (logging each whose append returned), flush while elected, until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    store = DiskStore(spool)
    transport = KillingTransport(
        HttpTransport(url, api_key, salt, connect_timeout=1.0, read_timeout=1.0),
        chaos=os.path.join(work, "chaos"), kill_log=os.path.join(work, "kills.log"), probability=0.08, seed=seed)
    flusher = Flusher(store, transport, FlusherElection(spool), batch_size=25, batch_interval=0.02,
                      retry_policy=RetryPolicy(max_retries=4, base=0.02, cap=0.2), rng=random.Random(seed),
                      fallback_retry_interval=0.5)
    flusher.start()
    builder = TraceBuilder(agent_id=7)
    log = os.open(os.path.join(work, f"emitted-{os.getpid()}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    rng = random.Random(seed)
    for i in range(n_events):
        event = builder.create_custom("tick", {"i": i, "pid": os.getpid()})
        _, body = signed_body(event, salt)
        if store.append(event["event_id"], event["run_id"], event["seq"], body).stored:
            os.write(log, (event["event_id"] + "\n").encode())  # the emit returned: this event must arrive
        if rng.random() < 0.1:
            flusher.wakeup()
        if stop.wait(rng.random() * 0.004):
            break
    stop.wait()
    flusher.stop(timeout=3.0)


def spawn_child(ctx, spool, collector, work, n_events, seed):
    """Start one worker process."""
    proc = ctx.Process(target=child_main, args=(spool, collector.url, collector.api_key, collector.org_salt_key,
                                                 work, n_events, seed), daemon=True)
    proc.start()
    return proc


def emitted_ids(work: Path) -> set[str]:
    """Every event id whose append returned, across all (dead or alive) children."""
    return {line for f in work.glob("emitted-*.log") for line in f.read_text().split()}


def run_crash_loop(tmp_path: Path, collector, seed: int) -> dict:
    """Run the chaos: 3 workers, KILL_LOOPS SIGKILLs of the leader, replacements; then drain and compare."""
    ctx = multiprocessing.get_context("fork")  # fast starts; the election and store are fork-safe
    spool, work = str(tmp_path / "spool"), tmp_path / "work"
    work.mkdir()
    (work / "chaos").write_text("on")
    rng = random.Random(seed)
    election = FlusherElection(spool)
    procs = [spawn_child(ctx, spool, collector, str(work), EVENTS_PER_CHILD, seed * 100 + i) for i in range(3)]
    external_kills = 0
    takeovers: list[float] = []

    def replenished_leader(loop: int) -> bool:
        """Replace workers that died (killed here or by their own chaos), then: is a leader alive?

        Replacing inside the wait matters: all three workers may kill themselves mid-send
        before the next loop, and a wait that only watched the election would then wait forever.
        """
        procs[:] = [p for p in procs if p.is_alive()]
        while len(procs) < 3:
            procs.append(spawn_child(ctx, spool, collector, str(work), EVENTS_PER_CHILD, seed * 100 + 10 + loop))
        return bool((election.holder() or {}).get("alive"))

    try:
        for loop in range(KILL_LOOPS):
            wait_until(lambda: replenished_leader(loop), timeout=20)
            time.sleep(rng.uniform(0.05, 0.6))  # chaos timing: let the leader get mid-batch, not a sync wait
            holder = election.holder() or {}
            victims = [p for p in procs if p.pid == holder.get("pid") and p.is_alive()]
            killed_at = time.monotonic()
            for victim in victims:
                os.kill(victim.pid, signal.SIGKILL)
                victim.join(10)
                external_kills += 1
            if victims:
                gone = victims[0].pid
                wait_until(lambda: replenished_leader(loop) and (election.holder() or {}).get("pid") != gone,
                           timeout=20)
                takeovers.append(time.monotonic() - killed_at)
        (work / "chaos").unlink()
        procs[:] = [p for p in procs if p.is_alive()]
        procs.append(spawn_child(ctx, spool, collector, str(work), 0, seed * 100 + 99))  # a calm survivor
        store = DiskStore(spool)
        try:
            def drained() -> bool:
                stats = store.stats()
                return stats.pending == stats.in_flight == stats.fallback == 0 and emitted_ids(work) <= collector.event_ids()

            wait_until(drained, timeout=600 if SOAK else 120, interval=0.2)
            dead = store.stats().dead_letters
        finally:
            store.close()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    kills = (work / "kills.log").read_text().split() if (work / "kills.log").exists() else []
    return {"emitted": emitted_ids(work), "external_kills": external_kills, "self_kills": kills, "dead": dead,
            "takeovers": takeovers}


def check_no_loss(result: dict, collector) -> None:
    """0 lost, every stored event once, duplicates absorbed, and the chaos really happened."""
    held = collector.event_ids()
    lost = result["emitted"] - held
    assert not lost, f"{len(lost)} emitted events never reached the collector"
    assert result["dead"] == 0
    stats = collector.stats()
    assert stats["events"] == len(held)  # each event stored once ...
    assert stats["deliveries"] == stats["events"] + stats["duplicates"]  # ... every resend absorbed by event_id
    assert all(collector.delivery_count(i) >= 1 for i in list(result["emitted"])[:200])
    # the chaos really happened: leaders died often, both from outside and mid-send. A leader that kills
    # itself during the killer's random pause leaves that loop without an external kill, so count both.
    assert result["external_kills"] + len(result["self_kills"]) >= KILL_LOOPS // 2
    assert result["external_kills"] >= KILL_LOOPS // 4 and result["self_kills"]
    assert statistics.median(result["takeovers"]) < 1.0  # a live process takes over within a second
    assert len(result["emitted"]) >= 3 * EVENTS_PER_CHILD // 2


@pytest.mark.slow
@pytest.mark.timeout(3600 if SOAK else 300)
def test_sigkilled_flushers_lose_nothing(tmp_path, aop_collector_factory) -> None:
    """Leaders SIGKILLed mid-send and mid-ack in a loop: every returned emit reaches the collector once."""
    collector = aop_collector_factory(process=True)
    result = run_crash_loop(tmp_path, collector, seed=1)
    check_no_loss(result, collector)


@pytest.mark.slow
@pytest.mark.timeout(3600 if SOAK else 300)
def test_sigkilled_flushers_lose_nothing_under_30_percent_faults(tmp_path, aop_collector_factory) -> None:
    """The same chaos while 30% of requests fail (5xx, 429, drops, hangs; half after storing): 0 lost."""
    faults = FaultConfig(rate_500=0.08, rate_503=0.06, rate_429=0.06, rate_drop=0.05, rate_timeout=0.05,
                         retry_after=0.05, timeout_delay=2.0, after_store_probability=0.5, seed=3)
    collector = aop_collector_factory(process=True, faults=faults)
    result = run_crash_loop(tmp_path, collector, seed=2)
    check_no_loss(result, collector)
    assert collector.duplicate_deliveries() > 0  # faults after storing forced resends, all absorbed
