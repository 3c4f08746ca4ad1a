"""Protocol v1 section 2 conformance of the reference collector: auth, signatures, bodies, dedupe."""

from __future__ import annotations

import gzip
import threading
import time
import uuid

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aop_client.signing import sign_event
from collector_helpers import batch_body, make_event, make_run, post, post_batch

BATCH = "/api/v1/traces/batch"
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_signed_batch_is_accepted_and_stored_as_sent(aop_collector) -> None:
    """Every valid signed event is accepted and the stored envelope equals the sent one."""
    run_id, events = make_run(5, aop_collector.org_salt_key)
    status, answer, _ = post_batch(aop_collector, events)
    assert status == 200
    assert answer == {"accepted": 5, "duplicates": 0, "rejected": []}
    assert aop_collector.events(run_id) == events
    assert aop_collector.event_ids() == {e["event_id"] for e in events}


@pytest.mark.parametrize("gzip_body", [False, True])
def test_gzip_and_identity_bodies_are_equivalent(aop_collector, gzip_body: bool) -> None:
    """A gzip body (signature over the uncompressed bytes) is accepted exactly like identity."""
    run_id, events = make_run(3, aop_collector.org_salt_key)
    status, answer, _ = post_batch(aop_collector, events, gzip_body=gzip_body)
    assert (status, answer["accepted"]) == (200, 3)
    assert aop_collector.events(run_id) == events


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-key", "Basic aop-test-api-key", "bearer  "],
)
def test_missing_or_wrong_api_key_is_401_and_nothing_stored(aop_collector, authorization) -> None:
    """Without the right Bearer key the batch is refused with 401 and no event is stored."""
    _run_id, events = make_run(2, aop_collector.org_salt_key)
    headers = {"Authorization": authorization} if authorization is not None else {}
    status, answer, _ = post_batch(aop_collector, events, api_key=None, headers=headers)
    assert status == 401 and "error" in answer
    assert aop_collector.event_ids() == set()


def test_right_key_lowercase_scheme_is_accepted(aop_collector) -> None:
    """The Bearer scheme is case-insensitive (RFC 7235)."""
    _run_id, events = make_run(1, aop_collector.org_salt_key)
    status, _, _ = post_batch(aop_collector, events, api_key=None,
                              headers={"Authorization": f"bearer {aop_collector.api_key}"})
    assert status == 200


@pytest.mark.parametrize("skew, expected", [(-299, 200), (299, 200), (-301, 401), (301, 401), (-3600, 401)])
def test_request_signature_tolerance_is_300_seconds(aop_collector, skew: int, expected: int) -> None:
    """A request signature dated more than 300 s from the server clock is refused with 401."""
    _run_id, events = make_run(1, aop_collector.org_salt_key)
    status, answer, _ = post_batch(aop_collector, events, sig_now=time.time() + skew)
    assert status == expected, answer
    if expected == 401:
        assert "stale" in answer["error"]


def test_missing_or_wrong_request_signature_is_401(aop_collector) -> None:
    """No X-AOP-Signature, or one made with another key or over another body, is refused."""
    _run_id, events = make_run(1, aop_collector.org_salt_key)
    status, answer, _ = post_batch(aop_collector, events, salt=None)
    assert status == 401 and "X-AOP-Signature" in answer["error"]
    status, answer, _ = post_batch(aop_collector, events, salt="another-salt")
    assert status == 401 and "mismatch" in answer["error"]
    batch_id, body = batch_body(events)
    status, _, _ = post(aop_collector, BATCH, body + b" ", headers={
        "X-AOP-Signature": __import__("aop_client.signing").signing.request_signature(
            body, aop_collector.org_salt_key, now=time.time())})
    assert status == 401
    assert aop_collector.event_ids() == set()


