"""Trace files: the replay and fallback documents, written atomically and read back.

This module takes data (a run id, the metadata, the stored events), never the
client or the flusher: the client writes replay files with
:func:`write_replay_file`, the flusher fallback files with
:func:`write_fallback_file`; :func:`read_trace_file` reads either. It imports
only ``core``, ``errors`` and the store's record type, and sits below the
flusher and the client (docs/design.md, "Layout").

One format serves both (the brief's replay format)::

    {"run_id": "...", "timestamp": "2025-12-05T10:30:00.000Z", "event_count": 42,
     "metadata": {"agent_id": 123, "seed": 42, "stats": {...}, ...},
     "events": [<event envelope with sig>, ...]}

The document is built by :func:`aop_client.core.fallback_doc.fallback_document`
from the stored bodies as they are (signed, redacted; never re-serialized). A
replay file is streamed from the store (``iter_run``, a page at a time), so a run
of any length is never in memory at once: its ``event_count`` is written into
space reserved for it once the events are counted (digits, then JSON whitespace).
Files are named ``<prefix>_<run_id>_<stamp>.json``, created ``0600`` inside
``0700`` folders, written to a temporary name, fsync'd and hard-linked into
place so that a reader never sees half a file and no file is ever overwritten.
They never hold the api_key or the org_salt_key.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

import orjson

from .core.fallback_doc import fallback_document, trace_file_name
from .errors import ToonParseError

if TYPE_CHECKING:  # pragma: no cover
    from .store.api import StoredEvent

_COUNT_FIELD = b'"event_count":'
_COUNT_WIDTH = 20  # bytes reserved for the count's digits
_WRITE_CHUNK = 1 << 20

__all__ = ["write_trace_file", "read_trace_file", "write_replay_file", "write_fallback_file"]


def write_trace_file(directory: str | os.PathLike, prefix: str, run_id: str, data: bytes, *,
                     now: float) -> Path:
    """Write ``data`` as a new ``<prefix>_<run_id>_<stamp>.json`` (0600, atomic, never overwriting)."""
    return _write_new_file(directory, prefix, run_id, lambda fd: _write_all(fd, data), now=now)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_new_file(directory: str | os.PathLike, prefix: str, run_id: str, fill: Callable[[int], None], *,
                    now: float) -> Path:
    """Create a temporary file, let ``fill`` write it, fsync it and link it into place under a free name."""
    folder = os.fspath(directory)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = os.path.join(folder, f".{prefix}-{os.getpid()}-{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fill(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        for counter in range(1000):
            final = os.path.join(folder, trace_file_name(prefix, run_id, now, counter))
            try:
                os.link(tmp, final)  # fails when the name exists: never overwrite another file
                return Path(final)
            except FileExistsError:
                continue
        raise FileExistsError(f"no free {prefix} file name for run {run_id} in {folder!r}")
    finally:
        os.unlink(tmp)


def read_trace_file(path: str | os.PathLike) -> dict:
    """Read a replay or fallback file; ToonParseError names the file and the problem."""
    data = Path(path).read_bytes()
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ToonParseError(f"{path}: not JSON: {exc}", source_format="json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise ToonParseError(f"{path}: not a trace file (no 'events' list)", source_format="json")
    return doc


def write_replay_file(directory: str | os.PathLike, run_id: str, events: Iterable["StoredEvent"], *,
                      agent_id: Any, seed: Any, stats: Mapping[str, Any],
                      now: Optional[float] = None) -> Optional[Path]:
    """Write the replay file of one run from its stored events (as stored, signed), streaming them.

    ``events`` is read once, a page at a time (``store.iter_run``); ``stats`` goes into the
    metadata as given, so it must hold no secret and no event content (``get_stats()`` does
    not). None, and no file, when ``events`` is empty.
    """
    it = iter(events)
    first = next(it, None)
    if first is None:
        return None
    at = time.time() if now is None else now
    metadata = {"agent_id": agent_id, "seed": seed, "stats": dict(stats)}
    head = fallback_document(run_id, [], metadata, now=at)  # '{..."event_count":0,...,"events":[]}'
    return _write_new_file(directory, "replay", run_id,
                           lambda fd: _write_events(fd, head, itertools.chain((first,), it)), now=at)


def write_fallback_file(directory: str | os.PathLike, run_id: str, events: Iterable["StoredEvent"],
                        metadata: Mapping[str, Any], *, now: float) -> Path:
    """Write the fallback file of one run's parked ``events`` (in seq order, bodies as stored)."""
    data = fallback_document(run_id, [(e.seq, e.body) for e in events], metadata, now=now)
    return write_trace_file(directory, "fallback", run_id, data, now=now)


def _write_events(fd: int, head: bytes, events: Iterable["StoredEvent"]) -> None:
    """Write the document ``head`` (built with no events) with ``events`` in it, then their count."""
    at = head.index(_COUNT_FIELD) + len(_COUNT_FIELD)  # the first one is the top-level key
    _write_all(fd, head[:at] + b"0".ljust(_COUNT_WIDTH) + head[at + 1:-2])
    count, size, chunk = 0, 0, []
    for event in events:
        if count:
            chunk.append(b",")
        chunk.append(event.body)
        count += 1
        size += len(event.body)
        if size >= _WRITE_CHUNK:
            _write_all(fd, b"".join(chunk))
            size, chunk = 0, []
    chunk.append(b"]}")
    _write_all(fd, b"".join(chunk))
    os.pwrite(fd, str(count).encode(), at)
