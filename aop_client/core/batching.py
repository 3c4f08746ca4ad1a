"""Pure batching decisions: when a held batch is ready, how its body is built, how it is halved.

The body is assembled from the stored, already-signed event bodies without
re-serializing them: ``{"batch_id":"<id>","events":[<body>,<body>,...]}``.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import orjson

from ..errors import ValidationError

__all__ = ["should_flush", "build_batch_body", "split_in_halves", "batch_overhead_bytes"]

T = TypeVar("T")


def should_flush(
    count: int,
    total_bytes: int,
    oldest_at: float | None,
    now: float,
    *,
    batch_size: int,
    max_batch_bytes: int,
    batch_interval: float,
    force: bool = False,
) -> bool:
    """True when a held batch of ``count`` events (``total_bytes`` of bodies) must be sent now.

    Ready when forced (flush/stop), when full by count, when one more event of
    the batch's average size would pass the byte cap, or when the oldest held
    event has waited ``batch_interval`` seconds. An empty batch is never ready.
    """
    if count <= 0:
        return False
    if force or count >= batch_size:
        return True
    if total_bytes + total_bytes / count > max_batch_bytes:
        return True
    return oldest_at is not None and now - oldest_at >= batch_interval


def batch_overhead_bytes(batch_id: str, count: int) -> int:
    """Bytes the batch envelope adds around ``count`` event bodies."""
    return len(b'{"batch_id":') + len(orjson.dumps(batch_id)) + len(b',"events":[]}') + max(0, count - 1)


def build_batch_body(batch_id: str, bodies: Sequence[bytes]) -> bytes:
    """The upload body for ``bodies`` (each one serialized JSON event) under ``batch_id``."""
    if not isinstance(batch_id, str) or not batch_id:
        raise ValidationError(f"batch_id must be a non-empty string, got {batch_id!r}", field="batch_id", value=batch_id)
    for position, body in enumerate(bodies):
        if not isinstance(body, (bytes, bytearray, memoryview)) or not body:
            raise ValidationError(
                f"events[{position}] must be non-empty bytes, got {type(body).__name__}",
                field=f"events[{position}]",
                value=None,
            )
    return b"".join((b'{"batch_id":', orjson.dumps(batch_id), b',"events":[', b",".join(bodies), b"]}"))


def split_in_halves(items: Sequence[T]) -> tuple[Sequence[T], Sequence[T]]:
    """Two non-empty halves of ``items`` (the first is the shorter when the length is odd)."""
    if len(items) < 2:
        raise ValidationError(f"cannot split a batch of {len(items)} event(s)", field="batch", value=len(items))
    middle = len(items) // 2
    return items[:middle], items[middle:]
