"""aop_client.forking: the one fork registration, its documented order, weak participants, one fork-check idiom.

Real forks (os.fork, and a raw libc fork() that bypasses CPython's hooks); each child
reports what it saw through a pipe and leaves with os._exit.
"""

from __future__ import annotations

import ast
import ctypes
import fcntl
import gc
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client import forking
from aop_client.election import FlusherElection
from aop_client.store.disk_store import DiskStore

PACKAGE = Path(forking.__file__).resolve().parent


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(PACKAGE.rglob("*.py"))]


def _is_getpid(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "getpid")


def test_only_forking_registers_at_fork_and_does_so_once():
    calls = [(path.relative_to(PACKAGE).as_posix(), node.lineno) for path, tree in _modules()
             for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register_at_fork"]
    assert [path for path, _ in calls] == ["forking.py"], calls


def test_no_module_checks_for_a_fork_by_comparing_a_stored_pid():
    """The one idiom is the fork-generation stamp; ``x._pid != os.getpid()`` lives nowhere (forking aside)."""
    found = []
    for path, tree in _modules():
        if path.name == "forking.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(_is_getpid(o) for o in operands) and any(isinstance(o, (ast.Attribute, ast.Name)) for o in operands):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []


class _Recorder:
    """A participant that writes what it is asked, and the generation it sees, into a shared log."""

    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def _before_fork(self) -> None:
        self.log.append(("before", self.name))

    def _after_fork_in_parent(self) -> None:
        self.log.append(("parent", self.name))

    def _after_fork_in_child(self) -> None:
        self.log.append(("child", self.name, forking.generation))


def _fork_and_report(child) -> object:
    """Fork; the child sends child()'s JSON through a pipe and exits; returns what it sent."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.write(write_fd, json.dumps(child()).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    assert os.waitpid(pid, 0)[1] == 0
    return json.loads(data)


def _mine(log: list, prefix: str) -> list:
    return [entry for entry in log if entry[1].startswith(prefix)]


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sampled_from(forking.ORDER), min_size=1, max_size=12))
def test_children_reset_kind_by_kind_in_the_documented_order_whatever_the_registration_order(kinds):
    log: list = []
    tag = f"t{os.urandom(4).hex()}-"
    recorders = [_Recorder(f"{tag}{i}:{kind}", log) for i, kind in enumerate(kinds)]
    for recorder, kind in zip(recorders, kinds):
        forking.register(kind, recorder)
    expected = [r.name for kind in forking.ORDER for r, k in zip(recorders, kinds) if k == kind]
    parent_gen = forking.generation

    child_log = _fork_and_report(lambda: _mine(log, tag))

    assert _mine(log, tag) == [("before", n) for n in expected] + [("parent", n) for n in reversed(expected)]
    children = [entry for entry in child_log if entry[0] == "child"]
    assert [name for _, name, _ in children] == expected
    assert {gen for _, _, gen in children} == {parent_gen + 1}  # the generation is bumped before any participant
    assert forking.generation == parent_gen
    del recorders


def test_a_collected_participant_is_never_called_and_not_kept():
    log: list = []
    tag = f"t{os.urandom(4).hex()}-"
    kept, dropped = _Recorder(f"{tag}kept", log), _Recorder(f"{tag}dropped", log)
    forking.register(forking.FLUSHER, kept)
    forking.register(forking.FLUSHER, dropped)
    del dropped
    gc.collect()
    assert not any(getattr(p, "name", "") == f"{tag}dropped" for p in forking.live(forking.FLUSHER))

    child_log = _fork_and_report(lambda: [entry[1] for entry in _mine(log, tag) if entry[0] == "child"])

    assert child_log == [f"{tag}kept"]
    assert all(name == f"{tag}kept" for _, name in _mine(log, tag))


def test_register_refuses_an_object_without_a_child_hook_and_an_unknown_kind():
    with pytest.raises(TypeError, match="_after_fork_in_child"):
        forking.register(forking.STORE, object())
    with pytest.raises(KeyError):
        forking.register("sockets", _Recorder("x", []))


def test_a_store_forked_mid_use_gives_the_child_its_own_segment_and_leaves_the_parent_alone(tmp_path):
    store = DiskStore(tmp_path / "spool")
    store.append("e-parent-1", "run", 1, b"{}")
    parent_conn = store._conn

    def child():
        fresh = store._conn is None and store._fork_gen == forking.generation  # reset at fork, not on first use
        store.append("e-child", "run", 2, b"{}")
        return {"fresh": fresh, "segment": store._writer.name, "pid": os.getpid()}

    seen = _fork_and_report(child)
    store.append("e-parent-2", "run", 3, b"{}")
    assert seen["fresh"] is True
    assert f"-{seen['pid']}-" in seen["segment"] and seen["segment"] != store._writer.name
    assert store._conn is parent_conn
    assert store.stats().pending == 3
    store.close()


def test_a_fork_that_bypasses_the_hooks_is_noticed_before_the_election_touches_its_lock(tmp_path):
    """libc fork() (no PyOS_AfterFork_Child): the child is not leader and its release keeps the parent's lock."""
    election = FlusherElection(tmp_path / "spool")
    assert election.try_acquire()
    libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held across the call, as os.fork holds it
    read_fd, write_fd = os.pipe()
    pid = libc.fork()
    if pid == 0:
        try:
            before = forking.generation
            leader = election.is_leader  # notices the fork, runs the child hooks
            election.release()
            os.write(write_fd, json.dumps([before, forking.generation, leader]).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        before, after, leader = json.loads(pipe.read())
    assert os.waitpid(pid, 0)[1] == 0
    assert after == before + 1 and leader is False
    probe = os.open(election.lock_path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True
    finally:
        os.close(probe)
    assert held and election.is_leader
    election.close()
