"""aop_client: the Python client of the Agent Observability Platform.

Public API (see the README and docs/): ``AOPClient``, ``ClientConfig``,
``TraceBuilder``, ``ToonBuilder``, ``parse_toon``, ``to_toon``, the exception
tree of :mod:`aop_client.errors`, and in :mod:`aop_client.streaming`
``StreamingClient`` and ``HybridClient``. Names are imported lazily so that
``import aop_client`` stays cheap and never needs an optional extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AOPError,
    ConfigError,
    FencedError,
    SignatureError,
    StoreError,
    StoreFullError,
    StreamingUnavailableError,
    ToonParseError,
    TransportError,
    ValidationError,
)

_LAZY = {
    "AOPClient": ".client",
    "EmitResult": ".client",
    "ClientConfig": ".config",
    "TraceBuilder": ".trace_builder",
    "ToonBuilder": ".toon_parser",
    "parse_toon": ".toon_parser",
    "to_toon": ".toon_parser",
    "StreamingClient": ".streaming",
    "HybridClient": ".streaming",
}

__all__ = [
    "__version__",
    *_LAZY,
    "AOPError",
    "ConfigError",
    "FencedError",
    "SignatureError",
    "StoreError",
    "StoreFullError",
    "StreamingUnavailableError",
    "ToonParseError",
    "TransportError",
    "ValidationError",
]

if TYPE_CHECKING:  # pragma: no cover
    from .client import AOPClient, EmitResult
    from .config import ClientConfig
    from .streaming import HybridClient, StreamingClient
    from .toon_parser import ToonBuilder, parse_toon, to_toon
    from .trace_builder import TraceBuilder


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aop_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
