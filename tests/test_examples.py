"""Every script in examples/ runs against the reference collector and delivers its events."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aop_client.signing import verify_event
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str, env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run examples/<name> as a real process; fail with its output if it exits non-zero."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env, cwd=env["HOME"],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def example_env(tmp_path, aop_collector):
    """Environment of an example process: the collector, its keys and a private spool."""
    env = dict(os.environ)
    env.update(AOP_BASE_URL=aop_collector.url, AOP_API_KEY=TEST_API_KEY,
               AOP_ORG_SALT_KEY=TEST_ORG_SALT_KEY, AOP_SPOOL_DIR=str(tmp_path / "spool"),
               AOP_BATCH_INTERVAL="0.05", HOME=str(tmp_path),
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def test_every_example_is_tested():
    """The examples folder holds exactly the scripts this module runs."""
    assert {p.name for p in EXAMPLES.glob("*.py")} == {
        "passive_mode.py", "active_mode.py", "hybrid_mode.py", "custom_hooks.py", "serverless.py"}


@pytest.mark.parametrize("name, count", [("passive_mode.py", 4), ("hybrid_mode.py", 3),
                                         ("custom_hooks.py", 2)])
def test_pushing_examples_deliver_signed_events(name, count, example_env, aop_collector):
    """The pushing examples deliver all their events, signed with the configured key."""
    run_example(name, example_env)
    events = aop_collector.events()
    assert len(events) == count
    for event in events:
        verify_event(event, TEST_ORG_SALT_KEY)


def test_custom_hooks_example_redacts_before_storage(example_env, aop_collector, tmp_path):
    """The e-mail address never reaches the server nor any file of the spool."""
    out = run_example("custom_hooks.py", example_env).stdout
    assert "sent successfully" in out
    assert "jane.doe@example.com" not in str(aop_collector.events())
    for path in (tmp_path / "spool").rglob("*"):
        if path.is_file():
            assert b"jane.doe@example.com" not in path.read_bytes(), path


def test_active_example_prints_trace_without_server(example_env, aop_collector):
    """The active example needs no server and prints JSON and TOON."""
    example_env["AOP_BASE_URL"] = "http://127.0.0.1:9"
    out = run_example("active_mode.py", example_env).stdout
    assert '"seq": 4' in out and "final_output" in out
    assert aop_collector.events() == []


def test_serverless_events_are_delivered_by_a_later_process(example_env, aop_collector):
    """Invocations exit without network; a later drain delivers everything."""
    run_ids = [run_example("serverless.py", example_env, "emit", f"q{i}").stdout.strip()
               for i in range(3)]
    assert aop_collector.events() == []
    run_example("serverless.py", example_env, "drain")
    for run_id in run_ids:
        assert [e["seq"] for e in aop_collector.events(run_id=run_id)] == [1, 2]