def test_tampered_or_unsigned_events_are_rejected_individually(aop_collector) -> None:
    """Events whose sig fails are listed in rejected with a reason; the others are delivered."""
    key = aop_collector.org_salt_key
    run_id, events = make_run(4, key)
    tampered = dict(events[1], payload={"n": 999})
    unsigned = {k: v for k, v in events[2].items() if k != "sig"}
    wrong_key = sign_event({k: v for k, v in events[3].items() if k != "sig"}, "not-the-salt")
    status, answer, _ = post_batch(aop_collector, [events[0], tampered, unsigned, wrong_key])
    assert status == 200
    assert answer["accepted"] == 1 and answer["duplicates"] == 0
    rejected = {r["event_id"]: r["reason"] for r in answer["rejected"]}
    assert set(rejected) == {events[1]["event_id"], events[2]["event_id"], events[3]["event_id"]}
    assert "mismatch" in rejected[events[1]["event_id"]]
    assert "missing signature" in rejected[events[2]["event_id"]]
    assert aop_collector.event_ids() == {events[0]["event_id"]}


@pytest.mark.parametrize(
    "field, value",
    [("event_id", "not-a-uuid"), ("event_id", None), ("run_id", 12), ("agent_id", "7"), ("agent_id", True),
     ("seq", 0), ("seq", 1.5), ("t", "2025-12-05 10:00:00"), ("type", "thinking"), ("type", ["reasoning"]), ("payload", [1, 2])],
)
def test_invalid_envelope_field_is_rejected_naming_the_field(aop_collector, field: str, value) -> None:
    """An envelope with a bad field (re-signed, so only the field is wrong) is rejected naming it."""
    key = aop_collector.org_salt_key
    run_id = str(uuid.uuid4())
    good = make_event(run_id, 1, key)
    raw = {k: v for k, v in make_event(run_id, 2, None).items()}
    raw[field] = value
    bad = sign_event(raw, key)
    status, answer, _ = post_batch(aop_collector, [good, bad])
    assert status == 200 and answer["accepted"] == 1
    (rejection,) = answer["rejected"]
    assert f"events[1]: {field}" in rejection["reason"]


def test_non_object_event_is_rejected_with_null_id(aop_collector) -> None:
    """A batch element that is not an object is rejected with event_id null and its index."""
    status, answer, _ = post_batch(aop_collector, [1, "x"])
    assert status == 200 and answer["accepted"] == 0
    assert [r["event_id"] for r in answer["rejected"]] == [None, None]
    assert answer["rejected"][1]["reason"].startswith("events[1]:")


@pytest.mark.parametrize(
    "body, headers",
    [
        (b"{not json", {}),
        (b"[1, 2]", {}),
        (b'{"batch_id": "b"}', {}),
        (b'{"batch_id": "", "events": []}', {}),
        (b'{"batch_id": "b", "events": {}}', {}),
        (b'{"batch_id": "b", "events": []}', {"Idempotency-Key": "other"}),
        (b'{"batch_id": "b", "events": []}', {"Content-Encoding": "br"}),
        (b'\xff\xfe', {}),
    ],
)
def test_malformed_batches_are_400(aop_collector, body: bytes, headers: dict) -> None:
    """Bad JSON, wrong shape, unknown encoding or a disagreeing Idempotency-Key give 400 with a reason."""
    status, answer, _ = post(aop_collector, BATCH, body, headers=headers)
    assert status == 400 and answer["error"]


def test_corrupt_and_truncated_gzip_are_400(aop_collector) -> None:
    """A gzip body that does not inflate, or stops early, is 400."""
    _, body = batch_body([])
    packed = gzip.compress(body)
    for wire in (b"\x1f\x8b garbage", packed[:-6]):
        status, answer, _ = post(aop_collector, BATCH, wire, salt=None, headers={"Content-Encoding": "gzip"})
        assert status == 400, answer


