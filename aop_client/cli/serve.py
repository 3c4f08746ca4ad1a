"""``aop serve``: the reference collector in the foreground, options mirroring ``python -m aop_client.collector``."""

from __future__ import annotations

import argparse
from typing import Any, Optional

import click

from .bounds import BOUND_OPTIONS, bound_field

__all__ = ["serve", "BOUND_OPTIONS", "bound_field"]

_RATES = ("500", "503", "429", "413", "slow", "drop", "timeout")


def _bound_options(func: Any) -> Any:
    for flag, kind, default, help_text in reversed(BOUND_OPTIONS):
        func = click.option(flag, type=kind, default=None, help=f"{help_text}  [default: {default:g}]")(func)
    return func


def _fault_options(func: Any) -> Any:
    for flag in reversed(_RATES):
        func = click.option(f"--fault-rate-{flag}", type=click.FloatRange(0.0, 1.0), default=None,
                            help=f"probability of a {flag} fault per request")(func)
    return func


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="0 picks a free port (printed at start)")
@click.option("--api-key", default=None, help="accepted API key (default $AOP_COLLECTOR_API_KEY)")
@click.option("--org-salt-key", "--key", "org_salt_key", default=None,
              help="signature key (default $AOP_COLLECTOR_ORG_SALT_KEY; unset: no signatures)")
@click.option("--db", default="aop_collector.sqlite3", show_default=True, help="SQLite file of received events")
@click.option("--max-body-bytes", type=int, default=16 * 2**20, show_default=True)
@click.option("--max-decompressed-bytes", type=int, default=64 * 2**20, show_default=True)
@click.option("--signature-tolerance", type=float, default=300.0, show_default=True)
@_bound_options
@_fault_options
@click.option("--retry-after", type=float, default=None, help="Retry-After seconds sent with 429/503 faults")
@click.option("--slow-delay", type=float, default=None, help="seconds a slow fault waits before answering")
@click.option("--timeout-delay", type=float, default=None, help="seconds a timeout fault hangs before closing")
@click.option("--fault-after-store", type=float, default=None, help="share of faults striking after events were stored")
@click.option("--fault-seed", type=int, default=None, help="seed of the fault sequence")
@click.option("--enable-fault-control", is_flag=True, help="allow POST /api/v1/_faults")
@click.option("--no-streaming", is_flag=True, help="no WebSocket / chunked stream routes")
def serve(**options: Optional[Any]) -> None:
    """Run the reference collector (protocol v1) until Ctrl-C or SIGTERM."""
    from ..collector.cli import config_from_args
    from ..collector.runner import run

    config = config_from_args(argparse.Namespace(**options))
    run(config)
