"""A process SIGKILLed right after emit_event returned: its events still arrive (once, after dedupe)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from aop_client.testing import wait_until

import aop_it_support as support
from test_gunicorn import get_json, start_gunicorn

EVENTS = 50
KILLS = 12 if support.SOAK else 3


def run_emitter(tmp_path, url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run aop_it_emitter.py with the apps' environment pointing at url."""
    return subprocess.run([sys.executable, "aop_it_emitter.py", *args], env=support.child_env(tmp_path, url),
                          cwd=str(support.HERE), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("server", ["down", "up"])
def test_events_of_a_killed_process_are_delivered_by_a_later_one(tmp_path, aop_collector_factory, server):
    """The emitting process (itself the flusher) dies by SIGKILL after its last emit; a later process delivers all
    (with the server down, once it is back on the same URL: the spool is bound to it)."""
    port = support.free_port()
    aop_collector = aop_collector_factory(port=port) if server == "up" else None
    url = f"http://127.0.0.1:{port}"
    died = run_emitter(tmp_path, url, "emit-and-die", str(EVENTS))
    assert died.returncode == -9, died.stderr[-2000:]
    emitted = {eid for _, eid in support.read_id_log(tmp_path / "ids.log")}
    assert len(emitted) == EVENTS
    aop_collector = aop_collector or aop_collector_factory(port=port)
    later = run_emitter(tmp_path, url, "drain")
    assert later.returncode == 0, later.stderr[-2000:]
    assert json.loads(later.stdout.splitlines()[-1]) == {"drained": True, "pending": 0}
    assert aop_collector.event_ids() == emitted
    if server == "down":
        assert aop_collector.duplicate_deliveries() == 0, "nothing was sent before the kill, yet an event came twice"


def test_gunicorn_worker_killed_after_emit_loses_nothing(tmp_path, aop_collector):
    """Workers that SIGKILL themselves right after emit_event returned: the master's flusher delivers their events."""
    proc, url, log = start_gunicorn(tmp_path, aop_collector.url)
    try:
        for _ in range(KILLS):
            with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
                urllib.request.urlopen(f"{url}/emit-and-die?n=5", timeout=10)
        answered = set()
        for _ in range(8):  # the respawned workers serve normally
            answered.update(wait_until(lambda: _emit_or_nothing(url), timeout=20, interval=0.05))
        emitted = {eid for _, eid in support.read_id_log(tmp_path / "ids.log")}
        assert len(emitted) == KILLS * 5 + len(answered) and answered <= emitted
        wait_until(lambda: aop_collector.event_ids() >= emitted, timeout=30)
    finally:
        code = support.stop_process(proc)
    assert code == 0, f"gunicorn did not shut down cleanly (exit {code}):\n{support.tail(log)}"
    support.assert_delivered_exactly_once(aop_collector, emitted)
    support.assert_one_flusher_at_a_time(support.read_audit(tmp_path / "audit.log"))


def _emit_or_nothing(url: str) -> set[str]:
    """The ids of one /emit request, or an empty set while gunicorn respawns a worker."""
    try:
        return set(get_json(f"{url}/emit?n=2")["ids"])
    except OSError:
        return set()
