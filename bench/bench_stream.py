"""Benchmark: emit-to-server latency and throughput of streaming (WebSocket, chunked HTTP) vs. the batch path.

Run: ``python bench/bench_stream.py [--rate 1000] [--seconds 3] [--burst 20000] [--server collector|memory]``.

Every path starts at ``emit_event`` of a real AOPClient (validate, sign,
durable append) and ends when the server has stored the event; the server runs
in its own process on loopback. Paths, side by side in one run:

* ws       : StreamingClient, WebSocket: sign + send_event (the stream alone;
             the throughput burst is signed up front)
* http     : StreamingClient, chunked NDJSON: the same
* hybrid   : HybridClient(AOPClient, "websocket"): emit_event = store + stream
* batch    : AOPClient alone: emit_event, then the elected flusher's batch upload
             (batch_size 100, batch_interval 0.1 s: generous to the batch path)

The first two start at signing (the stream's own cost); the last two start at
``AOPClient.emit_event`` and so include the durable store's append.

Events are built (TraceBuilder) before the clock starts. Latency: each event
carries its emit time (``time.time()``, stamped just before emit) in its payload;
the server's ``received_at`` (first arrival) minus that is the emit-to-server
latency, at a steady ``--rate``. Throughput: a burst of ``--burst`` emits,
from the first emit until the server holds all of them.

``--server collector`` (default) is the reference collector (aiohttp + SQLite,
a transaction per streamed event); ``--server memory`` is the same stream
routes over in-memory storage, which isolates the protocol's cost.
Targets (docs/perf-stream.md): ws p50 <= 2 ms and p99 <= 10 ms at 1,000
events/s; ws throughput >= 10,000 events/s.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import orjson  # noqa: E402

from aop_client import AOPClient, ClientConfig  # noqa: E402
from aop_client.signing import signed_body  # noqa: E402
from aop_client.streaming import HybridClient, StreamingClient  # noqa: E402
from aop_client.trace_builder import TraceBuilder  # noqa: E402

API_KEY = "bench-api-key"
SALT = "bench-org-salt-key"

# The in-memory server: the stream routes over a dict, plus the collector's batch route shape.
MEMORY_SERVER = r"""
import asyncio, sys, time, sqlite3
import orjson
from aiohttp import web
from aop_client.collector.streaming_routes import InMemoryEvents, add_streaming_routes, check_envelope
api_key, salt, db_path = sys.argv[1:4]
events, received = InMemoryEvents(), {}
def ingest(envelope):
    outcome, reason = events.ingest(envelope)
    if outcome == "accepted":
        received[envelope["event_id"]] = (envelope, time.time())
    return outcome, reason
async def batch(request):
    doc = orjson.loads(await request.read())
    acc = dup = 0
    for env in doc["events"]:
        outcome, _ = ingest(env) if check_envelope(env, salt) is None else ("rejected", None)
        acc += outcome == "accepted"; dup += outcome == "duplicate"
    return web.json_response({"accepted": acc, "duplicates": dup, "rejected": []})
async def complete(request):
    return web.json_response({"complete": True, "missing": []})
async def dump(request):  # write arrivals where the benchmark reads them (same table shape as the collector)
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, run_id TEXT, body BLOB, received_at REAL)")
    db.executemany("INSERT OR IGNORE INTO events VALUES (?,?,?,?)", [(i, e["run_id"], orjson.dumps(e), t) for i, (e, t) in received.items()])
    db.commit(); db.close()
    return web.json_response({"held": len(received)})
