"""Benchmark of emit_event end to end (validate, redact, sign, durable append) against baselines.

    python bench/bench_emit.py [--n 20000] [--rounds 5]

Runs, interleaved in one process and one run so machine noise hits all alike:
  * queue.Queue.put(json.dumps(event))   the non-durable in-memory baseline
  * queue.Queue.put(orjson.dumps(event)) the fastest in-memory baseline
  * AOPClient.emit_event, durability=process, signed (the default)
  * the same with a redaction hook
  * the same with durability=fsync
and the pieces of the emit path (validate_envelope, signed_body, store.append).
Prints per-call medians and p99 in microseconds and ratios to the baseline.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from aop_client import AOPClient, ClientConfig  # noqa: E402
from aop_client.events import new_event_id, validate_envelope  # noqa: E402
from aop_client.signing import signed_body  # noqa: E402

PAYLOAD = {
    "goal": "Process customer refund request",
    "steps": [{"step_id": "s1", "description": "Validate order ID", "decision": "proceed",
               "confidence": 0.95}],
    "safety_checks": [{"name": "policy_check", "result": "passed"}],
    "uncertainty": "low",
}


def make_events(client: AOPClient, n: int) -> list[dict]:
    """n distinct events of one run (about 355 bytes each before the signature)."""
    template = client.trace_builder.create_reasoning(**PAYLOAD)
    out = []
    for i in range(n):
        event = dict(template)
        event["event_id"] = new_event_id()
        event["seq"] = i + 1
        out.append(event)
    return out


def timed(fn, items) -> list[float]:
    """Per-call durations in microseconds."""
    clock = time.perf_counter_ns
    out = []
    for item in items:
        t0 = clock()
        fn(item)
        out.append((clock() - t0) / 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def redact(event: dict) -> dict:
    event["payload"]["goal"] = event["payload"]["goal"].replace("customer", "[REDACTED]")
    return event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="events per case per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="aop-bench-emit-"))
    base = dict(api_key="bench", org_salt_key="bench-salt", base_url="http://127.0.0.1:9")
    clients = {
        "emit_event (process)": AOPClient(ClientConfig(spool_dir=str(tmp / "p"), **base)),
        "emit_event + redaction hook": AOPClient(ClientConfig(
            spool_dir=str(tmp / "r"), redaction_hook=redact, **base)),
        "emit_event (fsync)": AOPClient(ClientConfig(spool_dir=str(tmp / "f"), durability="fsync",
                                                     **base)),
    }
    events = make_events(clients["emit_event (process)"], args.n)
    size = len(orjson.dumps(events[0]))
    q: queue.Queue = queue.Queue()
    store = clients["emit_event (process)"].store
    cases = {
        "queue.put(json.dumps) [baseline]": lambda e: q.put(json.dumps(e)),
        "queue.put(orjson.dumps)": lambda e: q.put(orjson.dumps(e)),
        **{name: c.emit_event for name, c in clients.items()},
        "  piece: validate_envelope": validate_envelope,
        "  piece: signed_body": lambda e: signed_body(e, "bench-salt"),
        "  piece: store.append": lambda e: store.append(e["event_id"], e["run_id"], e["seq"], b"x" * 400),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, fn in cases.items():
            batch = events if "fsync" not in name else events[: max(1, args.n // 10)]
            if name.startswith("emit_event") or "emit_event" in name:
                batch = [dict(e, event_id=new_event_id()) for e in batch]
            results[name].extend(timed(fn, batch))
            while not q.empty():
                q.get_nowait()

    base_p50 = statistics.median(results["queue.put(json.dumps) [baseline]"])
    print(f"emit benchmark: {args.rounds} rounds x {args.n} events, event {size} bytes "
          f"(signed: {len(signed_body(events[0], 'bench-salt')[1])} bytes)")
    print(f"{'case':40s} {'p50 us':>9s} {'p99 us':>9s} {'x baseline p50':>15s}")
    for name, values in results.items():
        p50 = statistics.median(values)
        print(f"{name:40s} {p50:9.2f} {pct(values, 0.99):9.2f} {p50 / base_p50:15.2f}")


if __name__ == "__main__":
    main()
