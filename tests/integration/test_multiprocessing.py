"""multiprocessing.Pool with fork and with spawn: every event arrives once, one flusher at a time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import aop_it_support as support

TASKS = 60 if support.SOAK else 16
EVENTS_PER_TASK = 3


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_children_deliver_every_event_once(tmp_path, aop_collector, method):
    """Events emitted before, during (parent thread) and inside the pool all reach the collector exactly once."""
    env = support.child_env(tmp_path, aop_collector.url)
    try:
        done = subprocess.run([sys.executable, "aop_it_mp_driver.py", method, str(TASKS), str(EVENTS_PER_TASK)],
                              env=env, cwd=str(support.HERE), capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the {method} pool driver hung (a lock inherited held?): {exc.stderr!r:.3000}")
    stuck_frames = [line for line in done.stderr.splitlines() if "aop_client" in line or "Thread 0x" in line]
    assert done.returncode == 0, "\n".join(stuck_frames[:40]) + "\n" + done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["drained"] is True, "the parent's stop() left events behind"
    logged = support.read_id_log(tmp_path / "ids.log")
    emitted = {eid for _, eid in logged}
    assert len(emitted) == len(logged)
    children = {pid for pid, _ in logged} - {report["parent"]}
    assert len(children) >= (8 if method == "fork" else 4), f"only {len(children)} pool children emitted"
    assert set(report["task_pids"]) <= children
    pool_ids = [eid for pid, eid in logged if pid != report["parent"]]
    assert len(pool_ids) == TASKS * EVENTS_PER_TASK + (len(children) if method == "spawn" else 0)
    support.assert_delivered_exactly_once(aop_collector, emitted)
    support.assert_one_flusher_at_a_time(support.read_audit(tmp_path / "audit.log"))
