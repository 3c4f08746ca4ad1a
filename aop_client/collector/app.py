"""The reference collector's aiohttp application: routes of protocol v1 sections 2 and 3, plus test helpers.

Routes:

* ``POST /api/v1/traces/batch``: API key, request signature, gzip/identity,
  per-event envelope and signature checks, dedupe by ``event_id``.
* ``POST /api/v1/traces/runs/{run_id}/complete``: ``{"complete", "missing"}``.
* ``GET /api/v1/health`` (no auth), ``GET /api/v1/stats`` (with the
  connection guard's counters under ``connections``) and
  ``GET /api/v1/events?run_id=`` (API key required) for tests and the demo.
* ``POST /api/v1/_faults`` (API key, only when ``allow_fault_control``):
  replace the FaultConfig of a running collector.
* Streaming routes (WebSocket, chunked NDJSON) come from
  :mod:`aop_client.collector.streaming_routes` and share the same storage
  and worker pool: the events of one stream batch are stored with one
  ``insert_batch`` (one commit) in the pool.

Connections are bounded by :mod:`aop_client.collector.connections` (head,
body and idle time, how many at once); a body not received in time is 408.

Status choices where the protocol is silent: a bad ``Content-Encoding``,
corrupt gzip, non-JSON or wrongly shaped body, or an ``Idempotency-Key``
that differs from ``batch_id`` is 400; a body above ``max_body_bytes`` on the
wire or ``max_decompressed_bytes`` after gunzip is 413; error bodies are
``{"error": "<reason>"}``. ``Retry-After`` is written in seconds (``%g``).
Where the work runs (see docs/perf-drain.md for the measurements behind it):
everything a batch of ordinary size needs, on the event loop itself, unless
it would wait.

* A batch up to ``INLINE_WIRE_BYTES`` on the wire and ``INLINE_BODY_BYTES``
  decoded (about 2,000 events) is decoded, judged and stored on the loop:
  a 500-event batch costs ~13 ms of CPU, and handing it to a thread cost more
  than that saved: every chunk the loop read meanwhile, and every SQLite call
  of the thread, waited for the GIL (the drain ran 15-25% slower). The loop
  inflates at most ``INLINE_BODY_BYTES``; a body that turns out larger, and
  every larger batch, is decoded, judged and stored in the worker pool, so
  one huge upload never stalls the loop for long.
* SQLite writes are tried on the loop with ``wait=False``: when another
  process holds SQLite's write lock, or another thread of this process holds
  the storage lock for more than 50 ms (the checkpointer's rare locked pass),
  they raise StorageBusy, having written nothing, and run in the worker pool
  instead, where waiting is harmless. While such a write is pending in the
  pool, later writes go straight to the pool too (in order, and without
  another 50 ms wait each). The loop never waits on a lock longer than that.
* Run completions (a query, then a write) run in the worker pool.
* Fault delays are ``asyncio.sleep`` on the loop, never a blocked thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import time
from typing import Any, Optional

import orjson
from aiohttp import web

from .config import CollectorConfig
from .connections import GUARD_KEY, BodyTimeout, ConnectionGuard
from .faults import Fault, FaultConfig, FaultInjector, FaultKind, FaultStage
from .protocol import (
    JudgedBatch,
    RequestRefused,
    batch_answer,
    check_api_key,
    check_request_signature,
    decode_body,
    event_refusal,
    judge_batch,
    missing_seqs,
    parse_completion,
)
from .storage import CollectorStorage, IncomingEvent, RequestRecord, StorageBusy

__all__ = ["make_app", "CollectorState", "STATE_KEY", "BATCH_PATH", "COMPLETE_PATH"]

BATCH_PATH = "/api/v1/traces/batch"
COMPLETE_PATH = "/api/v1/traces/runs/{run_id}/complete"
_SIGNATURE_HEADER = "X-AOP-Signature"


INLINE_WIRE_BYTES = 256 * 2**10  # larger request bodies are decoded and judged in the worker pool
INLINE_BODY_BYTES = 2**20  # ... and so are decoded bodies larger than this


@dataclasses.dataclass
class CollectorState:
    """Everything the handlers share: config, storage, fault injector, worker pool."""

    config: CollectorConfig
    storage: CollectorStorage
    injector: FaultInjector
    executor: concurrent.futures.ThreadPoolExecutor
    pool_writes: int = 0  # storage writes handed to the pool and not finished (touched on the loop only)

    async def write(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """``method(*args, **kwargs)``, a storage write taking ``wait``: now if it need not wait, else in the pool."""
        if not self.pool_writes:
            try:
                return method(*args, wait=False, **kwargs)
            except StorageBusy:
                pass
        return await self.write_in_pool(method, *args, **kwargs)

    async def write_in_pool(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """``method(*args, **kwargs)`` in the worker pool, where it may wait for locks."""
        self.pool_writes += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, functools.partial(method, *args, **kwargs))
        finally:
            self.pool_writes -= 1


STATE_KEY = web.AppKey("aop_collector_state", CollectorState)


def _json(status: int, body: Any, headers: Optional[dict] = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _aop_headers(request: web.Request) -> dict:
    return {k: v[:200] for k, v in request.headers.items()
            if k.lower().startswith("x-aop-") and k.lower() != _SIGNATURE_HEADER.lower()}


def _record(request: web.Request, status: Optional[int], **fields: Any) -> RequestRecord:
    return RequestRecord(path=request.path, status=status, user_agent=request.headers.get("User-Agent"),
                         aop_headers=_aop_headers(request), **fields)


async def _drop_connection(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise asyncio.CancelledError  # nothing may be written on the dead connection


async def _strike(state: CollectorState, request: web.Request, fault: Fault, **fields: Any) -> Optional[web.StreamResponse]:
    """Apply ``fault``; returns the response to send, or None to go on answering normally (slow)."""
    faults = state.injector.config
    record_fields = dict(fields, fault=fault.kind.value, fault_stage=fault.stage.value)
    if fault.kind is FaultKind.SLOW:
        await asyncio.sleep(faults.slow_delay)
        return None  # the normal answer follows, logged with fault="slow"
    await state.write(state.storage.log_request, _record(request, fault.status, **record_fields))
    if fault.kind is FaultKind.DROP:
        return await _drop_connection(request)
    if fault.kind is FaultKind.TIMEOUT:
        await asyncio.sleep(faults.timeout_delay)
        return await _drop_connection(request)
    headers = None
    if fault.kind in (FaultKind.TOO_MANY_429, FaultKind.ERROR_503) and faults.retry_after is not None:
        headers = {"Retry-After": "%g" % faults.retry_after}
    return _json(fault.status or 500, {"error": f"injected fault {fault.kind.value}"}, headers)


def _slow_marker(fault: Optional[Fault]) -> dict:
    if fault is None or fault.kind is not FaultKind.SLOW:
        return {}
    return {"fault": fault.kind.value, "fault_stage": fault.stage.value}


def _verified_body(state: CollectorState, raw: bytes, encoding: Optional[str], signature: Optional[str],
                   now: float) -> bytes:
    """The decompressed body of a signed POST, after its X-AOP-Signature checked out."""
    config = state.config
    body = decode_body(raw, encoding, max_decompressed=config.max_decompressed_bytes)
    check_request_signature(body, signature, config.org_salt_key, now=now, tolerance=config.signature_tolerance)
    return body


def _judged_batch(state: CollectorState, raw: bytes, encoding: Optional[str], signature: Optional[str],
                  idempotency_key: Optional[str], now: float) -> JudgedBatch:
    body = _verified_body(state, raw, encoding, signature, now)
    return judge_batch(body, idempotency_key, state.config.org_salt_key)


def _inline_body(state: CollectorState, raw: bytes, encoding: Optional[str]) -> Optional[bytes]:
    """The decoded body when it is small enough to judge on the loop (inflating no more than that), else None."""
    if len(raw) > INLINE_WIRE_BYTES:
        return None
    limit = state.config.max_decompressed_bytes
    if limit <= INLINE_BODY_BYTES:
        return decode_body(raw, encoding, max_decompressed=limit)
    try:
        return decode_body(raw, encoding, max_decompressed=INLINE_BODY_BYTES)
    except RequestRefused as refused:
        if refused.status == 413:
            return None  # larger than the loop's share; the pool decodes it against the real limit
        raise


def _refuse_poison(state: CollectorState, judged: JudgedBatch) -> None:
    """400 for a batch holding a poison event of the fault configuration (nothing of it is stored)."""
    poison = state.injector.poisoned([e[0] for e in judged.accepted] + [r["event_id"] for r in judged.rejected])
    if poison is not None:
        raise RequestRefused(400, f"injected fault: batch holds poison event {poison}")


async def _process_batch(state: CollectorState, raw: bytes, encoding: Optional[str], signature: Optional[str],
                         request: web.Request, now: float) -> tuple[int, dict, dict]:
    """Decode, verify and store one batch; (status, answer body, request-log fields)."""
    idempotency_key = request.headers.get("Idempotency-Key")
    config = state.config
    body = _inline_body(state, raw, encoding)
    if body is not None:
        check_request_signature(body, signature, config.org_salt_key, now=now, tolerance=config.signature_tolerance)
        judged = judge_batch(body, idempotency_key, config.org_salt_key)
        _refuse_poison(state, judged)
        flags = await state.write(state.storage.insert_batch, judged.batch_id, judged.accepted, now=now)
    else:
        judged = await asyncio.get_running_loop().run_in_executor(
            state.executor, _judged_batch, state, raw, encoding, signature, idempotency_key, now)
        _refuse_poison(state, judged)
        flags = await state.write_in_pool(state.storage.insert_batch, judged.batch_id, judged.accepted, now=now)
    duplicates = sum(flags)
    accepted = len(judged.accepted) - duplicates
    fields = {"batch_id": judged.batch_id, "events": judged.event_count, "accepted": accepted,
              "duplicates": duplicates, "rejected": len(judged.rejected)}
    return 200, batch_answer(accepted, duplicates, judged.rejected), fields


async def _read_body(request: web.Request) -> bytes:
    """The whole body, read under the connection guard's body_timeout and body_min_rate."""
    try:
        return await request.app[GUARD_KEY].read_body(request)
    except web.HTTPRequestEntityTooLarge as e:
        raise RequestRefused(413, f"body exceeds {request.app[STATE_KEY].config.max_body_bytes} bytes") from e
    except BodyTimeout as e:  # the guard answered 408 and closed the connection; nothing is stored
        raise RequestRefused(408, str(e)) from e


