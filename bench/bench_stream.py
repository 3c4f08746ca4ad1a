"""Benchmark: emit-to-server latency and throughput of streaming (WebSocket, chunked HTTP) vs. the batch path.

Run: ``python bench/bench_stream.py [--rate 1000] [--seconds 3] [--burst 20000]``.

The server (the reference stream routes, with event-signature verification)
runs in a separate process on loopback; each event carries its emit time
(``time.monotonic()``, system-wide on Linux) and the server records
``arrival - emit`` per event. All paths run side by side in one run:

* ws     : StreamingClient, WebSocket mode
* http   : StreamingClient, chunked NDJSON mode
* batch  : the batch path emulated with the flusher's shape - events buffered
           and POSTed in batches of ``--batch-size`` or every ``--batch-interval``
           seconds, whichever first (one request at a time)

Targets (docs/perf-stream.md): ws latency p50 <= 2 ms and p99 <= 10 ms at
1,000 events/s; ws throughput >= 10,000 events/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import orjson  # noqa: E402
import urllib3  # noqa: E402

from aop_client.signing import signed_body  # noqa: E402
from aop_client.streaming import StreamingClient  # noqa: E402

API_KEY = "bench-api-key"
SALT = "bench-org-salt-key"

SERVER_CODE = r"""
import asyncio, sys, time, threading
import orjson
from aiohttp import web
from aop_client.collector.streaming_routes import InMemoryEvents, add_streaming_routes
events = InMemoryEvents()
latencies = []
def ingest(envelope):
    t0 = envelope["payload"].get("t0")
    if t0 is not None:
        latencies.append(time.monotonic() - t0)
    return events.ingest(envelope)
async def get_latencies(request):
    data = list(latencies)
    latencies.clear()
    return web.Response(body=orjson.dumps(data))
async def batch(request):  # the batch path's stand-in: same checks, JSON body
    from aop_client.collector.streaming_routes import check_envelope
    doc = orjson.loads(await request.read())
    acc = dup = 0
    rejected = []
    for env in doc["events"]:
        reason = check_envelope(env, SALT)
        if reason:
            rejected.append({"event_id": env.get("event_id"), "reason": reason}); continue
        outcome, _ = ingest(env)
        acc += outcome == "accepted"; dup += outcome == "duplicate"
    return web.json_response({"accepted": acc, "duplicates": dup, "rejected": rejected})
SALT = sys.argv[2]
app = web.Application()
add_streaming_routes(app, api_key=sys.argv[1], ingest=ingest, org_salt_key=SALT)
app.router.add_get("/bench/latencies", get_latencies)
app.router.add_post("/api/v1/traces/batch", batch)
async def main():
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


def make_event(run_id: str, seq: int) -> bytes:
    """A signed ~355-byte envelope stamped with its emit time."""
    event = {
        "event_id": str(uuid.uuid4()),
        "run_id": run_id,
        "agent_id": 123,
        "seq": seq,
        "t": "2025-12-05T10:00:00.000Z",
        "type": "reasoning",
        "payload": {"goal": "Process customer refund request", "steps": [{"step_id": "s1", "decision": "proceed", "confidence": 0.95}], "uncertainty": "low", "t0": time.monotonic()},
    }
    return signed_body(event, SALT)[1]


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(median, p99) in milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3


def paced(send: "callable", rate: float, seconds: float) -> int:
    """Call send(seq) at ``rate`` per second for ``seconds``; returns the count."""
    count = int(rate * seconds)
    start = time.monotonic()
    for i in range(count):
        due = start + i / rate
        while (now := time.monotonic()) < due:
            time.sleep(min(due - now, 0.0005))
        send(i + 1)
    return count