def test_body_over_limits_is_413(aop_collector_factory) -> None:
    """A body over max_body_bytes, or inflating over max_decompressed_bytes, is refused with 413."""
    collector = aop_collector_factory(max_body_bytes=4096, max_decompressed_bytes=8192)
    _run_id, events = make_run(40, collector.org_salt_key)
    status, _, _ = post_batch(collector, events)
    assert status == 413
    padding = {"pad": " " * 20000}
    _, events = make_run(1, collector.org_salt_key)
    events = [sign_event(dict({k: v for k, v in events[0].items() if k != "sig"}, payload=padding),
                         collector.org_salt_key)]
    status, answer, _ = post_batch(collector, events, gzip_body=True)
    assert status == 413 and "gunzipped" in answer["error"]
    assert collector.event_ids() == set()


def test_resent_batch_is_all_duplicates_and_counted(aop_collector) -> None:
    """The same batch sent twice: second answer is all duplicates, each event stored once, received twice."""
    _run_id, events = make_run(3, aop_collector.org_salt_key)
    batch_id, _ = batch_body(events)
    assert post_batch(aop_collector, events, batch_id=batch_id)[1]["accepted"] == 3
    status, answer, _ = post_batch(aop_collector, events, batch_id=batch_id)
    assert status == 200 and answer == {"accepted": 0, "duplicates": 3, "rejected": []}
    assert all(aop_collector.delivery_count(e["event_id"]) == 2 for e in events)
    assert aop_collector.duplicate_deliveries() == 3
    assert len(aop_collector.events()) == 3


def test_duplicate_inside_one_batch_counts_once(aop_collector) -> None:
    """An event twice in one batch is accepted once and counted once as a duplicate."""
    _run_id, events = make_run(2, aop_collector.org_salt_key)
    status, answer, _ = post_batch(aop_collector, events + [events[0]])
    assert answer == {"accepted": 2, "duplicates": 1, "rejected": []}


def test_unsigned_mode_accepts_events_without_sig(aop_collector_factory) -> None:
    """Without an org_salt_key the collector needs no request or event signature."""
    collector = aop_collector_factory(org_salt_key=None)
    run_id, events = make_run(3, None)
    status, answer, _ = post_batch(collector, events)
    assert status == 200 and answer["accepted"] == 3
    assert collector.events(run_id) == events


def test_concurrent_overlapping_batches_store_each_event_once(aop_collector) -> None:
    """Threads sending overlapping batches: accepted sums to the distinct events, the rest are duplicates."""
    _run_id, pool = make_run(120, aop_collector.org_salt_key)
    answers: list[dict] = []
    lock = threading.Lock()

    def sender(offset: int) -> None:
        for start in range(offset, 120, 20):
            status, answer, _ = post_batch(aop_collector, pool[start:start + 40])
            assert status == 200
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=sender, args=(offset,)) for offset in (0, 10, 0, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    sent = sum(len(pool[s:s + 40]) for o in (0, 10, 0, 10) for s in range(o, 120, 20))
    assert sum(a["accepted"] for a in answers) == 120
    assert sum(a["accepted"] + a["duplicates"] for a in answers) == sent
    assert aop_collector.event_ids() == {e["event_id"] for e in pool}
    assert aop_collector.duplicate_deliveries() == sent - 120


def test_restart_keeps_received_events(aop_collector_factory, tmp_path) -> None:
    """A collector restarted on the same SQLite file still holds and dedupes earlier events."""
    db = str(tmp_path / "keep.sqlite3")
    first = aop_collector_factory(db_path=db)
    run_id, events = make_run(4, first.org_salt_key)
    assert post_batch(first, events)[1]["accepted"] == 4
    first.stop()
    second = aop_collector_factory(db_path=db)
    assert second.events(run_id) == events
    status, answer, _ = post_batch(second, events)
    assert answer["duplicates"] == 4 and answer["accepted"] == 0


def test_request_log_records_status_batch_and_aop_headers(aop_collector) -> None:
    """Every request is logged with path, status, batch id, counts and X-AOP-* headers (not the signature)."""
    _run_id, events = make_run(2, aop_collector.org_salt_key)
    batch_id, _ = batch_body(events)
    post_batch(aop_collector, events, batch_id=batch_id, headers={"X-AOP-Flusher": "pid=1,epoch=3"})
    post_batch(aop_collector, events, api_key="wrong")
    first, second = aop_collector.request_log()
    assert (first["path"], first["status"], first["batch_id"], first["accepted"]) == (BATCH, 200, batch_id, 2)
    assert first["aop_headers"] == {"X-AOP-Flusher": "pid=1,epoch=3"}
    assert second["status"] == 401 and second["reason"] == "invalid API key"


@SETTINGS
@given(
    payloads=st.lists(st.dictionaries(st.text(max_size=5), st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=10), max_size=3),
                      min_size=1, max_size=8),
    gzip_body=st.booleans(),
)
def test_any_valid_batch_round_trips(aop_collector, payloads: list, gzip_body: bool) -> None:
    """Property: any batch of valid signed events is fully accepted and stored equal to what was sent."""
    collector = aop_collector  # shared by the examples: each uses a fresh run_id
    run_id = str(uuid.uuid4())
    events = [make_event(run_id, i + 1, collector.org_salt_key, payload=p) for i, p in enumerate(payloads)]
    status, answer, _ = post_batch(collector, events, gzip_body=gzip_body)
    assert status == 200 and answer == {"accepted": len(events), "duplicates": 0, "rejected": []}
    assert collector.events(run_id) == events


