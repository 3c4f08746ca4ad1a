"""Drain benchmark: signed events from the DiskStore into the loopback reference collector.

Runs, in one go and side by side:

* ours: the Flusher (batch 500, gzip on, one pooled connection) draining a
  backlog from the store, in a child process whose peak RSS is reported;
* naive: one POST per event (no batching, no gzip, same pooled urllib3
  connection, same signing), on a slice of the same events.

Each is repeated ``--repeat`` times on fresh backlogs; medians, p99 of the
per-batch (or per-request) latency and the ratio are printed. The collector
runs as a separate process (``start_collector_process``) verifying request
and event signatures and storing into SQLite, so the number includes its cost.

    python bench/bench_drain.py                    # 1,000,000-event backlog (takes a few minutes)
    python bench/bench_drain.py --events 100000    # quicker
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import random
import statistics
import sys
import tempfile
import time
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402

from aop_client.collector import CollectorConfig  # noqa: E402
from aop_client.collector.runner import start_collector_process  # noqa: E402
from aop_client.core.backoff import RetryPolicy  # noqa: E402
from aop_client.core.batching import build_batch_body  # noqa: E402
from aop_client.election import FlusherElection  # noqa: E402
from aop_client.flusher import Flusher  # noqa: E402
from aop_client.signing import signed_body  # noqa: E402
from aop_client.store import DiskStore  # noqa: E402
from aop_client.trace_builder import TraceBuilder  # noqa: E402
from aop_client.transport import HttpTransport  # noqa: E402

API_KEY, SALT = "bench-api-key", "bench-org-salt"


def signed_reasoning_events(n: int) -> Iterator[tuple[dict, bytes]]:
    """n (event, signed body) pairs: ~480-byte reasoning events in runs of 1000, as every drain benchmark sends."""
    builder = None
    for i in range(n):
        if i % 1000 == 0:
            builder = TraceBuilder(agent_id=123)
        event = builder.create_reasoning(goal="Process customer refund request",
                                         steps=[{"step_id": "s1", "description": "Validate order ID",
                                                 "decision": "proceed", "confidence": 0.95}],
                                         safety_checks=[{"name": "policy_check", "result": "passed"}],
                                         uncertainty="low")
        yield event, signed_body(event, SALT)[1]


def fill(spool: str, n: int) -> int:
    """Append n signed ~480-byte reasoning events (runs of 1000) to a fresh store; returns bytes stored."""
    store = DiskStore(spool, max_events=max(n, 1000) * 2, max_bytes=4 * 2**30, retention_seconds=0.0)
    total = 0
    for event, body in signed_reasoning_events(n):
        total += len(body)
        assert store.append(event["event_id"], event["run_id"], event["seq"], body).stored
    store.close()
    return total


def null_sink_main(port_queue) -> None:
    """Child process: an HTTP server that reads each body and answers 200 {"accepted": 0} (no checks, no storage)."""
    import http.server

    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            answer = b'{"accepted": 0, "duplicates": 0, "rejected": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    class NoDelayServer(http.server.ThreadingHTTPServer):
        def server_bind(self) -> None:  # the reply is written in two segments: without
            super().server_bind()        # TCP_NODELAY, Nagle + delayed ACK add 40 ms per POST
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def get_request(self):
            conn, addr = super().get_request()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn, addr

    server = NoDelayServer(("127.0.0.1", 0), Sink)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def status_mb(field: str) -> float:
    """A size field of this process's /proc/self/status (VmHWM, VmRSS, ...) in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MB."""
    return status_mb("VmHWM")


class TimedTransport:
    """Records the latency of every POST of the real transport."""

    def __init__(self, inner: HttpTransport) -> None:
        self.inner, self.latencies = inner, []

    def post_batch(self, batch_id: str, body: bytes, *, now: float):
        started = time.perf_counter()
        response = self.inner.post_batch(batch_id, body, now=now)
        self.latencies.append(time.perf_counter() - started)
        return response


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain_ours(spool: str, url: str, batch_size: int, retention: float, in_flight: int, queue) -> None:
    """Child process: drain the whole backlog with the Flusher; report rate, latencies, CPU and peak RSS."""
    store = DiskStore(spool, retention_seconds=retention)
    transport = TimedTransport(HttpTransport(url, API_KEY, SALT, gzip_threshold=1024, read_timeout=60.0))
    flusher = Flusher(store, transport, FlusherElection(spool), batch_size=batch_size, batch_interval=0.0,
                      max_batch_bytes=8 * 2**20, retry_policy=RetryPolicy(5, 0.05, 1.0), max_in_flight=in_flight)
    base_rss = peak_rss_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    ok = flusher.flush(timeout=3600)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    queue.put({"ok": ok, "seconds": elapsed, "cpu": cpu, "delivered": flusher.stats()["delivered"],
               "latencies": transport.latencies, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": base_rss,
               "stats": {k: v for k, v in flusher.stats().items() if k != "last_error"}})
    store.close()


def drain_naive(spool: str, url: str, limit: int) -> dict:
    """One POST per event (a one-event batch, no gzip), acking each in the store: the baseline."""
    store = DiskStore(spool, retention_seconds=0.0)
    transport = HttpTransport(url, API_KEY, SALT, gzip_threshold=10**12)
    epoch = store.begin_epoch()
    latencies, sent = [], 0
    started = time.perf_counter()
    while sent < limit:
        events = store.lease(1, 2**20, epoch=epoch)
        if not events:
            break
        event = events[0]
        t0 = time.perf_counter()
        body = build_batch_body(event.event_id, [event.body])
        response = transport.post_batch(event.event_id, body, now=time.time())
        latencies.append(time.perf_counter() - t0)
        if response.status == 200:
            store.ack([event.ref], epoch=epoch)
            sent += 1
        else:
            store.release([event.ref], epoch=epoch)
    elapsed = time.perf_counter() - started
    store.close()
    return {"seconds": elapsed, "delivered": sent, "latencies": latencies}