class BatchPath:
    """The batch path's shape: buffer, POST /api/v1/traces/batch per batch_size or batch_interval."""

    def __init__(self, base_url: str, batch_size: int, interval: float) -> None:
        self.url = base_url + "/api/v1/traces/batch"
        self.batch_size, self.interval = batch_size, interval
        self.buffer: list[bytes] = []
        self.cond = threading.Condition()
        self.sent = 0
        self.done = False
        self.pool = urllib3.PoolManager(retries=False)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def emit(self, body: bytes) -> None:
        with self.cond:
            self.buffer.append(body)
            if len(self.buffer) >= self.batch_size:
                self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: len(self.buffer) >= self.batch_size or self.done, timeout=self.interval)
                batch, self.buffer = self.buffer[: self.batch_size], self.buffer[self.batch_size :]
                if not batch and self.done:
                    return
            if batch:
                body = b'{"batch_id":"' + str(uuid.uuid4()).encode() + b'","events":[' + b",".join(batch) + b"]}"
                response = self.pool.request("POST", self.url, body=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
                assert response.status == 200, response.status
                self.sent += len(batch)

    def close(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify()
        self.thread.join(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--burst", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batch-interval", type=float, default=0.1)
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    server = subprocess.Popen([sys.executable, "-c", SERVER_CODE, API_KEY, SALT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    port = int(server.stdout.readline())  # type: ignore[union-attr]
    base_url = f"http://127.0.0.1:{port}"
    pool = urllib3.PoolManager()

    def server_latencies() -> list[float]:
        return orjson.loads(pool.request("GET", base_url + "/bench/latencies").data)

    rows = []
    try:
        for path in ("ws", "http", "batch"):
            # latency at a steady rate
            run_id = str(uuid.uuid4())
            if path == "batch":
                batcher = BatchPath(base_url, args.batch_size, args.batch_interval)
                n = paced(lambda s: batcher.emit(make_event(run_id, s)), args.rate, args.seconds)
                batcher.close()
            else:
                client = StreamingClient(f"ws://127.0.0.1:{port}/ws/trace/", api_key=API_KEY, mode="websocket" if path == "ws" else "http", base_url=base_url if path == "http" else None, run_id=run_id, max_buffer=100_000, http_window=0.05)
                client.connect()
                n = paced(lambda s: client.send_event(make_event(run_id, s)), args.rate, args.seconds)
                assert client.flush(30.0), client.stats()
                client.disconnect()
            lat = server_latencies()
            assert len(lat) == n, (path, len(lat), n)
            p50, p99 = percentiles(lat)
            # throughput: a burst of pre-signed events, first emit to last acknowledgement
            run_id = str(uuid.uuid4())
            bodies = [make_event(run_id, s) for s in range(1, args.burst + 1)]
            start = time.perf_counter()
            if path == "batch":
                batcher = BatchPath(base_url, args.batch_size, args.batch_interval)
                for body in bodies:
                    batcher.emit(body)
                batcher.close()
            else:
                client = StreamingClient(f"ws://127.0.0.1:{port}/ws/trace/", api_key=API_KEY, mode="websocket" if path == "ws" else "http", base_url=base_url if path == "http" else None, run_id=run_id, max_buffer=args.burst, http_window=0.05)
                client.connect()
                for body in bodies:
                    client.send_event(body)
                assert client.flush(120.0), client.stats()
                client.disconnect()
            rate = args.burst / (time.perf_counter() - start)
            server_latencies()
            rows.append((path, p50, p99, rate))
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(10)

    print(f"{'path':<6} {'p50 ms':>8} {'p99 ms':>8} {'events/s':>10}   (latency at {args.rate:.0f} ev/s, emit -> server)")
    for path, p50, p99, rate in rows:
        print(f"{path:<6} {p50:8.3f} {p99:8.3f} {rate:10.0f}")
    ws = rows[0]
    for path, p50, p99, rate in rows[1:]:
        print(f"ratio {path}/ws: p50 x{p50 / ws[1]:.1f}, p99 x{p99 / ws[2]:.1f}, throughput x{rate / ws[3]:.2f}")
    print(f"targets: ws p50 <= 2 ms: {'OK' if ws[1] <= 2 else 'MISS'}; ws p99 <= 10 ms: {'OK' if ws[2] <= 10 else 'MISS'}; ws >= 10,000 ev/s: {'OK' if ws[3] >= 10_000 else 'MISS'}")


if __name__ == "__main__":
    main()
