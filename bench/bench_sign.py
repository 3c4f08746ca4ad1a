"""Benchmark: canonical JSON and signing of a representative 355-byte event, ours against baselines.

Run from the repository root:  python bench/bench_sign.py [--rounds N]

Each sample times a batch of BATCH calls with perf_counter_ns and divides by
BATCH (so timer overhead is negligible); we report the median and p99 of the
per-call time over the samples, and the ratio of each median to the reference
``rfc8785.dumps`` (canonical group) or the naive reference signer (signing group).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import hmac
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402
import rfc8785  # noqa: E402

from aop_client.canonical import canonical_json, canonical_json_of_parsed  # noqa: E402
from aop_client.signing import (  # noqa: E402
    _hmac_sha256_hex,
    event_signature,
    request_signature,
    signed_body,
    verify_event,
    verify_parsed_event,
)

BATCH = 50
KEY = "your_org_salt_key"
KEY_BYTES = KEY.encode()

EVENT = {
    "event_id": "7f1c2a3e-9b4d-4c1e-8a6f-2d3b4c5d6e7f",
    "run_id": "550e8400-e29b-41d4-a716-446655440000",
    "agent_id": 123,
    "seq": 1,
    "t": "2025-12-05T10:00:00.000Z",
    "type": "reasoning",
    "payload": {
        "goal": "Refund the order",
        "steps": [{"step_id": "s1", "description": "Check IDs", "confidence": 0.95}],
        "safety_checks": [{"name": "policy", "result": "passed"}],
        "uncertainty": "low",
    },
}
# Same event with an integral float (orjson.Fragment path) and with a U+E000 key (UTF-16 re-sort path).
EVENT_INTEGRAL_FLOAT = {**EVENT, "payload": {**EVENT["payload"], "confidence": 1.0}}
EVENT_HIGH_KEY = {**EVENT, "payload": {**EVENT["payload"], "\ue000": "private use"}}


def naive_signed_body(event: dict, key: bytes) -> tuple[str, bytes]:
    """What one would write without a fast path: rfc8785 + hmac.new + json re-serialization."""
    sig = "v1=" + hmac.new(key, rfc8785.dumps(event), hashlib.sha256).hexdigest()
    return sig, json.dumps({**event, "sig": sig}, separators=(",", ":"), ensure_ascii=False).encode()


def cryptography_hmac(key: bytes, data: bytes) -> str:
    """HMAC-SHA256 hex through the cryptography package (the alternative to stdlib hmac.digest)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.hmac import HMAC

    mac = HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize().hex()


def measure(functions: list, rounds: int) -> list[tuple[float, float]]:
    """(median, p99) per-call microseconds for each function over `rounds` batches of BATCH calls.

    Rounds are interleaved (one batch of each function in turn) so that load from
    other processes on the machine affects every case alike.
    """
    for function in functions:  # warm up
        for _ in range(BATCH * 20):
            function()
    samples: list[list[float]] = [[] for _ in functions]
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(rounds):
            for function, sample in zip(functions, samples):
                start = clock()
                for _ in range(BATCH):
                    function()
                sample.append((clock() - start) / BATCH / 1000.0)
    finally:
        gc.enable()
    results = []
    for sample in samples:
        sample.sort()
        results.append((statistics.median(sample), sample[min(len(sample) - 1, int(len(sample) * 0.99))]))
    return results


def report(title: str, cases: list[tuple[str, object]], rounds: int, reference: str) -> None:
    """Time each case and print a Markdown table."""
    timings = measure([function for _, function in cases], rounds)
    results = [(name, median, p99) for (name, _), (median, p99) in zip(cases, timings)]
    base = next(median for name, median, _ in results if name == reference)
    lines = [f"### {title}", "", "| case | median us | p99 us | median vs `" + reference + "` |", "|---|---:|---:|---:|"]
    for name, median, p99 in results:
        lines.append(f"| {name} | {median:.2f} | {p99:.2f} | {base / median:.1f}x faster |" if median <= base
                     else f"| {name} | {median:.2f} | {p99:.2f} | {median / base:.1f}x slower |")
    print("\n".join(lines) + "\n", flush=True)