def p99(values: list[float]) -> float:
    """The 99th percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="backlog size for ours")
    parser.add_argument("--naive-events", type=int, default=5_000, help="events sent by the naive baseline")
    parser.add_argument("--sink-events", type=int, default=200_000, help="events drained into the null sink")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=1, help="the flusher's max_in_flight (batch POSTs at once)")
    parser.add_argument("--retention", type=float, default=0.0,
                        help="retention_seconds of the drained store (0: delivered events are not kept for replay)")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="aop-bench-drain-")
    collector = start_collector_process(CollectorConfig(api_key=API_KEY, org_salt_key=SALT, port=0,
                                                        db_path=os.path.join(root, "collector.sqlite3"),
                                                        enable_streaming=False, max_body_bytes=64 * 2**20))
    ctx = multiprocessing.get_context("fork")
    port_queue = ctx.Queue()
    sink = ctx.Process(target=null_sink_main, args=(port_queue,), daemon=True)
    sink.start()
    sink_url = f"http://127.0.0.1:{port_queue.get()}"
    ours_rates, ours_lat, naive_rates, naive_lat, rss, sink_rates, sink_lat = [], [], [], [], [], [], []
    flusher_us: list[float] = []
    collector_us: list[float] = []
    try:
        for run in range(args.repeat):
            spool = os.path.join(root, f"spool-ours-{run}")
            t0 = time.perf_counter()
            size = fill(spool, args.events)
            print(f"[run {run}] filled {args.events:,} events ({size / args.events:.0f} B avg) "
                  f"in {time.perf_counter() - t0:.1f} s", flush=True)
            queue = ctx.Queue()
            collector_cpu = process_cpu_seconds(collector.process.pid)
            child = ctx.Process(target=drain_ours, args=(spool, collector.url, args.batch_size, args.retention, args.in_flight, queue))
            child.start()
            result = queue.get()
            collector_cpu = process_cpu_seconds(collector.process.pid) - collector_cpu
            child.join()
            assert result["ok"] and result["delivered"] == args.events, result["stats"]
            flusher_us.append(result["cpu"] / args.events * 1e6)
            collector_us.append(collector_cpu / args.events * 1e6)
            ours_rates.append(result["delivered"] / result["seconds"])
            ours_lat.extend(result["latencies"])
            rss.append(result["peak_rss_mb"])
            print(f"[run {run}] ours: {result['delivered']:,} events in {result['seconds']:.1f} s = "
                  f"{ours_rates[-1]:,.0f} ev/s, peak RSS {result['peak_rss_mb']:.0f} MB; CPU per event: "
                  f"flusher {flusher_us[-1]:.1f} us, collector {collector_us[-1]:.1f} us", flush=True)

            spool = os.path.join(root, f"spool-sink-{run}")
            fill(spool, args.sink_events)
            queue = ctx.Queue()
            child = ctx.Process(target=drain_ours, args=(spool, sink_url, args.batch_size, args.retention, args.in_flight, queue))
            child.start()
            result = queue.get()
            child.join()
            sink_rates.append(result["delivered"] / result["seconds"])
            sink_lat.extend(result["latencies"])
            print(f"[run {run}] ours into a null sink: {result['delivered']:,} events in {result['seconds']:.1f} s = "
                  f"{sink_rates[-1]:,.0f} ev/s", flush=True)

            spool = os.path.join(root, f"spool-naive-{run}")
            fill(spool, args.naive_events)
            naive = drain_naive(spool, collector.url, args.naive_events)
            naive_rates.append(naive["delivered"] / naive["seconds"])
            naive_lat.extend(naive["latencies"])
            print(f"[run {run}] naive: {naive['delivered']:,} events in {naive['seconds']:.1f} s = "
                  f"{naive_rates[-1]:,.0f} ev/s", flush=True)
        held = collector.stats()
    finally:
        collector.stop()
        sink.terminate()

    ours, naive, sunk = statistics.median(ours_rates), statistics.median(naive_rates), statistics.median(sink_rates)
    print()
    print(f"{'':24}{'ours (batch ' + str(args.batch_size) + ', gzip)':>28}{'naive (1 POST/event)':>24}{'ours -> null sink':>20}")
    print(f"{'events/s (median)':24}{ours:>28,.0f}{naive:>24,.0f}{sunk:>20,.0f}")
    print(f"{'POST latency p50 (ms)':24}{statistics.median(ours_lat) * 1e3:>28.2f}"
          f"{statistics.median(naive_lat) * 1e3:>24.2f}{statistics.median(sink_lat) * 1e3:>20.2f}")
    print(f"{'POST latency p99 (ms)':24}{p99(ours_lat) * 1e3:>28.2f}{p99(naive_lat) * 1e3:>24.2f}{p99(sink_lat) * 1e3:>20.2f}")
    print(f"{'flusher peak RSS (MB)':24}{max(rss):>28.0f}")
    print(f"{'flusher CPU (us/event)':24}{statistics.median(flusher_us):>28.1f}")
    print(f"{'collector CPU (us/event)':24}{statistics.median(collector_us):>28.1f}")
    print(f"ratio ours/naive: {ours / naive:.1f}x; target >= 30,000 ev/s: {'met' if ours >= 30_000 else 'NOT met'}; "
          f"RSS < 100 MB: {'met' if max(rss) < 100 else 'NOT met'}; collector holds {held.get('events', '?'):,} events")


if __name__ == "__main__":
    main()
