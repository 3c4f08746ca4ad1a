"""Shared pieces of the integration tests: the client the apps build, the send audit, id logs, subprocesses.

Every helper app (gunicorn WSGI app, celery app, multiprocessing driver) is a
real process that reads its settings from the environment variables below and
builds its client with :func:`make_client`. Two append-only files tie what the
processes did to what the collector received:

* the *id log* (``AOP_IT_IDS``): one ``<pid> <event_id>`` line per event whose
  ``emit_event`` returned a stored result (written right after it returned);
* the *send audit* (``AOP_IT_AUDIT``): the client's ``pre_send_hook`` and
  ``post_send_hook`` append ``pre|post <pid> <monotonic_ns> <event_id>`` for
  every event of every POST, so the test can see which process sent what, when.
  Two flushers running at once interleave their lines; one flusher at a time
  (with takeovers) leaves one contiguous block per pid.

Lines are short and written with a single ``O_APPEND`` write, so lines from
concurrent processes never tear.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from aop_client import AOPClient, ClientConfig
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY
from aop_client.trace_builder import TraceBuilder

ENV_URL = "AOP_IT_URL"
ENV_SPOOL = "AOP_IT_SPOOL"
ENV_AUDIT = "AOP_IT_AUDIT"
ENV_IDS = "AOP_IT_IDS"
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
AGENT_ID = 4242
SOAK = os.environ.get("AOP_SOAK") == "1"


def append_line(path: str, line: str) -> None:
    """Append one line with a single O_APPEND write (atomic for short lines)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def audit_pre_send(event: dict) -> None:
    """pre_send_hook: record that this process is about to POST this event."""
    append_line(os.environ[ENV_AUDIT], f"pre {os.getpid()} {time.monotonic_ns()} {event['event_id']}\n")


def audit_post_send(event: dict, success: bool) -> None:
    """post_send_hook: record the final outcome of this event in this process."""
    append_line(os.environ[ENV_AUDIT], f"post {os.getpid()} {time.monotonic_ns()} {event['event_id']} {int(success)}\n")


def make_client(**extra) -> AOPClient:
    """The client every helper app uses: the env's collector and spool, short intervals, audited sends."""
    fields = dict(api_key=TEST_API_KEY, org_salt_key=TEST_ORG_SALT_KEY, base_url=os.environ[ENV_URL],
                  agent_id=AGENT_ID, spool_dir=os.environ[ENV_SPOOL], batch_interval=0.05,
                  retry_backoff_base=0.01, retry_backoff_max=0.2, max_retries=50,
                  connect_timeout=1.0, read_timeout=5.0,
                  pre_send_hook=audit_pre_send, post_send_hook=audit_post_send)
    fields.update(extra)
    return AOPClient(ClientConfig(**fields))


def emit_run(client: AOPClient, events: int, label: str) -> list[str]:
    """Emit one fresh run of ``events`` custom events and log each stored id; returns the ids."""
    builder = TraceBuilder(client.config.agent_id)
    ids = []
    for n in range(events):
        result = client.emit_event(builder.create_custom(name=label, data={"n": n, "pid": os.getpid()}))
        if not result:
            raise AssertionError(f"emit_event in pid {os.getpid()} did not store: {result.reason}")
        append_line(os.environ[ENV_IDS], f"{os.getpid()} {result.event_id}\n")
        ids.append(result.event_id)
    return ids


def read_id_log(path: Path) -> list[tuple[int, str]]:
    """The (pid, event_id) pairs of an id log, in file order."""
    if not path.exists():
        return []
    return [(int(pid), eid) for pid, eid in (line.split() for line in path.read_text().splitlines())]


@dataclass(frozen=True)
class AuditLine:
    """One line of the send audit."""

    kind: str
    pid: int
    at_ns: int
    event_id: str


def read_audit(path: Path) -> list[AuditLine]:
    """The send audit's lines ordered by time."""
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        parts = raw.split()
        lines.append(AuditLine(parts[0], int(parts[1]), int(parts[2]), parts[3]))
    return sorted(lines, key=lambda a: a.at_ns)


def flusher_blocks(audit: list[AuditLine]) -> list[int]:
    """The pids of the send audit in time order, consecutive repeats collapsed."""
    return [pid for pid, _ in itertools.groupby(a.pid for a in audit)]


def assert_one_flusher_at_a_time(audit: list[AuditLine]) -> None:
    """Fail if sends of two processes interleave in time (each sender must form one contiguous block)."""
    assert audit, "the send audit is empty: nothing was ever sent"
    blocks = flusher_blocks(audit)
    assert len(blocks) == len(set(blocks)), f"two flushers sent at the same time; sender pids over time: {blocks}"


def assert_delivered_exactly_once(collector, emitted: set[str]) -> None:
    """The collector holds exactly the emitted ids, and no event was received twice."""
    held = collector.event_ids()
    assert held == emitted, (f"missing {len(emitted - held)} (e.g. {sorted(emitted - held)[:3]}), "
                             f"unexpected {len(held - emitted)}")
    assert collector.duplicate_deliveries() == 0, "an event was delivered more than once"


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(tmp_path: Path, url: str) -> dict[str, str]:
    """The environment for a helper process: the apps' settings and an import path to them."""
    env = dict(os.environ)
    env.update({ENV_URL: url, ENV_SPOOL: str(tmp_path / "spool"), ENV_AUDIT: str(tmp_path / "audit.log"),
                ENV_IDS: str(tmp_path / "ids.log"), "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO_ROOT), env.get("PYTHONPATH", "")])})
    return env


def start_process(args: list[str], env: dict[str, str], log_path: Path, **kw) -> subprocess.Popen:
    """Start a helper process in its own session, stdout and stderr into log_path."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen([sys.executable, *args], env=env, cwd=str(HERE), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, **kw)
    finally:
        log.close()


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> Optional[int]:
    """Send sig to proc (as a supervisor would), wait up to timeout, then SIGKILL its group; returns the exit code."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group (workers, pool children)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return proc.returncode


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log file, for assertion messages."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"
