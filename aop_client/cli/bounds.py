"""The reference collector's connection-bound options, shared by ``aop serve`` and ``python -m aop_client.collector``.

No click here: the collector's argparse CLI imports this module, and it must
run with the ``collector`` extra alone (no ``cli`` extra).
"""

from __future__ import annotations

__all__ = ["BOUND_OPTIONS", "bound_field"]

#: The connection bounds, options of both ``aop serve`` and ``python -m aop_client.collector``:
#: (flag, type, default shown, help). Unset options take CollectorConfig's defaults (the same numbers).
BOUND_OPTIONS = (
    ("--header-timeout", float, 10.0, "seconds from a request head's first byte until it must be complete"),
    ("--body-timeout", float, 60.0, "seconds a request body may take to arrive (then 408 and closed)"),
    ("--body-min-rate", int, 1024, "bytes/s a request body must average after 2 s (0: no floor)"),
    ("--keepalive-timeout", float, 75.0, "seconds an idle keep-alive connection stays open"),
    ("--max-connections", int, 1024, "open connections at most (lowered to what the open-file limit leaves)"),
    ("--ws-heartbeat", float, 30.0, "WebSocket ping interval; no pong within half of it closes the stream"),
)


def bound_field(flag: str) -> str:
    """The CollectorConfig field of a BOUND_OPTIONS flag (``--header-timeout`` -> ``header_timeout``)."""
    return flag[2:].replace("-", "_")
