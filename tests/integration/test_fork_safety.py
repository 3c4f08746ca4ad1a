"""Fork safety and bounded exit: a client made before fork works in every child; exit never hangs, nothing is lost."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aop_it_support as support

CHILDREN = 120 if support.SOAK else 60
PER_CHILD = 3
EXIT_BOUND_S = 5.0


def test_children_forked_from_a_busy_client_emit_once_and_never_lead(tmp_path, aop_collector):
    """Children forked from a busy client: none hangs, none inherits leadership, each event arrives once."""
    env = support.child_env(tmp_path, aop_collector.url)
    env["AOP_IT_REPORT"] = str(tmp_path / "children.log")
    done = subprocess.run([sys.executable, "aop_it_emitter.py", "fork-children", str(CHILDREN), str(PER_CHILD)],
                          env=env, cwd=str(support.HERE), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    parent = report["parent"]
    assert report["hung"] == [], f"children stuck (an inherited lock held?): {report['hung']}\n{done.stderr[-2000:]}"
    assert report["codes"] == [0] * CHILDREN, done.stderr[-3000:]
    assert report["drained"] is True
    children = [line.split() for line in (tmp_path / "children.log").read_text().splitlines()]
    assert len(children) == CHILDREN
    assert all(is_flusher == "0" for _, is_flusher, _ in children), f"a child became flusher: {children}"
    assert all(holder == str(parent) for _, _, holder in children), f"leadership moved away from the parent: {children}"
    logged = support.read_id_log(tmp_path / "ids.log")
    emitted = {eid for _, eid in logged}
    assert len(emitted) == len(logged)
    assert sum(1 for pid, _ in logged if pid != parent) == CHILDREN * PER_CHILD
    support.assert_delivered_exactly_once(aop_collector, emitted)
    audit = support.read_audit(tmp_path / "audit.log")
    assert {a.pid for a in audit} == {parent}, "a forked child sent events while the parent was the flusher"


def hanging_server() -> socket.socket:
    """A loopback listener that completes TCP handshakes (backlog) but never reads or answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


@pytest.mark.parametrize("server", ["hangs", "refuses"])
def test_interpreter_exit_is_bounded_and_a_later_process_delivers(tmp_path, aop_collector_factory, server):
    """A started client's process exits within seconds though the server hangs or refuses; events stay on disk,
    and a later process delivers them once the server (the same URL: the spool is bound to it) is back."""
    listener = hanging_server() if server == "hangs" else None
    url = (f"http://127.0.0.1:{listener.getsockname()[1]}" if listener
           else f"http://127.0.0.1:{support.free_port()}")
    log = tmp_path / "exit.log"
    proc = subprocess.Popen([sys.executable, "aop_it_emitter.py", "emit-and-exit", "20"],
                            env=support.child_env(tmp_path, url), cwd=str(support.HERE),
                            stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)
    try:
        assert proc.stdout.readline().strip() == "emitted", support.tail(log)
        emitted_at = time.monotonic()
        try:
            code = proc.wait(timeout=EXIT_BOUND_S + 10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the interpreter did not exit within {EXIT_BOUND_S + 10} s of the last emit")
        exit_took = time.monotonic() - emitted_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proc.stdout.close()
        if listener:
            listener.close()
    assert code == 0, support.tail(log)
    assert exit_took <= EXIT_BOUND_S, f"exit took {exit_took:.1f} s (bound {EXIT_BOUND_S} s)"
    emitted = {eid for _, eid in support.read_id_log(tmp_path / "ids.log")}
    assert len(emitted) == 20
    aop_collector = aop_collector_factory(port=int(url.rsplit(":", 1)[1]))  # the server is back
    later = subprocess.run([sys.executable, "aop_it_emitter.py", "drain"],
                           env=support.child_env(tmp_path, url),
                           cwd=str(support.HERE), capture_output=True, text=True, timeout=60)
    assert later.returncode == 0, later.stderr[-2000:]
    assert json.loads(later.stdout.splitlines()[-1]) == {"drained": True, "pending": 0}
    assert aop_collector.event_ids() == emitted


def _audit(pids: list[int]) -> list[support.AuditLine]:
    """Synthetic send-audit lines: one per pid, in the given time order."""
    return [support.AuditLine("pre", pid, n, f"e{n}") for n, pid in enumerate(pids)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 5)), min_size=1, max_size=8, unique_by=lambda b: b[0]))
def test_the_send_audit_accepts_takeovers(blocks):
    """Senders that follow one another (one contiguous block per pid) pass the one-flusher check."""
    support.assert_one_flusher_at_a_time(_audit([pid for pid, n in blocks for _ in range(n)]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=3, max_size=30))
def test_the_send_audit_catches_concurrent_flushers(pids):
    """Any time order in which a pid sends again after another pid sent fails the one-flusher check."""
    interleaved = any(pids[i] == pids[k] != pids[j]
                      for i in range(len(pids)) for j in range(i + 1, len(pids)) for k in range(j + 1, len(pids)))
    if not interleaved:
        support.assert_one_flusher_at_a_time(_audit(pids))
    else:
        with pytest.raises(AssertionError, match="two flushers"):
            support.assert_one_flusher_at_a_time(_audit(pids))
