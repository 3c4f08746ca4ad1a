"""The reference collector: a real HTTP server implementing protocol v1 (needs the ``collector`` extra).

Modules: ``config`` (CollectorConfig), ``faults`` (FaultConfig, sans-I/O fault
decisions), ``protocol`` (sans-I/O body/event checks), ``storage`` (SQLite
record), ``app`` (aiohttp routes), ``streaming_routes`` (WebSocket and chunked
stream endpoints), ``connections`` (header, body and idle timeouts, the
connection limit), ``runner`` (thread / child-process / blocking runners),
``cli`` (``python -m aop_client.collector``).
"""

from __future__ import annotations

from ..extras import install_hint
from .config import CollectorConfig
from .faults import Fault, FaultConfig, FaultKind, FaultStage

try:
    from .runner import CollectorProcess, RunningCollector, run, start_collector, start_collector_process
except ImportError as e:  # pragma: no cover - depends on the installed extras
    if getattr(e, "name", None) != "aiohttp":
        raise
    raise ImportError(f"the reference collector needs aiohttp: {install_hint('collector')}", name="aiohttp") from e

__all__ = [
    "CollectorConfig",
    "FaultConfig",
    "Fault",
    "FaultKind",
    "FaultStage",
    "RunningCollector",
    "CollectorProcess",
    "start_collector",
    "start_collector_process",
    "run",
]
