"""One-process scenarios of test_sigkill_after_emit and test_fork_safety, run as real subprocesses.

Usage: ``python aop_it_emitter.py MODE [ARGS]`` (settings from the AOP_IT_* environment):

* ``emit-and-die N``: start a client, emit N events (ids to the id log), then
  SIGKILL this very process right after the last ``emit_event`` returned.
* ``emit-and-exit N``: start a client (default network timeouts), emit N events,
  print ``emitted`` and leave the interpreter normally: atexit has to stop the
  client within a bounded time even when the server hangs.
* ``drain``: a later process: start a client on the same spool, flush, stop;
  prints ``{"drained": bool, "pending": int}``.
* ``fork-children N K``: a started client that keeps emitting from one thread
  and reading ``get_stats()`` from another while this process forks N children
  in a row (they run at once); every child emits K events through the inherited
  client, reports ``<pid> <is_flusher>
  <holder pid>`` to the file in ``AOP_IT_REPORT`` and leaves normally (odd
  children) or through ``os._exit`` (even children). The parent waits for all
  children with one deadline and prints ``{"parent", "hung", "codes", "drained"}``.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time

import aop_it_support
from aop_client.election import FlusherElection

CHILD_DEADLINE = 20.0


def emit_and_die(count: int) -> None:
    """Emit count events and SIGKILL ourselves right after the last emit returned."""
    client = aop_it_support.make_client().start()
    aop_it_support.emit_run(client, count, "killed-after-emit")
    os.kill(os.getpid(), signal.SIGKILL)


def emit_and_exit(count: int) -> None:
    """Emit count events with the default network timeouts, then exit the interpreter normally."""
    client = aop_it_support.make_client(connect_timeout=5.0, read_timeout=30.0, max_retries=3).start()
    aop_it_support.emit_run(client, count, "exit-with-hung-server")
    print("emitted", flush=True)


def drain() -> None:
    """Deliver whatever the spool holds, then report."""
    client = aop_it_support.make_client().start()
    drained = client.flush(timeout=20)
    client.stop(timeout=5)
    print(json.dumps({"drained": drained, "pending": client.get_stats()["pending"]}), flush=True)


def fork_children(children: int, per_child: int) -> None:
    """Fork children while the parent's client emits and flushes; see the module docstring."""
    client = aop_it_support.make_client().start()
    aop_it_support.emit_run(client, per_child, "parent-before-fork")
    election = FlusherElection(os.environ[aop_it_support.ENV_SPOOL])
    stopping = threading.Event()

    def keep_emitting() -> None:
        while not stopping.is_set():
            aop_it_support.emit_run(client, 1, "parent-during-forks")
            stopping.wait(0.002)

    def keep_polling_stats() -> None:  # like a metrics exporter: the store is queried while children fork
        while not stopping.is_set():
            client.get_stats()

    emitter = threading.Thread(target=keep_emitting, daemon=True)
    emitter.start()
    poller = threading.Thread(target=keep_polling_stats, daemon=True)
    poller.start()
    pids = []
    for index in range(children):
        pid = os.fork()
        if pid == 0:
            run_child(client, election, per_child, normal_exit=index % 2 == 1)
        pids.append(pid)
        stopping.wait(0.003)  # lets the parent's threads get back into the store between forks
    codes, hung = {}, []
    deadline = time.monotonic() + CHILD_DEADLINE
    while len(codes) + len(hung) < len(pids):
        for pid in pids:
            if pid in codes or pid in hung:
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[pid] = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                hung.append(pid)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        time.sleep(0.005)  # polling the children's exits; the deadline bounds it
    stopping.set()
    emitter.join(timeout=10)
    poller.join(timeout=10)
    drained = client.stop(timeout=15)
    report = {"parent": os.getpid(), "hung": hung, "codes": sorted(codes.values()), "drained": drained}
    print(json.dumps(report), flush=True)


def run_child(client, election: FlusherElection, per_child: int, *, normal_exit: bool) -> None:
    """The body of one forked child: emit through the inherited client, report, leave."""
    faulthandler.dump_traceback_later(CHILD_DEADLINE / 2)  # a stuck child shows where it is stuck (stderr)
    try:
        aop_it_support.emit_run(client, per_child, "forked-child")
        holder = election.holder() or {}
        aop_it_support.append_line(os.environ["AOP_IT_REPORT"],
                                   f"{os.getpid()} {int(client.get_stats()['is_flusher'])} {holder.get('pid')}\n")
    except BaseException as exc:  # any failure must show as this child's exit code, never unwind the parent's frames
        print(f"child {os.getpid()} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(3)
    if normal_exit:
        sys.stdout.flush()
        raise SystemExit(0)  # unwinds to the interpreter: threading shutdown and atexit run in the child
    os._exit(0)


if __name__ == "__main__":
    mode, args = sys.argv[1], [int(a) for a in sys.argv[2:]]
    {"emit-and-die": emit_and_die, "emit-and-exit": emit_and_exit, "drain": drain,
     "fork-children": fork_children}[mode](*args)
