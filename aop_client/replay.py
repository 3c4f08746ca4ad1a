"""Trace files: the replay and fallback documents, written atomically and read back.

One format serves both (the brief's replay format)::

    {"run_id": "...", "timestamp": "2025-12-05T10:30:00.000Z", "event_count": 42,
     "metadata": {"agent_id": 123, "seed": 42, "stats": {...}, ...},
     "events": [<event envelope with sig>, ...]}

Files are created 0600 inside 0700 folders, written to a temporary name, fsync'd
and renamed, so a reader never sees half a file. They hold events exactly as
stored (redacted, signed) and never the api_key or org_salt_key.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

import orjson

from .errors import ToonParseError

if TYPE_CHECKING:  # pragma: no cover
    from .client import AOPClient

__all__ = ["build_trace_document", "write_trace_file", "read_trace_file", "write_replay_file"]


def build_trace_document(
    run_id: str, events: Iterable[Mapping[str, Any]], metadata: Mapping[str, Any], *, now: float
) -> dict:
    """The replay/fallback document for one run (pure)."""
    from .events import format_timestamp

    evs = sorted((dict(e) for e in events), key=lambda e: e.get("seq", 0))
    return {
        "run_id": run_id,
        "timestamp": format_timestamp(now),
        "event_count": len(evs),
        "metadata": dict(metadata),
        "events": evs,
    }


def _file_stamp(now: float) -> str:
    """A filename-safe UTC timestamp with milliseconds: 20251205T103000.123Z."""
    ms = int(round(now * 1000)) % 1000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{ms:03d}Z"


def write_trace_file(directory: str | os.PathLike, prefix: str, document: Mapping[str, Any]) -> Path:
    """Write a trace document as <prefix>_<run_id>_<stamp>.json (0600, atomic); return its path."""
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = time.time()
    final = folder / f"{prefix}_{document['run_id']}_{_file_stamp(now)}.json"
    n = 0
    while final.exists():  # two files in the same millisecond: never overwrite
        n += 1
        final = folder / f"{prefix}_{document['run_id']}_{_file_stamp(now)}-{n}.json"
    tmp = folder / f".{final.name}.{os.getpid()}.tmp"
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    return final


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
    events = [orjson.loads(e.body) for e in client.store.iter_run(run_id, include_delivered=True)]
    if not events:
        return None
    metadata = {
        "agent_id": client.config.agent_id,
        "seed": client.config.seed,
        "stats": client.get_stats(),
    }
    doc = build_trace_document(run_id, events, metadata, now=time.time())
    return write_trace_file(client.config.replay_dir, "replay", doc)
