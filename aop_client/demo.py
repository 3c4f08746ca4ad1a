"""The demo behind ``aop demo``: several agent processes, one SIGKILLed flusher, zero lost events.

It owns the orchestration only; every moving part is the real library:

1. a reference collector on a free loopback port, in this process, with freshly
   generated keys (nothing to configure);
2. a private temporary spool directory (0700) shared by every process;
3. a *flusher-only* process that starts first and wins the host's flusher
   election (it emits nothing, so killing it cannot take emitted events with it);
4. ``workers`` agent processes (spawn context) that each emit ``events`` events
   through the public API (``AOPClient``, ``TraceBuilder``: reasoning, action
   request, action response, final output per run), report the event ids whose
   ``emit_event`` returned stored, then ``finalize()`` and ``stop()``;
5. part-way through (when 40 % of the planned events were emitted) the current
   flusher, read from :class:`~aop_client.election.FlusherElection`, is killed
   with SIGKILL; the takeover time is measured until a new live holder appears;
6. the demo waits (bounded) until the collector holds every reported event id
   and returns a :class:`Summary` (lost = reported ids the collector lacks).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import secrets
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, TypedDict

if TYPE_CHECKING:
    from .config import ClientConfig

__all__ = ["Summary", "Progress", "run_demo", "KILL_AT_FRACTION"]

#: The share of planned events emitted when the flusher is killed.
KILL_AT_FRACTION = 0.4
_POLL = 0.05
_GRACE = 2.0  # seconds to keep watching the collector after the last agent process exited


@dataclass(frozen=True)
class Summary:
    """The outcome of one demo run; ``ok`` when nothing was lost and the kill happened."""

    workers: int
    planned: int
    emitted: int  # events whose emit_event returned stored
    delivered: int  # of those, how many the collector holds
    duplicates_absorbed: int  # arrivals the collector recognised as already held
    lost: int
    throughput: float  # delivered events per second, first emit seen to last delivery seen
    takeover_s: Optional[float]  # SIGKILL of the flusher -> a new live flusher
    killed_pid: Optional[int]
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """True when every emitted event arrived."""
        return self.lost == 0 and self.delivered == self.emitted

    def to_dict(self) -> dict:
        """The summary as a JSON-ready dict (with ``ok``)."""
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class Progress:
    """One progress snapshot handed to the ``on_progress`` callback."""

    planned: int
    emitted: int
    delivered: int
    phase: str


class _Spec(TypedDict):
    """What every child process of the demo needs (a plain dict at run time: it pickles for spawn)."""

    api_key: str
    org_salt_key: Optional[str]
    url: str
    spool: str
    timeout: float
    pace: float


def _client_config(spec: _Spec, agent_id: int) -> "ClientConfig":
    from .config import ClientConfig

    return ClientConfig(
        api_key=spec["api_key"], org_salt_key=spec["org_salt_key"], base_url=spec["url"],
        spool_dir=spec["spool"], agent_id=agent_id, batch_size=50, batch_interval=0.05,
        retry_backoff_base=0.05, retry_backoff_max=0.5, max_retries=20,
    )


def _flusher_only_main(spec: _Spec, stop: Any) -> None:
    """Child process: run a client's flusher (it wins the election first) until stopped or killed."""
    from .client import AOPClient

    client = AOPClient(_client_config(spec, 0)).start()
    stop.wait(spec["timeout"])
    client.stop(timeout=5.0)


_ACTIONS = ("search_orders", "create_ticket", "refund_payment", "lookup_customer", "send_email")


def _agent_run(builder: Any, rng: random.Random, n: int) -> list[dict]:
    """The next ``n`` (<= 4) events of one realistic agent run."""
    action = rng.choice(_ACTIONS)
    order = f"ORD-{rng.randrange(10_000, 99_999)}"
    makers = [
        lambda: builder.create_reasoning(
            goal=f"Handle request about {order}",
            steps=[{"step_id": "s1", "description": "Validate order ID", "decision": "proceed",
                    "confidence": round(rng.uniform(0.6, 0.99), 2)},
                   {"step_id": "s2", "description": f"Choose {action}", "decision": "proceed",
                    "confidence": round(rng.uniform(0.6, 0.99), 2)}],
            safety_checks=[{"name": "policy_check", "result": "passed"}],
            uncertainty=rng.choice(("low", "medium")),
        ),
        lambda: builder.create_action_request(action=action, params={"order_id": order, "reason": "defect"}),
        lambda: builder.create_action_response(status="ok", data={"ticket_id": f"T-{rng.randrange(1000, 9999)}"}),
        lambda: builder.create_final_output(text=f"{action} done for {order}", structured={"order_id": order}),
    ]
    return [make() for make in makers[:n]]


def _worker_main(spec: _Spec, index: int, events: int, seed: int, counter: Any, results: Any) -> None:
    """Child process: one agent emitting ``events`` events in runs of four, then finalize and stop."""
    from .client import AOPClient

    rng = random.Random(seed * 1_000 + index)
    client = AOPClient(_client_config(spec, index + 1)).start()
    stored: list[str] = []
    done = 0
    first = True
    while done < events:
        if not first:
            client.trace_builder.new_run()
        first = False
        for event in _agent_run(client.trace_builder, rng, min(4, events - done)):
            done += 1
            if client.emit_event(event):
                stored.append(event["event_id"])
                with counter.get_lock():
                    counter.value += 1
            time.sleep(rng.uniform(0.0005, spec["pace"]))  # the agent "thinks" between events
    complete = client.finalize(timeout=spec["timeout"])
    client.stop(timeout=5.0)
    results.put((index, stored, bool(complete), client.get_stats().get("last_error")))


