"""Tests of aop_client.election: one flusher per directory, kernel-released, fork-safe, fast takeover.

Every multi-process test uses real processes (subprocess or os.fork) on a real
directory. Leaders append lines to an audit log opened with O_APPEND, writing
"acquire" right after winning and "release" right before giving up, so the
file order is the true order of leadership periods.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aop_client.election import LOCK_FILE_NAME, FlusherElection
from aop_client.errors import StoreError
from aop_client.testing import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
SOAK = os.environ.get("AOP_SOAK") == "1"

# A contender: wins, logs "acquire <pid> <monotonic>", holds a little, logs "release", releases, repeats.
CONTENDER = r"""
import os, random, sys, threading, time
from aop_client.election import FlusherElection
directory, audit, duration, hold_forever = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
rng = random.Random(os.getpid())
election = FlusherElection(directory)
stop = threading.Event()
fd = os.open(audit, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
end = time.monotonic() + duration
def log(kind):
    os.write(fd, f"{kind} {os.getpid()} {time.monotonic():.6f}\n".encode())
while time.monotonic() < end:
    if election.wait_for_leadership(stop, poll=0.02, timeout=max(0.0, end - time.monotonic())):
        log("acquire")
        if hold_forever:
            while True:
                time.sleep(60)
        time.sleep(rng.uniform(0.0, 0.01))
        log("release")
        election.release()
        time.sleep(rng.uniform(0.0, 0.005))
"""


def _spawn_contender(directory: Path, audit: Path, duration: float, hold_forever: bool) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", CONTENDER, str(directory), str(audit), str(duration), "1" if hold_forever else "0"],
        env=env,
    )


def _read_audit(audit: Path) -> list[tuple[str, int, float]]:
    if not audit.exists():
        return []
    lines = []
    for line in audit.read_text().splitlines():
        kind, pid, at = line.split()
        lines.append((kind, int(pid), float(at)))
    return lines


def _assert_never_two_leaders(lines: list[tuple[str, int, float]]) -> None:
    leader = None
    last_at = float("-inf")
    for kind, pid, at in lines:
        assert at >= last_at, f"audit timestamps went backwards at {kind} {pid} {at}"
        last_at = at
        if kind == "acquire":
            assert leader is None, f"pid {pid} acquired while pid {leader} was leader"
            leader = pid
        else:
            assert leader == pid, f"pid {pid} released but the leader was {leader}"
            leader = None


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait(timeout=10)


def test_contending_processes_never_have_two_leaders(tmp_path: Path) -> None:
    """Several processes racing for the lock produce strictly alternating acquire/release periods."""
    audit = tmp_path / "audit.log"
    duration = 10.0 if SOAK else 1.5
    procs = [_spawn_contender(tmp_path / "store", audit, duration, hold_forever=False) for _ in range(4)]
    try:
        for proc in procs:
            assert proc.wait(timeout=duration + 30) == 0
    finally:
        _kill_all(procs)
    lines = _read_audit(audit)
    pids = {pid for _kind, pid, _at in lines}
    assert len(lines) >= 20, f"too little contention to prove anything: {len(lines)} lines"
    assert len(pids) >= 2, f"only {pids} ever led"
    _assert_never_two_leaders(lines)


@pytest.mark.parametrize("round_", range(5 if SOAK else 2))
def test_sigkilled_leader_is_replaced_within_one_second(tmp_path: Path, round_: int) -> None:
    """SIGKILL of the leader lets exactly one other live process take over, measured under 1 s."""
    audit = tmp_path / "audit.log"
    store = tmp_path / "store"
    procs = [_spawn_contender(store, audit, 60.0, hold_forever=True) for _ in range(3)]
    try:
        first = wait_until(lambda: _read_audit(audit), timeout=20)
        leader_pid = first[0][1]
        leader = next(p for p in procs if p.pid == leader_pid)
        killed_at = time.monotonic()
        leader.send_signal(signal.SIGKILL)
        lines = wait_until(lambda: (ls := _read_audit(audit)) and len(ls) >= 2 and ls, timeout=10)
        takeover = lines[1][2] - killed_at
        assert lines[1][0] == "acquire" and lines[1][1] != leader_pid
        assert takeover < 1.0, f"takeover took {takeover:.3f} s"
        assert leader.wait(timeout=5) == -signal.SIGKILL
        # Nobody else may win while the new leader lives.
        assert not FlusherElection(store).try_acquire()
        assert len(_read_audit(audit)) == 2
    finally:
        _kill_all(procs)


def test_all_processes_dead_first_restart_acquires_immediately(tmp_path: Path) -> None:
    """When every holder died by SIGKILL, the next process wins on its first try and sees the dead holder."""
    audit = tmp_path / "audit.log"
    store = tmp_path / "store"
    procs = [_spawn_contender(store, audit, 60.0, hold_forever=True) for _ in range(3)]
    try:
        dead_pid = wait_until(lambda: _read_audit(audit), timeout=20)[0][1]
    finally:
        _kill_all(procs)
    fresh = FlusherElection(store)
    recorded = fresh.holder()
    assert recorded is not None and recorded["pid"] == dead_pid and recorded["alive"] is False
    assert fresh.try_acquire() is True
    assert fresh.holder()["pid"] == os.getpid()
    fresh.close()


def test_forked_child_is_not_leader_and_cannot_release_parent_lock(tmp_path: Path) -> None:
    """A child forked from the leader reports is_leader False, its release() keeps the parent's lock."""
    parent = FlusherElection(tmp_path)
    assert parent.try_acquire()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            report = [parent.is_leader]
            parent.release()
            report.append(parent.try_acquire())
            report.append(FlusherElection(tmp_path).try_acquire())
            os.write(write_end, repr(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        report = reader.read()
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "[False, False, False]"
    assert parent.is_leader
    # The lock really is still held: an independent process cannot take it.
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from aop_client.election import FlusherElection as F; "
         "print(F(sys.argv[1]).try_acquire())", str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True, timeout=30,
    )
    assert probe.stdout.strip() == "False", probe.stderr
    parent.close()


def test_forked_child_wins_after_parent_releases(tmp_path: Path) -> None:
    """The child of a former leader can win once the parent released, and then the parent cannot."""
    parent = FlusherElection(tmp_path)
    assert parent.try_acquire()
    go_read, go_write = os.pipe()
    res_read, res_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.read(go_read, 1)
            won = parent.try_acquire()
            os.write(res_write, b"1" if won else b"0")
            os.read(go_read, 1)  # hold until the parent checked
        finally:
            os._exit(0)
    parent.release()
    os.write(go_write, b"x")
    assert os.read(res_read, 1) == b"1"
    assert parent.try_acquire() is False
    holder = parent.holder()
    assert holder is not None and holder["pid"] == pid and holder["alive"] is True
    os.write(go_write, b"x")
    os.waitpid(pid, 0)
    assert wait_until(parent.try_acquire, timeout=5)
    parent.close()
    for fd in (go_read, go_write, res_read, res_write):
        os.close(fd)


def test_lock_file_and_directory_are_private(tmp_path: Path) -> None:
    """The directory is created 0700 and the lock file 0600 even under a permissive umask."""
    old = os.umask(0o000)
    try:
        election = FlusherElection(tmp_path / "new" / "store")
        assert election.try_acquire()
    finally:
        os.umask(old)
    assert (tmp_path / "new" / "store").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new" / "store" / LOCK_FILE_NAME).stat().st_mode & 0o777 == 0o600
    election.close()


def test_release_clears_holder_info_and_close_refuses_reuse(tmp_path: Path) -> None:
    """After release() holder() is None; a closed election raises StoreError naming the directory."""
    election = FlusherElection(tmp_path)
    assert election.holder() is None
    assert election.try_acquire() and election.leader_since is not None
    election.release()
    assert election.holder() is None and not election.is_leader
    election.close()
    with pytest.raises(StoreError, match=str(tmp_path)):
        election.try_acquire()


def test_wait_for_leadership_rejects_slow_poll_and_honours_stop(tmp_path: Path) -> None:
    """poll above 0.2 s is refused; a set stop event ends waiting without leadership."""
    holder = FlusherElection(tmp_path)
    assert holder.try_acquire()
    waiter = FlusherElection(tmp_path)
    with pytest.raises(ValueError, match="poll=0.5"):
        waiter.wait_for_leadership(threading.Event(), poll=0.5)
    stop = threading.Event()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(waiter.wait_for_leadership(stop, poll=0.05)))
    thread.start()
    stop.set()
    thread.join(timeout=5)
    assert result == [False]
    holder.release()
    assert waiter.wait_for_leadership(threading.Event(), poll=0.05, timeout=5)
    waiter.close()
    holder.close()


def test_threads_racing_on_one_election_object(tmp_path: Path) -> None:
    """Threads hammering try_acquire/release/holder on one object leak no descriptor and keep it usable."""
    election = FlusherElection(tmp_path)
    other = FlusherElection(tmp_path)
    fds_before = len(os.listdir("/proc/self/fd"))
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(200):
                if election.try_acquire():
                    holder = election.holder()
                    assert holder is None or holder["pid"] == os.getpid()
                election.release()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert election.try_acquire() and not other.try_acquire()
    election.close()
    other.close()


class ElectionMachine(RuleBasedStateMachine):
    """Several election objects on one directory (each its own open file description) in one process."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.elections = [FlusherElection(self.tmp.name) for _ in range(3)]
        self.leader: int | None = None

    @rule(i=st.integers(0, 2))
    def acquire(self, i: int) -> None:
        """try_acquire succeeds iff nobody else leads."""
        won = self.elections[i].try_acquire()
        expected = self.leader in (None, i)
        assert won == expected
        if won:
            self.leader = i

    @rule(i=st.integers(0, 2))
    def release(self, i: int) -> None:
        """release by a non-leader is a no-op; by the leader it frees the lock."""
        self.elections[i].release()
        if self.leader == i:
            self.leader = None

    @precondition(lambda self: self.leader is not None)
    @rule()
    def close_leader(self) -> None:
        """Closing the leader frees the lock; the slot gets a fresh object."""
        assert self.leader is not None
        self.elections[self.leader].close()
        self.elections[self.leader] = FlusherElection(self.tmp.name)
        self.leader = None

    @invariant()
    def at_most_one_leader_and_holder_agrees(self) -> None:
        """Exactly the model's leader is leader, and holder() tells whether anyone is."""
        leaders = [i for i, e in enumerate(self.elections) if e.is_leader]
        assert leaders == ([] if self.leader is None else [self.leader])
        holder = self.elections[0].holder()
        if self.leader is None:
            assert holder is None
        else:
            assert holder is not None and holder["alive"] and holder["pid"] == os.getpid()

    def teardown(self) -> None:
        for e in self.elections:
            e.close()
        self.tmp.cleanup()


ElectionMachine.TestCase.settings = settings(max_examples=200 if SOAK else 40, stateful_step_count=30, deadline=None)
TestElectionMachine = ElectionMachine.TestCase


def test_dropped_leader_object_frees_the_lock(tmp_path: Path) -> None:
    """A leader object that is garbage-collected releases the lock for the next contender."""
    import gc

    leader = FlusherElection(tmp_path)
    assert leader.try_acquire()
    del leader
    gc.collect()
    assert FlusherElection(tmp_path).try_acquire()
