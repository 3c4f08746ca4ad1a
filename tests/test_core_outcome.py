"""Tests of aop_client.core.outcome.classify: the protocol's response table, total over all inputs."""

from __future__ import annotations

import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_client.core.outcome import (
    MAX_REASON_CHARS,
    DeadLetter,
    Delivered,
    Pause,
    Retry,
    Split,
    classify,
)

EXAMPLES = settings(max_examples=int(os.environ.get("AOP_HYPOTHESIS_EXAMPLES", "200")), deadline=None)
IDS = ["e1", "e2", "e3", "e4"]
NOW = 1_700_000_000.0


def expected_kind(status: int | None, batch_len: int) -> type:
    """The protocol table, restated independently of the implementation."""
    if status is None or not 100 <= status <= 599:
        return Retry
    if 200 <= status <= 299:
        return Delivered
    if status in (401, 403) or status < 200 or 300 <= status <= 399:
        return Pause
    if status in (400, 413):
        return Split if batch_len > 1 else DeadLetter
    if status in (408, 425, 429) or status >= 500:
        return Retry
    return DeadLetter


@EXAMPLES
@given(st.one_of(st.none(), st.integers(-10, 1000)), st.lists(st.text(min_size=1, max_size=5), max_size=6, unique=True))
def test_classification_matches_the_protocol_table_for_every_status(status: int | None, ids: list[str]) -> None:
    """Every status maps to the outcome kind the protocol's table names."""
    body = orjson.dumps({"accepted": len(ids), "duplicates": 0, "rejected": []})
    outcome = classify(status, {}, body, batch_event_ids=ids, now=NOW)
    assert type(outcome) is expected_kind(status, len(ids))


@EXAMPLES
@given(
    st.integers(200, 299),
    st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
    st.binary(max_size=300),
)
def test_unreadable_2xx_is_never_an_ack(status: int, headers: dict, body: bytes) -> None:
    """A 2xx acknowledges only when its body is a well-formed batch response; otherwise Retry."""
    outcome = classify(status, headers, body, batch_event_ids=IDS, now=NOW)
    try:
        doc = orjson.loads(body)
        well_formed = isinstance(doc, dict) and type(doc.get("accepted")) is int and doc["accepted"] >= 0
    except orjson.JSONDecodeError:
        well_formed = False
    if not well_formed:
        assert isinstance(outcome, Retry)


def test_200_with_rejections_splits_delivered_and_rejected() -> None:
    """Events listed in rejected are dead-lettered with their reason; all others are delivered."""
    body = orjson.dumps({"accepted": 2, "duplicates": 1, "rejected": [{"event_id": "e2", "reason": "bad sig"}]})
    outcome = classify(200, {"Content-Type": "application/json"}, body, batch_event_ids=IDS, now=NOW)
    assert outcome == Delivered(delivered_ids=("e1", "e3", "e4"), duplicates=1, rejected={"e2": "bad sig"})


def test_rejections_for_unknown_ids_are_ignored() -> None:
    """A rejected entry naming an event outside the batch changes nothing."""
    body = orjson.dumps({"accepted": 4, "rejected": [{"event_id": "zz", "reason": "?"}]})
    outcome = classify(200, {}, body, batch_event_ids=IDS, now=NOW)
    assert outcome == Delivered(delivered_ids=tuple(IDS), duplicates=0, rejected={})


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>ok</html>", b"[]", b'{"accepted": "4"}', b'{"accepted": -1}', b'{"accepted": true}',
     b'{"accepted": 4, "rejected": {}}', b'{"accepted": 4, "rejected": ["e1"]}',
     b'{"accepted": 4, "duplicates": 1.5}', b'{"accepted": 4, "rejected": [{"reason": "x"}]}'],
)
def test_malformed_2xx_bodies_retry(body: bytes) -> None:
    """Garbage, wrong shapes and malformed rejected entries in a 2xx are a Retry, never an ack."""
    outcome = classify(200, {"Content-Type": "text/html"}, body, batch_event_ids=IDS, now=NOW)
    assert isinstance(outcome, Retry) and outcome.status == 200


def test_retry_after_header_is_read_case_insensitively() -> None:
    """429 with 'retry-after: 7' gives a Retry whose floor is 7 seconds."""
    outcome = classify(429, {"rEtRy-AfTeR": "7"}, b"slow down", batch_event_ids=IDS, now=NOW)
    assert outcome == Retry(reason="HTTP 429: slow down", retry_after=7.0, status=429)


def test_connection_error_reason_is_kept() -> None:
    """status None carries the transport's reason into the Retry."""
    outcome = classify(None, {}, b"", batch_event_ids=IDS, now=NOW, error="read timeout")
    assert isinstance(outcome, Retry) and "read timeout" in outcome.reason and outcome.status is None


def test_huge_reason_text_is_truncated() -> None:
    """Reasons (from error bodies or rejected entries) never exceed MAX_REASON_CHARS."""
    body = orjson.dumps({"accepted": 0, "rejected": [{"event_id": "e1", "reason": "x" * 10_000}]})
    delivered = classify(200, {}, body, batch_event_ids=["e1"], now=NOW)
    failed = classify(503, {}, b"y" * 100_000, batch_event_ids=["e1"], now=NOW)
    assert isinstance(delivered, Delivered) and len(delivered.rejected["e1"]) == MAX_REASON_CHARS
    assert isinstance(failed, Retry) and len(failed.reason) <= MAX_REASON_CHARS


@EXAMPLES
@given(st.lists(st.sampled_from(IDS), max_size=8), st.lists(st.sampled_from(IDS + ["x"]), max_size=8))
def test_delivered_and_rejected_partition_the_batch(batch: list[str], rejected: list[str]) -> None:
    """On a readable 200, each batch event is either delivered or rejected, never both, never neither."""
    body = orjson.dumps({"accepted": 0, "rejected": [{"event_id": r, "reason": "r"} for r in rejected]})
    outcome = classify(200, {}, body, batch_event_ids=batch, now=NOW)
    assert isinstance(outcome, Delivered)
    assert set(outcome.delivered_ids) | set(outcome.rejected) == set(batch)
    assert not set(outcome.delivered_ids) & set(outcome.rejected)


def test_truncated_2xx_body_is_never_read() -> None:
    """A 2xx cut at the size limit is a Retry even when the kept prefix happens to parse."""
    outcome = classify(200, {}, b'{"accepted": 1}', batch_event_ids=["e1"], now=NOW, truncated=True)
    assert isinstance(outcome, Retry) and outcome.status == 200