def _check_completion(state: CollectorState, raw: bytes, encoding: Optional[str], signature: Optional[str],
                      path_run_id: str, now: float) -> tuple[int, dict, dict]:
    """Verify one run completion, check the run's seqs and record the verdict (in the worker pool)."""
    body = _verified_body(state, raw, encoding, signature, now)
    done = parse_completion(body, path_run_id)
    listed, missing_count = missing_seqs(state.storage.run_seqs(done.run_id, done.last_seq), done.last_seq)
    state.storage.record_completion(done.run_id, done.agent_id, done.event_count, done.last_seq, missing_count,
                                    now=now)
    answer = {"complete": missing_count == 0, "missing": listed}
    if missing_count > len(listed):
        answer["missing_count"] = missing_count
    return 200, answer, {"events": done.event_count}


async def _process_completion(state: CollectorState, raw: bytes, encoding: Optional[str], signature: Optional[str],
                              request: web.Request, now: float) -> tuple[int, dict, dict]:
    """A run completion, checked and recorded in the worker pool."""
    return await asyncio.get_running_loop().run_in_executor(
        state.executor, _check_completion, state, raw, encoding, signature, request.match_info["run_id"], now)


async def _handle_signed_post(request: web.Request, endpoint: str, process: Any) -> web.StreamResponse:
    """The life of one signed POST: faults before, key check, body, ``process``, faults after, log.

    ``await process(state, raw, encoding, signature, request, now) -> (status, answer, log fields)``
    raises RequestRefused for an answer other than 200.
    """
    state = request.app[STATE_KEY]
    fault = state.injector.next_fault(endpoint)
    if fault is not None and fault.stage is FaultStage.BEFORE:
        response = await _strike(state, request, fault)
        if response is not None:
            return response
    try:
        check_api_key(request.headers.get("Authorization"), state.config.api_key)
        raw = await _read_body(request)
        status, answer, fields = await process(state, raw, request.headers.get("Content-Encoding"),
                                               request.headers.get(_SIGNATURE_HEADER), request, time.time())
    except RequestRefused as refused:
        await state.write(state.storage.log_request, _record(request, refused.status, reason=refused.reason))
        return _json(refused.status, {"error": refused.reason})
    if fault is not None and fault.stage is FaultStage.AFTER:
        response = await _strike(state, request, fault, **fields)
        if response is not None:
            return response
    await state.write(state.storage.log_request, _record(request, status, **fields, **_slow_marker(fault)))
    return _json(status, answer)