def main() -> None:
    """Run all groups and print Markdown tables (paste into docs/perf-signing.md)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="batches of %d calls per case" % BATCH)
    rounds = parser.parse_args().rounds

    canonical = canonical_json(EVENT)
    assert canonical == rfc8785.dumps(EVENT) and len(canonical) == 355, len(canonical)
    assert canonical_json(EVENT_INTEGRAL_FLOAT) == rfc8785.dumps(EVENT_INTEGRAL_FLOAT)
    assert canonical_json(EVENT_HIGH_KEY) == rfc8785.dumps(EVENT_HIGH_KEY)
    assert signed_body(EVENT, KEY)[0] == naive_signed_body(EVENT, KEY_BYTES)[0]
    assert hmac.digest(KEY_BYTES, canonical, "sha256").hex() == cryptography_hmac(KEY_BYTES, canonical)
    assert _hmac_sha256_hex(KEY, canonical) == cryptography_hmac(KEY_BYTES, canonical)
    batch_body = orjson.dumps({"batch_id": "b", "events": [dict(EVENT, seq=i) for i in range(100)]})
    signed_event = dict(EVENT, sig=event_signature(EVENT, KEY))

    print(f"# python {platform.python_version()}, {platform.machine()}, orjson {orjson.__version__}, "
          f"rfc8785 {rfc8785.__version__}; event canonical size {len(canonical)} bytes; "
          f"{rounds} batches x {BATCH} calls\n")
    report("Canonical JSON of the 355-byte event", [
        ("canonical_json (ours)", lambda: canonical_json(EVENT)),
        ("rfc8785.dumps (reference)", lambda: rfc8785.dumps(EVENT)),
        ("json.dumps(sort_keys) (not RFC 8785)",
         lambda: json.dumps(EVENT, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()),
        ("orjson.dumps(OPT_SORT_KEYS) (not RFC 8785, floor)", lambda: orjson.dumps(EVENT, option=orjson.OPT_SORT_KEYS)),
        ("canonical_json, integral float (Fragment path)", lambda: canonical_json(EVENT_INTEGRAL_FLOAT)),
        ("canonical_json, U+E000 key (UTF-16 re-sort path)", lambda: canonical_json(EVENT_HIGH_KEY)),
    ], rounds, "rfc8785.dumps (reference)")
    report("Signing the 355-byte event end to end", [
        ("signed_body (ours)", lambda: signed_body(EVENT, KEY)),
        ("naive: rfc8785 + hmac.new + json.dumps", lambda: naive_signed_body(EVENT, KEY_BYTES)),
        ("verify_event (ours)", lambda: verify_event(signed_event, KEY)),
    ], rounds, "naive: rfc8785 + hmac.new + json.dumps")
    received = orjson.loads(signed_body(EVENT, KEY)[1])  # what a collector holds after parsing the request
    unsigned = {name: value for name, value in received.items() if name != "sig"}
    assert canonical_json_of_parsed(unsigned) == canonical
    assert verify_parsed_event(received, KEY) == signed_body(EVENT, KEY)[1]
    report("Verifying the parsed 355-byte event (the collector's side)", [
        ("verify_parsed_event (ours, fast path)", lambda: verify_parsed_event(received, KEY)),
        ("verify_event + orjson.dumps (the collector before)",
         lambda: (verify_event(received, KEY), orjson.dumps(received))),
        ("canonical_json_of_parsed (ours)", lambda: canonical_json_of_parsed(unsigned)),
        ("canonical_json (ours, general)", lambda: canonical_json(unsigned)),
    ], rounds, "verify_event + orjson.dumps (the collector before)")
    report(f"HMAC-SHA256 hex of {len(canonical)} bytes", [
        ("ours: hashlib with precomputed pads", lambda: _hmac_sha256_hex(KEY, canonical)),
        ("hmac.digest (stdlib one-shot)", lambda: hmac.digest(KEY_BYTES, canonical, "sha256").hex()),
        ("hmac.new().hexdigest()", lambda: hmac.new(KEY_BYTES, canonical, hashlib.sha256).hexdigest()),
        ("cryptography HMAC", lambda: cryptography_hmac(KEY_BYTES, canonical)),
    ], rounds, "hmac.digest (stdlib one-shot)")
    report(f"Request signature of a 100-event batch body ({len(batch_body)} bytes)", [
        ("request_signature (ours)", lambda: request_signature(batch_body, KEY, now=1733392800.5)),
        ("hmac.new().hexdigest()", lambda: hmac.new(KEY_BYTES, b"1733392800." + batch_body, hashlib.sha256).hexdigest()),
    ], max(200, rounds // 10), "hmac.new().hexdigest()")


if __name__ == "__main__":
    main()
