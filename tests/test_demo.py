"""`aop demo` and aop_client.demo: several agent processes, a SIGKILLed flusher, and a summary with 0 lost."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from aop_client.demo import Progress, Summary, run_demo
from test_cli import EXIT_BAD_INPUT, PROPS, assert_error_line, env, run_aop  # noqa: F401  (env is a fixture)


def test_aop_demo_small_run_loses_nothing(env: dict[str, str]) -> None:
    """The CI-sized demo exits 0 and its own JSON summary says: every emitted event delivered, 0 lost,
    the flusher was SIGKILLed and another process took over."""
    result = run_aop("demo", "--workers", "2", "--events", "60", "--seed", "3", "--json", env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True and summary["lost"] == 0
    assert summary["planned"] == 120 and summary["emitted"] == 120 and summary["delivered"] == 120
    assert summary["killed_pid"] and summary["takeover_s"] is not None and summary["takeover_s"] > 0
    assert summary["duplicates_absorbed"] >= 0 and summary["throughput"] > 0


def test_run_demo_reports_progress_and_cleans_up(tmp_path: Path, monkeypatch) -> None:
    """run_demo (importable) feeds monotone progress snapshots, ends with everything delivered, and removes
    its temporary directory."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[Progress] = []
    summary = run_demo(2, 30, seed=11, timeout=120, on_progress=seen.append)
    assert summary.ok and summary.lost == 0 and summary.delivered == summary.emitted == 60
    assert summary.killed_pid is not None
    emitted = [p.emitted for p in seen]
    assert emitted == sorted(emitted) and seen[-1].delivered == 60 and seen[-1].planned == 60
    assert any(p.phase.startswith("killed flusher pid") for p in seen)
    assert list(tmp_path.iterdir()) == []


def test_demo_bad_sizes_are_usage_errors(env: dict[str, str]) -> None:
    """--workers 0 or a non-number for --events: exit 2 with one line."""
    assert_error_line(run_aop("demo", "--workers", "0", env=env), EXIT_BAD_INPUT, "--workers")
    assert_error_line(run_aop("demo", "--events", "many", env=env), EXIT_BAD_INPUT, "many")


@PROPS
@given(st.integers(0, 500), st.integers(0, 500), st.integers(0, 50))
def test_summary_ok_means_nothing_missing(emitted: int, delivered: int, lost: int) -> None:
    """Summary.ok holds exactly when nothing is lost and every emitted event was delivered."""
    s = Summary(workers=1, planned=emitted, emitted=emitted, delivered=delivered, duplicates_absorbed=0, lost=lost,
                throughput=1.0, takeover_s=None, killed_pid=None, elapsed_s=1.0)
    assert s.ok == (lost == 0 and delivered == emitted)
    assert s.to_dict()["ok"] == s.ok and set(s.to_dict()) >= {"emitted", "delivered", "lost", "takeover_s"}
