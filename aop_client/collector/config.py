"""CollectorConfig: every setting of the reference collector, checked once at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional

from ..errors import ConfigError
from .faults import FaultConfig

__all__ = ["CollectorConfig"]

_SECRETS = frozenset({"api_key", "org_salt_key"})


@dataclass(frozen=True)
class CollectorConfig:
    """How to run one reference collector; repr() never shows the keys."""

    api_key: str
    org_salt_key: Optional[str] = None  # when set, request and event signatures are required
    host: str = "127.0.0.1"
    port: int = 8000  # 0: a free port chosen by the kernel
    db_path: Optional[str] = None  # SQLite file; None: an in-memory database (lost on stop)
    max_body_bytes: int = 16 * 2**20  # on the wire (compressed); larger bodies get 413
    max_decompressed_bytes: int = 64 * 2**20  # after gunzip; larger bodies get 413
    signature_tolerance: float = 300.0  # seconds of clock skew accepted on X-AOP-Signature
    faults: FaultConfig = field(default_factory=FaultConfig)
    enable_streaming: bool = True  # add the WebSocket and chunked NDJSON routes
    allow_fault_control: bool = False  # POST /api/v1/_faults (API key required) may change faults
    # Connection bounds (aop_client/collector/connections.py, docs/operations.md):
    header_timeout: float = 10.0  # seconds from a request head's first byte until it is complete, else closed
    body_timeout: float = 60.0  # seconds a handler may wait for a whole body, else 408 and closed
    body_min_rate: int = 1024  # bytes/s a body must average after 2 s, else 408 and closed (0: no floor)
    keepalive_timeout: float = 75.0  # seconds an idle connection (no byte of a next request) stays open
    max_connections: int = 1024  # open connections at most (lowered to what RLIMIT_NOFILE leaves)
    ws_heartbeat: float = 30.0  # WebSocket ping interval; no pong within half of it closes the stream

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, str) or not self.api_key:
            raise ConfigError("CollectorConfig.api_key must be a non-empty string", field="api_key", value=None)
        if self.org_salt_key is not None and (not isinstance(self.org_salt_key, str) or not self.org_salt_key):
            raise ConfigError("CollectorConfig.org_salt_key must be None or a non-empty string",
                              field="org_salt_key", value=None)
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"CollectorConfig.port must be an int in 0..65535, got {self.port!r}",
                              field="port", value=self.port)
        for name in ("max_body_bytes", "max_decompressed_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"CollectorConfig.{name} must be an int >= 1, got {value!r}", field=name, value=value)
        tol = self.signature_tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ConfigError(f"CollectorConfig.signature_tolerance must be a finite number >= 0, got {tol!r}",
                              field="signature_tolerance", value=tol)
        for name in ("header_timeout", "body_timeout", "keepalive_timeout", "ws_heartbeat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"CollectorConfig.{name} must be a finite number of seconds > 0, got {value!r}",
                                  field=name, value=value)
        for name, least in (("max_connections", 1), ("body_min_rate", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"CollectorConfig.{name} must be an int >= {least}, got {value!r}",
                                  field=name, value=value)
        if not isinstance(self.faults, FaultConfig):
            raise ConfigError(f"CollectorConfig.faults must be a FaultConfig, got {type(self.faults).__name__}",
                              field="faults", value=type(self.faults).__name__)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown.append(f"{f.name}={'***' if f.name in _SECRETS and value else repr(value)}")
        return f"CollectorConfig({', '.join(shown)})"
