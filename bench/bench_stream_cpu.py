"""Benchmark: client CPU per streamed event (the stream's I/O thread, and the whole client process).

Run: ``python bench/bench_stream_cpu.py [--events 200000] [--repeat 3]``.

A burst of ``--events`` unsigned envelopes is offered to a ``StreamingClient``
(WebSocket, then chunked HTTP) and flushed; the server is the in-memory stream
server (``StreamServer``, no signature check) in its own process, so the figures
are the client's own cost. CPU comes from ``/proc`` (the I/O thread's
utime+stime; the process's ``time.process_time``), which does not move with the
scheduler the way latency and throughput do on a loaded machine. Linux only.
Figures: docs/perf-stream.md.
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

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import orjson  # noqa: E402

from aop_client.streaming import StreamingClient  # noqa: E402

SERVER = (
    "import time\n"
    "from aop_client.collector.streaming_routes import StreamServer\n"
    "server = StreamServer(api_key='bench-api-key').start()\n"
    "print(server.port, flush=True)\n"
    "time.sleep(3600)\n"
)
TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(name: str) -> float:
    """CPU seconds (user + system) of this process's thread called ``name``."""
    thread = next(t for t in threading.enumerate() if t.name == name)
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def burst(port: int, mode: str, count: int) -> tuple[float, float, float]:
    """(I/O thread us/event, process us/event, events/s) for one burst of ``count`` events."""
    run = str(uuid.uuid4())
    bodies = [orjson.dumps({"event_id": str(uuid.uuid4()), "run_id": run, "agent_id": 1, "seq": seq,
                            "t": "2025-12-05T10:00:00.000Z", "type": "custom", "name": "step",
                            "payload": {"n": seq, "text": "x" * 40}}) for seq in range(1, count + 1)]
    client = StreamingClient(f"ws://127.0.0.1:{port}/ws/trace/", api_key="bench-api-key", mode=mode,
                             base_url=f"http://127.0.0.1:{port}", run_id=run, max_buffer=count + 1)
    client.connect()
    name = f"aop-stream-{mode}"
    wall, cpu, io = time.perf_counter(), time.process_time(), thread_cpu(name)
    for body in bodies:
        client.send_event(body)
    if not client.flush(300.0):
        raise SystemExit(f"{mode}: the burst was not acknowledged: {client.stats()}")
    wall, cpu, io = time.perf_counter() - wall, time.process_time() - cpu, thread_cpu(name) - io
    client.disconnect()
    return 1e6 * io / count, 1e6 * cpu / count, count / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        print(f"burst of {args.events} events, median of {args.repeat}")
        print("mode       io-thread us/event  process us/event   events/s")
        for mode in ("websocket", "http"):
            runs = [burst(port, mode, args.events) for _ in range(args.repeat)]
            io, cpu, rate = (statistics.median(r[i] for r in runs) for i in range(3))
            print(f"{mode:9s}  {io:18.2f}  {cpu:16.2f}  {rate:9.0f}")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
