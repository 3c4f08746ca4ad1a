"""Fuzz harness: hostile bodies and headers sent to the reference collector's batch route over loopback.

Invariant: every request gets a 2xx or 4xx answer (200, 400, 401, 413) within
the client timeout, never a 500 (an unhandled exception in a handler) and
never a hang; a 200 answer has the protocol's shape and accounts for every
event of the batch. Run more: AOP_FUZZ_EXAMPLES=20000 python -m pytest fuzz/fuzz_collector_batch.py
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import time
import uuid
from urllib.parse import urlsplit

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aop_client.collector import CollectorConfig, start_collector
from aop_client.signing import request_signature, sign_event
from aop_client.testing import TEST_API_KEY, TEST_ORG_SALT_KEY

FUZZ = settings(
    max_examples=int(os.environ.get("AOP_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ALLOWED = {200, 400, 401, 413}
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    """One collector for the whole harness (each example is an independent request)."""
    db = str(tmp_path_factory.mktemp("fuzz_collector") / "c.sqlite3")
    running = start_collector(CollectorConfig(api_key=TEST_API_KEY, org_salt_key=TEST_ORG_SALT_KEY, port=0,
                                              db_path=db, max_body_bytes=256 * 1024,
                                              max_decompressed_bytes=512 * 1024))
    yield running
    try:
        assert not [r for r in running.request_log() if r["status"] is not None and r["status"] >= 500]
    finally:
        running.stop()


def _send(collector, wire: bytes, headers: dict) -> tuple[int, bytes]:
    parts = urlsplit(collector.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        conn.request("POST", "/api/v1/traces/batch", body=wire, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def _check_answer(status: int, raw: bytes, events: object = None) -> None:
    assert status in ALLOWED, (status, raw[:300])
    body = orjson.loads(raw)
    if status != 200:
        assert isinstance(body["error"], str) and body["error"]
        return
    assert set(body) == {"accepted", "duplicates", "rejected"}
    assert all(set(r) == {"event_id", "reason"} and isinstance(r["reason"], str) for r in body["rejected"])
    if isinstance(events, list):
        assert body["accepted"] + body["duplicates"] + len(body["rejected"]) == len(events)


def _event_variants(draw_event: dict, mutation: dict) -> dict:
    merged = dict(draw_event)
    merged.update(mutation)
    return merged


@FUZZ
@given(
    body=st.binary(max_size=2048) | JSON.map(lambda value: json.dumps(value).encode()),
    authorization=st.sampled_from([None, f"Bearer {TEST_API_KEY}", "Bearer x", "Basic abc"]) | HEADER_TEXT,
    encoding=st.sampled_from([None, "gzip", "identity", "br", "GZIP"]) | HEADER_TEXT,
    compress=st.booleans(),
    signature=st.sampled_from(["valid", "missing", "stale"]) | HEADER_TEXT,
    idempotency=st.none() | HEADER_TEXT,
)
def test_arbitrary_requests_get_a_4xx_or_2xx(collector, body, authorization, encoding, compress, signature,
                                             idempotency) -> None:
    """Arbitrary bytes, encodings and header values never make the batch route fail with 5xx or hang."""
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if signature == "valid":
        headers["X-AOP-Signature"] = request_signature(body, TEST_ORG_SALT_KEY, now=time.time())
    elif signature == "stale":
        headers["X-AOP-Signature"] = request_signature(body, TEST_ORG_SALT_KEY, now=time.time() - 1000)
    elif signature != "missing":
        headers["X-AOP-Signature"] = signature
    if idempotency is not None:
        headers["Idempotency-Key"] = idempotency
    wire = gzip.compress(body) if compress else body
    status, raw = _send(collector, wire, headers)
    _check_answer(status, raw)


FIELDS = st.sampled_from(["event_id", "run_id", "agent_id", "seq", "t", "type", "payload", "sig", "extra"])


@FUZZ
@given(
    batch_id=JSON | st.text(min_size=1, max_size=40),
    events=st.lists(
        st.one_of(
            JSON,
            st.tuples(st.integers(1, 5), st.dictionaries(FIELDS, JSON, max_size=3), st.booleans()),
        ),
        max_size=8,
    ),
    gzip_body=st.booleans(),
)
def test_authorized_signed_batches_of_hostile_events(collector, batch_id, events, gzip_body) -> None:
    """Correctly authorized and signed batches with hostile events get 200 (accounting for each) or 400."""
    run_id = str(uuid.uuid4())
    built = []
    for item in events:
        if isinstance(item, tuple):
            seq, mutation, resign = item
            base = {"event_id": str(uuid.uuid4()), "run_id": run_id, "agent_id": 1, "seq": seq,
                    "t": "2025-12-05T10:00:00.000Z", "type": "custom", "name": "fuzz", "payload": {}}
            event = _event_variants(sign_event(base, TEST_ORG_SALT_KEY), mutation)
            if resign:
                try:
                    event = sign_event({k: v for k, v in event.items() if k != "sig"}, TEST_ORG_SALT_KEY)
                except Exception:  # noqa: BLE001 - unsignable content (NaN, big ints): send as is
                    pass
            built.append(event)
        else:
            built.append(item)
    body = json.dumps({"batch_id": batch_id, "events": built}).encode()  # stdlib: ints beyond 64 bits too
    headers = {"Authorization": f"Bearer {TEST_API_KEY}",
               "X-AOP-Signature": request_signature(body, TEST_ORG_SALT_KEY, now=time.time())}
    wire = body
    if gzip_body:
        wire = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    status, raw = _send(collector, wire, headers)
    assert status in (200, 400), (status, raw[:300])
    _check_answer(status, raw, built if status == 200 else None)