app = web.Application(client_max_size=64 * 2**20)
add_streaming_routes(app, api_key=api_key, ingest=ingest, org_salt_key=salt)
app.router.add_post("/api/v1/traces/batch", batch)
app.router.add_post("/api/v1/traces/runs/{run_id}/complete", complete)
app.router.add_post("/bench/dump", dump)
app.router.add_get("/bench/count", lambda r: web.json_response({"n": len(received)}))
async def main():
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print("http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


class Server:
    """The server process and how to read what it stored."""

    def __init__(self, kind: str, workdir: str) -> None:
        self.kind = kind
        self.db_path = os.path.join(workdir, "server.sqlite3")
        env = dict(os.environ, PYTHONPATH=ROOT)
        if kind == "collector":
            from aop_client.collector import CollectorConfig, start_collector_process

            self.handle = start_collector_process(CollectorConfig(api_key=API_KEY, org_salt_key=SALT, port=0, db_path=self.db_path))
            self.url = self.handle.url
        else:
            self.proc = subprocess.Popen([sys.executable, "-c", MEMORY_SERVER, API_KEY, SALT, self.db_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            self.url = self.proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
        import urllib3

        self.pool = urllib3.PoolManager()

    def held(self, run_id: str) -> int:
        """How many events of ``run_id`` the server holds."""
        if self.kind == "collector":
            with sqlite3.connect(self.db_path) as db:
                return db.execute("SELECT count(*) FROM events WHERE run_id=?", (run_id,)).fetchone()[0]
        return orjson.loads(self.pool.request("GET", self.url + "/bench/count").data)["n"]

    def latencies(self, run_id: str) -> list[float]:
        """received_at - emit time for every event of ``run_id``."""
        if self.kind == "memory":
            self.pool.request("POST", self.url + "/bench/dump")
        with sqlite3.connect(self.db_path) as db:
            rows = db.execute("SELECT body, received_at FROM events WHERE run_id=?", (run_id,)).fetchall()
        return [at - orjson.loads(body)["payload"]["safety_checks"][0]["t0"] for body, at in rows]

    def stop(self) -> None:
        """Stop the server process."""
        if self.kind == "collector":
            self.handle.stop()
        else:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(10)


class RawStream:
    """The stream alone: a TraceBuilder, signing, and StreamingClient.send_event."""

    def __init__(self, server: Server, mode: str) -> None:
        self.trace_builder = TraceBuilder(123)
        self.stream = StreamingClient(
            server.url.replace("http://", "ws://") + "/ws/trace/", api_key=API_KEY, mode=mode, base_url=server.url,
            run_id=self.trace_builder.run_id, max_buffer=200_000, http_window=0.05,
        )

    def emit_event(self, event: dict | bytes) -> bool:
        """Sign (unless given signed bytes) and stream."""
        return self.stream.send_event(event if isinstance(event, bytes) else signed_body(event, SALT)[1])

    def __enter__(self) -> "RawStream":
        self.stream.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.flush(30)
        self.stream.disconnect()

    def stop(self, timeout: float) -> None:
        """Nothing to stop beyond the stream."""


def make_client(server: Server, spool: str, path: str) -> tuple[object, object]:
    """(client with .trace_builder and .stop, emitter context manager with .emit_event) for ``path``."""
    if path in ("ws", "http"):
        raw = RawStream(server, "websocket" if path == "ws" else "http")
        return raw, raw
    batch_only = path == "batch"
    config = ClientConfig(
        api_key=API_KEY,
        base_url=server.url,
        agent_id=123,
        org_salt_key=SALT,
        spool_dir=spool,
        batch_size=100 if batch_only else 1_000_000,
        batch_interval=0.1 if batch_only else 3600.0,  # hybrid: the batch upload waits for finalize
        enable_streaming=not batch_only,
        streaming_url=server.url.replace("http://", "ws://") + "/ws/trace/",
    )
    base = AOPClient(config)
    if batch_only:
        return base, _started(base)
    return base, HybridClient(base, max_buffer=200_000)


def event(builder: object, n: int) -> dict:
    """A ~355-byte reasoning event stamped with its emit time."""
    return builder.create_reasoning(  # type: ignore[attr-defined]
        goal="Process customer refund request",
        steps=[{"step_id": f"s{n}", "description": "Validate order ID", "decision": "proceed", "confidence": 0.95}],
        safety_checks=[{"name": "policy_check", "result": "passed", "t0": 0.0}],
        uncertainty="low",
    )


def wait_held(server: Server, run_id: str, count: int, timeout: float) -> None:
    """Poll until the server holds ``count`` events of the run."""
    deadline = time.monotonic() + timeout
    while server.held(run_id) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"server holds {server.held(run_id)}/{count} events of {run_id}")
        time.sleep(0.005)


def run_path(server: Server, workdir: str, path: str, rate: float, seconds: float, burst: int) -> tuple[list[float], float]:
    """(latencies at ``rate``, burst throughput) for one path."""
    results = []
    for phase in ("paced", "burst"):
        base, emitter = make_client(server, tempfile.mkdtemp(dir=workdir), path)
        with emitter as active:  # type: ignore[attr-defined]
            builder = base.trace_builder  # type: ignore[attr-defined]
            run_id = builder.run_id
            count = int(rate * seconds) if phase == "paced" else burst
            events: list = [event(builder, i) for i in range(count)]  # built up front: the builder is not the path
            if phase == "burst" and isinstance(active, RawStream):
                events = [signed_body(e, SALT)[1] for e in events]  # the stream's own throughput: signed up front
            start = time.monotonic()
            for i, ev in enumerate(events):
                if phase == "paced":
                    due = start + i / rate
                    while (now := time.monotonic()) < due:
                        time.sleep(min(due - now, 0.0005))
                if isinstance(ev, dict):
                    ev["payload"]["safety_checks"][0]["t0"] = time.time()  # emit time, covered by the signature
                active.emit_event(ev)
            wait_held(server, run_id, count, 300)
            elapsed = time.monotonic() - start
            results.append(server.latencies(run_id) if phase == "paced" else count / elapsed)
        base.stop(30)  # type: ignore[attr-defined]
    return results[0], results[1]


class _started:
    """Context manager that starts and stops a bare AOPClient."""

    def __init__(self, client: AOPClient) -> None:
        self.client = client

    def __enter__(self) -> AOPClient:
        return self.client.start()

    def __exit__(self, *exc: object) -> None:
        self.client.stop(30)


def pct(samples: list[float]) -> tuple[float, float]:
    """(median, p99) in ms."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3


def main() -> None:
    """Run every path against one server process and print the table, the ratios and the targets."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--burst", type=int, default=20000)
    parser.add_argument("--server", choices=["collector", "memory"], default="collector")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="aop_bench_stream_")
    server = Server(args.server, workdir)
    rows = []
    try:
        for path in ("ws", "http", "hybrid", "batch"):
            latencies, throughput = run_path(server, workdir, path, args.rate, args.seconds, args.burst)
            rows.append((path, *pct(latencies), throughput))
    finally:
        server.stop()
    print(f"server: {args.server}; latency = emit_event -> stored at the server, at {args.rate:.0f} events/s; throughput = burst of {args.burst}")
    print(f"{'path':<6} {'p50 ms':>8} {'p99 ms':>8} {'events/s':>10}")
    for path, p50, p99, rate in rows:
        print(f"{path:<6} {p50:8.3f} {p99:8.3f} {rate:10.0f}")
    ws = rows[0]
    for path, p50, p99, rate in rows[1:]:
        print(f"ratio {path}/ws: p50 x{p50 / ws[1]:.1f}, p99 x{p99 / ws[2]:.1f}, throughput x{rate / ws[3]:.2f}")
    print(f"targets: ws p50 <= 2 ms: {'OK' if ws[1] <= 2 else 'MISS'}; ws p99 <= 10 ms: {'OK' if ws[2] <= 10 else 'MISS'}; "
          f"ws >= 10,000 events/s: {'OK' if ws[3] >= 10_000 else 'MISS'}")


if __name__ == "__main__":
    main()
