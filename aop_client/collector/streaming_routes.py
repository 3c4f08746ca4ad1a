"""The reference collector's streaming endpoints (protocol-v1 section 4), as routes added to its aiohttp app.

* ``GET /ws/trace/{run_id}``: WebSocket, ``Authorization: Bearer`` checked on
  the handshake (401 before the upgrade), one envelope per text frame,
  answered ``{"ack": id}`` or ``{"nack": id, "reason": r}``.
* ``POST /api/v1/traces/stream``: chunked NDJSON, same auth, answered at the
  end of the body with the batch response of section 2.

Both run every event through the same checks as the batch endpoint (shape,
run, event signature) and store it through an ``ingest_batch`` callable that
inserts-or-dedupes a list of envelopes by ``event_id`` in one commit (or, for
compatibility, a per-event ``ingest``). The frames of one pass of the
WebSocket reader (the lines of one chunk of the NDJSON body) are verified and
stored as one batch, in arrival order, off the event loop when an executor is
given; their acks and nacks go out only after that batch is stored. Both
honour :class:`StreamFaults` (close mid-stream, reset the connection, stop
acknowledging, slow acknowledgements) for tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import threading
from dataclasses import dataclass
from typing import Any, Callable

import orjson
from aiohttp import WSMsgType, web

from ..streaming.frames import STREAM_PATH, encode_ack, encode_nack
from .protocol import event_refusal, event_verdict

__all__ = [
    "StreamFaults",
    "InMemoryEvents",
    "IngestResult",
    "Ingest",
    "IngestBatch",
    "add_streaming_routes",
    "check_envelope",
    "FAULTS_KEY",
    "StreamServer",
    "faults_of",
]

#: ("accepted" | "duplicate" | "rejected", reason or None)
IngestResult = tuple[str, "str | None"]
Ingest = Callable[[dict], IngestResult]
#: Stores a list of verified envelopes (one commit), one IngestResult per envelope, in order.
IngestBatch = Callable[[list], "list[IngestResult]"]

MAX_LINE_BYTES = 1_000_000 + 1024
#: Most frames (or NDJSON lines) verified and stored as one batch.
_MAX_BATCH = 2048


@dataclass
class StreamFaults:
    """Fault injection for the stream routes; change the fields at any time from a test.

    Counters are per connection (WebSocket) or per request (chunked HTTP).
    ``budget`` limits how many connections a close/reset fault hits (None: all).
    """

    close_after: int | None = None  # server closes the stream after N events
    reset_after: int | None = None  # server aborts the TCP connection after N events
    stop_acking: bool = False  # read and store events but answer nothing
    ack_delay: float = 0.0  # seconds before each ack / the end-of-stream answer
    refuse_handshake: int | None = None  # HTTP status for every handshake/request (e.g. 503)
    freeze: bool = False  # WebSocket: stop reading the socket at all (no acks, no pongs) while set
    budget: int | None = None
    fired: int = 0

    def take(self) -> bool:
        """Spend one firing of a close/reset fault; False once the budget is used up."""
        if self.budget is not None and self.fired >= self.budget:
            return False
        self.fired += 1
        return True


#: Where add_streaming_routes puts the live StreamFaults in the app.
FAULTS_KEY = web.AppKey("aop_stream_faults", StreamFaults)


class InMemoryEvents:
    """Insert-or-dedupe event storage in memory, in arrival order (for tests and benchmarks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: dict[str, dict] = {}
        self.arrivals: list[str] = []
        self.duplicates = 0

    def ingest(self, envelope: dict) -> IngestResult:
        """Keep the first copy of each event_id; later copies count as duplicates."""
        with self._lock:
            if envelope["event_id"] in self.events:
                self.duplicates += 1
                return "duplicate", None
            self.events[envelope["event_id"]] = envelope
            self.arrivals.append(envelope["event_id"])
            return "accepted", None

    def run_seqs(self, run_id: str) -> list[int]:
        """The seq numbers of ``run_id`` in the order they first arrived."""
        with self._lock:
            return [self.events[i]["seq"] for i in self.arrivals if self.events[i]["run_id"] == run_id]


def check_envelope(envelope: Any, org_salt_key: str | None, run_id: str | None = None, *,
                   parsed: bool = False) -> str | None:
    """Why ``envelope`` is refused (a reason string), or None: the batch endpoint's checks plus the stream's run.

    ``parsed=True`` promises an envelope fresh from ``orjson.loads`` and takes the
    batch endpoint's fast path (same reasons).
    """
    if run_id is not None and isinstance(envelope, dict) and envelope.get("run_id") != run_id:
        return f"run_id {envelope.get('run_id')!r:.80} does not match the stream's run {run_id!r:.80}"
    if parsed and org_salt_key is not None:
        return event_verdict(envelope, org_salt_key)[0]
    return event_refusal(envelope, org_salt_key)


def _authorized(request: web.Request, api_key: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def _batch_of(ingest: Ingest) -> IngestBatch:
    """An IngestBatch that stores the envelopes one by one with ``ingest``."""
    return lambda envelopes: [ingest(envelope) for envelope in envelopes]


def _process_many(
    raws: list, ingest_batch: IngestBatch, org_salt_key: str | None, run_id: str | None
) -> list[tuple[str | None, str, str | None]]:
    """(event_id or None, outcome, reason) for each raw envelope, in order; the valid ones stored with ONE ingest_batch call."""
    results: list[tuple[str | None, str, str | None]] = []
    valid: list[dict] = []
    slots: list[int] = []
    for raw in raws:
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            results.append((None, "rejected", f"not JSON at position {e.pos}: {e.msg}"))
            continue
        event_id = envelope.get("event_id") if isinstance(envelope, dict) else None
        event_id = event_id if isinstance(event_id, str) else None
        reason = check_envelope(envelope, org_salt_key, run_id, parsed=True)
        if reason is not None:
            results.append((event_id, "rejected", reason))
            continue
        slots.append(len(results))
        results.append((event_id, "accepted", None))
        valid.append(envelope)
    if valid:
        for slot, (outcome, reason) in zip(slots, ingest_batch(valid)):
            results[slot] = (results[slot][0], outcome, reason)
    return results


class _Store:
    """Verifies and stores one batch of raw envelopes: in ``executor`` when given, else inline on the loop."""

    def __init__(self, ingest_batch: IngestBatch, org_salt_key: str | None, executor: concurrent.futures.Executor | None) -> None:
        self._ingest_batch = ingest_batch
        self._salt = org_salt_key
        self._executor = executor

    async def __call__(self, raws: list, run_id: str | None) -> list[tuple[str | None, str, str | None]]:
        if self._executor is None:
            return _process_many(raws, self._ingest_batch, self._salt, run_id)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _process_many, raws, self._ingest_batch, self._salt, run_id)


def add_streaming_routes(
    app: web.Application,
    *,
    api_key: str,
    ingest: Ingest | None = None,
    ingest_batch: IngestBatch | None = None,
    executor: concurrent.futures.Executor | None = None,
    org_salt_key: str | None = None,
    faults: StreamFaults | None = None,
    ws_prefix: str = "/ws/trace/",
    stream_path: str = STREAM_PATH,
    heartbeat: float | None = None,
) -> StreamFaults:
    """Add the WebSocket and chunked stream routes to ``app``; returns the live StreamFaults (also app[FAULTS_KEY]).

    Events are stored with ``ingest_batch`` (one call per batch) or, when only
    ``ingest`` is given, one ``ingest`` call per event; verification and
    storage run in ``executor`` when one is given, else on the event loop.
    ``heartbeat``: a WebSocket is pinged every ``heartbeat`` seconds and closed
    when no pong comes within half of that (None: never).
    """
    if ingest_batch is None:
        if ingest is None:
            raise TypeError("add_streaming_routes needs ingest or ingest_batch")
        ingest_batch = _batch_of(ingest)
    store = _Store(ingest_batch, org_salt_key, executor)
    faults = faults if faults is not None else StreamFaults()
    app[FAULTS_KEY] = faults
    app.router.add_get(ws_prefix.rstrip("/") + "/{run_id}", _ws_handler(api_key, store, faults, heartbeat))
    app.router.add_post(stream_path, _ndjson_handler(api_key, store, faults))
    return faults


def _ws_handler(api_key: str, store: _Store, faults: StreamFaults, heartbeat: float | None) -> Callable:
    async def handle(request: web.Request) -> web.StreamResponse:
        """GET /ws/trace/{run_id}: check the bearer token, upgrade, ack or nack every frame."""
        if faults.refuse_handshake:
            return web.json_response({"error": "injected failure"}, status=faults.refuse_handshake)
        if not _authorized(request, api_key):
            return web.json_response({"error": "missing or invalid bearer token"}, status=401)
        run_id = request.match_info["run_id"]
        ws = web.WebSocketResponse(autoping=True, max_msg_size=MAX_LINE_BYTES, heartbeat=heartbeat)
        await ws.prepare(request)
        pending_acks: set[asyncio.Task] = set()
        freezer = asyncio.ensure_future(_freeze_watch(request, faults))
        try:
            await _ws_loop(ws, request, run_id, store, faults, pending_acks)
        finally:
            freezer.cancel()
        return ws

    return handle


async def _freeze_watch(request: web.Request, faults: StreamFaults) -> None:
    """Pause reading the connection while ``faults.freeze`` is set (a server that went silent)."""
    frozen = False
    while True:
        if faults.freeze != frozen and request.transport is not None:
            frozen = faults.freeze
            (request.transport.pause_reading if frozen else request.transport.resume_reading)()
        await asyncio.sleep(0.01)


class _Inbox:
    """Frames read from the socket and not yet stored: the reader appends, the writer takes them all at once."""

    def __init__(self) -> None:
        self.frames: list = []
        self.ended = False
        self.ready = asyncio.Event()  # frames waiting, or the socket ended
        self.room = asyncio.Event()  # fewer than _MAX_BATCH frames waiting
        self.room.set()

    def take(self) -> list:
        """Every waiting frame, oldest first."""
        frames, self.frames = self.frames, []
        if not self.ended:  # once the socket has ended the writer must not wait again
            self.ready.clear()
        self.room.set()
        return frames


async def _ws_read(ws: web.WebSocketResponse, inbox: _Inbox) -> None:
    """Move text/binary frames into ``inbox`` until the socket ends (aiohttp hands over buffered frames without yielding)."""
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            inbox.frames.append(msg.data)
            inbox.ready.set()
            if len(inbox.frames) >= _MAX_BATCH:
                inbox.room.clear()
                await inbox.room.wait()
    finally:
        inbox.ended = True
        inbox.ready.set()


async def _ws_loop(
    ws: web.WebSocketResponse,
    request: web.Request,
    run_id: str,
    store: _Store,
    faults: StreamFaults,
    pending_acks: set,
) -> None:
    count = 0
    acks = _AckCoalescer(request)
    inbox = _Inbox()
    reader = asyncio.ensure_future(_ws_read(ws, inbox))
    try:
        while True:
            await inbox.ready.wait()
            while faults.freeze:  # frames already read wait too: nothing is acknowledged while frozen
                await asyncio.sleep(0.01)
            frames = inbox.take()
            if not frames:
                if inbox.ended:
                    break
                continue
            # Count-based faults cut the batch where the per-event loop would have stopped.
            stop = None
            for index in range(len(frames)):
                n = count + index + 1
                if faults.reset_after is not None and n >= faults.reset_after and faults.take():
                    stop = "reset"
                elif faults.close_after is not None and n >= faults.close_after and faults.take():
                    stop = "close"
                if stop is not None:
                    frames = frames[: index + 1]
                    break
            try:
                results = await store(frames, run_id)  # one commit; nothing is acknowledged before it
            except RuntimeError:  # the executor is shut down: the collector is stopping
                break
            count += len(frames)
            if stop == "reset":
                if request.transport is not None:
                    request.transport.abort()
                break
            if not faults.stop_acking:
                for event_id, outcome, reason in results:
                    if event_id is None:
                        continue
                    frame = encode_nack(event_id, reason or outcome) if outcome == "rejected" else encode_ack(event_id)
                    if faults.ack_delay > 0:
                        task = asyncio.ensure_future(_send_later(ws, frame, faults.ack_delay))
                        pending_acks.add(task)
                        task.add_done_callback(pending_acks.discard)
                    else:
                        acks.add(frame)
            acks.flush()
            if stop == "close":
                await ws.close(message=b"injected close")
                break
    finally:
        if not reader.done():
            reader.cancel()


class _AckCoalescer:
    """Writes the acks of every frame handled in one event-loop pass as one transport write.

    aiohttp hands over buffered messages without yielding to the loop, so a
    ``call_soon`` flush runs once the handler has caught up: fewer syscalls and
    fewer wake-ups at the client, same frames on the wire (unmasked server frames).
    """

    def __init__(self, request: web.Request) -> None:
        self._transport = request.transport
        self._frames: list[bytes] = []

    def add(self, text: str) -> None:
        """Queue one text frame; the first of a pass schedules the flush."""
        if not self._frames:
            asyncio.get_running_loop().call_soon(self._flush)
        payload = text.encode()
        size = len(payload)
        if size < 126:
            header = bytes((0x81, size))
        elif size < 65536:
            header = b"\x81\x7e" + size.to_bytes(2, "big")
        else:
            header = b"\x81\x7f" + size.to_bytes(8, "big")
        self._frames.append(header + payload)

    def flush(self) -> None:
        """Write the queued frames now (before a close frame, so they precede it)."""
        self._flush()

    def _flush(self) -> None:
        frames, self._frames = self._frames, []
        transport = self._transport
        if frames and transport is not None and not transport.is_closing():
            transport.write(b"".join(frames))


async def _send_later(ws: web.WebSocketResponse, frame: str, delay: float) -> None:
    await asyncio.sleep(delay)
    if not ws.closed:
        try:
            await ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            pass


def _ndjson_handler(api_key: str, store: _Store, faults: StreamFaults) -> Callable:
    async def handle(request: web.Request) -> web.StreamResponse:
        """POST /api/v1/traces/stream: read NDJSON lines as they come, answer with the batch response."""
        if faults.refuse_handshake:
            return web.json_response({"error": "injected failure"}, status=faults.refuse_handshake)
        if not _authorized(request, api_key):
            return web.json_response({"error": "missing or invalid bearer token"}, status=401)
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/x-ndjson":
            return web.json_response({"error": f"Content-Type must be application/x-ndjson, got {ctype!r}"}, status=415)
        accepted = duplicates = count = 0
        rejected: list[dict] = []
        buffer = b""

        async def store_lines(lines: list, check_faults: bool) -> None:
            """Verify and store ``lines`` as one batch (cut where a reset/close fault fires), then tally them."""
            nonlocal accepted, duplicates, count
            lines = [line for line in lines if line.strip()]
            cut = False
            if check_faults:
                for index in range(len(lines)):
                    n = count + index + 1
                    if ((faults.reset_after is not None and n >= faults.reset_after)
                            or (faults.close_after is not None and n >= faults.close_after)) and faults.take():
                        lines, cut = lines[: index + 1], True
                        break
            for start in range(0, len(lines), _MAX_BATCH):
                for event_id, outcome, reason in await store(lines[start:start + _MAX_BATCH], None):
                    count += 1
                    if outcome == "accepted":
                        accepted += 1
                    elif outcome == "duplicate":
                        duplicates += 1
                    else:
                        rejected.append({"event_id": event_id or f"line:{count}", "reason": reason or "rejected"})
            if cut and request.transport is not None:
                request.transport.abort()
                raise asyncio.CancelledError()

        async for chunk in request.content.iter_any():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > MAX_LINE_BYTES:
                return web.json_response({"error": f"line {count + 1} exceeds {MAX_LINE_BYTES} bytes"}, status=413)
            if lines:
                await store_lines(lines, True)
        if buffer.strip():
            await store_lines([buffer], False)
        if faults.stop_acking:
            await asyncio.sleep(3600)  # hold the answer: the client's read timeout fires
        if faults.ack_delay > 0:
            await asyncio.sleep(faults.ack_delay)
        return web.json_response({"accepted": accepted, "duplicates": duplicates, "rejected": rejected})

    return handle



def faults_of(server: Any) -> StreamFaults:
    """The live StreamFaults of a running collector (RunningCollector) or a StreamServer, for tests."""
    if isinstance(server, StreamServer):
        return server.faults
    runner = getattr(server, "_runner", None)
    if runner is None or FAULTS_KEY not in runner.app:
        raise TypeError(f"{server!r} is not a running in-process collector with stream routes")
    return runner.app[FAULTS_KEY]


class StreamServer:
    """A loopback aiohttp server with only the stream routes, in a background thread (tests, benchmarks)."""

    def __init__(
        self, *, api_key: str, org_salt_key: str | None = None, ingest: Ingest | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.events = InMemoryEvents()
        self.api_key = api_key
        self._host = host
        self._app = web.Application()
        self.faults = add_streaming_routes(self._app, api_key=api_key, ingest=ingest or self.events.ingest, org_salt_key=org_salt_key)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="aop-stream-server", daemon=True)
        self.port = port

    @property
    def base_url(self) -> str:
        """``http://host:port``."""
        return f"http://{self._host}:{self.port}"

    @property
    def streaming_url(self) -> str:
        """``ws://host:port/ws/trace/``."""
        return f"ws://{self._host}:{self.port}/ws/trace/"

    def start(self) -> "StreamServer":
        """Bind a free port and serve until :meth:`stop`."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """Close every connection and the loop."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "StreamServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
