"""The flusher signs and gzips the next full batch on its prefetch thread; retries are signed afresh."""

from __future__ import annotations

import random

from aop_client.core.backoff import RetryPolicy
from aop_client.election import FlusherElection
from aop_client.flusher import Flusher
from aop_client.signing import parse_signature_header, signed_body
from aop_client.store import DiskStore
from aop_client.testing import TEST_ORG_SALT_KEY
from aop_client.trace_builder import TraceBuilder
from aop_client.transport import HttpTransport, PreparedBatch, Response


class RecordingTransport(HttpTransport):
    """The real transport, remembering which batches went out prepared and which were signed at send time."""

    def __init__(self, *args, refuse_first_prepared: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: list[PreparedBatch] = []
        self.posted: list[str] = []
        self.refuse_first_prepared = refuse_first_prepared

    def post_prepared(self, prepared: PreparedBatch) -> Response:
        self.prepared.append(prepared)
        if self.refuse_first_prepared and len(self.prepared) == 1:
            return Response(status=503, headers={"retry-after": "0"}, body=b'{"error": "busy"}')
        return super().post_prepared(prepared)

    def post_batch(self, batch_id: str, body: bytes, *, now: float) -> Response:
        self.posted.append(batch_id)
        return super().post_batch(batch_id, body, now=now)


def _backlog(tmp_path, n: int) -> tuple[DiskStore, list[str]]:
    store = DiskStore(str(tmp_path / "spool"))
    builder = TraceBuilder(agent_id=5)
    ids = []
    for _ in range(n):
        event = builder.create_reasoning(goal="g", steps=[], safety_checks=[], uncertainty="low")
        assert store.append(event["event_id"], event["run_id"], event["seq"], signed_body(event, TEST_ORG_SALT_KEY)[1]).stored
        ids.append(event["event_id"])
    return store, ids


def _flusher(store: DiskStore, transport: HttpTransport) -> Flusher:
    return Flusher(store, transport, FlusherElection(store.directory), batch_size=20, batch_interval=0.0,
                   retry_policy=RetryPolicy(3, 0.01, 0.05), rng=random.Random(3))


def test_backlog_batches_after_the_first_go_out_prepared_and_arrive_once(tmp_path, aop_collector):
    """A 100-event backlog in batches of 20: later batches were made ready ahead, the collector holds each event once."""
    store, ids = _backlog(tmp_path, 100)
    transport = RecordingTransport(aop_collector.url, aop_collector.api_key, TEST_ORG_SALT_KEY)
    assert _flusher(store, transport).flush(timeout=30)
    assert len(transport.prepared) >= 3 and all(p.headers["Idempotency-Key"] == p.batch_id for p in transport.prepared)
    assert sorted(e["event_id"] for e in aop_collector.events()) == sorted(ids)
    assert aop_collector.stats()["duplicates"] == 0  # no batch went out twice
    store.close()


def test_a_refused_prepared_batch_is_retried_with_the_same_key_and_a_fresh_signature(tmp_path, aop_collector):
    """When the prepared POST gets 503, the retry goes through post_batch (signed at send time), same batch id."""
    store, ids = _backlog(tmp_path, 60)
    transport = RecordingTransport(aop_collector.url, aop_collector.api_key, TEST_ORG_SALT_KEY,
                                   refuse_first_prepared=True)
    assert _flusher(store, transport).flush(timeout=30)
    refused = transport.prepared[0]
    assert refused.batch_id in transport.posted  # the retry of the refused batch, signed anew
    assert parse_signature_header(refused.headers["X-AOP-Signature"])[0] > 0
    assert sorted(e["event_id"] for e in aop_collector.events()) == sorted(ids)
    store.close()