def _wait_for_holder(election: Any, accept: Callable[[dict], bool], deadline: float,
                     give_up: Callable[[], bool] = lambda: False) -> Optional[dict]:
    while time.monotonic() < deadline and not give_up():
        holder = election.holder()
        if holder and holder.get("alive") and holder.get("pid") and accept(holder):
            return holder
        time.sleep(0.005)
    return None


def run_demo(workers: int = 4, events: int = 250, *, seed: Optional[int] = None, timeout: float = 60.0,
             pace: float = 0.004, on_progress: Optional[Callable[[Progress], None]] = None) -> Summary:
    """Run the whole demo (see the module docstring) and return its Summary; cleans up after itself."""
    from .collector import CollectorConfig, start_collector
    from .election import FlusherElection

    if workers < 1 or events < 1:
        raise ValueError(f"workers={workers!r} and events={events!r} must both be >= 1")
    seed = random.randrange(2**31) if seed is None else seed
    tmp = Path(tempfile.mkdtemp(prefix="aop-demo-"))  # 0700
    collector = None
    children: list[Any] = []
    notify = on_progress or (lambda _p: None)
    planned = workers * events
    try:
        collector = start_collector(CollectorConfig(
            api_key="demo-" + secrets.token_urlsafe(16), org_salt_key=secrets.token_urlsafe(24), port=0,
            db_path=str(tmp / "collector.sqlite3")))
        spec: _Spec = {"api_key": collector.api_key, "org_salt_key": collector.org_salt_key, "url": collector.url,
                "spool": str(tmp / "spool"), "timeout": timeout, "pace": pace}
        ctx = multiprocessing.get_context("spawn")
        deadline = time.monotonic() + timeout
        election = FlusherElection(spec["spool"])
        stop_flusher = ctx.Event()
        victim = ctx.Process(target=_flusher_only_main, args=(spec, stop_flusher), name="aop-demo-flusher")
        victim.start()
        victim_pid = victim.pid
        if victim_pid is None:  # start() sets it
            raise RuntimeError("the flusher-only process did not start")
        children.append(victim)
        notify(Progress(planned, 0, 0, "electing the flusher"))
        if _wait_for_holder(election, lambda h: h["pid"] == victim.pid, deadline,
                            give_up=lambda: not victim.is_alive()) is None:
            raise RuntimeError(f"the flusher-only process (exit code {victim.exitcode}) never won the election")
        counter = ctx.Value("q", 0)
        results = ctx.Queue()
        for i in range(workers):
            proc = ctx.Process(target=_worker_main, args=(spec, i, events, seed, counter, results),
                               name=f"aop-demo-agent-{i}")
            proc.start()
            children.append(proc)
        started = time.monotonic()
        reports: dict[int, tuple] = {}
        killed_pid: Optional[int] = None
        takeover: Optional[float] = None
        last_delivery = started
        expected: set[str] = set()
        held: set[str] = set()
        first_emit: Optional[float] = None
        exited_at: Optional[float] = None
        while time.monotonic() < deadline:
            emitted = counter.value
            if first_emit is None and emitted:
                first_emit = time.monotonic()
            if killed_pid is None and emitted >= KILL_AT_FRACTION * planned:
                holder = election.holder()
                if holder and holder.get("alive") and holder.get("pid") == victim_pid:
                    os.kill(victim_pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                    killed_pid = victim_pid
                    notify(Progress(planned, emitted, len(held), f"killed flusher pid {killed_pid}"))
                    if _wait_for_holder(election, lambda h: h["pid"] != killed_pid, deadline):
                        takeover = time.monotonic() - killed_at
            while True:
                try:
                    index, ids, _complete, _err = results.get_nowait()
                except queue.Empty:
                    break
                reports[index] = (ids, _complete, _err)
                expected.update(ids)
            now_held = collector.event_ids()
            if len(now_held) != len(held):
                last_delivery = time.monotonic()
            held = now_held
            notify(Progress(planned, emitted, len(held), "running" if killed_pid is None else "after takeover"))
            if len(reports) == workers and expected <= held:
                break
            if not any(proc.is_alive() for proc in children[1:]):  # every agent is gone: no flusher is left
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > _GRACE:
                    break
            time.sleep(_POLL)
        for proc in children[1:]:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
        delivered = len(expected & held)
        elapsed = max(1e-3, last_delivery - (first_emit or started))
        return Summary(
            workers=workers, planned=planned, emitted=len(expected), delivered=delivered,
            duplicates_absorbed=collector.duplicate_deliveries(), lost=len(expected - held) + _unreported(
                reports, workers, counter.value, expected),
            throughput=delivered / elapsed, takeover_s=takeover, killed_pid=killed_pid,
            elapsed_s=time.monotonic() - started,
        )
    finally:
        for proc in children:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=5)
        if collector is not None:
            collector.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _unreported(reports: dict, workers: int, emitted: int, expected: set) -> int:
    """Events counted as emitted by workers that never reported their ids (counted as lost)."""
    if len(reports) == workers:
        return 0
    return max(0, emitted - len(expected))