async def handle_batch(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/traces/batch (protocol section 2)."""
    return await _handle_signed_post(request, "batch", _process_batch)


async def handle_complete(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/traces/runs/{run_id}/complete (protocol section 3)."""
    return await _handle_signed_post(request, "complete", _process_completion)


async def handle_health(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/health: liveness, no auth."""
    return _json(200, {"status": "ok"})


def _authorized(request: web.Request) -> Optional[web.Response]:
    try:
        check_api_key(request.headers.get("Authorization"), request.app[STATE_KEY].config.api_key)
    except RequestRefused as refused:
        return _json(refused.status, {"error": refused.reason})
    return None


async def handle_stats(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/stats: counters (API key required)."""
    return _authorized(request) or _json(200, dict(request.app[STATE_KEY].storage.stats(),
                                                   connections=request.app[GUARD_KEY].counters()))


async def handle_events(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/events?run_id=: stored envelopes (API key required)."""
    denied = _authorized(request)
    if denied is not None:
        return denied
    run_id = request.query.get("run_id") or None
    return _json(200, {"events": request.app[STATE_KEY].storage.events(run_id)})


async def handle_faults(request: web.Request) -> web.StreamResponse:
    """POST /api/v1/_faults: replace the live FaultConfig with the body's fields (API key required)."""
    denied = _authorized(request)
    if denied is not None:
        return denied
    try:
        fields = orjson.loads(await request.read())
        if not isinstance(fields, dict):
            raise TypeError("body must be a JSON object of FaultConfig fields")
        if "endpoints" in fields:
            fields["endpoints"] = frozenset(fields["endpoints"])
        config = FaultConfig(**fields)
    except (orjson.JSONDecodeError, TypeError, ValueError) as e:
        return _json(400, {"error": f"bad FaultConfig: {e}"[:300]})
    request.app[STATE_KEY].injector.set(config)
    return _json(200, {"ok": True})


def _stream_event(envelope: dict) -> IncomingEvent:
    return IncomingEvent(envelope["event_id"], envelope["run_id"], envelope["seq"], envelope["agent_id"],
                         envelope["type"], orjson.dumps(envelope))


def _stream_ingest(storage: CollectorStorage, org_salt_key: Optional[str]):
    """Store one streamed event (one transaction); kept for callers of the per-event interface."""
    def ingest(envelope: dict) -> tuple[str, Optional[str]]:
        reason = event_refusal(envelope, None)  # the stream routes verified the signature already
        if reason is not None:
            return "rejected", reason
        (duplicate,) = storage.insert_batch("stream", [_stream_event(envelope)])
        return ("duplicate" if duplicate else "accepted"), None

    return ingest


def _stream_ingest_batch(storage: CollectorStorage):
    """Store the verified events of one stream batch with ONE insert_batch (one commit), in arrival order."""
    def ingest_batch(envelopes: list) -> list[tuple[str, Optional[str]]]:
        results: list = [None] * len(envelopes)
        incoming: list[IncomingEvent] = []
        slots: list[int] = []
        for index, envelope in enumerate(envelopes):
            reason = event_refusal(envelope, None)  # the stream routes verified the signature already
            if reason is not None:
                results[index] = ("rejected", reason)
                continue
            slots.append(index)
            incoming.append(_stream_event(envelope))
        for index, duplicate in zip(slots, storage.insert_batch("stream", incoming)):
            results[index] = ("duplicate" if duplicate else "accepted", None)
        return results

    return ingest_batch


def make_app(config: CollectorConfig, storage: CollectorStorage, injector: Optional[FaultInjector] = None,
             executor: Optional[concurrent.futures.ThreadPoolExecutor] = None) -> web.Application:
    """Build the collector's aiohttp application around ``storage``."""
    injector = injector or FaultInjector(config.faults)
    executor = executor or concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="aop-collector")
    guard = ConnectionGuard(config)
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[guard.middleware])
    app[STATE_KEY] = CollectorState(config, storage, injector, executor)
    app[GUARD_KEY] = guard
    app.router.add_post(BATCH_PATH, handle_batch)
    app.router.add_post(COMPLETE_PATH, handle_complete)
    app.router.add_get("/api/v1/health", handle_health)
    app.router.add_get("/api/v1/stats", handle_stats)
    app.router.add_get("/api/v1/events", handle_events)
    if config.allow_fault_control:
        app.router.add_post("/api/v1/_faults", handle_faults)
    if config.enable_streaming:
        from .streaming_routes import add_streaming_routes

        add_streaming_routes(app, api_key=config.api_key, ingest=_stream_ingest(storage, config.org_salt_key),
                             ingest_batch=_stream_ingest_batch(storage), executor=executor,
                             org_salt_key=config.org_salt_key, heartbeat=config.ws_heartbeat)

    async def shutdown(_app: web.Application) -> None:
        executor.shutdown(wait=True, cancel_futures=True)

    app.on_cleanup.append(shutdown)
    return app
