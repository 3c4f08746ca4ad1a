"""A real celery worker (prefork pool, 4 children, filesystem broker): every task's events arrive once."""

from __future__ import annotations

import os

from aop_client.testing import wait_until

import aop_it_celery_config
import aop_it_support as support

TASKS = 200 if support.SOAK else 40
EVENTS_PER_TASK = 3


def test_prefork_pool_children_deliver_every_event_once_with_one_flusher(tmp_path, aop_collector):
    """Tasks run in forked pool children; the collector gets each of their events once, from one flusher at a time."""
    broker_dir = tmp_path / "broker"
    for sub in ("queue", "processed"):
        (broker_dir / sub).mkdir(parents=True)
    env = support.child_env(tmp_path, aop_collector.url)
    env["AOP_IT_BROKER"] = str(broker_dir)
    log = tmp_path / "celery.log"
    producer = aop_it_celery_config.make_app(str(broker_dir))
    for _ in range(TASKS):
        producer.send_task("aop_it.emit", args=[EVENTS_PER_TASK])
    proc = support.start_process(
        ["-m", "celery", "-A", "aop_it_celery", "worker", "--pool=prefork", "--concurrency=4",
         "--loglevel=warning", "--without-gossip", "--without-mingle", "--without-heartbeat"], env, log)
    ids_log = tmp_path / "ids.log"
    try:
        def all_tasks_ran() -> bool:
            assert proc.poll() is None, f"celery worker exited early:\n{support.tail(log)}"
            return len(support.read_id_log(ids_log)) >= TASKS * EVENTS_PER_TASK

        wait_until(all_tasks_ran, timeout=40, interval=0.05)
        emitted = {eid for _, eid in support.read_id_log(ids_log)}
        wait_until(lambda: aop_collector.event_ids() >= emitted, timeout=30)
    finally:
        code = support.stop_process(proc)
    assert code == 0, f"celery worker did not shut down cleanly (exit {code}):\n{support.tail(log)}"
    logged = support.read_id_log(ids_log)
    assert len(logged) == TASKS * EVENTS_PER_TASK == len(emitted)
    emitting_pids = {pid for pid, _ in logged}
    assert proc.pid not in emitting_pids and len(emitting_pids) >= 2, f"tasks ran in {emitting_pids}"
    support.assert_delivered_exactly_once(aop_collector, emitted)
    support.assert_one_flusher_at_a_time(support.read_audit(tmp_path / "audit.log"))
    assert not os.listdir(broker_dir / "queue"), "tasks left in the broker"
