"""Helpers for the collector tests: signed events and raw HTTP requests to a running collector."""

from __future__ import annotations

import gzip
import http.client
import time
import uuid
from typing import Any, Optional
from urllib.parse import urlsplit

import orjson

from aop_client.signing import request_signature, sign_event

KEEP = object()  # "compute the header normally"


def make_event(run_id: str, seq: int, key: Optional[str], *, agent_id: int = 7, payload: Any = None) -> dict:
    """A valid envelope (signed when ``key`` is given)."""
    event = {
        "event_id": str(uuid.uuid4()),
        "run_id": run_id,
        "agent_id": agent_id,
        "seq": seq,
        "t": "2025-12-05T10:00:00.000Z",
        "type": "custom",
        "name": "step",  # protocol v1 section 1: a custom event's name is top-level
        "payload": {"n": seq} if payload is None else payload,
    }
    return sign_event(event, key) if key else event


def make_run(n: int, key: Optional[str]) -> tuple[str, list[dict]]:
    """A run id and its n events with seq 1..n."""
    run_id = str(uuid.uuid4())
    return run_id, [make_event(run_id, seq, key) for seq in range(1, n + 1)]


def batch_body(events: list, batch_id: Optional[str] = None) -> tuple[str, bytes]:
    """(batch_id, body bytes) of a batch upload."""
    batch_id = batch_id or str(uuid.uuid4())
    return batch_id, orjson.dumps({"batch_id": batch_id, "events": events})


def post(collector: Any, path: str, body: bytes, *, api_key: Any = KEEP, salt: Any = KEEP, gzip_body: bool = False,
         sig_now: Optional[float] = None, headers: Optional[dict] = None, timeout: float = 30.0
         ) -> tuple[int, Any, dict]:
    """POST raw ``body``; returns (status, parsed JSON or raw bytes, lower-cased headers)."""
    api_key = collector.api_key if api_key is KEEP else api_key
    salt = collector.org_salt_key if salt is KEEP else salt
    sent_headers = {"Content-Type": "application/json", "User-Agent": "aop-client/test"}
    if api_key is not None:
        sent_headers["Authorization"] = f"Bearer {api_key}"
    if salt is not None:
        now = time.time() if sig_now is None else sig_now
        sent_headers["X-AOP-Signature"] = request_signature(body, salt, now=now)
    wire = body
    if gzip_body:
        wire = gzip.compress(body)
        sent_headers["Content-Encoding"] = "gzip"
    sent_headers.update(headers or {})
    parts = urlsplit(collector.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", path, body=wire, headers={k: v for k, v in sent_headers.items() if v is not None})
        answer = conn.getresponse()
        raw = answer.read()
        got_headers = {k.lower(): v for k, v in answer.getheaders()}
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = raw
        return answer.status, parsed, got_headers
    finally:
        conn.close()


def post_batch(collector: Any, events: list, *, batch_id: Optional[str] = None, **kwargs: Any) -> tuple[int, Any, dict]:
    """Upload one batch with Idempotency-Key = batch_id."""
    batch_id, body = batch_body(events, batch_id)
    headers = dict(kwargs.pop("headers", None) or {})
    headers.setdefault("Idempotency-Key", batch_id)
    return post(collector, "/api/v1/traces/batch", body, headers=headers, **kwargs)


def post_completion(collector: Any, run_id: str, last_seq: int, *, event_count: Optional[int] = None,
                    agent_id: int = 7, body_run_id: Optional[str] = None, **kwargs: Any) -> tuple[int, Any, dict]:
    """Send the run-completion request of protocol section 3."""
    body = orjson.dumps({"run_id": body_run_id or run_id, "agent_id": agent_id,
                         "event_count": last_seq if event_count is None else event_count, "last_seq": last_seq})
    return post(collector, f"/api/v1/traces/runs/{run_id}/complete", body, **kwargs)
