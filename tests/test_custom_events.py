"""Custom events per protocol v1 section 1: the payload is the caller's object, the name is top-level ``name``.

Before, create_custom nested the caller's object under ``payload.data`` (and the
name under ``payload.name``), so the product brief's redaction hook, which looks
for ``payload["email"]``, found nothing and the e-mail address reached the disk.
"""

from __future__ import annotations

import pytest

from aop_client import AOPClient, ClientConfig, TraceBuilder, parse_toon
from aop_client.errors import ToonParseError, ValidationError
from aop_client.events import make_event

RUN_ID = "0b7ac4d4-6f50-4f52-8f0f-5b0e6c6c0a11"


def brief_redact_pii(event: dict) -> dict:
    """The product brief's redaction hook, as written there."""
    if 'payload' in event:
        payload = event['payload']
        if 'email' in payload:
            payload['email'] = '[REDACTED]'
        if 'phone' in payload:
            payload['phone'] = '[REDACTED]'
    return event


def test_create_custom_puts_the_callers_object_in_payload_and_the_name_on_top():
    """The event has top-level ``name``; its payload equals (a copy of) the caller's dict."""
    data = {"email": "jane@example.com", "tags": ("a", "b")}
    event = TraceBuilder(1, RUN_ID).create_custom("customer_contact", data)
    assert event["name"] == "customer_contact" and event["type"] == "custom"
    assert event["payload"] == {"email": "jane@example.com", "tags": ["a", "b"]}
    data["email"] = "changed@example.com"
    assert event["payload"]["email"] == "jane@example.com"  # a copy, taken at creation
    assert TraceBuilder(1, RUN_ID).create_custom("empty")["payload"] == {}


def test_the_brief_hook_redacts_a_custom_event_before_the_server_and_the_disk(tmp_path, aop_collector):
    """emit_event with the brief's hook: the collector and every spool file see no e-mail address."""
    client = AOPClient(ClientConfig(api_key=aop_collector.api_key, org_salt_key=aop_collector.org_salt_key,
                                    base_url=aop_collector.url, agent_id=7, spool_dir=str(tmp_path / "spool"),
                                    redaction_hook=brief_redact_pii))
    event = client.trace_builder.create_custom("customer_contact", {"email": "jane@example.com", "note": "hi"})
    assert client.emit_event(event)
    assert client.flush(timeout=20)
    client.stop(timeout=5)
    [stored] = aop_collector.events(event["run_id"])
    assert stored["name"] == "customer_contact"
    assert stored["payload"] == {"email": "[REDACTED]", "note": "hi"}
    files = [path for path in (tmp_path / "spool").rglob("*") if path.is_file()]
    assert files and not any(b"jane@example.com" in path.read_bytes() for path in files)


@pytest.mark.parametrize("name,problem", [(None, "top-level"), ("", "non-empty"), (5, "non-empty")])
def test_emit_event_refuses_a_custom_event_without_a_string_name(tmp_path, name, problem):
    """A hand-built custom event needs its top-level name: ValidationError naming ``name``, nothing stored."""
    client = AOPClient(ClientConfig(api_key="k", base_url="http://127.0.0.1:9", agent_id=1,
                                    spool_dir=str(tmp_path / "spool")))
    event = make_event(run_id=RUN_ID, agent_id=1, seq=1, type="custom", payload={"k": 1}, now=0.0)
    if name is not None:
        event["name"] = name
    with pytest.raises(ValidationError, match=problem) as info:
        client.emit_event(event)
    assert info.value.field == "name" and client.get_stats()["pending"] == 0


def test_parse_toon_reads_older_custom_events_and_checks_a_given_name():
    """Files written before the top-level name still read; a name that is not a string is refused."""
    old = '{"seq": 1, "t": "2025-12-05T10:00:00Z", "type": "custom", "payload": {"name": "n", "data": 1}}'
    assert parse_toon(old)["payload"] == {"name": "n", "data": 1}
    with pytest.raises(ToonParseError, match="name"):
        parse_toon('{"seq": 1, "t": "2025-12-05T10:00:00Z", "type": "custom", "name": 3, "payload": {}}')
