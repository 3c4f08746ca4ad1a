"""Collector benchmark: the reference collector alone, fed pre-built batches by concurrent clients.

Separates the server's share of the drain (``bench_drain.py``) from the
client's. The batches (500 signed reasoning events each, gzip, request
signature) are built before the clock starts; ``--clients`` threads, each with
its own keep-alive connection, post them back to back. Side by side, in one
run and interleaved:

* verifying: a collector with an org salt key (request signature, every event's
  RFC 8785 form and HMAC, envelope checks, dedupe, SQLite);
* baseline: the same collector without a key (envelope checks, dedupe and
  SQLite only; the events are not verified).

Printed per configuration: events/s, the collector process's CPU per event
and the POST latency; medians over ``--repeat`` rounds, and the ratio.

    python bench/bench_collector.py                   # 100,000 events, 3 clients, 3 rounds
    python bench/bench_collector.py --clients 1       # one request at a time
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_drain import API_KEY, SALT, process_cpu_seconds, signed_reasoning_events  # noqa: E402

from aop_client.collector import CollectorConfig  # noqa: E402
from aop_client.collector.runner import start_collector_process  # noqa: E402
from aop_client.core.batching import build_batch_body  # noqa: E402
from aop_client.transport import HttpTransport  # noqa: E402


def one_round(bodies: list[bytes], batch_size: int, clients: int, salted: bool) -> dict:
    """Start a collector, post every batch through ``clients`` threads; rate, CPU per event, latencies."""
    root = tempfile.mkdtemp(prefix="aop-bench-collector-")
    config = CollectorConfig(api_key=API_KEY, org_salt_key=SALT if salted else None, port=0,
                             db_path=os.path.join(root, "collector.sqlite3"), enable_streaming=False,
                             max_body_bytes=64 * 2**20)
    collector = start_collector_process(config)
    try:
        transports = [HttpTransport(collector.url, API_KEY, SALT, gzip_threshold=1024, read_timeout=60.0)
                      for _ in range(clients)]
        prepared = []
        for start in range(0, len(bodies), batch_size):
            batch_id = str(uuid.uuid4())
            body = build_batch_body(batch_id, bodies[start:start + batch_size])
            prepared.append(transports[0].prepare_batch(batch_id, body, now=time.time()))
        latencies: list[float] = []
        failures: list[object] = []

        def post_share(index: int) -> None:
            for batch in prepared[index::clients]:
                began = time.perf_counter()
                answer = transports[index].post_prepared(batch)
                latencies.append(time.perf_counter() - began)
                if answer.status != 200:
                    failures.append(answer)

        cpu_before = process_cpu_seconds(collector.process.pid)
        started = time.perf_counter()
        threads = [threading.Thread(target=post_share, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        cpu = process_cpu_seconds(collector.process.pid) - cpu_before
        assert not failures, failures[:3]
        assert collector.storage.event_count() == len(bodies)
        return {"rate": len(bodies) / elapsed, "cpu_us": cpu / len(bodies) * 1e6, "latencies": latencies}
    finally:
        collector.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--clients", type=int, default=3, help="concurrent connections posting batches")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bodies = [body for _, body in signed_reasoning_events(args.events)]
    results: dict[str, list[dict]] = {"verifying": [], "baseline (no key)": []}
    for run in range(args.repeat):
        for name, salted in (("verifying", True), ("baseline (no key)", False)):
            result = one_round(bodies, args.batch_size, args.clients, salted)
            results[name].append(result)
            print(f"[run {run}] {name}: {result['rate']:,.0f} events/s, collector CPU {result['cpu_us']:.1f} us/event",
                  flush=True)
    print()
    print(f"{'':26}{'events/s (median)':>20}{'CPU us/event':>14}{'POST p50 (ms)':>15}")
    for name, rounds in results.items():
        latencies = sorted(x for r in rounds for x in r["latencies"])
        print(f"{name:26}{statistics.median(r['rate'] for r in rounds):>20,.0f}"
              f"{statistics.median(r['cpu_us'] for r in rounds):>14.1f}{latencies[len(latencies) // 2] * 1e3:>15.1f}")
    verifying = statistics.median(r["rate"] for r in results["verifying"])
    baseline = statistics.median(r["rate"] for r in results["baseline (no key)"])
    print(f"verifying / baseline: {verifying / baseline:.2f}x the rate "
          f"({args.events:,} events, batches of {args.batch_size}, {args.clients} clients)")


if __name__ == "__main__":
    main()
