"""Memory benchmark: RSS of one client emitting 1,000,000 events in one run (the recipe's long-lived worker).

    python bench/bench_memory.py [--events 1000000] [--every 100000] [--sink null|collector]
                                 [--variants delivering,unreachable]

Each variant runs in a fresh process: one AOPClient, its flusher started, one
run, and per "request" one ``create_reasoning`` + ``emit_event`` (~480-byte
signed events). RSS (VmRSS) is sampled every ``--every`` events.

* ``delivering``: the flusher delivers into a loopback sink: a null HTTP sink
  (``bench_drain.null_sink_main``, answers 200 without checking) or, with
  ``--sink collector``, the reference collector in its own process.
* ``unreachable``: nothing listens at base_url; every event stays pending on disk.

Target: RSS growth below 30 MB from the first sample (100,000 events) to the last.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_drain import API_KEY, SALT, null_sink_main, status_mb  # noqa: E402

TARGET_MB = 30.0


def rss_mb() -> float:
    """This process's resident set size (VmRSS) in MB."""
    return status_mb("VmRSS")


def child(url: str, spool: str, events: int, every: int) -> None:
    """One variant: emit ``events`` events of one run, print a JSON line per sample."""
    from aop_client import AOPClient, ClientConfig

    config = ClientConfig(api_key=API_KEY, org_salt_key=SALT, base_url=url, agent_id=123, spool_dir=spool,
                          batch_size=500, max_buffer_size=events * 2, max_buffer_bytes=4 * 2**30,
                          retry_backoff_base=0.05, retry_backoff_max=1.0)
    client = AOPClient(config).start()
    builder = client.trace_builder
    step = [{"step_id": "s1", "description": "Validate order ID", "decision": "proceed", "confidence": 0.95}]
    checks = [{"name": "policy_check", "result": "passed"}]
    print(json.dumps({"events": 0, "rss_mb": rss_mb()}), flush=True)
    started = time.perf_counter()
    for i in range(1, events + 1):
        event = builder.create_reasoning(goal="Process customer refund request", steps=step,
                                         safety_checks=checks, uncertainty="low")
        if not client.emit_event(event):
            raise SystemExit(f"event {i} was not stored: {client.get_stats()['dropped']}")
        if i % every == 0:
            stats = client.get_stats()
            print(json.dumps({"events": i, "rss_mb": rss_mb(), "delivered": stats["delivered"],
                              "pending": stats["pending"], "seconds": time.perf_counter() - started}), flush=True)
    client.stop(timeout=2.0, flush=False)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def run_variant(url: str, spool: str, events: int, every: int) -> list[dict]:
    proc = subprocess.Popen([sys.executable, __file__, "--child", url, spool, str(events), str(every)],
                            stdout=subprocess.PIPE, text=True)
    rows = []
    assert proc.stdout is not None
    for line in proc.stdout:
        rows.append(json.loads(line))
        row = rows[-1]
        print(f"  {row['events']:>9,} events  RSS {row['rss_mb']:7.1f} MB"
              + (f"  delivered {row['delivered']:>9,}  pending {row['pending']:>9,}  {row['seconds']:6.1f} s"
                 if row["events"] else ""), flush=True)
    if proc.wait() != 0:
        raise SystemExit(f"variant failed with exit code {proc.returncode}")
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=100_000)
    parser.add_argument("--sink", choices=("null", "collector"), default="null")
    parser.add_argument("--variants", default="delivering,unreachable")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="aop-bench-memory-")
    stop_sink = lambda: None  # noqa: E731
    if args.sink == "collector":
        from aop_client.collector import CollectorConfig
        from aop_client.collector.runner import start_collector_process

        collector = start_collector_process(CollectorConfig(api_key=API_KEY, org_salt_key=SALT, port=0,
                                                            db_path=os.path.join(root, "collector.sqlite3"),
                                                            enable_streaming=False, max_body_bytes=64 * 2**20))
        sink_url, stop_sink = collector.url, collector.stop
    else:
        ctx = multiprocessing.get_context("fork")
        port_queue = ctx.Queue()
        sink = ctx.Process(target=null_sink_main, args=(port_queue,), daemon=True)
        sink.start()
        sink_url, stop_sink = f"http://127.0.0.1:{port_queue.get()}", sink.terminate
    results = {}
    try:
        for variant in args.variants.split(","):
            url = sink_url if variant == "delivering" else closed_port_url()
            where = f"{args.sink} sink" if variant == "delivering" else "nothing listening"
            print(f"{variant} ({where}): {args.events:,} events in one run, sampled every {args.every:,}", flush=True)
            results[variant] = run_variant(url, os.path.join(root, f"spool-{variant}"), args.events, args.every)
    finally:
        stop_sink()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'variant':<12} {'RSS start':>10} {'at ' + format(args.every, ','):>12} {'at end':>9} "
          f"{'growth from ' + format(args.every, ','):>20} {'target':>8}")
    failed = False
    for variant, rows in results.items():
        first = next(r for r in rows if r["events"] == args.every)
        growth = rows[-1]["rss_mb"] - first["rss_mb"]
        failed |= growth >= TARGET_MB
        print(f"{variant:<12} {rows[0]['rss_mb']:>8.1f} MB {first['rss_mb']:>9.1f} MB {rows[-1]['rss_mb']:>6.1f} MB "
              f"{growth:>17.1f} MB {'< ' + format(TARGET_MB, '.0f') + ' MB':>8} {'ok' if growth < TARGET_MB else 'OVER'}")
    print("(before this change: 28 MB -> 474 MB over 200,000 events, i.e. ~2.2 KB held per event)")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
