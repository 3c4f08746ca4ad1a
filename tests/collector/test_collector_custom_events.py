"""The reference collector holds custom events to protocol v1 section 1: a non-empty top-level string ``name``."""

from __future__ import annotations

from aop_client.collector.protocol import event_refusal
from aop_client.events import make_event
from aop_client.signing import sign_event
from collector_helpers import post_batch

RUN_ID = "0b7ac4d4-6f50-4f52-8f0f-5b0e6c6c0a11"


def test_the_reference_collector_rejects_a_custom_event_without_a_name(aop_collector):
    """A signed custom event without ``name`` is rejected (reason naming it); with a name it is accepted."""
    base = dict(make_event(run_id=RUN_ID, agent_id=7, seq=1, type="custom", payload={"k": 1}, now=0.0))
    named = sign_event(dict(base, name="n", seq=2), aop_collector.org_salt_key)
    unnamed = sign_event(base, aop_collector.org_salt_key)
    assert event_refusal(unnamed, None).startswith("name:")
    status, answer, _ = post_batch(aop_collector, [unnamed, named])
    assert status == 200 and answer["accepted"] == 1
    assert [r["event_id"] for r in answer["rejected"]] == [unnamed["event_id"]]
    assert "name" in answer["rejected"][0]["reason"]
