"""Trace files: the replay and fallback documents, written atomically and read back.

One format serves both (the brief's replay format)::

    {"run_id": "...", "timestamp": "2025-12-05T10:30:00.000Z", "event_count": 42,
     "metadata": {"agent_id": 123, "seed": 42, "stats": {...}, ...},
     "events": [<event envelope with sig>, ...]}

The document is built by :func:`aop_client.core.fallback_doc.fallback_document`
from the stored bodies as they are (signed, redacted; never re-serialized).
Files are named ``<prefix>_<run_id>_<stamp>.json``, created ``0600`` inside
``0700`` folders, written to a temporary name, fsync'd and hard-linked into
place so that a reader never sees half a file and no file is ever overwritten.
They never hold the api_key or the org_salt_key.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import orjson

from .core.fallback_doc import fallback_document, trace_file_name
from .errors import ToonParseError

if TYPE_CHECKING:  # pragma: no cover
    from .client import AOPClient

__all__ = ["write_trace_file", "read_trace_file", "write_replay_file"]


def write_trace_file(directory: str | os.PathLike, prefix: str, run_id: str, data: bytes, *,
                     now: float) -> Path:
    """Write ``data`` as a new ``<prefix>_<run_id>_<stamp>.json`` (0600, atomic, never overwriting)."""
    folder = os.fspath(directory)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = os.path.join(folder, f".{prefix}-{os.getpid()}-{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
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


def write_replay_file(client: "AOPClient", run_id: str) -> Optional[Path]:
    """Write the replay file of one run from the store (events as stored, signed)."""
    events = [(e.seq, e.body) for e in client.store.iter_run(run_id, include_delivered=True)]
    if not events:
        return None
    metadata = {
        "agent_id": client.config.agent_id,
        "seed": client.config.seed,
        "stats": client.get_stats(),
    }
    now = time.time()
    data = fallback_document(run_id, events, metadata, now=now)
    return write_trace_file(client.config.replay_dir, "replay", run_id, data, now=now)
