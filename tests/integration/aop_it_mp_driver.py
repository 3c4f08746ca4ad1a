"""Driver of test_multiprocessing: a parent with a started client runs a multiprocessing.Pool that emits.

Usage: ``python aop_it_mp_driver.py fork|spawn TASKS EVENTS_PER_TASK``.

With ``fork`` the pool children inherit the parent's client (made, started and
used before the pool exists, and still emitting from a parent thread while the
children fork, so a lock held at fork time would be inherited held); with
``spawn`` every child builds its own client on the same spool in the pool
initializer and emits one event there, so all four children campaign (no parent
thread emits meanwhile: nothing is inherited, and the CPU goes to the imports).
The parent prints one JSON line ``{"parent", "drained", "task_pids"}`` and
exits 0 when every task returned in time.
"""

from __future__ import annotations

import faulthandler
import json
import multiprocessing
import os
import sys
import threading

import aop_it_support

CLIENT = None


def arm_watchdog() -> None:
    """Pool initializer: a child stuck for 15 s dumps its threads' stacks to stderr."""
    faulthandler.dump_traceback_later(15)


def init_spawned_child() -> None:
    """Pool initializer for spawn: this child's own client on the shared spool."""
    global CLIENT
    arm_watchdog()
    CLIENT = aop_it_support.make_client().start()
    aop_it_support.emit_run(CLIENT, 1, "spawned-child-start")


def emit_task(count: int) -> int:
    """Emit one run of count events in this pool child; returns the pid."""
    aop_it_support.emit_run(CLIENT, count, "multiprocessing")
    return os.getpid()


def main(method: str, tasks: int, events: int) -> int:
    """Run the pool and report; non-zero exit when the pool did not finish in time."""
    global CLIENT
    CLIENT = aop_it_support.make_client().start()
    aop_it_support.emit_run(CLIENT, events, "parent-before-pool")
    busy = threading.Event()
    busy.set()
    stopping = threading.Event()

    def keep_emitting() -> None:
        while busy.is_set():  # a steady trickle (not a flood): forks happen while these emits run
            aop_it_support.emit_run(CLIENT, 1, "parent-during-pool")
            stopping.wait(0.002)

    emitter = threading.Thread(target=keep_emitting, daemon=True)
    if method == "fork":
        emitter.start()
    ctx = multiprocessing.get_context(method)
    if method == "fork":
        options = {"maxtasksperchild": 2, "initializer": arm_watchdog}
    else:
        options = {"initializer": init_spawned_child}
    with ctx.Pool(4, **options) as pool:
        pids = pool.map_async(emit_task, [events] * tasks, chunksize=1).get(timeout=30)
        pool.close()
        pool.join()
    busy.clear()
    stopping.set()
    if emitter.is_alive():
        emitter.join(timeout=10)
    drained = CLIENT.stop(timeout=15)
    print(json.dumps({"parent": os.getpid(), "drained": drained, "task_pids": sorted(set(pids))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
