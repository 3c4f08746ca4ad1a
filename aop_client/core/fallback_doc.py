"""The fallback file of one run, as bytes and a file name (pure; :mod:`aop_client.trace_files` writes it).

Same shape as the brief's replay file, so one reader (``parse_toon``, the
replay command) serves both::

    {"run_id": "...", "timestamp": "2025-12-05T10:30:00.000Z", "event_count": 2,
     "metadata": {"agent_id": 123, "reason": "max_retries", "batch_id": "...",
                  "attempts": 3, "last_error": "HTTP 503"},
     "events": [<stored event envelope, signed, unchanged>, ...]}

Events are the stored bodies spliced in as they are (no re-serialization,
signatures intact), in seq order. Metadata never holds keys or secrets.
"""

from __future__ import annotations

import re
import time
from typing import Any, Mapping, Sequence

import orjson

from ..errors import ValidationError

__all__ = ["fallback_document", "fallback_file_name", "trace_file_name", "is_file_name_safe"]

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_file_name_safe(run_id: str) -> bool:
    """True when ``run_id`` can be used inside a file name as is (UUIDs always can)."""
    return isinstance(run_id, str) and bool(_SAFE.match(run_id)) and ".." not in run_id


def _rfc3339_ms(now: float) -> str:
    millis = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}Z"


def trace_file_name(prefix: str, run_id: str, now: float, counter: int = 0) -> str:
    """``<prefix>_<run_id>_<YYYYmmddTHHMMSS.mmmZ>[-n].json``; ValidationError for an unsafe run_id."""
    if not is_file_name_safe(run_id):
        raise ValidationError(f"run_id {run_id[:60]!r} cannot be used in a file name", field="run_id", value=None)
    millis = int(now * 1000) % 1000
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{millis:03d}Z"
    return f"{prefix}_{run_id}_{stamp}{f'-{counter}' if counter else ''}.json"


def fallback_file_name(run_id: str, now: float, counter: int = 0) -> str:
    """``fallback_<run_id>_<YYYYmmddTHHMMSS.mmmZ>[-n].json``; ValidationError for an unsafe run_id."""
    return trace_file_name("fallback", run_id, now, counter)


def fallback_document(
    run_id: str, events: Sequence[tuple[int, bytes]], metadata: Mapping[str, Any], *, now: float
) -> bytes:
    """The file's bytes for ``events`` given as (seq, stored body) pairs."""
    bodies = [body for _, body in sorted(events, key=lambda pair: pair[0])]
    head = orjson.dumps({"run_id": run_id, "timestamp": _rfc3339_ms(now), "event_count": len(bodies),
                         "metadata": dict(metadata)})
    return b"".join((head[:-1], b',"events":[', b",".join(bodies), b"]}"))
