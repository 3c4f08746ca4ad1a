"""Command line of the reference collector: ``python -m aop_client.collector [options]``.

Secrets may come from the environment instead of argv (argv is visible to
every user of the host): ``AOP_COLLECTOR_API_KEY``, ``AOP_COLLECTOR_ORG_SALT_KEY``.
``AOP_COLLECTOR_FAULTS`` may hold a JSON FaultConfig; ``--fault-*`` flags override its fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
from typing import Optional, Sequence

from ..cli.bounds import BOUND_OPTIONS, bound_field
from ..errors import ConfigError
from .config import CollectorConfig
from .faults import FaultConfig

__all__ = ["build_parser", "config_from_args", "main", "tune_gc_for_batches"]

_FAULT_FLAGS = {
    "fault_rate_500": "rate_500", "fault_rate_503": "rate_503", "fault_rate_429": "rate_429",
    "fault_rate_413": "rate_413", "fault_rate_slow": "rate_slow", "fault_rate_drop": "rate_drop",
    "fault_rate_timeout": "rate_timeout", "retry_after": "retry_after", "slow_delay": "slow_delay",
    "timeout_delay": "timeout_delay", "fault_after_store": "after_store_probability", "fault_seed": "seed",
}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the collector CLI."""
    p = argparse.ArgumentParser(prog="python -m aop_client.collector",
                                description="AOP reference collector (protocol v1).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    p.add_argument("--api-key", help="accepted API key (default: $AOP_COLLECTOR_API_KEY)")
    p.add_argument("--org-salt-key", help="signature key (default: $AOP_COLLECTOR_ORG_SALT_KEY; unset: no signatures)")
    p.add_argument("--db", default="aop_collector.sqlite3", help="SQLite file of received events")
    p.add_argument("--max-body-bytes", type=int, default=16 * 2**20)
    p.add_argument("--max-decompressed-bytes", type=int, default=64 * 2**20)
    p.add_argument("--signature-tolerance", type=float, default=300.0)
    for flag, kind, default, help_text in BOUND_OPTIONS:
        p.add_argument(flag, type=kind, default=None, help=f"{help_text} (default: {default:g})")
    for flag in ("500", "503", "429", "413", "slow", "drop", "timeout"):
        p.add_argument(f"--fault-rate-{flag}", type=float, help=f"probability of a {flag} fault per request")
    p.add_argument("--retry-after", type=float, help="Retry-After seconds sent with 429/503 faults")
    p.add_argument("--slow-delay", type=float, help="seconds a slow fault waits before answering")
    p.add_argument("--timeout-delay", type=float, help="seconds a timeout fault hangs before closing")
    p.add_argument("--fault-after-store", type=float, help="share of faults striking after events were stored")
    p.add_argument("--fault-seed", type=int, help="seed of the fault sequence")
    p.add_argument("--enable-fault-control", action="store_true", help="allow POST /api/v1/_faults")
    p.add_argument("--no-streaming", action="store_true", help="no WebSocket / chunked stream routes")
    return p


def config_from_args(args: argparse.Namespace, environ: Optional[dict] = None) -> CollectorConfig:
    """Build the CollectorConfig from parsed arguments and the environment."""
    env = os.environ if environ is None else environ
    api_key = args.api_key or env.get("AOP_COLLECTOR_API_KEY")
    if not api_key:
        raise ConfigError("an API key is required: --api-key or AOP_COLLECTOR_API_KEY", field="api_key")
    faults = FaultConfig()
    if env.get("AOP_COLLECTOR_FAULTS"):
        from .runner import faults_from_json

        try:
            faults = faults_from_json(env["AOP_COLLECTOR_FAULTS"])
        except (ValueError, TypeError) as e:
            raise ConfigError(f"AOP_COLLECTOR_FAULTS is not a FaultConfig: {e}", field="AOP_COLLECTOR_FAULTS") from e
    overrides = {field: getattr(args, flag) for flag, field in _FAULT_FLAGS.items() if getattr(args, flag) is not None}
    faults = dataclasses.replace(faults, **overrides)
    bounds = {bound_field(flag): getattr(args, bound_field(flag)) for flag, *_ in BOUND_OPTIONS
              if getattr(args, bound_field(flag), None) is not None}  # unset: CollectorConfig's default
    return CollectorConfig(
        api_key=api_key, org_salt_key=args.org_salt_key or env.get("AOP_COLLECTOR_ORG_SALT_KEY") or None,
        host=args.host, port=args.port, db_path=args.db, max_body_bytes=args.max_body_bytes,
        max_decompressed_bytes=args.max_decompressed_bytes, signature_tolerance=args.signature_tolerance,
        faults=faults, enable_streaming=not args.no_streaming, allow_fault_control=args.enable_fault_control,
        **bounds,
    )


def tune_gc_for_batches() -> None:
    """Freeze the startup heap and widen the young generation (the collector process owns its interpreter).

    A 500-event batch is parsed into a few thousand dicts and lists that all stay
    alive until the batch is stored; with the default threshold (700) they are
    promoted through every generation and trigger full collections of the whole
    heap, about 2 us per event of collector CPU. Garbage is still collected.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, serve until SIGINT/SIGTERM; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .runner import run

    tune_gc_for_batches()
    run(config)
    return 0
