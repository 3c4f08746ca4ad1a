"""Generator of the published signing vectors (signing-v1.json), from the reference libraries only.

It deliberately uses nothing from aop_client: canonical forms come from the
reference RFC 8785 implementation ``rfc8785.dumps`` and signatures from the
stdlib ``hmac``, so the vectors check our implementation instead of echoing it.
``tests/test_signing.py`` checks that this script reproduces the committed file
and that aop_client agrees with every case. Regenerate with::

    python tests/vectors/generate_signing_v1.py > tests/vectors/signing-v1.json
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys

import rfc8785

KEY = "aop-test-vector-key-\u00e9\U0001f511"  # non-ASCII on purpose: keys are UTF-8 encoded
ENVELOPE = {
    "event_id": "7f1c2a3e-9b4d-4c1e-8a6f-2d3b4c5d6e7f",
    "run_id": "550e8400-e29b-41d4-a716-446655440000",
    "agent_id": 123,
    "seq": 1,
    "t": "2025-12-05T10:00:00.000Z",
}


def _event(type_: str, payload: dict, **extra: object) -> dict:
    event = dict(ENVELOPE, type=type_, payload=payload)
    event.update(extra)
    return event


EVENT_CASES = [
    (
        "ascii-reasoning",
        "A typical ASCII reasoning event; keys given out of order.",
        KEY,
        {
            "type": "reasoning",
            "payload": {
                "goal": "Process customer refund request",
                "steps": [{"step_id": "s1", "description": "Validate order ID", "decision": "proceed", "confidence": 0.95}],
                "safety_checks": [{"name": "policy_check", "result": "passed"}],
                "uncertainty": "low",
            },
            **ENVELOPE,
        },
    ),
    (
        "unicode-and-escapes",
        "Non-ASCII text (BMP, astral), control characters, quotes and backslashes; "
        "keys whose UTF-16 order differs from code point order (U+E000/U+FFFD vs astral U+1F600).",
        KEY,
        _event(
            "final_output",
            {
                "text": "Caf\u00e9 \u4e2d\u6587 \U0001f600 \"quoted\" back\\slash /slash\n\ttab\r\b\f \u0000\u001f\u007f \u2028\u2029",
                "structured": {"\ue000": "private use", "\U0001f600": "astral", "\ufffd": "replacement", "z": "ascii", "\u00e9": "latin"},
            },
        ),
    ),
    (
        "numbers",
        "ECMAScript number formatting: integral floats, -0.0, exponent thresholds 1e21 and 1e-7, "
        "subnormal 5e-324, largest double, and the +-(2**53-1) integer bounds.",
        KEY,
        _event(
            "custom",
            {
                "confidence": 0.95,
                "one": 1.0,
                "negative_zero": -0.0,
                "sum": 0.1 + 0.2,
                "big_plain": 1e20,
                "big_exp": 1e21,
                "e16": 1e16,
                "small_plain": 1e-6,
                "small_exp": 1e-7,
                "tiny": 5e-324,
                "max_double": 1.7976931348623157e308,
                "fraction": -123456789.125,
                "max_int": 2**53 - 1,
                "min_int": -(2**53 - 1),
                "zero": 0,
            },
            name="numbers",  # protocol v1 section 1: a custom event's name is top-level
        ),
    ),
    (
        "nested-payload",
        "Nested objects and arrays, empty containers, null and booleans, and an extra top-level field.",
        KEY,
        _event(
            "action_response",
            {
                "status": "ok",
                "data": {"results": [[1, [2, [3, {"deep": {"deeper": [True, False, None]}}]]], [], {}], "count": 3},
                "meta": {"latency_ms": 245, "tags": ["a", "b", ""]},
            },
            extra_field={"covered": "by the signature"},
        ),
    ),
    (
        "existing-sig-ignored",
        "The input already holds a (wrong) sig: it is removed before canonicalization.",
        "short",
        _event("error", {"message": "boom", "code": 500}, sig="v1=" + "0" * 64),
    ),
]

REQUEST_CASES = [
    (
        "batch-body",
        "A batch body signed at a fixed t.",
        KEY,
        1733392800,
        '{"batch_id":"0b6f1e2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b","events":[]}',
    ),
    ("empty-body", "An empty body.", "short", 1700000000, ""),
    (
        "unicode-body",
        "A body with non-ASCII UTF-8 bytes (the HMAC covers the raw bytes).",
        KEY,
        1733392800,
        '{"text":"Caf\u00e9 \U0001f600"}',
    ),
]


def _hmac_hex(key: str, message: bytes) -> str:
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def build() -> dict:
    """Return the vector document (a JSON-ready dict)."""
    events = []
    for name, description, key, event in EVENT_CASES:
        unsigned = {k: v for k, v in event.items() if k != "sig"}
        canonical = rfc8785.dumps(unsigned)
        events.append(
            {
                "name": name,
                "description": description,
                "key": key,
                "event": event,
                "canonical": canonical.decode("utf-8"),
                "canonical_utf8_hex": canonical.hex(),
                "sig": "v1=" + _hmac_hex(key, canonical),
            }
        )
    requests = []
    for name, description, key, t, body in REQUEST_CASES:
        signature = _hmac_hex(key, str(t).encode() + b"." + body.encode("utf-8"))
        requests.append(
            {
                "name": name,
                "description": description,
                "key": key,
                "t": t,
                "body": body,
                "header": f"t={t},v1={signature}",
                "verify": [
                    {"now": t, "tolerance": 300, "result": "ok"},
                    {"now": t + 300, "tolerance": 300, "result": "ok"},
                    {"now": t - 301, "tolerance": 300, "result": "stale"},
                    {"now": t + 412, "tolerance": 300, "result": "stale"},
                ],
            }
        )
    return {
        "format": "aop-signing-vectors",
        "version": 1,
        "protocol": "AOP ingest protocol v1 (event sig and X-AOP-Signature)",
        "event_signature": "sig = 'v1=' + hex(HMAC-SHA256(UTF-8(key), RFC8785(event without 'sig')))",
        "request_signature": "X-AOP-Signature = 't=' + t + ',v1=' + hex(HMAC-SHA256(UTF-8(key), ASCII(t) + '.' + body))",
        "generated_with": f"rfc8785 {rfc8785.__version__} + Python hmac/hashlib",
        "event_cases": events,
        "request_cases": requests,
    }


def render() -> str:
    """The exact text of signing-v1.json (ASCII-only JSON, 2-space indent, trailing newline)."""
    return json.dumps(build(), indent=2, ensure_ascii=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
