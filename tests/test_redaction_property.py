"""Redaction runs before the disk: no redacted value appears in any file the client writes."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aop_client import AOPClient, ClientConfig
from aop_client.collector import FaultConfig
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY, wait_until

MARK = "PII\u2063"  # an invisible separator: no random byte sequence in a file produces it by chance

secrets = st.text(min_size=4, max_size=30).map(lambda s: MARK + s)
json_leaf = st.one_of(st.integers(-1000, 1000), st.booleans(), st.text(max_size=10))


def payload_with(pii: list[str]) -> st.SearchStrategy:
    """Nested payloads where each secret sits somewhere as a value or inside a longer string."""
    placed = st.sampled_from(pii).flatmap(
        lambda s: st.sampled_from([s, f"contact {s} today", s.upper()]))
    node = st.recursive(st.one_of(json_leaf, placed),
                        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                        max_leaves=8)
    return st.dictionaries(st.sampled_from(["email", "notes", "steps", "data"]), node, min_size=1)


def scrub(value):
    """The test's redaction hook: any string holding the marker becomes [REDACTED]."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str) and MARK.lower() in value.lower():
        return "[REDACTED]"
    return value


def redact(event: dict) -> dict:
    event["payload"] = scrub(event["payload"])
    return event


def all_file_bytes(*roots: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def failing_collector(tmp_path_factory):
    """A collector that answers 503 to every batch, so events end in fallback files."""
    from aop_client.collector import CollectorConfig, start_collector

    collector = start_collector(CollectorConfig(
        api_key=TEST_API_KEY, org_salt_key=TEST_ORG_SALT_KEY, port=0,
        db_path=str(tmp_path_factory.mktemp("redaction") / "c.sqlite3"),
        faults=FaultConfig(rate_503=1.0, retry_after=None)))
    yield collector
    collector.stop()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(data=st.data(), pii=st.lists(secrets, min_size=1, max_size=3, unique=True))
def test_no_redacted_value_in_any_file(failing_collector, data, pii):
    """Spool, replay and fallback files never contain a redacted value, in any encoding."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        client = AOPClient(ClientConfig(
            api_key=TEST_API_KEY, org_salt_key=TEST_ORG_SALT_KEY, base_url=failing_collector.url,
            spool_dir=str(root / "spool"), batch_interval=0.01, max_retries=1,
            retry_backoff_base=0.001, retry_backoff_max=0.002, redaction_hook=redact,
            enable_local_replay=True, replay_dir=str(root / "replay"),
            enable_local_fallback=True, local_fallback_dir=str(root / "fallback")))
        client.start()
        for payload in data.draw(st.lists(payload_with(pii), min_size=1, max_size=4)):
            payload["email"] = pii[0]
            assert client.emit_event(client.trace_builder.create_custom("contact", payload))
        wait_until(lambda: list((root / "fallback").glob("fallback_*.json")), timeout=10)
        assert client.stop(timeout=5, flush=False) is False
        files = all_file_bytes(root / "spool", root / "replay", root / "fallback")
        assert any(p.parent.name == "replay" for p, _ in files)
        forms = set()
        for secret in pii:
            for text in (secret, secret.upper()):
                forms |= {text.encode(), json.dumps(text)[1:-1].encode(),
                          json.dumps(text, ensure_ascii=False)[1:-1].encode()}
        for path, blob in files:
            for form in forms:
                assert form not in blob, (path, form)
        assert any(b"[REDACTED]" in blob for _, blob in files)
