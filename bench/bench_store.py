"""Benchmark the durable store against its baselines, side by side, in one run.

    python bench/bench_store.py [--quick] [--backlog N]

Measures, for a 355-byte event:
  1. single-process append latency (median, p99): DiskStore(process), DiskStore(fsync),
     queue.Queue.put(json.dumps(...)) (in memory, not durable), diskcache.Deque.append,
     persistqueue.SQLiteAckQueue.put;
  2. 8 concurrent processes appending: events/s in all and per-append p99;
  3. drain: lease+ack events/s for the flusher;
  4. a backlog of N pending events (default 1,000,000): time to open the store and
     lease the first batch, and the peak RSS while doing so.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from aop_client.store import DiskStore  # noqa: E402

EVENT = {
    "event_id": "", "run_id": "550e8400-e29b-41d4-a716-446655440000", "seq": 0, "agent_id": 123,
    "event_type": "reasoning", "timestamp": "2025-12-05T10:30:00.000Z",
    "payload": {"thought": "x" * 120, "confidence": 0.92},
    "signature": "0" * 64,
}


def body_for(i: int) -> tuple[str, bytes]:
    """A 355-byte JSON event body and its id."""
    eid = str(uuid.uuid4())
    ev = dict(EVENT, event_id=eid, seq=i)
    raw = json.dumps(ev, separators=(",", ":")).encode()
    return eid, raw + b" " * max(0, 355 - len(raw))


def pct(sorted_ns: list[int], q: float) -> float:
    """Percentile in microseconds of a sorted list of nanosecond samples."""
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


# -- appenders: each returns a callable append(i) and a closer -------------------------------
def make_appender(kind: str, path: str):
    """(append(i, event_id, body), close()) for one store kind at path."""
    if kind in ("disk_store", "disk_store_fsync"):
        store = DiskStore(path, durability="fsync" if kind.endswith("fsync") else "process")
        run = str(uuid.uuid4())

        def append(i: int, eid: str, body: bytes) -> None:
            store.append(eid, run, i, body)

        return append, store.close
    if kind == "queue_json":
        q: queue.Queue = queue.Queue()

        def append(i: int, eid: str, body: bytes) -> None:
            q.put(json.dumps(dict(EVENT, event_id=eid, seq=i)))

        return append, lambda: None
    if kind == "diskcache_deque":
        import diskcache

        dq = diskcache.Deque(directory=path)

        def append(i: int, eid: str, body: bytes) -> None:
            dq.append(body)

        return append, lambda: dq.directory and None
    if kind == "persistqueue_ack":
        import persistqueue

        pq = persistqueue.SQLiteAckQueue(path, multithreading=True, auto_commit=True)

        def append(i: int, eid: str, body: bytes) -> None:
            pq.put(body)

        return append, lambda: None
    raise ValueError(kind)


def time_appends(kind: str, path: str, n: int) -> list[int]:
    """Append n events, returning sorted per-append latencies in ns."""
    append, close = make_appender(kind, path)
    events = [body_for(i) for i in range(1, n + 1)]
    lat = []
    clock = time.perf_counter_ns
    for i, (eid, body) in enumerate(events, 1):
        t0 = clock()
        append(i, eid, body)
        lat.append(clock() - t0)
    close()
    lat.sort()
    return lat


def _worker(kind: str, path: str, n: int, barrier, out, threads: int = 1) -> None:
    try:
        append, close = make_appender(kind, path)
        events = [body_for(i) for i in range(1, n + 1)]
        clock = time.perf_counter_ns
        lat: list[int] = []

        errors: list[str] = []

        def loop(part: list) -> None:
            try:
                for i, (eid, body) in part:
                    t0 = clock()
                    append(i, eid, body)
                    lat.append(clock() - t0)
            except Exception as e:  # a baseline that cannot take concurrent writers
                errors.append(repr(e))

        numbered = list(enumerate(events, 1))
        pool = [threading.Thread(target=loop, args=(numbered[k::threads],)) for k in range(threads)]
        barrier.wait()
        start = time.time()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        end = time.time()
        close()
        out.put((start, end, f"error after {len(lat)} appends: {errors[0]}" if errors else lat))
    except Exception as e:  # reported by the parent
        out.put((0.0, 0.0, repr(e)))


def concurrent(kind: str, path: str, procs: int, n: int, threads: int = 1) -> tuple[float, float, float] | str:
    """(events/s in all, p50 us, p99 us) with procs processes (threads each) appending n events per process."""
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(kind, path, n, barrier, out, threads)) for _ in range(procs)]
    for w in workers:
        w.start()
    results = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    errors = [r[2] for r in results if isinstance(r[2], str)]
    if errors:
        return f"error: {errors[0]}"
    lat = sorted(x for r in results for x in r[2])
    span = max(r[1] for r in results) - min(r[0] for r in results)
    return procs * n / span, pct(lat, 0.5), pct(lat, 0.99)


def drain_rate(path: str, n: int, *, fenced: bool = True) -> tuple[float, float]:
    """Lease+ack events/s for n pending events (batches of 500): (per wall second, per CPU second).

    ``fenced``: leases carry the epoch, as the flusher's do (direct leases, no
    index row per event); otherwise every event goes through the index rows.
    """
    store = DiskStore(path)
    run = str(uuid.uuid4())
    for i in range(1, n + 1):
        eid, body = body_for(i)
        store.append(eid, run, i, body)
    store.close()
    store = DiskStore(path)
    epoch = store.begin_epoch()
    t0, c0 = time.perf_counter(), time.process_time()
    got = 0
    while batch := (store.lease(500, 4 << 20, epoch=epoch) if fenced else store.lease(500, 4 << 20)):
        store.ack([e.ref for e in batch], epoch=epoch)
        got += len(batch)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    store.close()
    assert got == n, (got, n)
    return n / dt, n / cpu


def _backlog_child(path: str, out) -> None:
    t0 = time.perf_counter()
    store = DiskStore(path)
    batch = store.lease(500, 4 << 20)
    first = time.perf_counter() - t0
    rss_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    epoch = store.begin_epoch()
    drained, t1 = 0, time.perf_counter()
    while time.perf_counter() - t1 < 10 and (batch := store.lease(500, 4 << 20, epoch=epoch)):
        store.ack([e.ref for e in batch], epoch=epoch)
        drained += len(batch)
    rate = drained / (time.perf_counter() - t1)
    out.put((first, len(batch), rss_first, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, drained, rate))


def backlog(path: str, n: int, procs: int = 4) -> tuple:
    """Fill n pending events with procs writers, then time open + first lease in a fresh process."""
    ctx = mp.get_context("fork")
    per = n // procs
    t0 = time.perf_counter()
    concurrent("disk_store", path, procs, per)
    fill = time.perf_counter() - t0
    out = ctx.Queue()
    p = ctx.Process(target=_backlog_child, args=(path, out))
    p.start()
    res = out.get(timeout=600)
    p.join()
    return (fill, *res)


def report_backlog(root: str, n: int) -> None:
    """Part 4: print the backlog numbers."""
    print(f"\n4. backlog of {n} pending events")
    fill, first, nb, rss1, rss2, drained, rate = backlog(os.path.join(root, "backlog"), n)
    print(f"   filled in {fill:.1f} s; open + first lease of {nb} events: {first * 1000:.0f} ms;"
          f" peak RSS {rss1:.0f} MB after first batch, {rss2:.0f} MB after draining {drained} ({rate:.0f}/s)")


def main() -> None:
    """Run every part and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer events (smoke run)")
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--only-backlog", action="store_true", help="run only part 4")
    args = ap.parse_args()
    n1 = 5_000 if args.quick else 50_000
    slow_n = 2_000 if args.quick else 5_000
    nproc_n = 3_000 if args.quick else 20_000
    root = tempfile.mkdtemp(prefix="aop-bench-store-")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, event 355 bytes, dir {root}")
    t0 = time.perf_counter()
    x = 0
    for i in range(3_000_000):
        x += i
    print(f"cpu calibration: 3M interpreted adds in {time.perf_counter() - t0:.2f} s"
          f" (about 0.15-0.25 s on an idle core; larger means a loaded machine); load {os.getloadavg()[0]:.1f}")
    try:
        if args.only_backlog:
            return report_backlog(root, args.backlog)
        print("\n1. single-process append latency")
        rows = {}
        for kind, n in (("disk_store", n1), ("disk_store_fsync", slow_n), ("queue_json", n1),
                        ("diskcache_deque", slow_n), ("persistqueue_ack", slow_n)):
            lat = time_appends(kind, os.path.join(root, f"single-{kind}"), n)
            rows[kind] = (pct(lat, 0.5), pct(lat, 0.99))
            print(f"   {kind:18s} n={n:6d}  p50 {rows[kind][0]:9.1f} us   p99 {rows[kind][1]:9.1f} us")
        base = rows["disk_store"][0]
        for kind, (p50, _) in rows.items():
            print(f"   ratio p50 {kind:18s} / disk_store = {p50 / base:6.2f}")

        print("\n2. 8 concurrent processes appending")
        conc = {}
        for kind, n in (("disk_store", nproc_n), ("disk_store_fsync", slow_n), ("diskcache_deque", slow_n // 2),
                        ("persistqueue_ack", slow_n // 2)):
            r = concurrent(kind, os.path.join(root, f"conc-{kind}"), 8, n)
            conc[kind] = r
            if isinstance(r, str):
                print(f"   {kind:18s} {r}")
            else:
                print(f"   {kind:18s} {r[0]:10.0f} events/s   p50 {r[1]:8.1f} us   p99 {r[2]:9.1f} us")
        r = concurrent("disk_store_fsync", os.path.join(root, "conc-fsync-threads"), 8, slow_n * 2, threads=8)
        conc["disk_store_fsync x8 threads"] = r
        if not isinstance(r, str):
            print(f"   {'disk_store_fsync, 8 threads/proc':18s} {r[0]:10.0f} events/s   p50 {r[1]:8.1f} us   p99 {r[2]:9.1f} us")
        ours = conc["disk_store"]
        for kind, r in conc.items():
            if not isinstance(r, str) and not isinstance(ours, str):
                print(f"   ratio throughput disk_store / {kind:18s} = {ours[0] / r[0]:6.2f}")

        print("\n3. drain (lease 500 + ack)")
        wall, cpu = drain_rate(os.path.join(root, "drain"), n1)
        print(f"   fenced (direct)    {wall:10.0f} events/s (wall clock), {cpu:.0f} events per CPU second")
        row_wall, row_cpu = drain_rate(os.path.join(root, "drain-rows"), n1, fenced=False)
        print(f"   unfenced (rows)    {row_wall:10.0f} events/s (wall clock), {row_cpu:.0f} events per CPU second")
        print(f"   ratio direct / rows = {wall / row_wall:.2f}")

        report_backlog(root, args.backlog)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
