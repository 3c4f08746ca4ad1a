"""No event content in error text: hook errors are reported by exception type and hook name only.

Events carrying a unique marker are dropped by the redaction hook (one raises
quoting it, one returns an invalid envelope that quotes it, so the
ValidationError's text does too); the pre/post send hooks raise quoting another
marker. With replay and fallback files on, every file under the test's folders
(spool, replay, fallback, HOME) and the log (DEBUG, every logger) is searched:
no marker anywhere, and none in get_stats() or last_error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from aop_client import AOPClient, ClientConfig, ValidationError
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY
from test_cli import closed_port_url

MARKER = "alice-9f3c@example.com"  # only ever in events the redaction hook drops
SEND_MARKER = "bob-77aa@example.com"  # quoted by the send hooks' exceptions (not in any event)


def redact(event: dict) -> dict:
    email = event["payload"].get("params", {}).get("email")
    if email == MARKER and event["payload"]["params"].get("how") == "raise":
        return int(email)  # ValueError: invalid literal for int() with base 10: 'alice-9f3c@example.com'
    if email == MARKER:
        return {**event, "seq": email}  # invalid: "seq: expected an integer >= 1, got 'alice-...'"
    return event


def pre_send(event: dict) -> None:
    raise RuntimeError(f"pre_send_hook cannot handle {SEND_MARKER!r}")


def post_send(event: dict, success: bool) -> None:
    raise KeyError(SEND_MARKER)


def files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path) and needle in Path(path).read_bytes():
                hits.append(path)
    return hits


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    return home


def test_no_marker_in_any_file_log_or_stats(tmp_path: Path, home: Path, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: every logger's records
    client = AOPClient(ClientConfig(
        api_key=TEST_API_KEY, org_salt_key=TEST_ORG_SALT_KEY, base_url=closed_port_url(), agent_id=9,
        spool_dir=str(tmp_path / "spool"), batch_interval=0.01, retry_backoff_base=0.005, retry_backoff_max=0.02,
        max_retries=1, enable_local_replay=True, replay_dir=str(tmp_path / "replay"),
        enable_local_fallback=True, local_fallback_dir=str(tmp_path / "fallback"),
        redaction_hook=redact, pre_send_hook=pre_send, post_send_hook=post_send))
    b = client.trace_builder
    kept = [client.emit_event(b.create_action_request(action="lookup", params={"i": i})) for i in range(3)]
    raised = client.emit_event(b.create_action_request(action="lookup", params={"email": MARKER, "how": "raise"}))
    assert client.get_stats()["last_error"] == "redaction_error: redaction_hook raised ValueError"
    invalid = client.emit_event(b.create_action_request(action="lookup", params={"email": MARKER}))
    assert client.get_stats()["last_error"] == (
        "redaction_error: redaction_hook returned an invalid envelope (ValidationError)")
    assert all(kept) and not raised and not invalid
    assert raised.reason == invalid.reason == "redaction_error"
    # a ValidationError on emit may quote the value: it is raised to the caller, never logged or kept
    bad = b.create_action_request(action="lookup", params={})
    with pytest.raises(ValidationError, match=MARKER):
        client.emit_event({**bad, "type": MARKER})

    assert client.flush(timeout=1.0) is False  # nothing listens: parked, fallback files written
    stats = client.get_stats()
    assert stats["hook_errors"] >= 3 and stats["dropped"]["redaction_error"] == 2
    assert client.stop(timeout=5) is False  # writes the replay file (metadata.stats)

    assert list((tmp_path / "replay").glob("replay_*.json")), "the replay file must exist"
    assert list((tmp_path / "fallback").glob("fallback_*.json")), "a fallback file must exist"
    assert (tmp_path / "spool" / "last_error.json").exists()
    for marker in (MARKER, SEND_MARKER):
        assert files_containing(tmp_path, marker.encode()) == []
        assert marker not in caplog.text
        assert not [r for r in caplog.records if marker in r.getMessage() or marker in str(r.args)]
        assert marker not in repr(client.get_stats())
    hook_lines = [r.getMessage() for r in caplog.records if "hook" in r.getMessage() and r.levelno >= logging.WARNING]
    assert any("redaction_hook" in line and "ValueError" in line for line in hook_lines), hook_lines
    assert any("pre_send_hook raised RuntimeError" in line for line in hook_lines), hook_lines
    assert any("post_send_hook raised KeyError" in line for line in hook_lines), hook_lines


def _not_json_results(event: dict) -> list:
    deep: Any = [MARKER]
    for _ in range(200):
        deep = [deep]
    payload = event["payload"]
    return [
        {**event, "payload": {**payload, "n": {MARKER}}},  # a set
        {**event, "payload": {**payload, "n": 2**53, "who": MARKER}},  # over the protocol's integer bound
        {**event, "payload": {**payload, "n": deep}},  # 200 levels
    ]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["set", "2**53", "200-levels"])
def test_a_hook_result_that_is_not_json_is_dropped_without_quoting_it(
        tmp_path: Path, home: Path, caplog: Any, which: int) -> None:
    caplog.set_level(logging.DEBUG)

    def hook(event: dict) -> dict:
        return _not_json_results(event)[which]

    client = AOPClient(ClientConfig(
        api_key=TEST_API_KEY, org_salt_key=TEST_ORG_SALT_KEY, base_url=closed_port_url(), agent_id=9,
        spool_dir=str(tmp_path / "spool"), redaction_hook=hook))
    try:
        result = client.emit_event(client.trace_builder.create_action_request(action="lookup", params={}))
        assert not result and result.reason == "redaction_error"
        stats = client.get_stats()
        assert stats["dropped"]["redaction_error"] == 1
        assert stats["last_error"] == "redaction_error: redaction_hook returned an invalid envelope (ValidationError)"
        assert MARKER not in repr(stats)
    finally:
        client.stop(timeout=2)
    assert files_containing(tmp_path, MARKER.encode()) == []
    assert MARKER not in caplog.text
    assert not [r for r in caplog.records if MARKER in r.getMessage() or MARKER in str(r.args)]
