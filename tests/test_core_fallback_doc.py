"""Tests of aop_client.core.fallback_doc: the fallback file's bytes and name."""

from __future__ import annotations

import os
import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client.core.fallback_doc import fallback_document, fallback_file_name, is_file_name_safe
from aop_client.errors import ValidationError

EXAMPLES = settings(max_examples=int(os.environ.get("AOP_HYPOTHESIS_EXAMPLES", "200")), deadline=None)


@EXAMPLES
@given(st.lists(st.integers(1, 10**6), unique=True, max_size=30), st.floats(0, 4e9))
def test_document_holds_the_stored_bodies_in_seq_order(seqs: list[int], now: float) -> None:
    """The document parses to the replay shape with every body unchanged, sorted by seq."""
    pairs = [(seq, orjson.dumps({"seq": seq, "sig": f"v1={seq:064x}"})) for seq in seqs]
    doc = orjson.loads(fallback_document("run-1", pairs, {"agent_id": 5, "reason": "max_retries"}, now=now))
    assert set(doc) == {"run_id", "timestamp", "event_count", "metadata", "events"}
    assert doc["run_id"] == "run-1" and doc["event_count"] == len(seqs)
    assert [e["seq"] for e in doc["events"]] == sorted(seqs)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["timestamp"])


def test_file_name_follows_the_documented_pattern() -> None:
    """fallback_<run_id>_<stamp>.json with a UTC stamp in milliseconds, and -n to avoid clashes."""
    run_id = "550e8400-e29b-41d4-a716-446655440000"
    assert fallback_file_name(run_id, 1_764_930_600.123) == f"fallback_{run_id}_20251205T103000.123Z.json"
    assert fallback_file_name(run_id, 1_764_930_600.123, 2) == f"fallback_{run_id}_20251205T103000.123Z-2.json"


@pytest.mark.parametrize("run_id", ["../etc", "a/b", "", ".hidden", "x" * 200, "a..b", "nul\x00"])
def test_unsafe_run_ids_are_refused(run_id: str) -> None:
    """A run_id that could escape the folder or is not a plain name is refused."""
    assert not is_file_name_safe(run_id)
    with pytest.raises(ValidationError):
        fallback_file_name(run_id, 0.0)
