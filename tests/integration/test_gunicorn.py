"""Real gunicorn with --preload and 4 sync workers: the client made in the master works in every worker."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aop_client.testing import wait_until

import aop_it_support as support

REQUESTS = 200 if support.SOAK else 40
EVENTS_PER_REQUEST = 3


def start_gunicorn(tmp_path: Path, collector_url: str, workers: int = 4):
    """Start `gunicorn --preload -w <workers>` on a free port; returns (process, base url, log path)."""
    port = support.free_port()
    log = tmp_path / "gunicorn.log"
    proc = support.start_process(
        ["-m", "gunicorn", "--preload", "-w", str(workers), "-b", f"127.0.0.1:{port}",
         "--graceful-timeout", "5", "--timeout", "30", "aop_it_wsgi:app"],
        support.child_env(tmp_path, collector_url), log)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, f"gunicorn exited early:\n{support.tail(log)}"
        try:
            urllib.request.urlopen(url + "/ready", timeout=2)
        except urllib.error.HTTPError:
            return True  # the app answered (404): a worker is serving
        except OSError:
            return False
        return True

    wait_until(answers, timeout=20, interval=0.05)
    return proc, url, log


def get_json(url: str) -> dict:
    """GET url and decode its JSON answer."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_preloaded_client_delivers_every_worker_event_once_with_one_flusher(tmp_path, aop_collector):
    """Events of 4 preforked workers all arrive exactly once; sends never come from two processes at once."""
    proc, url, log = start_gunicorn(tmp_path, aop_collector.url)
    try:
        answers: list[dict] = []

        def served_by_several_workers() -> bool:
            """Send another round of concurrent requests; the kernel may hand a round to one worker."""
            with ThreadPoolExecutor(8) as pool:
                answers.extend(pool.map(lambda _: get_json(f"{url}/emit?n={EVENTS_PER_REQUEST}"), range(REQUESTS)))
            return len({a["pid"] for a in answers}) >= 2

        wait_until(served_by_several_workers, timeout=60, interval=0.0)
        answered_ids = {eid for a in answers for eid in a["ids"]}
        assert len(answered_ids) == len(answers) * EVENTS_PER_REQUEST
        worker_pids = {a["pid"] for a in answers}
        assert proc.pid not in worker_pids and len(worker_pids) >= 2, f"requests served by {worker_pids}"
        wait_until(lambda: aop_collector.event_ids() >= answered_ids, timeout=30)
    finally:
        code = support.stop_process(proc)
    assert code == 0, f"gunicorn did not shut down cleanly (exit {code}):\n{support.tail(log)}"
    logged = support.read_id_log(tmp_path / "ids.log")
    assert {eid for _, eid in logged} == answered_ids and len(logged) == len(answered_ids)
    support.assert_delivered_exactly_once(aop_collector, answered_ids)
    audit = support.read_audit(tmp_path / "audit.log")
    support.assert_one_flusher_at_a_time(audit)
    sent = [a.event_id for a in audit if a.kind == "post" and a.event_id in answered_ids]
    assert sorted(sent) == sorted(answered_ids), "some event got a final outcome twice or never"


def test_worker_restarts_keep_delivering(tmp_path, aop_collector):
    """With max-requests recycling workers (fresh forks of the master mid-run), every event still arrives once."""
    port = support.free_port()
    log = tmp_path / "gunicorn.log"
    proc = support.start_process(
        ["-m", "gunicorn", "--preload", "-w", "4", "-b", f"127.0.0.1:{port}", "--max-requests", "5",
         "--graceful-timeout", "5", "aop_it_wsgi:app"],
        support.child_env(tmp_path, aop_collector.url), log)
    url = f"http://127.0.0.1:{port}"
    try:
        def emit_once() -> dict:
            assert proc.poll() is None, f"gunicorn exited early:\n{support.tail(log)}"
            try:
                return get_json(f"{url}/emit?n=2")
            except OSError:
                return {}

        answers = [wait_until(emit_once, timeout=20, interval=0.05) for _ in range(REQUESTS)]
        answered_ids = {eid for a in answers for eid in a["ids"]}
        assert len({a["pid"] for a in answers}) > 4, "max-requests never recycled a worker"
        wait_until(lambda: aop_collector.event_ids() >= answered_ids, timeout=30)
    finally:
        code = support.stop_process(proc)
    assert code == 0, f"gunicorn did not shut down cleanly (exit {code}):\n{support.tail(log)}"
    support.assert_delivered_exactly_once(aop_collector, answered_ids)
    support.assert_one_flusher_at_a_time(support.read_audit(tmp_path / "audit.log"))
