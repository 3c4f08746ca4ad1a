"""Every Python snippet of the product brief runs as written against the reference collector.

The brief is vendored in tests/brief/product-brief.md (and checked against
../shared/product-brief.md when that exists). Each ```python block is run in a
fresh namespace, in a temporary working directory with a private state home.
The only edits are the documented ones in SUBSTITUTIONS: the server address
points at a live collector, and the brief's `...` placeholders are filled in.
Blocks that continue the text before them get the brief's own imports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import orjson
import pytest

from aop_client.signing import verify_event
from aop_client.testing import wait_until

ROOT = Path(__file__).resolve().parent.parent
VENDORED = ROOT / "tests" / "brief" / "product-brief.md"
SHARED = ROOT.parent / "shared" / "product-brief.md"
BLOCKS = re.findall(r"```python\n(.*?)```", VENDORED.read_text(), re.S)

BRIEF_API_KEY = "aop_your_api_key_here"
BRIEF_SALT = "your_org_salt_key"
PRELUDE = "from aop_client import AOPClient, ClientConfig\n"

# (block index, text in the brief, replacement): the placeholders the brief leaves open.
SUBSTITUTIONS = [
    (2, "builder.create_reasoning(...)",
     'builder.create_reasoning(goal="Stream a run", steps=[], safety_checks=[], uncertainty="low")'),
    (7, "# ... emit events ...",
     'client.emit_event(client.trace_builder.create_final_output(text="done"))'),
    (8, "# ... emit events ...",
     'client.emit_event(client.trace_builder.create_final_output(text="done"))'),
    (10, '"t": "2025-12-05T10:00:00Z", ...}',
     '"t": "2025-12-05T10:00:00Z", "type": "custom", "name": "demo", "payload": {}}'),
]


def snippet(index: int, url: str = "http://localhost:8000", ws_url: str | None = None) -> str:
    """Block `index` of the brief with the documented substitutions and the server address."""
    code = BLOCKS[index]
    for block, old, new in SUBSTITUTIONS:
        if block == index:
            assert old in code, f"placeholder {old!r} no longer in block {index}"
            code = code.replace(old, new)
    code = code.replace("ws://localhost:8000/ws/trace/", ws_url or "ws://localhost:8000/ws/trace/")
    code = code.replace("http://localhost:8000", url)
    if not code.lstrip().startswith("from "):
        code = PRELUDE + code
    return code


def run_block(index: int, **kwargs) -> dict:
    """Execute one block in a fresh namespace and return the namespace."""
    namespace: dict = {"__name__": f"brief_block_{index}"}
    exec(compile(snippet(index, **kwargs), f"<brief block {index}>", "exec"), namespace)
    return namespace


@pytest.fixture(autouse=True)
def private_places(tmp_path, monkeypatch):
    """Run each block in its own directory with its own default spool location."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def test_vendored_brief_matches_the_shared_one():
    """The vendored copy is the brief itself (checked when ../shared is present, as in CI)."""
    assert len(BLOCKS) == 11
    if SHARED.exists():
        assert VENDORED.read_text() == SHARED.read_text()


def test_passive_mode_snippet(aop_collector_factory):
    """Passive mode: the three events reach the server signed with the brief's salt key."""
    collector = aop_collector_factory(api_key=BRIEF_API_KEY, org_salt_key=BRIEF_SALT)
    ns = run_block(0, url=collector.url)
    run_id = ns["builder"].run_id
    events = collector.events(run_id=run_id)
    assert [e["type"] for e in events] == ["reasoning", "action_request", "final_output"]
    for event in events:
        verify_event(event, BRIEF_SALT)
        assert event["agent_id"] == 123


def test_active_mode_snippet():
    """Active mode: get_trace and get_trace_json return the two created events."""
    ns = run_block(1)
    assert [e["seq"] for e in ns["trace"]] == [1, 2]
    assert json.loads(ns["trace_json"]) == ns["trace"]


def test_hybrid_mode_snippet(aop_collector_factory):
    """Hybrid mode: the streamed and batched event reaches the server exactly once."""
    collector = aop_collector_factory(api_key=BRIEF_API_KEY, org_salt_key=None)
    ws_url = collector.url.replace("http://", "ws://") + "/ws/trace/"
    ns = run_block(2, url=collector.url, ws_url=ws_url)
    run_id = ns["base_client"].trace_builder.run_id
    wait_until(lambda: collector.events(run_id=run_id), timeout=10)
    assert [e["type"] for e in collector.events(run_id=run_id)] == ["reasoning"]


def test_configuration_snippets(monkeypatch):
    """From code and from the environment: the values the brief shows."""
    config = run_block(3)["config"]
    assert (config.batch_size, config.max_buffer_size, config.replay_dir) == (100, 1000, "./aop_replay")
    for name, value in [("AOP_API_KEY", "aop_x"), ("AOP_BASE_URL", "http://localhost:8000"),
                        ("AOP_AGENT_ID", "123"), ("AOP_BATCH_SIZE", "100"),
                        ("AOP_ENABLE_STREAMING", "true"),
                        ("AOP_STREAMING_URL", "ws://localhost:8000/ws/trace/")]:
        monkeypatch.setenv(name, value)
    config = run_block(4)["config"]
    assert (config.agent_id, config.enable_streaming) == (123, True)


def test_redaction_and_send_hook_snippets(capsys):
    """The brief's redaction hook removes the e-mail before the event is stored."""
    ns = run_block(5)
    client = ns["AOPClient"](ns["config"])
    # As a user writes it: the custom event's payload is the caller's object (protocol v1 section 1).
    event = client.trace_builder.create_custom("contact", {"email": "jane@example.com", "phone": "555", "note": "ok"})
    result = client.emit_event(event)
    assert result and b"jane@example.com" not in result.body and b"555" not in result.body
    assert orjson.loads(result.body)["payload"] == {"email": "[REDACTED]", "phone": "[REDACTED]", "note": "ok"}
    spool_files = [path for path in Path(client.config.spool_path).rglob("*") if path.is_file()]
    assert spool_files and not any(b"jane@example.com" in path.read_bytes() for path in spool_files)
    ns = run_block(6)
    ns["config"].pre_send_hook({"seq": 4})
    ns["config"].post_send_hook({"seq": 4}, True)
    assert "Sending event seq=4" in capsys.readouterr().out


def test_replay_snippet(tmp_path):
    """The replay snippet writes a file in ./replays in the documented format."""
    ns = run_block(7)
    files = list((tmp_path / "replays").glob("replay_*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["event_count"] == 1 and doc["run_id"] == ns["client"].trace_builder.run_id
    assert set(doc["metadata"]) >= {"agent_id", "seed", "stats"}


def test_fallback_snippet():
    """The fallback snippet builds a client whose events wait on disk."""
    ns = run_block(8)
    assert ns["client"].get_stats()["pending"] == 1


def test_toon_helper_snippets():
    """ToonBuilder payloads and parse_toon/to_toon behave as the brief shows."""
    ns = run_block(9)
    assert ns["reasoning"]["goal"] == "Analyze customer request"
    assert ns["action_req"]["action"] == "search_database"
    ns = run_block(10)
    assert ns["event"]["seq"] == 1
    assert ns["parse_toon"](ns["toon_str"]) == ns["event"]