def test_a_batch_waiting_for_the_database_lock_never_blocks_the_event_loop(aop_collector) -> None:
    """Another process holds SQLite's write lock: the batch waits in the pool, health answers meanwhile, then 200."""
    import http.client
    import sqlite3
    from urllib.parse import urlsplit

    from aop_client.testing import wait_until

    def health() -> int:
        parts = urlsplit(aop_collector.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            conn.request("GET", "/api/v1/health")
            return conn.getresponse().status
        finally:
            conn.close()

    other = sqlite3.connect(aop_collector.config.db_path, isolation_level=None)
    run_id, events = make_run(3, aop_collector.org_salt_key)
    answers: list = []
    try:
        other.execute("BEGIN IMMEDIATE")
        poster = threading.Thread(target=lambda: answers.append(post_batch(aop_collector, events)))
        poster.start()
        # The write could not go through on the loop: it was handed to a pool thread, which waits for the lock.
        wait_until(lambda: any(t.name.startswith("aop-collector_") for t in threading.enumerate()), timeout=30)
        assert [health() for _ in range(3)] == [200, 200, 200]
        assert not answers  # nothing is acknowledged before it is stored
        other.execute("COMMIT")
        poster.join(30)
    finally:
        other.close()
    status, answer, _ = answers[0]
    assert (status, answer["accepted"]) == (200, 3)
    assert {e["event_id"] for e in aop_collector.events(run_id)} == {e["event_id"] for e in events}


@pytest.mark.parametrize("limit", ["INLINE_WIRE_BYTES", "INLINE_BODY_BYTES"])
def test_batches_above_the_inline_limits_are_judged_in_the_pool_with_the_same_answers(aop_collector, monkeypatch,
                                                                                     limit) -> None:
    """A batch too big for the loop is judged and stored in the pool, with the same verdicts and duplicate counts."""
    from aop_client.collector import app

    monkeypatch.setattr(app, limit, 64)
    run_id, events = make_run(5, aop_collector.org_salt_key)
    events[2] = dict(events[2], seq=99)  # breaks its signature
    pool_threads_before = {t for t in threading.enumerate() if t.name.startswith("aop-collector_")}
    status, answer, _ = post_batch(aop_collector, events, gzip_body=True)
    assert {t for t in threading.enumerate() if t.name.startswith("aop-collector_")} - pool_threads_before
    assert (status, answer["accepted"], answer["duplicates"]) == (200, 4, 0)
    assert [r["reason"].split(":")[0] for r in answer["rejected"]] == ["events[2]"]
    status, answer, _ = post_batch(aop_collector, events[:2], gzip_body=True)
    assert (status, answer["accepted"], answer["duplicates"]) == (200, 0, 2)
    assert [e["seq"] for e in aop_collector.events(run_id)] == [1, 2, 4, 5]
